"""The study's outputs as data: each benchmark's markdown section, the rows of ``study.csv`` and
``study_settings.csv``, and the panels of its figures.

Column titles, formats and directions come from the metric registry
(:mod:`npo_lib.eval.registry`), the pairs from each benchmark's plug-in
(:attr:`~npo_lib.study.readings.BenchmarkStudy.metrics`): a pair's reading is titled
``<forget> ↑ @ <fraction> <utility>`` (``FQ ↑ @ 0.95 MU``: forget quality at 0.95 x the
target's model utility, higher is better; ``KnowMem forget ↓ @ 0.95 KnowMem retain`` on MUSE).
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from npo_lib.config import StudyConfig
from npo_lib.eval.registry import DIRECTIONS, TOFU, BenchmarkMetrics, MetricPair, metrics_for
from npo_lib.eval.robustness import PROBE_RECALL
from npo_lib.study.figures import FrontierCurve, Interval, Panel
from npo_lib.study.frontier import (
    NOT_REACHED,
    RunResult,
    Summary,
    pareto_frontier,
    points_of,
    setting_means,
)
from npo_lib.study.readings import (
    ROBUST,
    BenchmarkStudy,
    MethodRow,
    fmt_summary,
    is_selection_variant,
    reading_fmt,
    setting_text,
    verdict,
)

VIEW = "study"  # the registry view whose metrics study_settings.csv holds
ONE_STEP_MARK = "†"  # a headline reading whose interval rests on at most one KS step


def reading_title(pair: MetricPair, fraction: float) -> str:
    """``FQ ↑ @ 0.95 MU``: the pair's forgetting read at ``fraction`` x the target's utility."""
    f, u = pair.forget_metric, pair.utility_metric
    return f"{f.short} {DIRECTIONS[f.direction].arrow} @ {fraction:g} {u.short}"


def _fractions(study: StudyConfig) -> tuple[float, float]:
    return study.mu_fraction, study.strict_fraction


def _reference_line(b: BenchmarkStudy, study: StudyConfig) -> str:
    """The target's and the retain model's numbers of every pair, and the utility levels."""
    pairs = b.metrics.pairs
    shown = list(dict.fromkeys(m for p in pairs for m in (p.utility, p.forget)))
    by_key = {m.key: m for m in metrics_for("frontier")}

    def numbers(agg: Mapping[str, Any]) -> str:
        return ", ".join(f"{by_key[k].title} {by_key[k].format(agg.get(k))}" for k in shown)

    a, s = _fractions(study)
    # a utility shared by pairs (MUSE's KnowMem retain) is listed once, with its first pair
    firsts = [p for i, p in enumerate(pairs) if p.utility not in {q.utility for q in pairs[:i]}]
    levels = ", ".join(
        f"{p.utility_metric.title} "
        + ", ".join(p.utility_metric.format(v) for (n, _), v in b.levels.items() if n == p.name)
        for p in firsts
    )
    logs = ", ".join(p.forget_metric.short for p in pairs if p.log)
    return (
        f"Target: {numbers(b.refs.get('target', {}))}; "
        f"retain model: {numbers(b.refs.get('retain', {}))}. "
        f"Levels: {levels} ({a:g} and {s:g} x target). "
        "Cells: mean over seeds [bootstrap 95 % interval]"
        + (f"; {logs} geometric mean." if logs else ".")
    )


def reading_cell(
    r: MethodRow, pair: MetricPair, fraction: float, headline: MetricPair = TOFU.headline
) -> str:
    """A reading as its table cell; a headline forgetting with a step statistic (forget quality)
    with that statistic read at the same level (``0.71 [0.71, 0.71] † (D 0.083)``), † when its
    interval rests on at most one KS step."""
    text = fmt_summary(r.readings.get((pair.name, fraction)), reading_fmt(pair.forget_metric))
    step = pair.step_pair if pair.name == headline.name else None
    ks = r.ks.get(fraction) if step is not None else None
    if ks is None or step is None:
        return text
    if ks.one_step:
        text += f" {ONE_STEP_MARK}"
    if ks.d.mean is not None:
        text += f" ({step.forget_metric.short} {step.forget_metric.format(ks.d.mean)})"
    return text


def one_step_note(rows: Sequence[MethodRow]) -> list[str]:
    """The footnote under a table with a † reading (none without one)."""
    marked = [ks for r in rows for ks in r.ks.values() if ks.one_step]
    if not marked:
        return []
    steps = sorted({f"1/{round(1 / k.step)}" for k in marked if k.step})
    step = f" ({', '.join(steps)} here: 1/n for n forget items)" if steps else ""
    return [
        "",
        f"{ONE_STEP_MARK} Within one KS step: the seeds' forget quality is one value, or their "
        f"KS statistics D at the level span at most one step{step}. A KS p-value takes few "
        "values with few items, so such an interval separates nothing finer than one step.",
    ]


def _method_cells(r: MethodRow, study: StudyConfig, metrics: BenchmarkMetrics) -> list[str]:
    readings = [
        reading_cell(r, p, f, metrics.headline) for p in metrics.pairs for f in _fractions(study)
    ]
    fmt = reading_fmt(ROBUST)
    attacked = [
        "–"
        if (x := r.robust.get(a)) is None
        else f"{fmt_summary(x[0], fmt)} -> {fmt_summary(x[1], fmt)}"
        for a in study.attacks
    ]
    return [r.method, *readings, setting_text(r.setting), *attacked, str(r.seeds)]


def methods_table(
    rows: Sequence[MethodRow], study: StudyConfig, metrics: BenchmarkMetrics = TOFU
) -> list[str]:
    """The markdown lines of a table of methods: their readings on the pairs of ``metrics``
    (the benchmark's), matched setting, attacks."""
    head = [
        "method",
        *(reading_title(p, f) for p in metrics.pairs for f in _fractions(study)),
        "matched setting",
        *(f"{a}: {ROBUST.short} before -> after" for a in study.attacks),
        "seeds",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_method_cells(r, study, metrics)) + " |" for r in rows]
    return lines + one_step_note(rows)


