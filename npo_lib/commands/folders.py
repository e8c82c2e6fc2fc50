"""Run folders: their names, what a finished or interrupted one allows, and whether a saved
result still matches the inputs that would make it again.

A finished folder is never replaced without ``overwrite=true``; an unfinished one continues
with ``resume=true``. A saved result (influence scores, an evaluation) records the identity of
its inputs; :func:`saved_result` compares it with the identity a new run would have.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from npo_lib.config import Config
from npo_lib.errors import ConfigError
from npo_lib.utils import dist
from npo_lib.utils.io import read_json

RESULT_FILE = "result.json"  # written last: its presence marks a finished run
# a sweep's executed notebooks of the run: kept when overwrite=true replaces the run
NOTEBOOKS_DIR = "notebooks"


def run_name(cfg: Config) -> str:
    """Folder name from the parameters a sweep varies."""
    task = "all" if cfg.task_id is None else cfg.task_id
    lora = f"-lora{cfg.LoRA.r}" if cfg.LoRA.r else ""
    return (
        f"{cfg.model_family}-{cfg.forget_loss}-{cfg.split}-task{task}-lr{cfg.lr:g}"
        f"-ep{cfg.num_epochs}{lora}-seed{cfg.seed}"
    )


def run_dir(cfg: Config) -> Path:
    """``save_dir``, else ``runs/<run_name>``."""
    return Path(cfg.save_dir) if cfg.save_dir else Path("runs") / run_name(cfg)


def finetune_dir(cfg: Config) -> Path:
    """``save_dir``, else
    ``runs/finetune-<model>-<family>-<split>-task<id>-lr<lr>-ep<n>[-lora<r>]-seed<s>``."""
    if cfg.save_dir:
        return Path(cfg.save_dir)
    ft, task = cfg.finetune, "all" if cfg.task_id is None else cfg.task_id
    lora = f"-lora{cfg.LoRA.r}" if cfg.LoRA.r else ""
    return Path("runs") / (
        f"finetune-{ft.model}-{cfg.model_family}-{cfg.split}-task{task}-lr{ft.lr:g}"
        f"-ep{ft.num_epochs}{lora}-seed{cfg.seed}"
    )


def influence_files(cfg: Config) -> Path:
    """Where INFLUENCE reads its token scores (``influence_dir`` or the run's sibling folder)."""
    return Path(cfg.influence_dir) if cfg.influence_dir else run_dir(cfg).parent / "influence"


def check_run_folder(out: Path, cfg: Config) -> None:
    """A finished run needs ``overwrite``; an unfinished one ``resume`` or ``overwrite``.

    Under a multi-rank launcher only rank 0 judges an unfinished folder: it writes the run's
    first files, possibly before another rank gets here, and its error ends the whole job.
    """
    if (out / RESULT_FILE).is_file() and not cfg.overwrite:
        raise ConfigError(
            f"run folder {out} holds a finished run: pass overwrite=true to replace it, "
            "or another save_dir"
        )
    if (
        dist.is_rank0()
        and out.is_dir()
        and any(out.iterdir())
        and not (cfg.resume or cfg.overwrite)
    ):
        raise ConfigError(
            f"run folder {out} holds an unfinished run: pass resume=true to continue it or "
            "overwrite=true to start again"
        )


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def identity_differences(
    saved: Mapping[str, Any], identity: Mapping[str, Any], keys: Sequence[str] | None = None
) -> list[str]:
    """``key: old -> new`` for every (dotted, nested) key of ``identity`` (or of ``keys``) whose
    saved value differs."""
    chosen = {k: identity[k] for k in keys} if keys is not None else dict(identity)
    new = _flat(chosen)
    old = _flat({k: saved.get(k) for k in chosen})
    return [f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in new if old.get(k) != new[k]]


def saved_result(
    file: Path,
    identity: Mapping[str, Any],
    *,
    keys: Sequence[str] | None = None,
    identity_key: str | None = None,
) -> tuple[dict | None, list[str]]:
    """(the saved JSON, []) when ``file`` exists and its identity (``file[identity_key]``, or the
    file itself) matches ``identity`` on ``keys``; (None, the differences) otherwise ([] when there
    is no readable file)."""
    saved = read_json(file)
    if not isinstance(saved, dict):
        return None, []
    recorded = saved.get(identity_key, {}) if identity_key else saved
    differ = identity_differences(recorded, identity, keys)
    return (saved, []) if not differ else (None, differ)
