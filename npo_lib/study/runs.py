"""A study's runs read from disk: each evaluated forget run as a
:class:`~npo_lib.study.frontier.RunResult` (its method, strength setting, seed, benchmark and flat
metrics), and the target / retain reference numbers of its benchmark.

A method is the objective plus the selection / influence settings that differ from the defaults
(``INFLUENCE+GD random``); a setting is the values of ``study.strength_keys``; a benchmark is the
values of ``study.benchmark_keys``. The attacks' probes come from the run's ``attacks/``
evaluation (``npo study --run``) where there is one.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from npo_lib.benchmarks.registry import get_benchmark
from npo_lib.commands.evaluation import METRICS_FILE, evaluate
from npo_lib.config import Config, StudyConfig, load_config, with_alias_keys
from npo_lib.embedded.paths import embedded_paths, uses_embedded
from npo_lib.errors import ReportError
from npo_lib.eval.registry import BenchmarkMetrics
from npo_lib.objectives.registry import parse_loss
from npo_lib.study.frontier import FORGET_ITEMS, RunResult

# <run>/attacks/eval/metrics.json: the run evaluated again under the attacks (npo study --run)
ATTACKS_DIR = "attacks"
# ``<attack>.<phase>.<probe metric>``: where an attack's probe lands among a run's metrics
PHASES = ("before", "after")
# The metrics of a benchmark's target and retain models: role -> aggregates.
References = Mapping[str, Mapping[str, Any]]
ReferencesFn = Callable[[Sequence[RunResult], Path], References]


def run_config(run: Path) -> dict[str, Any]:
    """A forget run's resolved ``config.yaml``."""
    file = run / "config.yaml"
    if not file.is_file():
        raise ReportError(f"{run} has no config.yaml: not a forget run folder")
    return with_alias_keys(yaml.safe_load(file.read_text()), Config)  # rmu_layer: rmu.layer


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> dotted keys (``{"selection": {"p": 10}}`` -> ``{"selection.p": 10}``)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def run_metrics(metrics: Mapping[str, Any]) -> dict[str, float | None]:
    """A run's ``metrics.json`` as flat numbers: the aggregates, the forget set's size
    (:data:`~npo_lib.study.frontier.FORGET_ITEMS`, when recorded) and every attack's probe as
    ``<attack>.<before|after>.<probe metric>`` (e.g. ``relearn.after.fact_recall``)."""
    out: dict[str, float | None] = {
        k: v
        for k, v in (metrics.get("aggregates") or {}).items()
        if isinstance(v, (int, float)) or v is None
    }
    if isinstance(n := (metrics.get("counts") or {}).get("forget"), int):
        out[FORGET_ITEMS] = n
    for attack, res in (metrics.get("robustness") or {}).items():
        for phase in PHASES:
            for k, v in (res.get(phase) or {}).items():
                out[f"{attack}.{phase}.{k}"] = v
    return out


def config_defaults() -> dict[str, Any]:
    """Every config key's default, flat (dotted keys)."""
    return flatten(with_alias_keys(asdict(Config()), Config))


def method_label(cfg: Mapping[str, Any], keys: Sequence[str], defaults: Mapping[str, Any]) -> str:
    """The method a run belongs to: the first key's value (the objective), then every other key
    that differs from its default, ``selection.*`` / ``influence.*`` only for objectives that read
    token weights (e.g. ``INFLUENCE+GD random``, ``INFLUENCE+GD p=50``)."""
    head = str(cfg.get(keys[0]))
    try:
        weighted = "token_weights" in parse_loss(head).needs
    except ValueError:
        weighted = False
    parts = [head]
    for k in keys[1:]:
        if k.split(".")[0] in ("selection", "influence") and not weighted:
            continue
        if k in cfg and cfg[k] != defaults.get(k):
            leaf = k.split(".")[-1]
            value = format(cfg[k], "g") if isinstance(cfg[k], float) else str(cfg[k])
            named = leaf in ("method", "scorer", "preconditioner", "budget")
            parts.append(value if named else f"{leaf}={value}")
    return " ".join(parts)


BENCHMARK_NAME = "benchmark.name"  # the config key naming a run's benchmark plug-in


def benchmark_name(cfg: Mapping[str, Any], defaults: Mapping[str, Any]) -> str:
    """The benchmark plug-in a run's flat config names (the default, TOFU, when it names none)."""
    return str(cfg.get(BENCHMARK_NAME, defaults.get(BENCHMARK_NAME)))


def benchmark_label(
    cfg: Mapping[str, Any], keys: Sequence[str], defaults: Mapping[str, Any]
) -> str:
    """``embedded (n_authors 60, seed 1)`` (the default TOFU-like generator); another plug-in's
    stand-in by its title, its seed and its own settings that differ from their defaults
    (``MUSE stand-in (seed 0)``); other data: its ``data_path``."""
    if cfg.get("data_path"):
        return str(cfg["data_path"])
    name = benchmark_name(cfg, defaults)
    if name == defaults.get(BENCHMARK_NAME):
        values = ", ".join(f"{k.split('.')[-1]} {cfg.get(k, defaults.get(k))}" for k in keys)
        return f"embedded ({values})"
    own = f"benchmark.{name}."
    changed = [
        f"{k.split('.')[-1]} {v}"
        for k, v in cfg.items()
        if k.startswith(own) and v != defaults.get(k)
    ]
    seed = cfg.get("benchmark.seed", defaults.get("benchmark.seed"))
    return f"{get_benchmark(name).title} stand-in ({', '.join([f'seed {seed}', *changed])})"


