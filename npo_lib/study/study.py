"""``npo study SWEEP_DIR...``: the method comparison of finished sweeps, at matched utility.

Every evaluated run becomes a :class:`~npo_lib.study.frontier.RunResult`: its method (the
objective, plus the selection / influence settings that differ from the defaults, e.g.
``INFLUENCE+GD random``), its strength setting (``study.strength_keys``: lr, epochs,
forget_coeff), its seed, its benchmark (``study.benchmark_keys``). The target and retain models
are evaluated once per benchmark as the reference points. Written into ``--out``:

* ``study.md``: per benchmark, each method's forget quality at 0.95 and 0.98 x the target's model
  utility and its forget fact recall at the same fractions of the target's retain fact recall
  (read on the Pareto frontier of each seed, mean over seeds with a bootstrap 95 % interval),
  the forget fact recall after the relearning and 4-bit attacks at the matched setting, the
  selection controls of INFLUENCE in their own table, and the verdict built from the numbers;
* ``study.csv`` (those numbers), ``study_settings.csv`` (every grid point, mean ± std);
* ``study_frontier.png`` (frontiers with intervals, target and retain marked),
  ``study_selection.png`` (the selection controls).

The adaptive search, the plan and ``npo study --run`` live in :mod:`npo_lib.study.plan`;
the first study's grid-point functions (``collect``, ``best_per_method``, ``markdown``) remain.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from npo_lib.commands.evaluation import METRICS_FILE, evaluate
from npo_lib.config import Config, StudyConfig, load_config, with_alias_keys
from npo_lib.embedded.paths import embedded_paths, uses_embedded
from npo_lib.errors import ReportError
from npo_lib.eval.compute import HEADLINE_METRICS
from npo_lib.objectives.registry import parse_loss
from npo_lib.study.figures import FrontierCurve, Interval, Panel, plot_frontiers, plot_selection
from npo_lib.study.frontier import (
    NOT_CROSSED,
    NOT_REACHED,
    TRADEOFFS,
    RunResult,
    Summary,
    by_method,
    compare,
    matched_setting,
    metric_at,
    pareto_frontier,
    points_of,
    seed_readings,
    setting_means,
    summarise,
)

METRICS = tuple(m.key for m in HEADLINE_METRICS)
FORMATS = {m.key: m.fmt for m in HEADLINE_METRICS}


@dataclass
class Setting:
    """One point of the grid without its seed: every seed's aggregates."""

    key: tuple[Any, ...]
    runs: list[str] = field(default_factory=list)
    values: dict[str, list[float]] = field(default_factory=dict)

    def mean(self, metric: str) -> float | None:
        v = [x for x in self.values.get(metric, []) if x is not None]
        return statistics.fmean(v) if v else None

    def std(self, metric: str) -> float | None:
        v = [x for x in self.values.get(metric, []) if x is not None]
        return statistics.stdev(v) if len(v) > 1 else (0.0 if v else None)


def _run_config(run: Path) -> dict[str, Any]:
    file = run / "config.yaml"
    if not file.is_file():
        raise ReportError(f"{run} has no config.yaml: not a forget run folder")
    return with_alias_keys(yaml.safe_load(file.read_text()), Config)  # rmu_layer: rmu.layer


def collect(run_dirs: Sequence[Path], keys: Sequence[str]) -> list[Setting]:
    """Settings in first-seen order; runs without an evaluation are skipped."""
    groups: dict[tuple[Any, ...], Setting] = {}
    for run in run_dirs:
        if not (run / METRICS_FILE).is_file():
            continue
        cfg = _run_config(run)
        missing = [k for k in keys if k not in cfg]
        if missing:
            raise ReportError(f"{run}/config.yaml has no {', '.join(missing)}")
        key = tuple(cfg[k] for k in keys)
        agg = json.loads((run / METRICS_FILE).read_text())["aggregates"]
        s = groups.setdefault(key, Setting(key))
        s.runs.append(run.name)
        for m in METRICS:
            s.values.setdefault(m, []).append(agg.get(m))
    return list(groups.values())


def utility_floor(refs: Mapping[str, Mapping[str, Any]], mu_fraction: float) -> float | None:
    """The claim's model-utility bar: ``mu_fraction`` x the target's (None without a target row)."""
    target_mu = refs.get("target", {}).get("model_utility")
    return None if target_mu is None else mu_fraction * target_mu


