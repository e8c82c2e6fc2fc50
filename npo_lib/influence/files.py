"""Token-influence files and the INFLUENCE loss's token weights read from them.

A scorer (``npo influence``) writes, per forget example, one score per target token:

* ``scores.safetensors``: ``scores`` (N, T) padded with 0, ``lengths`` (N,);
* ``tokens.jsonl``: per example its ``question`` (a document piece: its ``source``, ``doc``
  and ``start`` instead), ``target`` text, ``token_ids``, ``tokens``
  (strings) and ``offsets`` (character spans in the target text);
* ``meta.json``: model, data, scorer, preconditioner and parameters.

The INFLUENCE loss reads them through :func:`load_token_weights`, which refuses files made for
other data (another tokenizer, split or task) instead of silently misaligning tokens.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from npo_lib.config import Config
from npo_lib.data.views import IGNORE_INDEX, document_source, is_document, view_text
from npo_lib.errors import ConfigError
from npo_lib.influence.ground_truth import fact_token_matrix
from npo_lib.influence.selection import needs_facts, token_weights, word_ids
from npo_lib.models.families import get_family
from npo_lib.utils.io import atomic_file, atomic_write_json, write_jsonl

SCORES_FILE, TOKENS_FILE, META_FILE = "scores.safetensors", "tokens.jsonl", "meta.json"


def target_token_ids(example_view: dict[str, Any]) -> list[int]:
    """Token ids of an encoded view's target (labels != -100, EOS included)."""
    return [int(t) for t in example_view["labels"] if t != IGNORE_INDEX]


def token_manifest(dataset: Any, view: str, tokenizer: Any, tags: Any) -> list[dict]:
    """The ``tokens.jsonl`` rows of a forget dataset: what each score row refers to."""
    rows = []
    for i in range(len(dataset)):
        enc, rec = dataset[i][view], dataset.forget[i]
        ids = target_token_ids(enc)
        head = document_source(rec) if is_document(rec) else {"question": rec["question"]}
        rows.append(
            {
                "index": i,
                **head,
                "target": view_text(rec, view, tags, tokenizer=tokenizer)[1],
                "token_ids": ids,
                "tokens": tokenizer.convert_ids_to_tokens(ids),
                "offsets": [list(o) for o in enc["target_offsets"]],
            }
        )
    return rows


def write_influence_files(
    folder: str | Path, scores: Sequence[Sequence[float]], tokens: Sequence[dict], meta: dict
) -> Path:
    """Write the three files; ``scores[i]`` has one value per target token of example i."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lengths = torch.tensor([len(s) for s in scores], dtype=torch.long)
    padded = torch.zeros(len(scores), int(lengths.max()) if len(scores) else 0, dtype=torch.float32)
    for i, s in enumerate(scores):
        padded[i, : len(s)] = torch.as_tensor(s, dtype=torch.float32)
    with atomic_file(folder / SCORES_FILE) as tmp:
        save_file({"scores": padded, "lengths": lengths}, str(tmp))
    write_jsonl(folder / TOKENS_FILE, tokens)
    atomic_write_json(folder / META_FILE, meta)  # last: its presence marks a complete folder
    return folder


def read_influence_files(folder: str | Path) -> tuple[Tensor, Tensor, list[dict], dict]:
    """(scores (N, T), lengths (N,), tokens per example, meta); missing files are named."""
    folder = Path(folder)
    for name in (SCORES_FILE, TOKENS_FILE, META_FILE):
        if not (folder / name).is_file():
            raise ConfigError(
                f"influence file not found: {folder / name} (made by `npo influence`)"
            )
    t = load_file(str(folder / SCORES_FILE))
    tokens = [
        json.loads(line) for line in (folder / TOKENS_FILE).read_text().splitlines() if line.strip()
    ]
    return t["scores"], t["lengths"], tokens, json.loads((folder / META_FILE).read_text())


def load_token_weights(cfg: Config, folder: str | Path, dataset: Any, view: str) -> Tensor:
    """INFLUENCE weights ``(N, T_max)`` aligned with each example's unshifted ``view`` labels.

    Selection follows ``cfg.selection`` (a control without ``selection.seed`` draws with the
    run's ``seed``; ``oracle`` reads the records' ``fact_spans``); weights are ``cfg.w_selected`` /
    ``cfg.w_other``.
    """
    scores, lengths, tokens, _ = read_influence_files(folder)
    n = len(dataset)
    if scores.shape[0] != n or len(tokens) != n:
        raise ConfigError(
            f"influence scores in {folder} cover {scores.shape[0]} examples, the forget set "
            f"({cfg.split}, task {cfg.task_id}) has {n}: made for another split or task? "
            "Run `npo influence` again"
        )
    for i in range(n):
        ids = target_token_ids(dataset[i][view])
        if tokens[i]["token_ids"] != ids or int(lengths[i]) != len(ids):
            raise ConfigError(
                f"influence scores in {folder} do not match the training data at example {i} "
                f"(question '{tokens[i].get('question', '')[:60]}'): other tokenizer, split, "
                "task or max_length? Run `npo influence` again with the same settings"
            )
    words = [word_ids(t["offsets"], t["target"]) for t in tokens]
    selection = (
        cfg.selection if cfg.selection.seed is not None else replace(cfg.selection, seed=cfg.seed)
    )
    facts = None
    if needs_facts(selection):
        tags = get_family(cfg.model_family).tags
        facts = fact_token_matrix(
            [dataset.forget[i] for i in range(n)],
            [t["offsets"] for t in tokens],
            view,
            tags,
            scores.shape[1],
        )
    _, weights = token_weights(
        scores,
        lengths,
        selection,
        w_selected=cfg.w_selected,
        w_other=cfg.w_other,
        words=words,
        facts=facts,
    )
    t_max = max(len(dataset[i][view]["input_ids"]) for i in range(n))
    out = torch.zeros(n, t_max)  # (N, T_max), unshifted label frame
    for i in range(n):
        start = dataset[i][view]["prompt_len"]
        out[i, start : start + int(lengths[i])] = weights[i, : int(lengths[i])]
    return out
