"""``npo influence``: per-token influence scores of the forget split, the input of INFLUENCE.

    npo influence [params.yaml ...] [key=value ...] [--auroc-table]
    python -m npo_lib.compute_influence model_family=tiny influence.preconditioner=diagonal

Scores the INFLUENCE view of every forget example with ``cfg.influence`` (scorer,
preconditioner, λ, tracked modules, JVP or finite difference, dtype) and writes
``scores.safetensors`` / ``tokens.jsonl`` / ``meta.json`` to ``forget.influence_files(cfg)``
(``influence_dir``, default ``runs/influence``), where ``npo forget`` reads them. A finished
folder made with the same model, data and scorer settings is reused; one made with other
settings is replaced only with ``overwrite=true``. Every check runs before a model loads.

On the embedded benchmark the records carry ``fact_spans``: the run also reports the AUROC of
the scores against the fact-token mask, and ``--auroc-table`` prints it for every scorer and
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

from npo_lib.config import INFLUENCE_PRECONDITIONERS, Config, ConfigError, validate
from npo_lib.forget import influence_files

INFLUENCE_VIEW = "full"  # the INFLUENCE loss term's view (losses.FORGET_TERMS["INFLUENCE"].view)


def retain_model_path(cfg: Config) -> str | None:
    """The contrast scorer's retain model: ``influence.retain_model_path``, else the embedded
    retain model of the tiny family when it is prepared, else None."""
    from npo_lib.embedded import embedded_paths
    from npo_lib.families import get_family

    if cfg.influence.retain_model_path:
        return str(Path(cfg.influence.retain_model_path).expanduser())
    if get_family(cfg.model_family).hub_id is None and cfg.data_path is None:
        retain = embedded_paths(cfg).retain
        if (retain / "config.json").is_file():
            return str(retain)
    return None


def check_influence_config(cfg: Config) -> Path:
    """Every check that needs no model; returns the output folder."""
    validate(cfg)
    ic = cfg.influence
    if ic.modules == "lora" and cfg.LoRA.r <= 0:
        raise ConfigError("influence.modules=lora tracks LoRA adapters: set LoRA.r > 0 (or another influence.modules)")
    if ic.scorer == "kronfluence" and importlib.util.find_spec("kronfluence") is None:
        raise ConfigError(
            "influence.scorer=kronfluence needs the optional package kronfluence, which is not installed: "
            "pip install kronfluence (or the project's extra: pip install -e '.[influence]'); "
            "the built-in scorers (differential, gradient_dot, contrast) need nothing more"
        )
    if ic.scorer == "kronfluence" and ic.modules == "lora":
        raise ConfigError("influence.scorer=kronfluence tracks the base model's Linear layers: use another influence.modules")
    if ic.scorer == "contrast":
        path = retain_model_path(cfg)
        if path is None:
            raise ConfigError(
                "influence.scorer=contrast needs a retain model (fine-tuned without the forget set): pass "
                "influence.retain_model_path=<folder>, or run `npo prepare` for the embedded one"
            )
        if not (Path(path) / "config.json").is_file():
            raise ConfigError(f"influence.retain_model_path folder not found or not a model: {path}")
    return influence_files(cfg)


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
        from npo_lib.influence_scores import fact_token_mask

        records = self.dataset.forget
        if not all("fact_spans" in r for r in records):
            return None
        return [m for i, r in enumerate(records) for m in fact_token_mask(r, self.forget[i]["target_offsets"], self.view, self.tags)]


def load_inputs(cfg: Config) -> InfluenceInputs:
    """Tokenizer, forget split and the seeded retain sample (``influence.retain_samples``)."""
    from npo_lib.data import UnlearningDataset, encode_view, load_retain
    from npo_lib.embedded import resolve_data_path
    from npo_lib.families import get_family, load_tokenizer, resolve_model_path

    model_path, data_path = resolve_model_path(cfg), resolve_data_path(cfg)
    tokenizer = load_tokenizer(cfg, model_path)
    tags = get_family(cfg.model_family).tags
    dataset = UnlearningDataset.from_files(data_path, cfg.split, cfg.task_id, tokenizer, tags,
                                           views=(INFLUENCE_VIEW,), max_length=cfg.max_length, seed=cfg.seed)
    retain: list[dict] = []
    if cfg.influence.scorer in ("differential", "kronfluence"):
        records = load_retain(data_path, cfg.split, cfg.task_id)
        n = min(cfg.influence.retain_samples or len(dataset), len(records))
        sample = random.Random(f"influence-retain:{cfg.seed}").sample(records, n)
        retain = [encode_view(r, "retain", tokenizer, tags, cfg.max_length) for r in sample]
    return InfluenceInputs(model_path, data_path, tokenizer, tags, dataset, retain)


def influence_identity(cfg: Config, inputs: InfluenceInputs) -> dict[str, Any]:
    """What makes two score files the same numbers (compared to reuse a finished folder)."""
    from npo_lib.evaluate import model_fingerprint
    from npo_lib.forget import _data_fingerprint
    from npo_lib.influence_scores import SCORERS

    ic = cfg.influence
    scorer = SCORERS[ic.scorer]
    params = {k: v for k, v in dataclasses.asdict(ic).items() if k not in ("scorer", "preconditioner", "batch_size", "retain_model_path")}
    retain = retain_model_path(cfg) if scorer.uses_retain_model else None
    return {
        "model": inputs.model_path,
        "model_fingerprint": model_fingerprint(inputs.model_path),
        "data": inputs.data_path,
        "split": cfg.split,
        "task_id": cfg.task_id,
        "view": inputs.view,
        "max_length": cfg.max_length,
        "data_hash": _data_fingerprint(inputs.dataset, inputs.view),
        "scorer": ic.scorer,
        "quantity": scorer.quantity,
        "preconditioner": ic.preconditioner if scorer.uses_preconditioner else None,
        "parameters": {**params, "seed": cfg.seed, "LoRA.r": cfg.LoRA.r if ic.modules == "lora" else 0},
        "retain_model": retain,
        "retain_model_fingerprint": model_fingerprint(retain) if retain else None,
    }


def _flat(d: dict[str, Any], keys: dict[str, Any] | None = None) -> dict[str, Any]:
    """``d`` restricted to the keys of ``keys`` (default: its own), nested dicts as dotted keys."""
    out: dict[str, Any] = {}
    for k in keys if keys is not None else d:
        v, ref = d.get(k), (keys or d)[k]
        if isinstance(ref, dict):
            out.update({f"{k}.{kk}": vv for kk, vv in _flat(v if isinstance(v, dict) else {}, ref).items()})
        else:
            out[k] = v
    return out


def _reuse_or_refuse(folder: Path, identity: dict[str, Any], overwrite: bool) -> dict | None:
    """The finished folder's meta when it matches ``identity``; an error when it differs."""
    from npo_lib.influence import META_FILE, SCORES_FILE, TOKENS_FILE

    if not (folder / META_FILE).is_file():
        return None
    try:
        meta = json.loads((folder / META_FILE).read_text())
    except json.JSONDecodeError:
        meta = {}
    complete = all((folder / f).is_file() for f in (SCORES_FILE, TOKENS_FILE))
    old, new = _flat(meta, identity), _flat(identity)
    differ = [k for k in new if old.get(k) != new[k]]
    if complete and not differ:
        return meta
    if overwrite:
        return None
    what = ", ".join(f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in differ[:4]) or "files missing"
    raise ConfigError(
        f"influence folder {folder} holds scores made with other settings ({what}): pass overwrite=true "
        "to replace them, or influence_dir=... for another folder"
    )


