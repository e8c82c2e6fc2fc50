"""``npo influence``: per-token influence scores of the forget split, the input of INFLUENCE.

    npo influence [params.yaml ...] [key=value ...] [--auroc-table]
    python -m npo_lib.compute_influence model_family=tiny influence.preconditioner=diagonal

Scores the INFLUENCE view of every forget record of the benchmark plug-in (TOFU's QA records,
or MUSE / WMDP document pieces of ``max_length`` tokens) with ``cfg.influence`` (scorer,
preconditioner, λ, tracked modules, JVP or finite difference, dtype) and writes
``scores.safetensors`` / ``tokens.jsonl`` / ``meta.json`` to ``folders.influence_files(cfg)``
(``influence_dir``, default ``runs/influence``), where ``npo forget`` reads them. A finished
folder made with the same model, data and scorer settings is reused; one made with other
settings is replaced only with ``overwrite=true``. Every check runs before a model loads.

On the embedded benchmark and the MUSE / WMDP stand-ins the records carry ``fact_spans``
(a document piece's spans in its text): the run also reports the AUROC of the scores against
the fact-token mask, and ``--auroc-table`` prints it for every scorer and
preconditioner without writing files.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from npo_lib.commands.checks import check_influence_settings
from npo_lib.commands.folders import saved_result
from npo_lib.commands.resolve import Resolved, as_resolved
from npo_lib.config import Config
from npo_lib.data.dataset import UnlearningDataset
from npo_lib.data.views import encode_view
from npo_lib.errors import ConfigError
from npo_lib.influence.files import (
    META_FILE,
    SCORES_FILE,
    TOKENS_FILE,
    token_manifest,
    write_influence_files,
)
from npo_lib.influence.ground_truth import auroc, fact_token_mask
from npo_lib.influence.preconditioners import PRECONDITIONERS
from npo_lib.influence.scorers import SCORERS, ScoreContext, compute_token_scores
from npo_lib.models.loading import default_device
from npo_lib.models.lora import apply_lora
from npo_lib.objectives.registry import FORGET_TERMS
from npo_lib.utils.hashing import model_fingerprint

INFLUENCE_VIEW = FORGET_TERMS["INFLUENCE"].view  # the view the scores must align with


def check_influence_config(run: Config | Resolved) -> Resolved:
    """Every check that needs no model; returns the resolved run (its ``influence_dir`` is the
    output folder)."""
    res = as_resolved(run, "influence")
    check_scorer_inputs(res)
    return res


def check_scorer_inputs(res: Resolved) -> None:
    """The scorer's settings hold, and the retain model it compares with (if any) exists."""
    scorer = check_influence_settings(res.cfg)
    if scorer.uses_retain_model and res.retain_model_path is None:
        raise ConfigError(
            f"influence.scorer={scorer.name} needs a retain model (fine-tuned without the "
            f"forget set): {res.no_retain}"
        )


# ----------------------------------------------------------------------------- inputs


@dataclass
class InfluenceInputs:
    """Tokenizer and data of one influence run (no model): what the scores refer to."""

    model_path: str
    data_path: str
    tokenizer: Any
    tags: Any
    dataset: Any  # UnlearningDataset of the forget split (INFLUENCE view)
    retain: list[dict]  # encoded retain views of the retain sample
    view: str = INFLUENCE_VIEW

    @property
    def forget(self) -> list[dict]:
        return [self.dataset[i][self.view] for i in range(len(self.dataset))]

    def fact_mask(self) -> list[bool] | None:
        """Fact-token mask over every target token of the split (None without ``fact_spans``)."""
        records = self.dataset.forget
        if not all("fact_spans" in r for r in records):
            return None
        mask = [
            m
            for i, r in enumerate(records)
            for m in fact_token_mask(r, self.forget[i]["target_offsets"], self.view, self.tags)
        ]
        return mask if any(mask) else None  # no fact token survived the cut: no AUROC


def load_inputs(
    run: Config | Resolved, *, with_retain_sample: bool | None = None
) -> InfluenceInputs:
    """Tokenizer, the benchmark's forget records and a seeded sample of its retain pool
    (``influence.retain_samples``), drawn when the scorer needs one (or when
    ``with_retain_sample`` says so)."""
    res = as_resolved(run, "influence")
    cfg, tags = res.cfg, res.tags
    model_path, data_path = res.require_model(), res.require_data()
    tokenizer = res.loader.tokenizer(model_path)
    dataset = UnlearningDataset.from_records(
        res.records("forget", tokenizer),
        tokenizer,
        tags,
        data_path=data_path,
        views=(INFLUENCE_VIEW,),
        max_length=cfg.max_length,
        seed=cfg.seed,
    )
    retain: list[dict] = []
    if with_retain_sample or (
        with_retain_sample is None and SCORERS[cfg.influence.scorer].needs_retain_sample
    ):
        records = res.records("retain", tokenizer)
        n = min(cfg.influence.retain_samples or len(dataset), len(records))
        sample = random.Random(f"influence-retain:{cfg.seed}").sample(records, n)
        retain = [encode_view(r, "retain", tokenizer, tags, cfg.max_length) for r in sample]
    return InfluenceInputs(model_path, data_path, tokenizer, tags, dataset, retain)