def benchmark_markdown(b: BenchmarkStudy, study: StudyConfig) -> str:
    """The benchmark's section: references, the frontier table, the selection controls, the
    verdict."""
    lines = [f"## {b.name}", ""]
    if b.refs.get("target"):
        lines += [_reference_line(b, study), ""]
    claim = study.claim
    methods = [r for r in b.rows if not is_selection_variant(r.method, claim) or r.method == claim]
    variants = [r for r in b.rows if is_selection_variant(r.method, claim)]
    table = methods_table(methods, study, b.metrics)
    lines += ["### Methods at matched utility", "", *table, ""]
    if len(variants) > 1:
        lines += [
            f"### Selection controls of {claim} (same token count, loss and weights)",
            "",
            *methods_table(variants, study, b.metrics),
            "",
        ]
    lines += ["**Verdict.** " + verdict(b, study), ""]
    return "\n".join(lines)


def settings_rows(results: Sequence[RunResult]) -> list[dict[str, Any]]:
    """Every (method, setting): mean and std over seeds of the study view's metrics."""
    groups: dict[tuple[str, tuple[tuple[str, Any], ...]], list[RunResult]] = {}
    for r in results:
        groups.setdefault((r.method, r.setting), []).append(r)
    rows = []
    for (method, setting), rs in groups.items():
        row: dict[str, Any] = {"method": method, **dict(setting), "seeds": len(rs)}
        for m in metrics_for(VIEW):
            v = [x for r in rs if (x := r.get(m.key)) is not None]
            row[f"{m.key}_mean"] = statistics.fmean(v) if v else None
            row[f"{m.key}_std"] = statistics.stdev(v) if len(v) > 1 else (0.0 if v else None)
        rows.append(row)
    return rows


def _csv_row(
    b: BenchmarkStudy, r: MethodRow, s: Summary, quantity: str, at: str, level: float | None
) -> dict[str, Any]:
    """One row of study.csv: a reading (at a utility level) or an attack's probe (no level)."""
    return {
        "benchmark": b.name,
        "method": r.method,
        "quantity": quantity,
        "at": at,
        "level": level,
        "mean": s.mean,
        "low": s.low,
        "high": s.high,
        "status": s.status if level is not None else "",
        "seeds": s.n,
        "setting": setting_text(r.setting),
    }


