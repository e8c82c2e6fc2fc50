"""Every check a config can fail without loading a model: the names each registry owns.

:func:`npo_lib.config.load_config` checks keys, types and ranges; this adds the names (benchmark,
model family, objective, influence scorer and preconditioner, selection method, attacks) and the
limits of the embedded benchmark generator. :func:`npo_lib.commands.resolve.resolve` calls
:func:`check_config` once where a config enters (the CLI, a notebook's first cell, a command
given a bare Config), so a bad value fails in one line before any model loads.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import NamedTuple

from npo_lib.benchmarks import Benchmark, check_data_folder, get_benchmark
from npo_lib.config import Config
from npo_lib.data.views import DOCUMENT_VIEWS
from npo_lib.errors import ConfigError
from npo_lib.eval.robustness import ATTACKS
from npo_lib.influence.modules import MODULE_SETS
from npo_lib.influence.preconditioners import PRECONDITIONERS
from npo_lib.influence.scorers import Scorer, get_scorer
from npo_lib.influence.selection import check_selection
from npo_lib.models.families import ModelFamily, get_family
from npo_lib.objectives.registry import LossSpec, parse_loss


class Names(NamedTuple):
    """What the checked names of a config stand for."""

    family: ModelFamily
    spec: LossSpec  # the parsed forget_loss
    benchmark: Benchmark  # the benchmark plug-in benchmark.name selects


def check_config(cfg: Config) -> Names:
    """Fail (ConfigError, one line) on a name no registry knows; returns the model family and
    the parsed objective, so a caller looks neither up again."""
    family = get_family(cfg.model_family)
    spec = parse_loss(cfg.forget_loss)
    benchmark = get_benchmark(cfg.benchmark.name)
    if cfg.data_path:
        check_data_folder(benchmark, cfg.data_path)
    check_selection(cfg.selection)
    benchmark.check_settings(cfg.benchmark)
    check_objective_data(spec, benchmark)
    check_influence_settings(cfg)
    if cfg.eval.robustness and benchmark.training != "qa":
        raise ConfigError(
            f"eval.robustness attacks QA records; benchmark {benchmark.name} has none "
            "(set eval.robustness=[])"
        )
    unknown = [a for a in cfg.eval.robustness if a not in ATTACKS]
    if unknown:
        raise ConfigError(
            f"eval.robustness: unknown attack '{unknown[0]}'; valid: {', '.join(ATTACKS)}"
        )
    return Names(family, spec, benchmark)


def check_objective_data(spec: LossSpec, benchmark: Benchmark) -> None:
    """Each term's view exists for the benchmark's records: a document (MUSE, WMDP) has only
    text, so a view with an IDK response or a reasoning trace (IDK1-3, the cot view) has
    nothing to train on; such an objective fails here rather than after the model loads."""
    if benchmark.training != "documents":
        return
    term = next((t for t in spec.terms if t.view not in DOCUMENT_VIEWS), None)
    if term is not None:
        raise ConfigError(
            f"forget_loss={spec.name}: {term.name} trains on the '{term.view}' view, which needs "
            f"question-answer records; benchmark {benchmark.name} has documents (their views: "
            f"{', '.join(sorted(DOCUMENT_VIEWS))})"
        )


def check_influence_settings(cfg: Config) -> Scorer:
    """The influence scorer exists, its optional package is installed, and it can track the
    chosen modules; returns it. (Whether its retain model exists is the influence run's check.)"""
    ic = cfg.influence
    scorer = get_scorer(ic.scorer)
    if ic.preconditioner not in PRECONDITIONERS:
        raise ConfigError(
            f"influence.preconditioner '{ic.preconditioner}' is unknown; "
            f"valid: {', '.join(PRECONDITIONERS)}"
        )
    if ic.modules not in MODULE_SETS:
        raise ConfigError(
            f"influence.modules '{ic.modules}' is unknown; valid: {', '.join(MODULE_SETS)}"
        )
    if ic.modules == "lora" and cfg.LoRA.r <= 0:
        raise ConfigError(
            "influence.modules=lora tracks LoRA adapters: set LoRA.r > 0 "
            "(or another influence.modules)"
        )
    if ic.modules == "lora" and not scorer.supports_lora:
        raise ConfigError(
            f"influence.scorer={scorer.name} tracks the base model's Linear layers: "
            "use another influence.modules"
        )
    if scorer.requires and importlib.util.find_spec(scorer.requires) is None:
        raise ConfigError(
            f"influence.scorer={scorer.name} needs the optional package {scorer.requires}, "
            "which is not installed: pip install -e '.[influence]' (see pyproject); the "
            "built-in scorers need nothing more"
        )
    return scorer


def check_activation_layers(cfg: Config, spec: LossSpec, model_path: str) -> None:
    """RMU / ACT: the block ℓ they read and the blocks that train, resolved against the depth
    of the model at ``model_path`` (its ``config.json``, read without loading the model; a hub
    id is checked when it loads), exist in it. ℓ stays below the last block: HF returns that
    block's output after the final norm, not the residual stream."""
    if not spec.reads_hidden:
        return
    config = Path(model_path) / "config.json"
    if not config.is_file():
        return
    n = json.loads(config.read_text()).get("num_hidden_layers")
    if not isinstance(n, int):
        return
    params = getattr(cfg, spec.hidden_group)
    ell = params.block(n)
    if ell > n - 2:
        given = "" if float(params.layer).is_integer() else f" (block {ell} of {n})"
        raise ConfigError(
            f"rmu_layer={params.layer:g}{given}: the model at {model_path} has {n} decoder "
            f"blocks; RMU / ACT read the output of a block below the last (0..{n - 2})"
        )
    missing = [i for i in params.trainable_blocks(n) if i >= n]
    if missing:
        raise ConfigError(
            f"rmu_trainable_layers: block {missing[0]} does not exist in the model at "
            f"{model_path} ({n} blocks)"
        )