def influence_identity(res: Resolved, inputs: InfluenceInputs) -> dict[str, Any]:
    """What makes two score files the same numbers (compared to reuse a finished folder)."""
    cfg = res.cfg
    ic = cfg.influence
    scorer = SCORERS[ic.scorer]
    params = {
        k: v
        for k, v in dataclasses.asdict(ic).items()
        if k not in ("scorer", "preconditioner", "batch_size")
    }
    retain = res.retain_model_path if scorer.uses_retain_model else None
    return {
        "model": inputs.model_path,
        "model_fingerprint": model_fingerprint(inputs.model_path),
        "data": inputs.data_path,
        "split": cfg.split,
        "task_id": cfg.task_id,
        "view": inputs.view,
        "max_length": cfg.max_length,
        "data_hash": inputs.dataset.fingerprint(inputs.view),
        "scorer": ic.scorer,
        "quantity": scorer.quantity,
        "preconditioner": ic.preconditioner if scorer.uses_preconditioner else None,
        "parameters": {
            **params,
            "seed": cfg.seed,
            "LoRA.r": cfg.LoRA.r if ic.modules == "lora" else 0,
        },
        "retain_model": retain,
        "retain_model_fingerprint": model_fingerprint(retain) if retain else None,
    }


def reuse_or_refuse(folder: Path, identity: dict[str, Any], overwrite: bool) -> dict | None:
    """The finished folder's meta when it matches ``identity``; None when there is none (or
    ``overwrite``); an error naming the differing settings otherwise."""
    if not (folder / META_FILE).is_file():
        return None
    meta, differ = saved_result(folder / META_FILE, identity)
    complete = all((folder / f).is_file() for f in (SCORES_FILE, TOKENS_FILE))
    if meta is not None and complete:
        return meta
    if overwrite:
        return None
    what = ", ".join(differ[:4]) or "files missing"
    raise ConfigError(
        f"influence folder {folder} holds scores made with other settings ({what}): pass "
        "overwrite=true to replace them, or influence_dir=... for another folder"
    )


# ----------------------------------------------------------------------------- model and scores


def load_scoring_model(run: Config | Resolved, path: str):
    """The model in the scoring dtype, eval mode, LoRA adapters added for ``modules=lora``.

    Attention and norms run in the model's dtype (:mod:`npo_lib.models.attention`): forward-mode
    AD passes (fused SDPA has no JVP) and float64 stays float64 (HF rounds both through float32).
    """
    import torch

    from npo_lib.models.attention import precise_norms, register_precise_attention

    res = as_resolved(run, "influence")
    cfg = res.cfg
    dtype = getattr(torch, cfg.influence.dtype)
    model = res.loader.model(
        path, device=default_device(), attn_implementation=register_precise_attention()
    ).to(dtype)
    precise_norms(model)
    if cfg.influence.modules == "lora":
        torch.manual_seed(cfg.seed)  # lora_A's random init enters the scores: keep it seeded
        model = apply_lora(model, cfg.LoRA).to(dtype)
    return model.eval()


def score_context(
    run: Config | Resolved,
    model: Any,
    inputs: InfluenceInputs,
    progress: bool,
    retain_cache: dict | None = None,
) -> ScoreContext:
    """What the scorer reads; the retain model (contrast) loads on first use, kept in
    ``retain_cache``."""
    res = as_resolved(run, "influence")
    cfg = res.cfg
    cache = {} if retain_cache is None else retain_cache

    def retain_model():
        if "model" not in cache:
            if res.retain_model_path is None:
                raise ConfigError(
                    f"influence.scorer={cfg.influence.scorer} needs a retain model: {res.no_retain}"
                )
            bare = dataclasses.replace(cfg, LoRA=dataclasses.replace(cfg.LoRA, r=0))
            cache["model"] = load_scoring_model(res.with_settings(bare), res.retain_model_path)
        return cache["model"]

    return ScoreContext(
        model,
        inputs.forget,
        inputs.retain,
        cfg.influence,
        inputs.tokenizer.pad_token_id,
        retain_model,
        progress,
    )