# ----------------------------------------------------------------------------- model and scores


def _dtype(cfg: Config):
    import torch

    return getattr(torch, cfg.influence.dtype)


def load_scoring_model(cfg: Config, path: str):
    """The model in the scoring dtype, eval mode, LoRA adapters added for ``modules=lora``.

    Attention and norms run in the model's dtype (:func:`~npo_lib.influence_scores.precise_eager_attention`,
    :func:`~npo_lib.influence_scores.precise_norms`): forward-mode AD passes (fused SDPA has no
    JVP) and float64 stays float64 (HF rounds both through float32).
    """
    import torch

    from npo_lib.families import default_device, load_model
    from npo_lib.influence_scores import precise_norms, register_precise_attention

    attention = register_precise_attention()
    model = load_model(cfg, path, device=default_device(), attn_implementation=attention).to(_dtype(cfg))
    precise_norms(model)
    if cfg.influence.modules == "lora":
        from npo_lib.forget import _apply_lora

        torch.manual_seed(cfg.seed)  # lora_A's random init enters the scores: keep it seeded
        model = _apply_lora(cfg, model).to(_dtype(cfg))
    return model.eval()


def _context(cfg: Config, model, inputs: InfluenceInputs, progress: bool, retain_cache: dict | None = None):
    from npo_lib.influence_scores import ScoreContext

    cache = {} if retain_cache is None else retain_cache

    def retain_model():
        if "model" not in cache:
            cache["model"] = load_scoring_model(dataclasses.replace(cfg, LoRA=dataclasses.replace(cfg.LoRA, r=0)), retain_model_path(cfg))
        return cache["model"]

    return ScoreContext(model, inputs.forget, inputs.retain, cfg.influence, inputs.tokenizer.pad_token_id,
                        retain_model, progress)


