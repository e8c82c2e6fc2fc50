"""A config resolved once, where it enters: what its names and paths stand for.

The CLI and a notebook's first cell load and check a config, then :func:`resolve` it for the
command about to run: the model family and its chat tags, the parsed objective, the model,
data and retain model paths (each local folder checked for the files loading needs), the run
and influence folders. The commands take the :class:`Resolved` and pass its paths, tags and
numbers down, so no layer below looks any of them up again. A command given a bare ``Config``
(tests, scripts) resolves it at its top.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from npo_lib.benchmarks import Benchmark
from npo_lib.commands.checks import check_config
from npo_lib.commands.folders import finetune_dir, influence_files, run_dir
from npo_lib.commands.plan import check_fits
from npo_lib.config import Config
from npo_lib.embedded.paths import ConfigPaths, EmbeddedPaths
from npo_lib.errors import ConfigError
from npo_lib.models.families import ChatTags, ModelFamily
from npo_lib.models.loading import ModelLoader, check_model_folder
from npo_lib.objectives.registry import LossSpec


@dataclass(frozen=True)
class Needs:
    """What a command resolves: its model, its data, the retain model (when there is one) and
    the embedded cache folders (prepare makes them; eval names the embedded target)."""

    model: bool = True
    data: bool = True
    retain: bool = False
    embedded: bool = False


NEEDS: dict[str, Needs] = {
    "prepare": Needs(model=False, data=False, embedded=True),
    "finetune": Needs(),
    "forget": Needs(),
    "influence": Needs(retain=True),
    "eval": Needs(retain=True, embedded=True),
    "plan": Needs(data=False),
}


@dataclass(frozen=True)
class Resolved:
    """A checked config and everything its names and paths stand for, for one command."""

    cfg: Config
    command: str
    family: ModelFamily
    spec: LossSpec  # the parsed forget_loss
    benchmark: Benchmark  # the benchmark plug-in (benchmark.name): layout, metrics, headline
    model_path: str | None  # folder or hub id; None for a command without a model (prepare)
    data_path: str | None  # folder or hub dataset id; None for prepare (it makes the data)
    retain_model_path: str | None  # None: no retain model, ``no_retain`` says why
    no_retain: str
    run_dir: Path  # where the command writes (the fine-tuning folder for finetune)
    influence_dir: Path  # where INFLUENCE's token scores are
    embedded: EmbeddedPaths | None = None  # the tiny family's cache folders, when resolved

    @property
    def tags(self) -> ChatTags:
        return self.family.tags

    @property
    def loader(self) -> ModelLoader:
        """How this run loads models and tokenizers (family, dtype, trust_remote_code)."""
        return ModelLoader(self.family, self.cfg.dtype, self.cfg.trust_remote_code)

    @property
    def uses_embedded(self) -> bool:
        """The tiny family: its models are the ones `npo prepare` makes."""
        return self.family.hub_id is None

    def require_model(self) -> str:
        if self.model_path is None:
            raise ConfigError(f"npo {self.command} resolves no model")
        return self.model_path

    def require_data(self) -> str:
        if self.data_path is None:
            raise ConfigError(f"npo {self.command} resolves no data")
        return self.data_path

    def records(self, role: str, tokenizer: Any = None) -> list[dict[str, Any]]:
        """The benchmark plug-in's records of ``role`` (forget, retain, ...) in the data folder:
        QA records, or document pieces cut by ``tokenizer`` (the model's, loaded when not given
        and the plug-in trains on documents), so every command reads the same records."""
        if tokenizer is None and self.benchmark.training == "documents":
            tokenizer = self.loader.tokenizer(self.require_model())
        return self.benchmark.load_records(self.require_data(), role, self.cfg, tokenizer)

    def with_model(self, model_path: str, *, tokenizer: bool = True) -> Resolved:
        """The same run on the model folder ``model_path`` (checked; without ``tokenizer`` it
        need not hold one)."""
        folder = check_model_folder(model_path, "model_path", tokenizer=tokenizer)
        return dataclasses.replace(self, model_path=folder)

    def with_settings(self, cfg: Config) -> Resolved:
        """The same paths under ``cfg``, a variant of this config in settings that name no path,
        family or objective (an influence scorer, LoRA's rank for a model loaded bare)."""
        return dataclasses.replace(self, cfg=cfg)


def resolve(
    cfg: Config, command: str, *, model_path: str | None = None, with_tokenizer: bool = True
) -> Resolved:
    """Check ``cfg`` and resolve what ``command`` needs, failing in one line before any model
    loads. ``model_path``: the model to use instead of the config's (a checked folder; without
    ``with_tokenizer`` it need not hold a tokenizer: another folder gives it)."""
    needs = NEEDS[command]
    family, spec, benchmark = check_config(cfg)
    paths = ConfigPaths(cfg, family)
    model = None
    if model_path is not None:
        model = check_model_folder(model_path, "model_path", tokenizer=with_tokenizer)
    elif needs.model:
        model = paths.model_path()
    if command == "forget":
        check_fits(cfg, family, spec, model)  # refuses a run whose planned memory cannot fit
    retain, why = paths.retain_model_path() if needs.retain else (None, "")
    return Resolved(
        cfg=cfg,
        command=command,
        family=family,
        spec=spec,
        benchmark=benchmark,
        model_path=model,
        data_path=paths.data_path() if needs.data else None,
        retain_model_path=retain,
        no_retain=why or "",
        run_dir=finetune_dir(cfg) if command == "finetune" else run_dir(cfg),
        influence_dir=influence_files(cfg),
        embedded=paths.embedded if needs.embedded and paths.uses_embedded else None,
    )


def as_resolved(run: Config | Resolved, command: str) -> Resolved:
    """``run`` when it is already resolved for ``command``; else its config resolved now."""
    if isinstance(run, Resolved):
        if run.command == command:
            return run
        run = run.cfg
    return resolve(run, command)
