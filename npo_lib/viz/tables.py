"""Token tables: a forget example's target tokens as displayed text, its fact mask, and named
per-token score rows (influence, selection weight, Δ log-prob from target to unlearned model).

Built from an influence folder (:func:`tables_from_influence`, with the selection weights) or a
dataset (:func:`tables_from_dataset`); :func:`delta_logprobs` gives the per-token change of
log-prob for :func:`add_score`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from npo_lib.config import SelectionConfig
from npo_lib.influence.files import read_influence_files, token_manifest
from npo_lib.influence.ground_truth import fact_token_mask
from npo_lib.influence.selection import token_weights, word_ids
from npo_lib.objectives.reference import ReferenceLogprobs, compute_reference_logprobs

if TYPE_CHECKING:
    from npo_lib.models.families import ChatTags


@dataclass(frozen=True)
class ScoreSpec:
    """How a score row is named in legends, hover titles and axes."""

    label: str
    help: str
    selection: bool = False  # token weights of a loss (drawn as w / max w), not a signed score


# Score rows the builders of this module make; other names work too (labelled by their name).
SCORES: dict[str, ScoreSpec] = {
    "influence": ScoreSpec(
        "influence score", "the scorer's per-token influence (influence folder)"
    ),
    "weight": ScoreSpec(
        "selection weight", "the INFLUENCE loss's token weight after selection", selection=True
    ),
    "delta_logp": ScoreSpec("Δ log p (unlearned − target)", "change of the token's log-prob"),
}


def score_label(name: str) -> str:
    return SCORES[name].label if name in SCORES else name


def is_selection(name: str) -> bool:
    """Whether the row ``name`` holds a loss's token weights (the tokens actually trained on)."""
    return name in SCORES and SCORES[name].selection


# Byte-level BPE markers of raw token pieces, shown as the characters they stand for.
_PIECE_MARKS = {"Ġ": " ", "Ċ": "\n", "▁": " "}


def display_tokens(text: str, offsets: Sequence[Sequence[int]], raw: Sequence[str]) -> list[str]:
    """Each token as the text it covers (``text[start:end]``), so byte-level pieces ('Ġthe')
    read as written; a token without a span of its own (EOS, the tail of a character split
    over two tokens) shows its raw piece."""
    out, cursor = [], 0
    for (s, e), piece in zip(offsets, raw, strict=True):
        s = max(s, cursor)
        if e > s:
            out.append(text[s:e])
            cursor = e
        else:
            out.append("".join(_PIECE_MARKS.get(c, c) for c in piece))
    return out


def _row(name: str, values: Any, n: int) -> np.ndarray:
    row = np.asarray(values, dtype=np.float64).reshape(-1)
    if row.shape[0] != n:
        raise ValueError(f"score '{name}' has {row.shape[0]} values for {n} tokens")
    return row


@dataclass
class TokenTable:
    """One forget example's target tokens with named per-token score rows.

    ``tokens[i]`` is what token i shows, ``offsets[i]`` its character span in ``target``
    (``(len, len)`` for EOS), ``fact[i]`` whether it is part of the fact value, and
    ``scores[name]`` an ``(n,)`` float array per score.
    """

    index: int
    question: str
    target: str
    tokens: list[str]
    offsets: list[tuple[int, int]]
    fact: list[bool]
    scores: dict[str, np.ndarray] = field(default_factory=dict)
    source: str = ""  # a document piece's origin (file · document · character), no question

    def __post_init__(self) -> None:
        n = len(self.tokens)
        if len(self.offsets) != n or len(self.fact) != n:
            raise ValueError(
                f"example {self.index}: {n} tokens, {len(self.offsets)} offsets, "
                f"{len(self.fact)} fact flags"
            )
        self.offsets = [(int(s), int(e)) for s, e in self.offsets]
        self.scores = {k: _row(k, v, n) for k, v in self.scores.items()}

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def title(self) -> str:
        """What names the example: its question, or a document piece's source."""
        return self.question or self.source

    def add(self, name: str, values: Any) -> None:
        """Add (or replace) the score row ``name``; it needs one value per token."""
        self.scores[name] = _row(name, values, len(self))


def table_from_row(
    row: Mapping[str, Any],
    record: Mapping[str, Any] | None = None,
    scores: Mapping[str, Any] | None = None,
    *,
    view: str = "full",
    tags: ChatTags | None = None,
) -> TokenTable:
    """A table from a ``tokens.jsonl`` row (:func:`npo_lib.influence.token_manifest`).

    The fact mask comes from the forget ``record``'s ``fact_spans`` placed in the ``view``'s
    target (:func:`npo_lib.influence.ground_truth.fact_token_mask`, the scorers' AUROC ground
    truth); all False without a record or for records without ``fact_spans`` (plain TOFU /
    R-TOFU).
    """
    text, raw = row["target"], list(row["tokens"])
    offsets = [tuple(o) for o in row["offsets"]] or [(0, 0)] * len(raw)  # slow tokenizers: none
    if record is not None and tags is None:
        raise ValueError(
            "a fact mask needs the family's chat tags: pass tags=get_family(cfg.model_family).tags"
        )
    fact = (
        fact_token_mask(record, offsets, view, tags) if record is not None else [False] * len(raw)
    )
    return TokenTable(
        index=int(row["index"]),
        question=row.get("question", ""),
        target=text,
        tokens=display_tokens(text, offsets, raw),
        offsets=offsets,
        fact=fact,
        scores=dict(scores or {}),
        source=source_label(row),
    )


def source_label(row: Mapping[str, Any]) -> str:
    """'raw/forget · document 3 · from character 120' for a document piece's ``tokens.jsonl``
    row; '' for a QA example."""
    if not row.get("source"):
        return ""
    return f"{row['source']} · document {row.get('doc')} · from character {row.get('start')}"