def run_influence(cfg: Config, *, progress: bool = True) -> dict[str, Any]:
    """Score the forget split with ``cfg.influence`` and write the INFLUENCE files.

    Returns a summary: ``folder``, ``reused`` (a matching finished folder was kept),
    ``scorer``, ``preconditioner``, ``quantity``, ``n_examples``, ``n_tokens``, ``seconds``
    (scoring, model load excluded) and ``auroc`` (scores vs the fact-token mask; None when the
    data has no ``fact_spans``). The scores themselves: ``influence.read_influence_files(folder)``.
    """
    folder = check_influence_config(cfg)
    inputs = load_inputs(cfg)
    identity = influence_identity(cfg, inputs)
    keys = ("scorer", "preconditioner", "quantity", "n_examples", "n_tokens", "seconds", "auroc")
    old = _reuse_or_refuse(folder, identity, cfg.overwrite)
    if old is not None:
        summary = {"folder": str(folder), "reused": True, **{k: old.get(k) for k in keys}}
        if progress:
            print(json.dumps(summary, indent=2))
        return summary

    import torch

    from npo_lib.influence import token_manifest, write_influence_files
    from npo_lib.influence_scores import auroc, compute_token_scores

    model = load_scoring_model(cfg, inputs.model_path)
    ctx = _context(cfg, model, inputs, progress)
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
    write_influence_files(folder, [r.tolist() for r in rows], token_manifest(inputs.dataset, inputs.view, inputs.tokenizer, inputs.tags), meta)
    summary = {"folder": str(folder), "reused": False, **{k: meta[k] for k in keys}}
    if progress:
        print(json.dumps(summary, indent=2))
    return summary


def default_combos() -> list[tuple[str, str | None]]:
    """Every scorer x preconditioner the table compares (kronfluence only when installed)."""
    combos: list[tuple[str, str | None]] = [("differential", p) for p in INFLUENCE_PRECONDITIONERS]
    combos += [("gradient_dot", None), ("contrast", None)]
    if importlib.util.find_spec("kronfluence") is not None:
        combos.append(("kronfluence", "ekfac"))
    return combos


def auroc_table(cfg: Config, combos: Sequence[tuple[str, str | None]] | None = None, *, progress: bool = True) -> list[dict[str, Any]]:
    """AUROC of each (scorer, preconditioner)'s scores against the fact-token mask, one model load.

    Rows: ``scorer``, ``preconditioner``, ``auroc``, ``seconds``, ``note`` (why a row was skipped).
    Other settings come from ``cfg.influence``; nothing is written.
    """
    import torch

    from npo_lib.influence_scores import SCORERS, auroc, compute_token_scores

    base = dataclasses.replace(cfg, influence=dataclasses.replace(cfg.influence, scorer="differential"))
    check_influence_config(base)
    inputs = load_inputs(base)  # with the retain sample
    mask = inputs.fact_mask()
    if mask is None:
        raise ConfigError(f"the forget records of {inputs.data_path} have no fact_spans: the AUROC needs the embedded benchmark")
    model = load_scoring_model(cfg, inputs.model_path)
    retain_cache: dict = {}
    rows = []
    for scorer, pre in combos or default_combos():
        ic = dataclasses.replace(cfg.influence, scorer=scorer, preconditioner=pre or cfg.influence.preconditioner)
        c = dataclasses.replace(cfg, influence=ic)
        row: dict[str, Any] = {"scorer": scorer, "preconditioner": pre if SCORERS[scorer].uses_preconditioner else None,
                               "auroc": None, "seconds": None, "note": ""}
        try:
            check_influence_config(c)
        except ConfigError as e:
            row["note"] = str(e).split(":")[0]
            rows.append(row)
            continue
        t0 = time.perf_counter()
        scores = compute_token_scores(_context(c, model, inputs, False, retain_cache))
        row["seconds"] = round(time.perf_counter() - t0, 2)
        row["auroc"] = auroc(torch.cat(scores), mask)
        rows.append(row)
        if progress:
            print(f"  {scorer} {row['preconditioner'] or '-'}: AUROC {row['auroc']:.3f} ({row['seconds']} s)", file=sys.stderr)
    return rows


def format_auroc_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table of :func:`auroc_table` rows."""
    lines = ["| scorer | preconditioner | AUROC (fact tokens) | seconds |", "|---|---|---|---|"]
    for r in rows:
        value = f"{r['auroc']:.3f}" if r["auroc"] is not None else f"skipped: {r['note']}"
        lines.append(f"| {r['scorer']} | {r['preconditioner'] or '-'} | {value} | {r['seconds'] if r['seconds'] is not None else '-'} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m npo_lib.compute_influence [params.yaml ...] [key=value ...]``."""
    from npo_lib.cli import main as cli_main

    return cli_main(["influence", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