def benchmark_metrics(results: Sequence[RunResult]) -> BenchmarkMetrics:
    """The pairs one benchmark's runs are read on: the metric registry's entry of the plug-in
    their ``benchmark.name`` names (TOFU's for runs that name none); runs of two plug-ins are
    one line naming both."""
    defaults = config_defaults()
    names = sorted({benchmark_name(r.config, defaults) for r in results})
    if len(names) > 1:
        raise ReportError(f"one benchmark's runs name two plug-ins: {', '.join(names)}")
    return get_benchmark(names[0] if names else str(defaults[BENCHMARK_NAME])).metrics


def _read_run(run: Path, study: StudyConfig, defaults: Mapping[str, Any]) -> RunResult:
    """One evaluated run, with the attacks' probes of its ``attacks/`` evaluation."""
    cfg = flatten(run_config(run))
    setting = tuple((k, cfg.get(k, defaults.get(k))) for k in study.strength_keys)
    metrics = run_metrics(json.loads((run / METRICS_FILE).read_text()))
    attacked = run / ATTACKS_DIR / METRICS_FILE
    if attacked.is_file():  # the attacks' probes only: "<attack>.<phase>.<metric>"
        probes = run_metrics(json.loads(attacked.read_text()))
        metrics.update({k: v for k, v in probes.items() if "." in k})
    seed = int(cfg.get("seed", defaults.get("seed", 0)) or 0)
    return RunResult(
        method_label(cfg, study.method_keys, defaults), seed, setting, metrics, run.name, cfg
    )


def load_results(run_dirs: Sequence[Path], study: StudyConfig) -> dict[str, list[RunResult]]:
    """Every evaluated run as a :class:`RunResult`, grouped by benchmark (first-seen order), with
    the attacks' probes of its ``attacks/`` evaluation where there is one."""
    defaults = config_defaults()
    out: dict[str, list[RunResult]] = {}
    for run in run_dirs:
        if not (run / METRICS_FILE).is_file():
            continue
        res = _read_run(run, study, defaults)
        out.setdefault(benchmark_label(res.config, study.benchmark_keys, defaults), []).append(res)
    return out


def run_folders(root: Path) -> list[Path]:
    """A sweep's run folders (the reference evaluations ``_target`` / ``_retain`` left out)."""
    if not root.is_dir():
        raise ReportError(f"sweep folder not found: {root}")
    return sorted(
        p
        for p in root.iterdir()
        if p.is_dir() and not p.name.startswith("_") and (p / "config.yaml").is_file()
    )


def run_time_line(root: Path) -> str | None:
    """``runs/x: 54 runs, 61 s per run (0.9 h)`` from the sweep's ``status.json`` (its finished
    runs)."""
    file = root / "status.json"
    if not file.is_file():
        return None
    status = json.loads(file.read_text())
    secs = [
        float(v["seconds"])
        for k, v in status.items()
        if not k.startswith("_")
        and isinstance(v, dict)
        and v.get("status") == "done"
        and v.get("seconds")
    ]
    if not secs:
        return None
    per_run, hours = statistics.fmean(secs), sum(secs) / 3600
    return f"{root}: {len(secs)} runs, {per_run:.0f} s per run ({hours:.2g} h of run time)"


def references_for(runs: Sequence[RunResult], root: Path) -> dict[str, dict[str, Any]]:
    """Target and retain aggregates of a benchmark, evaluated once beside the runs
    (``<sweep>/_target``, ``_retain``), then reused; none for data other than the embedded
    benchmark's."""
    run = root / runs[0].name
    cfg = load_config(
        files=[run / "config.yaml"],
        overrides={"save_dir": None, "resume": False, "overwrite": False},
    )
    if not uses_embedded(cfg) or cfg.model_path:
        return {}
    paths = embedded_paths(cfg)
    out = {}
    for role, model in (("target", paths.target), ("retain", paths.retain)):
        res = evaluate(cfg, str(model), out_dir=root / f"_{role}", progress=False)
        out[role] = res["aggregates"]
    return out


def references_file(path: str | Path) -> ReferencesFn:
    """``references`` for :func:`~npo_lib.study.study.write_study` from a JSON file
    ``{"target": {...}, "retain": {...}}`` of aggregates (or ``{benchmark: {"target": ...,
    "retain": ...}}``), instead of evaluating them."""
    file = Path(path)
    if not file.is_file():
        raise ReportError(f"references file not found: {file}")
    data = json.loads(file.read_text())

    def refs(runs: Sequence[RunResult], root: Path) -> References:
        if "target" in data or "retain" in data:
            return data
        name = benchmark_label(runs[0].config, StudyConfig().benchmark_keys, config_defaults())
        if name not in data:
            raise ReportError(
                f"{file} has no references for benchmark '{name}'; it has {', '.join(data)}"
            )
        return data[name]

    return refs
