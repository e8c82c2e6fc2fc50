"""Where things are: the embedded default's cache folders, and the model / data / retain model a
config names (its explicit paths, else the embedded default, else the family's hub id).

Each embedded artefact sits in a cache folder named by a fingerprint of everything that made
it, so a change of any ``benchmark.*`` or ``tiny.*`` setting gives a new folder and an unchanged
one is reused.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from npo_lib.config import BenchmarkConfig, Config
from npo_lib.embedded.benchmark import benchmark_fingerprint
from npo_lib.embedded.muse import MUSE_GENERATOR_VERSION, generator_settings
from npo_lib.embedded.wmdp import DOMAIN as WMDP_DOMAIN
from npo_lib.embedded.wmdp import WMDP_STANDIN_VERSION
from npo_lib.errors import ConfigError
from npo_lib.models.families import ModelFamily, get_family
from npo_lib.models.loading import check_model_folder
from npo_lib.utils.hashing import fingerprint, folder_fingerprint

# bump when the fine-tuning recipe or its bars change (part of the models' cache key)
RECIPE_VERSION = "3"
# bump when the document benchmarks' training records (format items) or bars change
DOCUMENT_RECIPE_VERSION = "2"


@dataclass(frozen=True)
class Standin:
    """How one benchmark's generated stand-in is cached: the key of its settings (generator
    version included), the prefix of its folder, the file whose presence says it is complete,
    and what its models' key adds to the shared tiny recipe."""

    key: Callable[[BenchmarkConfig], str]
    prefix: str = ""
    marker: str = "meta.json"
    recipe: tuple[str, ...] = ()


def muse_standin_key(cfg: BenchmarkConfig) -> str:
    """The MUSE-like stand-in's cache key: the generator's ``benchmark.muse.*`` settings (not
    the forget set a run picks) and its generator version."""
    settings = generator_settings(cfg.muse)
    return fingerprint({"version": MUSE_GENERATOR_VERSION, "config": settings}, length=12)


def wmdp_standin_key(cfg: BenchmarkConfig) -> str:
    """The WMDP-like stand-in's cache key: ``benchmark.wmdp.*`` and its generator version."""
    return fingerprint({"version": WMDP_STANDIN_VERSION, "config": cfg.wmdp}, length=12)


# by benchmark.name; TOFU's key and folders are the ones the embedded default always had
STANDINS: dict[str, Standin] = {
    "tofu": Standin(benchmark_fingerprint),
    "muse": Standin(muse_standin_key, "muse-", recipe=("documents", DOCUMENT_RECIPE_VERSION)),
    "wmdp": Standin(
        wmdp_standin_key,
        "wmdp-",
        marker=f"wmdp-{WMDP_DOMAIN}.jsonl",
        recipe=("documents", DOCUMENT_RECIPE_VERSION),
    ),
}


def standin(cfg: Config) -> Standin:
    """The stand-in of ``benchmark.name`` (one line naming the known ones otherwise)."""
    if cfg.benchmark.name not in STANDINS:
        raise ConfigError(
            f"benchmark.name '{cfg.benchmark.name}' has no embedded stand-in; "
            f"known: {', '.join(STANDINS)}"
        )
    return STANDINS[cfg.benchmark.name]


@dataclass(frozen=True)
class EmbeddedPaths:
    benchmark: Path  # the data: generated R-TOFU-layout files, or the user's own folder
    tokenizer: Path  # byte-level BPE trained on the data's text
    base: Path  # randomly initialised model (before any fine-tuning)
    target_run: Path  # fine-tuning run folder of the target (all training data)
    retain_run: Path  # ... of the retain model (everything except the forget split / task)
    marker: str = "meta.json"  # the file a complete generated stand-in holds

    @property
    def target(self) -> Path:
        return self.target_run / "model"

    @property
    def retain(self) -> Path:
        return self.retain_run / "model"

    @property
    def models(self) -> Path:
        return self.base.parent