def _check_records(
    rows: Sequence[Mapping[str, Any]], records: Sequence[Mapping[str, Any]] | None, where: str
) -> None:
    if records is None:
        return
    if len(records) != len(rows):
        raise ValueError(f"{where} covers {len(rows)} examples, {len(records)} records given")
    for row, rec in zip(rows, records):
        if "source" in row and row.get("target") != rec.get("text"):
            raise ValueError(
                f"{where}: piece {row['index']} ({source_label(row)}) is not the text of the "
                "record given for it: other data or max_length?"
            )
        if row.get("question") not in (None, rec.get("question")):
            raise ValueError(
                f"{where}: example {row['index']} is about '{row['question'][:60]}', the record "
                f"given for it about '{str(rec.get('question'))[:60]}': other split or task?"
            )


def tables_from_influence(
    folder: str | Path,
    records: Sequence[Mapping[str, Any]] | None = None,
    *,
    tags: ChatTags | None = None,
    view: str = "full",
    selection: SelectionConfig | None = None,
    w_selected: float | None = None,
    w_other: float | None = None,
) -> list[TokenTable]:
    """Tables of an influence folder: the ``influence`` row, and the ``weight`` row the INFLUENCE
    loss would use under ``selection`` (pass ``cfg.selection, cfg.w_selected, cfg.w_other``).

    ``records``: the forget records the scores were made for (``dataset.forget``), in the files'
    order (checked by question), with the family's ``tags`` and the scored ``view``: the fact mask.
    """
    import torch

    scores, lengths, rows, _ = read_influence_files(folder)
    _check_records(rows, records, f"influence files in {folder}")
    weights = None
    if selection is not None:
        if w_selected is None or w_other is None:
            raise ValueError(
                "a selection needs its weights: pass w_selected=cfg.w_selected, w_other=cfg.w_other"
            )
        words = [word_ids(r["offsets"], r["target"]) for r in rows]
        _, weights = token_weights(
            scores, lengths, selection, w_selected=w_selected, w_other=w_other, words=words
        )
    tables = []
    for i, row in enumerate(rows):
        n = int(lengths[i])
        row_scores: dict[str, Any] = {"influence": scores[i, :n].to(torch.float64).numpy()}
        if weights is not None:
            row_scores["weight"] = weights[i, :n].to(torch.float64).numpy()
        rec = records[i] if records is not None else None
        tables.append(table_from_row(row, rec, row_scores, view=view, tags=tags))
    return tables


def tables_from_dataset(
    dataset: Any, tokenizer: Any, tags: ChatTags, view: str = "full"
) -> list[TokenTable]:
    """Tables (no scores yet) of every forget example of an
    :class:`~npo_lib.data.dataset.UnlearningDataset` under ``view``, with fact masks from its
    records."""
    rows = token_manifest(dataset, view, tokenizer, tags)
    return [
        table_from_row(row, rec, view=view, tags=tags) for row, rec in zip(rows, dataset.forget)
    ]


def add_score(tables: Sequence[TokenTable], name: str, rows: Sequence[Any]) -> list[TokenTable]:
    """Add the score row ``name`` to every table (``rows[i]`` for table i); returns the tables."""
    if len(rows) != len(tables):
        raise ValueError(f"{len(rows)} rows of '{name}' for {len(tables)} tables")
    for t, r in zip(tables, rows):
        t.add(name, r)
    return list(tables)


def reference_rows(ref: ReferenceLogprobs, dataset: Any, view: str = "full") -> list[np.ndarray]:
    """Per example, log p of each target token, cut from an ``(N, T_max - 1)`` shifted-frame
    cache (:func:`npo_lib.objectives.reference.compute_reference_logprobs`, a run's
    ``ref_logprobs``)."""
    out = []
    for i in range(len(dataset)):
        enc = dataset[i][view]
        p, n = enc["prompt_len"], len(enc["input_ids"]) - enc["prompt_len"]
        out.append(ref.token[i, p - 1 : p - 1 + n].double().numpy())  # logits at t-1 predict t
    return out


def target_logprobs(
    model: Any,
    dataset: Any,
    view: str = "full",
    *,
    pad_token_id: int,
    batch_size: int = 8,
    progress: bool = False,
) -> list[np.ndarray]:
    """Per forget example, ``log p_model`` of each target token (batched, no grad)."""
    ref = compute_reference_logprobs(
        model,
        dataset,
        view,
        pad_token_id=pad_token_id,
        batch_size=batch_size,
        fingerprint="",
        progress=progress,
    )
    return reference_rows(ref, dataset, view)


def delta_logprobs(
    target: Any,
    unlearned: Any,
    dataset: Any,
    view: str = "full",
    *,
    pad_token_id: int,
    batch_size: int = 8,
    progress: bool = False,
) -> list[np.ndarray]:
    """Per forget example, ``log p_unlearned(y_t) − log p_target(y_t)`` of each target token.

    ``target`` is the model before unlearning, or a run's cached
    :class:`~npo_lib.objectives.reference.ReferenceLogprobs` (its log-probs of the same ``view``).
    Negative where unlearning pushed a token down: the row to colour as ``delta_logp``.
    """
    kw = {"pad_token_id": pad_token_id, "batch_size": batch_size, "progress": progress}
    before = (
        reference_rows(target, dataset, view)
        if isinstance(target, ReferenceLogprobs)
        else target_logprobs(target, dataset, view, **kw)
    )
    after = target_logprobs(unlearned, dataset, view, **kw)
    return [a - b for a, b in zip(after, before, strict=True)]
