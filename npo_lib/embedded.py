"""Where the embedded default lives: the synthetic benchmark and the tiny models, keyed by settings.

Each artefact sits in a cache folder named by a hash of everything that made it, so a change of
any ``benchmark.*`` or ``tiny.*`` setting gives a new folder and an unchanged one is reused.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from npo_lib.benchmark import benchmark_fingerprint
from npo_lib.config import Config, ConfigError

RECIPE_VERSION = "2"  # bump when the fine-tuning recipe or its bars change (part of the models' cache key)


def fingerprint(*parts: Any) -> str:
    """12 hex chars of sha256 over the JSON of ``parts`` (dataclasses as dicts)."""
    norm = [asdict(p) if hasattr(p, "__dataclass_fields__") else p for p in parts]
    return hashlib.sha256(json.dumps(norm, sort_keys=True, default=str).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class EmbeddedPaths:
    benchmark: Path  # generated R-TOFU-layout files
    tokenizer: Path  # byte-level BPE trained on the benchmark text
    base: Path  # randomly initialised model (before any fine-tuning)
    target: Path  # fine-tuned on all training data
    retain: Path  # fine-tuned on everything except the forget split / task

    @property
    def models(self) -> Path:
        return self.target.parent


def embedded_paths(cfg: Config) -> EmbeddedPaths:
    root = cfg.cache_path
    bench_fp = benchmark_fingerprint(cfg.benchmark)
    model_fp = fingerprint(bench_fp, cfg.tiny, cfg.max_length, RECIPE_VERSION)
    task = "all" if cfg.task_id is None else str(cfg.task_id)
    models = root / "tiny" / model_fp
    return EmbeddedPaths(
        benchmark=root / "benchmark" / bench_fp,
        tokenizer=models / "tokenizer",
        base=models / "base",
        target=models / "target",
        retain=models / f"retain-{cfg.split}-task{task}",
    )


def resolve_data_path(cfg: Config) -> str:
    """``data_path`` when given (folder or hub dataset id), else the prepared embedded benchmark."""
    if cfg.data_path:
        return cfg.data_path
    bench = embedded_paths(cfg).benchmark
    if not (bench / "meta.json").is_file():
        raise ConfigError(f"the embedded benchmark is not prepared ({bench}); run `npo prepare` or pass data_path=...")
    return str(bench)
