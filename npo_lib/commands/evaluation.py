"""``npo eval``: every metric of one model, written as ``<run>/eval/metrics.json``, reused when its
inputs have not changed, forget quality and privleak against the retain model (evaluated once).
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from npo_lib.commands.folders import saved_result
from npo_lib.commands.resolve import Resolved, resolve
from npo_lib.config import Config, EvalConfig
from npo_lib.embedded.paths import resolve_model_path
from npo_lib.errors import EvalError
from npo_lib.eval.compute import EvalData, eval_identity
from npo_lib.eval.registry import metrics_for
from npo_lib.eval.robustness import AttackContext, run_attacks
from npo_lib.models.loading import check_tokenizer, default_device, resolve_dtype
from npo_lib.utils import dist
from npo_lib.utils.hashing import fingerprint, model_fingerprint
from npo_lib.utils.io import atomic_write_json
from npo_lib.utils.machine import machine_info

METRICS_FILE = Path("eval") / "metrics.json"  # relative to a run folder

# Attacks that are one training run rather than per-item work: under several ranks, rank 0 runs
# the whole attack (training and probes) and sends its result to the others. Sharding the
# relearning steps would change the optimisation itself (another effective batch), and
# training a copy on every rank would only repeat the same work.
RANK0_ATTACKS = frozenset({"relearn"})


def _config_dict(cfg: Config) -> dict[str, Any]:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.structured(cfg))  # type: ignore[return-value]


def _resolved_dtype(cfg: Config) -> str:
    return str(resolve_dtype(cfg.dtype, default_device())).removeprefix("torch.")


def _identity(
    cfg: Config,
    model_path: str,
    tokenizer_path: str,
    data: EvalData,
    options: EvalConfig,
    retain: str | None,
    role: str,
) -> dict[str, Any]:
    return {
        "model_path": model_path,
        "model_fingerprint": model_fingerprint(model_path),
        "tokenizer_path": tokenizer_path,
        "tokenizer_fingerprint": model_fingerprint(tokenizer_path)
        if tokenizer_path != model_path
        else None,
        "data_path": data.data_path,
        "data_fingerprint": data.fingerprint(),
        "split": cfg.split,
        "task_id": cfg.task_id,
        "model_family": cfg.model_family,
        "max_length": cfg.max_length,
        "dtype": _resolved_dtype(cfg),  # "auto" differs by device: bf16 on GPU, fp32 on CPU
        "options": eval_identity(options),
        "role": role,
        "retain_model_path": retain,
        "retain_model_fingerprint": model_fingerprint(retain) if retain else None,
        "config": _config_dict(cfg),
    }


# Fields whose equality means "same numbers": a finished evaluation matching them is reused.
_REUSE_KEYS = (
    "model_fingerprint",
    "tokenizer_fingerprint",
    "data_fingerprint",
    "split",
    "task_id",
    "model_family",
    "max_length",
    "dtype",
    "options",
    "retain_model_fingerprint",
)


def _reusable(file: Path, identity: Mapping[str, Any], progress: bool = False) -> dict | None:
    """The saved evaluation when its identity matches on :data:`_REUSE_KEYS`; else None (and, when
    a saved one differs, a line saying what changed: it is computed again)."""
    saved, differ = saved_result(file, identity, keys=_REUSE_KEYS, identity_key="identity")
    if differ and progress:
        print(
            f"{file}: inputs changed ({'; '.join(differ[:3])}), evaluating again", file=sys.stderr
        )
    return saved


def _role(res: Resolved, model_fp: str, retain_fp: str | None) -> str:
    if retain_fp is not None and model_fp == retain_fp:
        return "retain"
    if res.embedded is not None:
        target = res.embedded.target
        if target.is_dir() and model_fingerprint(target) == model_fp:
            return "target"
    elif model_fp == model_fingerprint(res.family.hub_id or ""):
        return "target"
    return "run"


def _measure(
    res: Resolved,
    model: Any,
    tokenizer: Any,
    data: EvalData,
    options: EvalConfig,
    reference: Mapping[str, Any] | str | None,
    progress: bool,
) -> dict[str, Any]:
    """Every metric of ``model`` (sharded over the ranks), then the robustness attacks."""
    with dist.sharded():
        metrics = res.benchmark.compute(
            model,
            tokenizer,
            res.tags,
            data,
            options,
            reference=reference,
            max_length=res.cfg.max_length,
            progress=progress,
        )
        if options.robustness:
            t1 = time.perf_counter()
            ctx = AttackContext(
                model, tokenizer, res.tags, data, options, res.cfg.max_length, progress
            )
            metrics["robustness"] = {}
            for name in options.robustness:
                attack = functools.partial(run_attacks, ctx, [name])
                metrics["robustness"].update(
                    dist.on_rank0(attack) if name in RANK0_ATTACKS else attack()
                )
            metrics["seconds"]["robustness"] = time.perf_counter() - t1
    return metrics


def _run(
    res: Resolved,
    model_path: str,
    tokenizer_path: str,
    data: EvalData,
    options: EvalConfig,
    identity: dict[str, Any],
    reference: Mapping[str, Any] | str | None,
    *,
    file: Path,
    progress: bool,
) -> dict[str, Any]:
    """Load the model, compute, write ``file``.

    Under torchrun / DeepSpeed's launcher / ``npo launch`` (WORLD_SIZE > 1) every rank loads the
    model (on its own GPU), scores and decodes its share of the batches of every set, and gets
    all of them back (:func:`npo_lib.utils.dist.map_shards`); each rank computes the same
    metrics and rank 0 alone writes ``file``. The robustness attacks are sharded the same way
    (their probes and samples), except the ones in :data:`RANK0_ATTACKS`.
    """
    t0 = time.perf_counter()
    # before the model picks its GPU
    ranks = dist.world_size() if dist.ensure_process_group() else 1
    tokenizer = res.loader.tokenizer(tokenizer_path)
    model = res.loader.model(model_path)
    check_tokenizer(model, tokenizer, model_name=model_path, tokenizer_name=tokenizer_path)
    measured = _measure(
        res, model, tokenizer, data, options, reference, progress and dist.is_rank0()
    )
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # before the next model loads
    # where the numbers came from
    out = {**measured, "identity": identity, "machine": machine_info(), "ranks": ranks}
    out["seconds"] = {**measured["seconds"], "total": time.perf_counter() - t0}
    if dist.is_rank0():
        atomic_write_json(file, out, indent=1)
    dist.barrier()  # the file is there for every rank once this returns
    return json.loads(json.dumps(out, default=str))  # the same (string-keyed) form as reloaded


def eval_run(
    run: Config | Resolved, model_path: str | None = None, *, tokenizer: bool = True
) -> Resolved:
    """``run`` resolved for ``npo eval``, on ``model_path`` when given (a model folder; without
    ``tokenizer`` it need not hold a tokenizer)."""
    if isinstance(run, Resolved) and run.command == "eval":
        return run.with_model(model_path, tokenizer=tokenizer) if model_path else run
    cfg = run.cfg if isinstance(run, Resolved) else run
    return resolve(cfg, "eval", model_path=model_path, with_tokenizer=tokenizer)


def _retain_choice(
    res: Resolved, retain_reference: Mapping[str, Any] | str | None
) -> tuple[str | None, str]:
    """(the retain model forget quality and privleak compare with, or None; why there is none)."""
    if retain_reference == "auto":
        return res.retain_model_path, res.no_retain
    if isinstance(retain_reference, str):
        raise EvalError(
            f"retain_reference must be 'auto', None or a metrics mapping, got {retain_reference!r}"
        )
    return None, "retain_reference=None: no comparison asked"


def evaluate(
    run: Config | Resolved,
    model_path: str | None = None,
    *,
    out_dir: str | Path,
    recompute: bool = False,
    retain_reference: Mapping[str, Any] | str | None = "auto",
    tokenizer_path: str | None = None,
    options: EvalConfig | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate ``model_path`` (default: the run's model: ``model_path`` or the embedded
    target) on the evaluation sets of the config and write ``<out_dir>/eval/metrics.json``;
    returns its content. ``run`` is the config or its :class:`Resolved` run.

    Forget quality and privleak compare with the retain model, evaluated once per (data, split,
    task, retain model, options) and cached as ``cfg.cache_path/eval/<fingerprint>/metrics.json``
    (``recompute`` does not redo it). ``retain_reference``: ``"auto"`` uses
    ``cfg.retain_model_path``, else the embedded retain model for the embedded benchmark, else
    none; a mapping is a retain model's metrics.json already loaded; None means no comparison
    (forget quality and privleak null, the reason under ``notes``). A model whose weights are the
    retain model's is its own reference (forget quality 1, privleak 0). An earlier result with
    the same identity (model, tokenizer, data, split, task, options, retain model) is returned as
    is unless ``recompute``. ``options`` default to ``cfg.eval``.
    """
    res = eval_run(run, model_path, tokenizer=tokenizer_path is None)
    cfg, options = res.cfg, options or res.cfg.eval
    model_path = res.require_model()
    tokenizer_path = str(tokenizer_path or model_path)
    data = res.benchmark.load_eval(res.require_data(), cfg)
    retain_path, why = _retain_choice(res, retain_reference)
    retain_fp = model_fingerprint(retain_path) if retain_path else None
    role = _role(res, model_fingerprint(model_path), retain_fp)
    identity = _identity(cfg, model_path, tokenizer_path, data, options, retain_path, role)
    if isinstance(retain_reference, Mapping):  # a retain model's results, already computed
        identity["retain_model_fingerprint"] = retain_reference.get("identity", {}).get(
            "model_fingerprint", "given"
        )
    file = Path(out_dir) / METRICS_FILE  # a finished evaluation of the same identity is reused
    if not recompute and (old := _reusable(file, identity, progress)) is not None:
        return old
    # compute (the retain model's own results are shared with every model's comparison)
    run_ = functools.partial(
        _run, res, model_path, tokenizer_path, data, options, identity, file=file, progress=progress
    )
    if isinstance(retain_reference, Mapping):
        return run_(retain_reference)
    if role == "retain" and tokenizer_path == model_path:
        own = retain_metrics(res, model_path, data, options, recompute=recompute, progress=progress)
        result = {**own, "identity": identity}
        if dist.is_rank0():
            atomic_write_json(file, result, indent=1)
        dist.barrier()
        return result
    if role == "retain":
        return run_("self")
    if retain_path is not None:
        return run_(retain_metrics(res, retain_path, data, options, progress=progress))
    return run_(why)