def study_csv_rows(studies: Sequence[BenchmarkStudy]) -> list[dict[str, Any]]:
    """study.csv: one row per benchmark x method x pair x level, and the attacks."""
    rows = []
    for b in studies:
        for r in b.rows:
            for (name, frac), s in r.readings.items():
                t, level = b.tradeoffs[name], b.levels[(name, frac)]
                at = f"{t.utility} >= {frac:g} x target"
                rows.append(_csv_row(b, r, s, t.forget, at, level))
                step = t.step_pair if name == b.headline.name else None
                if step is not None and (ks := r.ks.get(frac)):
                    rows.append(
                        {**_csv_row(b, r, ks.d, step.forget, at, level), "ks_step": ks.step}
                    )
                    rows[-2]["one_ks_step"] = ks.one_step
            for attack, phases in r.robust.items():
                for phase, s in zip(("before", "after"), phases, strict=True):
                    quantity = f"{attack}.{phase}.{PROBE_RECALL}"
                    rows.append(_csv_row(b, r, s, quantity, "matched setting", None))
    return rows


def interval(s: Summary | None) -> Interval:
    """A reading as the figures draw it."""
    if s is None:
        return Interval(None, status=NOT_REACHED)
    return Interval(s.mean, s.low, s.high, s.status)


def _curve(b: BenchmarkStudy, r: MethodRow, t: MetricPair) -> FrontierCurve:
    """One method in one plane: its seed-mean frontier, its runs, its readings."""
    rs = [x for x in b.results if x.method == r.method]
    mu, fg = setting_means(rs, t.utility), setting_means(rs, t.forget)
    front = pareto_frontier([(mu[k], fg[k]) for k in mu if k in fg], t)
    readings = {b.levels[(n, f)]: interval(s) for (n, f), s in r.readings.items() if n == t.name}
    return FrontierCurve(r.method, front, points_of(rs, t), readings)


def frontier_panels(studies: Sequence[BenchmarkStudy], study: StudyConfig) -> list[Panel]:
    """Per benchmark, every pair's plane, methods (not the selection variants) with their
    frontiers, the axes titled with the metrics' directions."""
    panels = []
    for b in studies:
        shown = [
            r
            for r in b.rows
            if not is_selection_variant(r.method, study.claim) or r.method == study.claim
        ]
        for t in b.metrics.pairs:
            refs = {
                role: (agg[t.utility], agg[t.forget])
                for role, agg in b.refs.items()
                if agg.get(t.utility) is not None and agg.get(t.forget) is not None
            }
            panels.append(
                Panel(
                    f"{b.name}\n{t.label}",
                    t.utility_metric.label,
                    t.forget_metric.label,
                    [_curve(b, r, t) for r in shown],
                    log_y=t.log,
                    references=refs,
                    levels=[v for (n, _), v in b.levels.items() if n == t.name],
                )
            )
    return panels


def selection_groups(
    studies: Sequence[BenchmarkStudy], study: StudyConfig
) -> dict[str, dict[str, Interval]]:
    """Per benchmark: the claim method's selection variants, read at its headline pair's main
    level (titled with that reading, :func:`selection_axes` the axes)."""
    return {
        selection_title(b, study): {
            r.method: interval(r.readings.get((b.headline.name, study.mu_fraction)))
            for r in b.rows
            if is_selection_variant(r.method, study.claim)
        }
        for b in studies
    }


def selection_title(b: BenchmarkStudy, study: StudyConfig) -> str:
    """A benchmark's panel of the selection figure: ``<benchmark>: FQ ↑ @ 0.95 MU``."""
    return f"{b.name}: {reading_title(b.headline, study.mu_fraction)}"


def selection_axes(
    studies: Sequence[BenchmarkStudy], study: StudyConfig
) -> dict[str, tuple[str, bool]]:
    """Per panel of the selection figure: its axis title (the headline forgetting, with its
    direction) and whether it is read in log (forget quality)."""
    return {selection_title(b, study): (b.headline.label, b.headline.log) for b in studies}
