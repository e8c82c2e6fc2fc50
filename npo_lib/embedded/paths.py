"""Where things are: the embedded default's cache folders, and the model / data / retain model a
config names (its explicit paths, else the embedded default, else the family's hub id).

Each embedded artefact sits in a cache folder named by a fingerprint of everything that made
it, so a change of any ``benchmark.*`` or ``tiny.*`` setting gives a new folder and an unchanged
one is reused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from npo_lib.config import Config
from npo_lib.embedded.benchmark import benchmark_fingerprint
from npo_lib.errors import ConfigError
from npo_lib.models.families import get_family
from npo_lib.utils.hashing import fingerprint

RECIPE_VERSION = "2"  # bump when the fine-tuning recipe or its bars change (part of the models' cache key)


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
    model_fp = fingerprint(bench_fp, cfg.tiny, cfg.max_length, RECIPE_VERSION, length=12)
    task = "all" if cfg.task_id is None else str(cfg.task_id)
    models = root / "tiny" / model_fp
    return EmbeddedPaths(
        benchmark=root / "benchmark" / bench_fp,
        tokenizer=models / "tokenizer",
        base=models / "base",
        target=models / "target",
        retain=models / f"retain-{cfg.split}-task{task}",
    )


def uses_embedded(cfg: Config) -> bool:
    """The run reads the embedded default: the tiny family without data_path / model_path."""
    return get_family(cfg.model_family).hub_id is None and cfg.data_path is None


def resolve_data_path(cfg: Config) -> str:
    """``data_path`` when given (folder or hub dataset id), else the prepared embedded benchmark."""
    if cfg.data_path:
        return cfg.data_path
    bench = embedded_paths(cfg).benchmark
    if not (bench / "meta.json").is_file():
        raise ConfigError(f"the embedded benchmark is not prepared ({bench}); run `npo prepare` or pass data_path=...")
    return str(bench)


def resolve_model_path(cfg: Config) -> str:
    """``model_path`` when given, else the embedded target (tiny) or the family's hub id."""
    if cfg.model_path:
        p = Path(cfg.model_path).expanduser()
        if not p.is_dir():
            raise ConfigError(f"model_path folder not found: {p}")
        return str(p)
    family = get_family(cfg.model_family)
    if family.hub_id is None:
        target = embedded_paths(cfg).target
        if not (target / "config.json").is_file():
            raise ConfigError(
                f"the embedded target model is not prepared ({target}); run `npo prepare` "
                "(with the same benchmark.* / tiny.* settings) or pass model_path=..."
            )
        return str(target)
    return family.hub_id


def resolve_retain_model_path(cfg: Config) -> tuple[str | None, str | None]:
    """(the retain model's folder, None), or (None, why there is none).

    ``retain_model_path`` when given (it must exist), else the embedded retain model of the
    embedded benchmark when it is prepared. Forget quality, privleak and the contrast scorer
    compare with it.
    """
    if cfg.retain_model_path:
        p = Path(cfg.retain_model_path).expanduser()
        if not (p / "config.json").is_file():
            raise ConfigError(f"retain_model_path folder not found or not a model: {p}")
        return str(p), None
    if uses_embedded(cfg):
        retain = embedded_paths(cfg).retain
        if (retain / "config.json").is_file():
            return str(retain), None
        return None, f"the embedded retain model is not prepared ({retain}): run `npo prepare`"
    return None, (
        "no retain model: pass retain_model_path=<folder of a model fine-tuned without the "
        "forget set> to get forget quality and privleak"
    )