def best_per_method(settings: Sequence[Setting], mu_floor: float) -> dict[str, Setting | None]:
    """Per method (first key), the setting of highest mean forget quality with mean model
    utility >= ``mu_floor`` (None when no setting of the method keeps that utility)."""
    out: dict[str, Setting | None] = {}
    for s in settings:
        method = str(s.key[0])
        out.setdefault(method, None)
        mu, fq = s.mean("model_utility"), s.mean("forget_quality")
        if mu is None or fq is None or mu < mu_floor:
            continue
        cur = out[method]
        if cur is None or fq > (cur.mean("forget_quality") or -1):
            out[method] = s
    return out


def _pm(s: Setting, m: str, fmt: str) -> str:
    mean, std = s.mean(m), s.std(m)
    return "–" if mean is None else f"{fmt.format(mean)} ± {fmt.format(std or 0.0)}"


def markdown(
    settings: Sequence[Setting],
    keys: Sequence[str],
    refs: Mapping[str, Mapping[str, Any]],
    mu_fraction: float,
) -> str:
    """The study's markdown: settings table, reference rows, best per method, the claim."""
    head = [*keys, "seeds", *METRICS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, agg in refs.items():
        cells = [
            name,
            *[""] * (len(keys) - 1),
            "–",
            *("–" if agg.get(m) is None else FORMATS[m].format(agg[m]) for m in METRICS),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    for s in settings:
        lines.append(
            "| "
            + " | ".join(
                [*map(str, s.key), str(len(s.runs)), *(_pm(s, m, FORMATS[m]) for m in METRICS)]
            )
            + " |"
        )
    floor = utility_floor(refs, mu_fraction)
    out = ["\n".join(lines)]
    if floor is not None:
        best = best_per_method(settings, floor)
        out.append(
            f"\nBest setting per method with mean model utility >= {mu_fraction:g} x target ({floor:.3f}):\n"
        )
        out.append("| method | setting | forget quality | model utility |\n|---|---|---|---|")
        for method, s in best.items():
            if s is None:
                out.append(f"| {method} | none keeps the utility | – | – |")
            else:
                out.append(
                    f"| {method} | {', '.join(f'{k}={v}' for k, v in zip(keys[1:], s.key[1:]))} | {_pm(s, 'forget_quality', '{:.2g}')} | {_pm(s, 'model_utility', '{:.3f}')} |"
                )
        out.append("\n" + claim_text(best))
    return "\n".join(out)


def claim_text(best: Mapping[str, Setting | None]) -> str:
    """Whether INFLUENCE+GD beats NPO+GD on forget quality under the utility constraint."""
    a, b = best.get("INFLUENCE+GD"), best.get("NPO+GD")
    if a is None or b is None:
        return (
            "Claim not testable: "
            + ", ".join(m for m, s in (("INFLUENCE+GD", a), ("NPO+GD", b)) if s is None)
            + " keeps no setting above the utility floor."
        )
    fa, fb = a.mean("forget_quality") or 0.0, b.mean("forget_quality") or 0.0
    verdict = "holds" if fa > fb else "does not hold"
    ratio = f" ({fa / fb:.3g}x)" if fb > 0 and not math.isinf(fa / fb) else ""
    return f"Claim (INFLUENCE+GD reaches higher forget quality than NPO+GD at that utility) {verdict}: {fa:.3g} vs {fb:.3g}{ratio}."


def _references(run_dirs: Sequence[Path]) -> dict[str, dict[str, Any]]:
    """Target and retain aggregates for the sweep's config (evaluated once, then cached)."""
    run = next(r for r in run_dirs if (r / "config.yaml").is_file())
    cfg = load_config(
        files=[run / "config.yaml"],
        overrides={"save_dir": None, "resume": False, "overwrite": False},
    )
    if not uses_embedded(cfg) or cfg.model_path:
        return {}
    paths = embedded_paths(cfg)
    out = {}
    for role, model in (("target", paths.target), ("retain", paths.retain)):
        res = evaluate(cfg, str(model), out_dir=run.parent / f"_{role}", progress=False)
        out[role] = res["aggregates"]
    return out


# ============================================================================= the fair study
#
# Methods are compared on their frontiers at matched utility (npo_lib.study.frontier), per
# benchmark, with the selection controls of INFLUENCE beside them and the robustness attacks at
# each method's matched setting. ``write_study`` writes study.md / study.csv /
# study_frontier.png / study_selection.png (and study_settings.csv, every grid point); the
# adaptive search's next points and the study plan's sweeps come from npo_lib.study.plan.

ROBUST_METRIC = "fact_recall"  # what the attacks' forget probe reports per set
REGAIN = (
    0.10  # an attack that raises the mean forget fact recall this much: the forgetting came back
)


def regained(before: Summary, after: Summary) -> bool:
    """Whether an attack brought the forgotten facts back (mean recall up by >= ``REGAIN``)."""
    return before.mean is not None and after.mean is not None and after.mean - before.mean >= REGAIN


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
    """A run's ``metrics.json`` as flat numbers: the aggregates, and every attack's probe as
    ``<attack>.<before|after>.<probe metric>`` (e.g. ``relearn.after.fact_recall``)."""
    out: dict[str, float | None] = {
        k: v
        for k, v in (metrics.get("aggregates") or {}).items()
        if isinstance(v, (int, float)) or v is None
    }
    for attack, res in (metrics.get("robustness") or {}).items():
        for phase in ("before", "after"):
            for k, v in (res.get(phase) or {}).items():
                out[f"{attack}.{phase}.{k}"] = v
    return out


def config_defaults() -> dict[str, Any]:
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
            parts.append(
                value
                if leaf in ("method", "scorer", "preconditioner", "budget")
                else f"{leaf}={value}"
            )
    return " ".join(parts)


def benchmark_label(
    cfg: Mapping[str, Any], keys: Sequence[str], defaults: Mapping[str, Any]
) -> str:
    """``embedded (n_authors 60, seed 1)``; other data: its ``data_path``."""
    if cfg.get("data_path"):
        return str(cfg["data_path"])
    return (
        "embedded ("
        + ", ".join(f"{k.split('.')[-1]} {cfg.get(k, defaults.get(k))}" for k in keys)
        + ")"
    )


ATTACKS_DIR = "attacks"  # <run>/attacks/eval/metrics.json: the run evaluated again under the attacks (npo study --run)


def load_results(run_dirs: Sequence[Path], study: StudyConfig) -> dict[str, list[RunResult]]:
    """Every evaluated run as a :class:`RunResult`, grouped by benchmark (first-seen order), with
    the attacks' probes of its ``attacks/`` evaluation where there is one."""
    defaults = config_defaults()
    out: dict[str, list[RunResult]] = {}
    for run in run_dirs:
        if not (run / METRICS_FILE).is_file():
            continue
        cfg = flatten(_run_config(run))
        setting = tuple((k, cfg.get(k, defaults.get(k))) for k in study.strength_keys)
        metrics = run_metrics(json.loads((run / METRICS_FILE).read_text()))
        if (
            attacked := run / ATTACKS_DIR / METRICS_FILE
        ).is_file():  # the attacks' probes only: "<attack>.<phase>.<metric>"
            metrics.update(
                {k: v for k, v in run_metrics(json.loads(attacked.read_text())).items() if "." in k}
            )
        res = RunResult(
            method_label(cfg, study.method_keys, defaults),
            int(cfg.get("seed", defaults.get("seed", 0)) or 0),
            setting,
            metrics,
            run.name,
            cfg,
        )
        out.setdefault(benchmark_label(cfg, study.benchmark_keys, defaults), []).append(res)
    return out


def references_for(runs: Sequence[RunResult], root: Path) -> dict[str, dict[str, Any]]:
    """Target and retain aggregates of a benchmark (evaluated once beside the runs, then reused)."""
    first = root / runs[0].name
    return _references([first])


@dataclass
class MethodRow:
    """One method of one benchmark: its readings at every level and its robustness."""

    method: str
    readings: dict[tuple[str, float], Summary]  # (tradeoff, fraction) -> reading
    setting: tuple[tuple[str, Any], ...] | None  # matched setting at the main level (FQ vs MU)
    robust: dict[str, tuple[Summary, Summary]]  # attack -> (before, after) forget fact recall
    seeds: int


@dataclass
class BenchmarkStudy:
    """The analysis of one benchmark."""

    name: str
    refs: dict[str, dict[str, Any]]
    levels: dict[tuple[str, float], float]  # (tradeoff, fraction) -> utility level
    rows: list[MethodRow]
    results: list[RunResult]

    def row(self, method: str) -> MethodRow | None:
        return next((r for r in self.rows if r.method == method), None)


def analyse(
    name: str,
    results: Sequence[RunResult],
    refs: Mapping[str, Mapping[str, Any]],
    study: StudyConfig,
) -> BenchmarkStudy:
    """Frontier readings of every method at both utility levels of both trade-offs, the matched
    setting (FQ vs MU, main level) and the attacks' forget fact recall there."""
    target = refs.get("target", {})
    fractions = (study.mu_fraction, study.strict_fraction)
    levels = {
        (t.name, f): f * target[t.utility]
        for t in TRADEOFFS.values()
        for f in fractions
        if target.get(t.utility) is not None
    }
    rows = []
    for method, rs in by_method(results).items():
        readings = {
            key: summarise(seed_readings(rs, level, TRADEOFFS[key[0]]), TRADEOFFS[key[0]])
            for key, level in levels.items()
        }
        main = levels.get(("fq_mu", study.mu_fraction))
        setting = matched_setting(rs, main, TRADEOFFS["fq_mu"]) if main is not None else None
        robust = {}
        if setting is not None:
            for attack in study.attacks:
                before = metric_at(rs, setting, f"{attack}.before.{ROBUST_METRIC}")
                after = metric_at(rs, setting, f"{attack}.after.{ROBUST_METRIC}")
                if after.mean is not None:
                    robust[attack] = (before, after)
        rows.append(MethodRow(method, readings, setting, robust, len({r.seed for r in rs})))
    return BenchmarkStudy(name, {k: dict(v) for k, v in refs.items()}, levels, rows, list(results))


def fmt_summary(s: Summary | None, fmt: str = "{:.2g}") -> str:
    """``0.3 [0.12, 0.51]``, ``0.01 (bound: floor not crossed)``, ``not reached``, ``–`` (none)."""
    if s is None or s.mean is None:
        return "not reached" if s is not None and s.status == NOT_REACHED else "–"
    text = fmt.format(s.mean)
    if s.low is not None and s.high is not None:
        text += f" [{fmt.format(s.low)}, {fmt.format(s.high)}]"
    if s.status == NOT_CROSSED:
        text += " (bound: floor not crossed)"
    return text


def _setting_text(setting: tuple[tuple[str, Any], ...] | None) -> str:
    return (
        "–"
        if setting is None
        else ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in setting)
    )


def _is_selection_variant(method: str, claim: str) -> bool:
    return method == claim or method.startswith(claim + " ")


def verdict(b: BenchmarkStudy, study: StudyConfig) -> str:
    """One sentence per question, built from the numbers: what was shown and what was not."""
    key = ("fq_mu", study.mu_fraction)
    level = b.levels.get(key)
    if level is None:
        return "No verdict: the benchmark has no target model utility to match (not the embedded benchmark?)."
    claim = b.row(study.claim)
    if claim is None:
        return f"No verdict: the sweep has no {study.claim} runs."
    tr = TRADEOFFS["fq_mu"]
    parts: list[str] = []
    better, not_shown = [], []
    for rival in study.rivals:
        r = b.row(rival)
        if r is None:
            not_shown.append(f"{rival} (not run)")
            continue
        c = compare(claim.readings[key], r.readings[key], tr)
        (better if c.outcome == "better" else not_shown).append(
            rival
            if c.outcome == "better"
            else f"{rival} ({c.outcome}: {c.why}; {fmt_summary(r.readings[key])})"
        )
    head = (
        f"At model utility {level:.3f} ({study.mu_fraction:g} x target), {study.claim}'s forget quality is "
        f"{fmt_summary(claim.readings[key])}"
    )
    parts.append(
        head
        + (
            f"; higher than {', '.join(better)} with non-overlapping 95 % intervals"
            if better
            else ""
        )
        + (f"; not shown against {', '.join(not_shown)}" if not_shown else "")
        + "."
    )
    robust = []
    for attack in study.attacks:
        mine = claim.robust.get(attack)
        if mine is None:
            robust.append(f"{attack}: not measured")
            continue
        lower = [
            rv
            for rv in study.rivals
            if (r := b.row(rv))
            and attack in r.robust
            and compare(mine[1], r.robust[attack][1], TRADEOFFS["recall"]).outcome == "better"
        ]
        back = [r.method for r in b.rows if attack in r.robust and regained(*r.robust[attack])]
        robust.append(
            f"{attack}: {study.claim}'s forget fact recall {fmt_summary(mine[0], '{:.2f}')} -> {fmt_summary(mine[1], '{:.2f}')}"
            + (
                f", lower than {', '.join(lower)} (separated intervals)"
                if lower
                else ", not shown lower than any rival"
            )
            + (
                f"; forgetting comes back (recall +{REGAIN:g} or more) for {', '.join(back)}"
                if back
                else ""
            )
        )
    parts.append("After the attacks, at each method's matched setting: " + "; ".join(robust) + ".")
    controls = []
    for name in ("random", "inverse", "oracle"):
        r = b.row(f"{study.claim} {name}")
        if r is None:
            controls.append(f"{name}: not run")
            continue
        c = compare(claim.readings[key], r.readings[key], tr)
        controls.append(f"vs {name} {fmt_summary(r.readings[key])}: {c.outcome}")
    parts.append("Influence selection (same token count) " + "; ".join(controls) + ".")
    full, tnpo = b.row(f"{study.claim} p=100"), b.row("TNPO+GD")
    if (
        full is not None and tnpo is not None
    ):  # the same loss: a check of the pipeline, not of the method
        parts.append(
            f"Check: at p = 100 % {study.claim} reads {fmt_summary(full.readings[key])}, TNPO+GD "
            f"{fmt_summary(tnpo.readings[key])} (the same loss)."
        )
    return " ".join(parts)


TABLE_HEAD = (
    "method",
    "FQ @ {a}",
    "FQ @ {b}",
    "forget recall @ {a} RR",
    "forget recall @ {b} RR",
    "matched setting",
)


def _num(value: Any, fmt: str) -> str:
    return "–" if value is None else fmt.format(value)


def benchmark_markdown(b: BenchmarkStudy, study: StudyConfig) -> str:
    """The benchmark's section: references, the frontier table, the selection controls, the verdict."""
    a, s = study.mu_fraction, study.strict_fraction
    t = b.refs.get("target", {})
    lines = [f"## {b.name}", ""]
    if t:
        r = b.refs.get("retain", {})
        lines.append(
            f"Target: model utility {_num(t.get('model_utility'), '{:.3f}')}, forget quality "
            f"{_num(t.get('forget_quality'), '{:.2g}')}, retain fact recall {_num(t.get('retain_fact_recall'), '{:.2f}')}; "
            f"retain model: model utility {_num(r.get('model_utility'), '{:.3f}')}, forget quality {_num(r.get('forget_quality'), '{:.2g}')}. "
            f"Levels: model utility {', '.join(f'{b.levels[(n, f)]:.3f}' for n, f in b.levels if n == 'fq_mu')}, "
            f"retain fact recall {', '.join(f'{b.levels[(n, f)]:.2f}' for n, f in b.levels if n == 'recall')} "
            f"({a:g} and {s:g} x target). Cells: mean over seeds [bootstrap 95 % interval]; FQ geometric mean."
        )
        lines.append("")

    def table(rows: Sequence[MethodRow]) -> list[str]:
        head = [
            *(h.format(a=f"{a:g}", b=f"{s:g}") for h in TABLE_HEAD),
            *(f"{x}: forget recall before -> after" for x in study.attacks),
            "seeds",
        ]
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in rows:
            attacked = [r.robust.get(x) for x in study.attacks]
            out.append(
                "| "
                + " | ".join(
                    [
                        r.method,
                        *(fmt_summary(r.readings.get(k)) for k in (("fq_mu", a), ("fq_mu", s))),
                        *(
                            fmt_summary(r.readings.get(k), "{:.2f}")
                            for k in (("recall", a), ("recall", s))
                        ),
                        _setting_text(r.setting),
                        *(
                            "–"
                            if x is None
                            else f"{fmt_summary(x[0], '{:.2f}')} -> {fmt_summary(x[1], '{:.2f}')}"
                            for x in attacked
                        ),
                        str(r.seeds),
                    ]
                )
                + " |"
            )
        return out

    methods = [
        r
        for r in b.rows
        if not _is_selection_variant(r.method, study.claim) or r.method == study.claim
    ]
    variants = [r for r in b.rows if _is_selection_variant(r.method, study.claim)]
    lines += ["### Methods at matched utility", "", *table(methods), ""]
    if len(variants) > 1:
        lines += [
            f"### Selection controls of {study.claim} (same token count, loss and weights)",
            "",
            *table(variants),
            "",
        ]
    lines += ["**Verdict.** " + verdict(b, study), ""]
    return "\n".join(lines)


def settings_rows(results: Sequence[RunResult]) -> list[dict[str, Any]]:
    """Every (method, setting): mean and std over seeds of the headline metrics."""
    groups: dict[tuple[str, tuple[tuple[str, Any], ...]], list[RunResult]] = {}
    for r in results:
        groups.setdefault((r.method, r.setting), []).append(r)
    rows = []
    for (method, setting), rs in groups.items():
        row: dict[str, Any] = {"method": method, **dict(setting), "seeds": len(rs)}
        for m in METRICS:
            v = [x for r in rs if (x := r.get(m)) is not None]
            row[f"{m}_mean"] = statistics.fmean(v) if v else None
            row[f"{m}_std"] = statistics.stdev(v) if len(v) > 1 else (0.0 if v else None)
        rows.append(row)
    return rows


def study_csv_rows(studies: Sequence[BenchmarkStudy]) -> list[dict[str, Any]]:
    """study.csv: one row per benchmark x method x trade-off x level, and the attacks."""
    rows = []
    for b in studies:
        for r in b.rows:
            for (tname, frac), s in r.readings.items():
                rows.append(
                    {
                        "benchmark": b.name,
                        "method": r.method,
                        "quantity": TRADEOFFS[tname].forget,
                        "at": f"{TRADEOFFS[tname].utility} >= {frac:g} x target",
                        "level": b.levels[(tname, frac)],
                        "mean": s.mean,
                        "low": s.low,
                        "high": s.high,
                        "status": s.status,
                        "seeds": s.n,
                        "setting": _setting_text(r.setting),
                    }
                )
            for attack, (before, after) in r.robust.items():
                for phase, s in (("before", before), ("after", after)):
                    rows.append(
                        {
                            "benchmark": b.name,
                            "method": r.method,
                            "quantity": f"{attack}.{phase}.{ROBUST_METRIC}",
                            "at": "matched setting",
                            "level": None,
                            "mean": s.mean,
                            "low": s.low,
                            "high": s.high,
                            "status": "",
                            "seeds": s.n,
                            "setting": _setting_text(r.setting),
                        }
                    )
    return rows


def _write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def _interval(s: Summary | None) -> Interval:
    return (
        Interval(None, status=NOT_REACHED)
        if s is None
        else Interval(s.mean, s.low, s.high, s.status)
    )


def frontier_panels(studies: Sequence[BenchmarkStudy], study: StudyConfig) -> list[Panel]:
    """Per benchmark, both planes, methods (not the selection variants) with their frontiers."""
    panels = []
    for b in studies:
        for t in TRADEOFFS.values():
            curves = []
            for r in b.rows:
                if _is_selection_variant(r.method, study.claim) and r.method != study.claim:
                    continue
                rs = [x for x in b.results if x.method == r.method]
                mu, fg = setting_means(rs, t.utility), setting_means(rs, t.forget)
                front = pareto_frontier([(mu[k], fg[k]) for k in mu if k in fg], t)
                curves.append(
                    FrontierCurve(
                        r.method,
                        front,
                        points_of(rs, t),
                        {
                            b.levels[(n, f)]: _interval(s)
                            for (n, f), s in r.readings.items()
                            if n == t.name
                        },
                    )
                )
            refs = {
                role: (agg[t.utility], agg[t.forget])
                for role, agg in b.refs.items()
                if agg.get(t.utility) is not None and agg.get(t.forget) is not None
            }
            panels.append(
                Panel(
                    f"{b.name}\n{t.label}",
                    t.utility.replace("_", " "),
                    t.forget.replace("_", " "),
                    curves,
                    log_y=t.log,
                    references=refs,
                    levels=[v for (n, _), v in b.levels.items() if n == t.name],
                )
            )
    return panels


def selection_groups(
    studies: Sequence[BenchmarkStudy], study: StudyConfig
) -> dict[str, dict[str, Interval]]:
    """Per benchmark: the claim method's selection variants, read at the main FQ level."""
    key = ("fq_mu", study.mu_fraction)
    return {
        f"{b.name}: FQ @ {study.mu_fraction:g} x target MU": {
            r.method: _interval(r.readings.get(key))
            for r in b.rows
            if _is_selection_variant(r.method, study.claim)
        }
        for b in studies
    }


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
    """``runs/x: 54 runs, 61 s per run (0.9 h)`` from the sweep's ``status.json`` (finished runs)."""
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
    return f"{root}: {len(secs)} runs, {statistics.fmean(secs):.0f} s per run ({sum(secs) / 3600:.2g} h of run time)"


def write_study(
    sweep_dir: str | Path | Sequence[str | Path],
    out: str | Path,
    study: StudyConfig,
    *,
    references: Callable[[Sequence[RunResult], Path], Mapping[str, Mapping[str, Any]]]
    | None = None,
    overwrite: bool = True,
) -> dict[str, Any]:
    """Write study.md, study.csv, study_settings.csv, study_frontier.png, study_selection.png
    for one or more sweep folders (e.g. one per benchmark); returns their paths and the markdown.

    ``references(runs, sweep_folder)`` gives a benchmark's target / retain aggregates (default:
    evaluated beside the runs, cached). ``overwrite=False`` refuses an ``--out`` that already
    holds a study.md.
    """
    roots = (
        [Path(sweep_dir)] if isinstance(sweep_dir, (str, Path)) else [Path(p) for p in sweep_dir]
    )
    benches: dict[str, list[RunResult]] = {}
    where: dict[str, Path] = {}
    for root in roots:
        for name, rs in load_results(run_folders(root), study).items():
            benches.setdefault(name, []).extend(rs)
            where.setdefault(name, root)
    if not benches:
        raise ReportError(f"no evaluated runs in {', '.join(map(str, roots))}")
    out = Path(out)
    if not overwrite and (out / "study.md").exists():
        raise ReportError(f"{out / 'study.md'} exists: choose another --out or remove it")
    refs_of = references or references_for
    studies = [analyse(name, rs, refs_of(rs, where[name]), study) for name, rs in benches.items()]
    cost = [line for root in roots if (line := run_time_line(root))]
    text = "\n".join(
        [
            "# Method study: frontiers at matched utility",
            "",
            *(benchmark_markdown(b, study) for b in studies),
            *(["## Cost", "", *(f"- {c}" for c in cost), ""] if cost else []),
        ]
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "study.md").write_text(text + "\n")
    _write_csv(out / "study.csv", study_csv_rows(studies))
    _write_csv(
        out / "study_settings.csv",
        [{"benchmark": b.name, **row} for b in studies for row in settings_rows(b.results)],
    )
    plot_frontiers(frontier_panels(studies, study), path=out / "study_frontier.png")
    groups = selection_groups(studies, study)
    paths = {
        "markdown": text,
        "md": str(out / "study.md"),
        "csv": str(out / "study.csv"),
        "settings_csv": str(out / "study_settings.csv"),
        "frontier": str(out / "study_frontier.png"),
    }
    if any(len(g) > 1 for g in groups.values()):
        plot_selection(
            groups,
            xlabel="forget quality at matched model utility",
            path=out / "study_selection.png",
        )
        paths["selection"] = str(out / "study_selection.png")
    return {**paths, "studies": studies}


def references_file(
    path: str | Path,
) -> Callable[[Sequence[RunResult], Path], Mapping[str, Mapping[str, Any]]]:
    """``references`` for :func:`write_study` from a JSON file ``{"target": {...}, "retain": {...}}``
    of aggregates (or ``{benchmark: {"target": ..., "retain": ...}}``), instead of evaluating them."""
    file = Path(path)
    if not file.is_file():
        raise ReportError(f"references file not found: {file}")
    data = json.loads(file.read_text())

    def refs(runs: Sequence[RunResult], root: Path) -> Mapping[str, Mapping[str, Any]]:
        if "target" in data or "retain" in data:
            return data
        name = benchmark_label(runs[0].config, StudyConfig().benchmark_keys, config_defaults())
        if name not in data:
            raise ReportError(
                f"{file} has no references for benchmark '{name}'; it has {', '.join(data)}"
            )
        return data[name]

    return refs