def embedded_paths(cfg: Config) -> EmbeddedPaths:
    """Cache folders of the tiny models for the generated stand-in of ``benchmark.name`` (keyed
    by its settings, :data:`STANDINS`) or, with ``data_path``, for that local folder (keyed by
    the fingerprint of its files)."""
    root, made = cfg.cache_path, standin(cfg)
    if cfg.data_path:
        folder = Path(cfg.data_path).expanduser()
        if not folder.is_dir():
            raise ConfigError(
                "the tiny models are made from a local data folder: "
                f"data_path={cfg.data_path} is not one"
            )
        bench, data_fp = folder, folder_fingerprint(folder)
    else:
        data_fp = made.prefix + made.key(cfg.benchmark)
        bench = root / "benchmark" / data_fp
    recipe = (
        cfg.tiny,
        cfg.max_length,
        cfg.finetune.check_every,
        cfg.finetune.patience,
        RECIPE_VERSION,
        *made.recipe,
    )
    models = root / "tiny" / fingerprint(data_fp, *recipe, length=12)
    task = "all" if cfg.task_id is None else str(cfg.task_id)
    return EmbeddedPaths(
        benchmark=bench,
        tokenizer=models / "tokenizer",
        base=models / "base",
        target_run=models / "target",
        retain_run=models / f"retain-{cfg.split}-task{task}",
        marker=made.marker,
    )


class ConfigPaths:
    """The model, data and retain model one config names, each resolved when asked: its
    explicit paths (checked), else the embedded default (whose cache folders are computed at
    most once: they fingerprint the data), else the family's hub id."""

    def __init__(self, cfg: Config, family: ModelFamily | None = None) -> None:
        self.cfg = cfg
        self.family = family or get_family(cfg.model_family)

    @functools.cached_property
    def embedded(self) -> EmbeddedPaths:
        return embedded_paths(self.cfg)

    @property
    def uses_embedded(self) -> bool:
        """The tiny family: its models are the ones `npo prepare` makes."""
        return self.family.hub_id is None

    def data_path(self) -> str:
        """``data_path`` when given (folder or hub dataset id), else the prepared embedded
        benchmark."""
        if self.cfg.data_path:
            return self.cfg.data_path
        bench = self.embedded.benchmark
        if not (bench / self.embedded.marker).is_file():
            raise ConfigError(
                f"the embedded benchmark is not prepared ({bench}); "
                "run `npo prepare` or pass data_path=..."
            )
        return str(bench)

    def model_path(self) -> str:
        """``model_path`` when given (a folder holding a model and its tokenizer), else the
        embedded target (tiny) or the family's hub id."""
        if self.cfg.model_path:
            return check_model_folder(self.cfg.model_path, "model_path")
        if self.family.hub_id is not None:
            return self.family.hub_id
        target = self.embedded.target
        if not (target / "config.json").is_file():
            raise ConfigError(
                f"the embedded target model is not prepared ({target}); run `npo prepare` "
                "(with the same data_path / benchmark.* / tiny.* settings) or pass model_path=..."
            )
        return str(target)

    def retain_model_path(self) -> tuple[str | None, str | None]:
        """(the retain model's folder, None), or (None, why there is none).

        ``retain_model_path`` when given (it must hold a model), else the embedded retain model
        of the embedded benchmark when it is prepared. Forget quality, privleak and the
        contrast scorer compare with it.
        """
        if self.cfg.retain_model_path:
            return check_model_folder(self.cfg.retain_model_path, "retain_model_path"), None
        if not self.uses_embedded:
            return None, (
                "no retain model: pass retain_model_path=<folder of a model fine-tuned without "
                "the forget set> to get forget quality and privleak"
            )
        retain = self.embedded.retain
        if (retain / "config.json").is_file():
            return str(retain), None
        return None, (
            f"the embedded retain model is not prepared ({retain}): run `npo prepare`, "
            "or pass retain_model_path=..."
        )


def uses_embedded(cfg: Config) -> bool:
    """The tiny family: its models are the ones `npo prepare` makes (for the generated benchmark
    or, with ``data_path``, for that folder)."""
    return get_family(cfg.model_family).hub_id is None


def resolve_data_path(cfg: Config) -> str:
    """:meth:`ConfigPaths.data_path` of ``cfg`` (a command resolves it once, in its
    ``Resolved``)."""
    return ConfigPaths(cfg).data_path()


def resolve_model_path(cfg: Config) -> str:
    """:meth:`ConfigPaths.model_path` of ``cfg``."""
    return ConfigPaths(cfg).model_path()


def resolve_retain_model_path(cfg: Config) -> tuple[str | None, str | None]:
    """:meth:`ConfigPaths.retain_model_path` of ``cfg``."""
    return ConfigPaths(cfg).retain_model_path()