def run_influence(run: Config | Resolved, *, progress: bool = True) -> dict[str, Any]:
    """Score the forget split with ``cfg.influence`` and write the INFLUENCE files; ``run`` is
    the config or, resolved where it entered, the :class:`Resolved` run.

    Returns a summary: ``folder``, ``reused`` (a matching finished folder was kept),
    ``scorer``, ``preconditioner``, ``quantity``, ``n_examples``, ``n_tokens``, ``seconds``
    (scoring, model load excluded) and ``auroc`` (scores vs the fact-token mask; None when the
    data has no ``fact_spans``). The scores themselves:
    ``influence.files.read_influence_files(folder)``.
    """
    import torch

    res = check_influence_config(run)
    cfg, folder = res.cfg, res.influence_dir
    inputs = load_inputs(res)
    identity = influence_identity(res, inputs)
    keys = ("scorer", "preconditioner", "quantity", "n_examples", "n_tokens", "seconds", "auroc")
    old = reuse_or_refuse(folder, identity, cfg.overwrite)
    if old is not None:
        summary = {"folder": str(folder), "reused": True, **{k: old.get(k) for k in keys}}
        if progress:
            print(json.dumps(summary, indent=2))
        return summary
    model = load_scoring_model(res, inputs.model_path)
    ctx = score_context(res, model, inputs, progress)
    t0 = time.perf_counter()
    rows = compute_token_scores(ctx)
    seconds = time.perf_counter() - t0
    mask = inputs.fact_mask()
    flat = torch.cat(rows)
    meta = {
        **identity,
        "n_examples": len(rows),
        "n_tokens": int(flat.numel()),
        "seconds": round(seconds, 3),
        "auroc": auroc(flat, mask) if mask is not None else None,
        "info": ctx.info,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_influence_files(
        folder,
        [r.tolist() for r in rows],
        token_manifest(inputs.dataset, inputs.view, inputs.tokenizer, inputs.tags),
        meta,
    )
    summary = {"folder": str(folder), "reused": False, **{k: meta[k] for k in keys}}
    if progress:
        print(json.dumps(summary, indent=2))
    return summary


def default_combos() -> list[tuple[str, str | None]]:
    """Every scorer x preconditioner the table compares (optional scorers only when installed)."""
    combos: list[tuple[str, str | None]] = []
    for name, scorer in SCORERS.items():
        if scorer.requires and importlib.util.find_spec(scorer.requires) is None:
            continue
        if name == "differential":
            combos += [(name, p) for p in PRECONDITIONERS]
        else:
            combos.append((name, "ekfac" if scorer.uses_preconditioner else None))
    return combos


def auroc_table(
    run: Config | Resolved,
    combos: Sequence[tuple[str, str | None]] | None = None,
    *,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """AUROC of each (scorer, preconditioner)'s scores against the fact-token mask, one model
    load.

    Rows: ``scorer``, ``preconditioner``, ``auroc``, ``seconds``, ``note`` (why a row was
    skipped). Other settings come from ``cfg.influence``; nothing is written.
    """
    import torch

    res = as_resolved(run, "influence")
    cfg = res.cfg
    inputs = load_inputs(res, with_retain_sample=True)
    mask = inputs.fact_mask()
    if mask is None:
        raise ConfigError(
            f"the forget records of {inputs.data_path} have no fact_spans: the AUROC needs the "
            "embedded benchmark"
        )
    model = load_scoring_model(res, inputs.model_path)
    retain_cache: dict = {}
    rows = []
    for scorer, pre in combos or default_combos():
        ic = dataclasses.replace(
            cfg.influence, scorer=scorer, preconditioner=pre or cfg.influence.preconditioner
        )
        c = res.with_settings(dataclasses.replace(cfg, influence=ic))
        row: dict[str, Any] = {
            "scorer": scorer,
            "preconditioner": pre if SCORERS[scorer].uses_preconditioner else None,
            "auroc": None,
            "seconds": None,
            "note": "",
        }
        try:
            check_scorer_inputs(c)
        except ConfigError as e:
            row["note"] = str(e).split(":")[0]
            rows.append(row)
            continue
        t0 = time.perf_counter()
        scores = compute_token_scores(score_context(c, model, inputs, False, retain_cache))
        row["seconds"] = round(time.perf_counter() - t0, 2)
        row["auroc"] = auroc(torch.cat(scores), mask)
        rows.append(row)
        if progress:
            shown = row["preconditioner"] or "-"
            print(
                f"  {scorer} {shown}: AUROC {row['auroc']:.3f} ({row['seconds']} s)",
                file=sys.stderr,
            )
    return rows


def format_auroc_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table of :func:`auroc_table` rows."""
    lines = ["| scorer | preconditioner | AUROC (fact tokens) | seconds |", "|---|---|---|---|"]
    for r in rows:
        value = f"{r['auroc']:.3f}" if r["auroc"] is not None else f"skipped: {r['note']}"
        seconds = r["seconds"] if r["seconds"] is not None else "-"
        lines.append(f"| {r['scorer']} | {r['preconditioner'] or '-'} | {value} | {seconds} |")
    return "\n".join(lines)