def retain_metrics(
    run: Config | Resolved,
    retain_path: str,
    data: EvalData | None = None,
    options: EvalConfig | None = None,
    *,
    recompute: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """The retain model's metrics (its own reference), cached under ``cache_path/eval``."""
    res = eval_run(run)
    cfg = res.cfg
    options = options or cfg.eval
    data = data or res.benchmark.load_eval(res.require_data(), cfg)
    identity = _identity(cfg, retain_path, retain_path, data, options, retain_path, "retain")
    file = (
        cfg.cache_path
        / "eval"
        / fingerprint({k: identity[k] for k in _REUSE_KEYS}, length=12)
        / "metrics.json"
    )
    if not recompute and (old := _reusable(file, identity, progress)) is not None:
        return old
    return _run(
        res, retain_path, retain_path, data, options, identity, "self", file=file, progress=progress
    )


def summary(result: Mapping[str, Any]) -> str:
    """The numbers the report shows (the metric registry's report view) of a metrics.json, one
    per line with their direction, then its notes."""
    agg = result["aggregates"]
    lines = [
        f"  {m.key:<22} {m.format(agg.get(m.key)):>10}  {m.label}"
        for m in metrics_for("report")
        if m.key in agg
    ]
    lines += [f"  note: {k}: {v}" for k, v in result.get("notes", {}).items()]
    return "\n".join(lines)


def default_out_dir(run: Config | Resolved, model_path: str | None = None) -> Path:
    """Where ``npo eval`` writes: ``save_dir`` when set, else the model's own local folder
    (``model_path``, else the run's model)."""
    cfg = run.cfg if isinstance(run, Resolved) else run
    if cfg.save_dir:
        return Path(cfg.save_dir)
    if model_path is None:
        model_path = run.model_path if isinstance(run, Resolved) else resolve_model_path(cfg)
    path = Path(str(model_path)).expanduser()
    if path.is_dir():
        return path
    raise EvalError(
        f"{path} is not a local folder: pass save_dir=... (or --out-dir) for the results"
    )
