"""One benchmark's method comparison: every method read on its frontiers at matched utility, its
matched setting and the attacks' forget fact recall there, and the verdict built from the numbers.

The pairs read, their titles and which way each is better come from the metric registry: the
benchmark plug-in the runs name (``benchmark.name``) has its pairs there
(:data:`npo_lib.eval.registry.BENCHMARKS`), its headline pair sets the utility floor, the matched
setting and the verdict (TOFU: forget quality at matched model utility; MUSE: KnowMem on the
forget articles, lower is better, at matched KnowMem on the retain articles). A headline
forgetting on discrete steps (:attr:`~npo_lib.eval.registry.MetricPair.step_pair`: forget
quality's KS statistic) is read with its step statistic too. The attacks read are those that
probe the forget set before and after (:func:`npo_lib.eval.robustness.probing_attacks`), their
probe's fact recall being the forget fact recall after the attack.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from npo_lib.config import StudyConfig
from npo_lib.errors import ReportError
from npo_lib.eval.registry import (
    FORGET_FACT_RECALL,
    TOFU,
    BenchmarkMetrics,
    Metric,
    MetricPair,
)
from npo_lib.eval.robustness import PROBE_RECALL, probing_attacks
from npo_lib.study.frontier import (
    NOT_CROSSED,
    NOT_REACHED,
    Comparison,
    RunResult,
    Summary,
    by_method,
    compare,
    ks_step,
    matched_setting,
    metric_at,
    seed_readings,
    summarise,
    within_one_ks_step,
)
from npo_lib.study.runs import benchmark_metrics

HEADLINE = TOFU.headline  # the default benchmark's headline pair (a benchmark reads its own)
ROBUST = FORGET_FACT_RECALL  # what an attack's forget probe measures (its fact recall)
REGAIN = 0.10  # an attack that raises the mean forget fact recall this much: forgetting came back
Setting = tuple[tuple[str, Any], ...]
ONE_KS_STEP = "not separated by more than one KS step"


def reading_fmt(m: Metric) -> str:
    """How a reading with its interval prints: 2 significant digits for a metric spanning
    decades (forget quality), else 2 decimals."""
    return "{:.2g}" if m.log else "{:.2f}"


def check_attacks(study: StudyConfig) -> None:
    """``study.attacks`` names attacks that probe the forget set before and after."""
    valid = probing_attacks()
    bad = [a for a in study.attacks if a not in valid]
    if bad:
        raise ReportError(
            f"study.attacks: '{bad[0]}' has no forget probe before and after; "
            f"valid: {', '.join(valid)}"
        )


def regained(before: Summary, after: Summary) -> bool:
    """Whether an attack brought the forgotten facts back (mean recall up by >= ``REGAIN``)."""
    return before.mean is not None and after.mean is not None and after.mean - before.mean >= REGAIN


@dataclass(frozen=True)
class KSReading:
    """The KS statistic D read where the headline forget quality is read, the step D moves by
    (1/n for n forget items; None when unknown) and whether the forget quality's interval rests
    on at most one such step (:func:`~npo_lib.study.frontier.within_one_ks_step`)."""

    d: Summary
    step: float | None
    one_step: bool


@dataclass
class MethodRow:
    """One method of one benchmark: its readings at every level and its robustness."""

    method: str
    readings: dict[tuple[str, float], Summary]  # (pair, fraction) -> reading
    setting: Setting | None  # matched setting at the headline pair's main level
    robust: dict[str, tuple[Summary, Summary]]  # attack -> (before, after) forget fact recall
    seeds: int
    ks: dict[float, KSReading] = field(default_factory=dict)  # headline fraction -> D reading

    def one_ks_step(self, fraction: float) -> bool:
        """Whether the headline reading at ``fraction`` rests on at most one KS step."""
        ks = self.ks.get(fraction)
        return ks is not None and ks.one_step


@dataclass
class BenchmarkStudy:
    """The analysis of one benchmark, read on its plug-in's pairs (``metrics``)."""

    name: str
    refs: dict[str, dict[str, Any]]
    levels: dict[tuple[str, float], float]  # (pair, fraction) -> utility level
    rows: list[MethodRow]
    results: list[RunResult]
    metrics: BenchmarkMetrics = TOFU

    def row(self, method: str) -> MethodRow | None:
        return next((r for r in self.rows if r.method == method), None)

    @property
    def headline(self) -> MetricPair:
        """The pair that sets the floor, the matched setting and the verdict."""
        return self.metrics.headline

    @property
    def tradeoffs(self) -> dict[str, MetricPair]:
        """Every pair read, by name, the headline pair first."""
        return {p.name: p for p in self.metrics.pairs}


def utility_levels(
    refs: Mapping[str, Mapping[str, Any]],
    study: StudyConfig,
    pairs: Sequence[MetricPair] = TOFU.pairs,
) -> dict[tuple[str, float], float]:
    """(pair, fraction) -> fraction x the target's utility, for both fractions of every pair
    (default: TOFU's) whose utility the target has."""
    target = refs.get("target", {})
    return {
        (t.name, f): f * target[t.utility]
        for t in pairs
        for f in (study.mu_fraction, study.strict_fraction)
        if target.get(t.utility) is not None
    }


def robust_at(
    results: Sequence[RunResult], setting: Setting, attacks: Sequence[str]
) -> dict[str, tuple[Summary, Summary]]:
    """Each attack's forget fact recall before and after, over the seeds of ``setting``."""
    out = {}
    for attack in attacks:
        before = metric_at(results, setting, f"{attack}.before.{PROBE_RECALL}")
        after = metric_at(results, setting, f"{attack}.after.{PROBE_RECALL}")
        if after.mean is not None:
            out[attack] = (before, after)
    return out


def analyse(
    name: str,
    results: Sequence[RunResult],
    refs: Mapping[str, Mapping[str, Any]],
    study: StudyConfig,
    metrics: BenchmarkMetrics | None = None,
) -> BenchmarkStudy:
    """Frontier readings of every method at both utility levels of every pair of ``metrics``
    (default: the pairs of the plug-in the runs name), the matched setting (headline pair, main
    level) and the attacks' forget fact recall there."""
    check_attacks(study)
    metrics = metrics or benchmark_metrics(results)
    pairs, head = {p.name: p for p in metrics.pairs}, metrics.headline
    levels = utility_levels(refs, study, metrics.pairs)
    rows = []
    for method, rs in by_method(results).items():
        readings = {
            key: summarise(seed_readings(rs, level, pairs[key[0]]), pairs[key[0]])
            for key, level in levels.items()
        }
        main = levels.get((head.name, study.mu_fraction))
        setting = matched_setting(rs, main, head) if main is not None else None
        robust = robust_at(rs, setting, study.attacks) if setting is not None else {}
        ks = ks_readings(rs, levels, readings, study, head)
        rows.append(MethodRow(method, readings, setting, robust, len({r.seed for r in rs}), ks))
    refs_copy = {k: dict(v) for k, v in refs.items()}
    return BenchmarkStudy(name, refs_copy, levels, rows, list(results), metrics)


def ks_readings(
    results: Sequence[RunResult],
    levels: Mapping[tuple[str, float], float],
    readings: Mapping[tuple[str, float], Summary],
    study: StudyConfig,
    headline: MetricPair = HEADLINE,
) -> dict[float, KSReading]:
    """Per fraction of the headline pair: one method's D read at the same level, its step, and
    whether the forget-quality reading there rests on at most one KS step; none when the
    headline forgetting has no step statistic (:attr:`MetricPair.step_pair`)."""
    ks = headline.step_pair
    if ks is None:
        return {}
    step, out = ks_step(results), {}
    for f in (study.mu_fraction, study.strict_fraction):
        if (key := (headline.name, f)) not in levels:
            continue
        d = summarise(seed_readings(results, levels[key], ks), ks)
        out[f] = KSReading(d, step, within_one_ks_step(readings[key], d, step))
    return out


def separation(
    claim: MethodRow, other: MethodRow, fraction: float, headline: MetricPair = HEADLINE
) -> Comparison:
    """:func:`~npo_lib.study.frontier.compare` of two methods' headline readings at
    ``fraction``; a separation (better / worse) that rests on an interval at most one KS step
    wide keeps its outcome and says :data:`ONE_KS_STEP` as its reason."""
    key = (headline.name, fraction)
    c = compare(claim.readings[key], other.readings[key], headline)
    if c.outcome in ("better", "worse") and (
        claim.one_ks_step(fraction) or other.one_ks_step(fraction)
    ):
        return Comparison(c.outcome, ONE_KS_STEP)
    return c


def fmt_summary(s: Summary | None, fmt: str = reading_fmt(HEADLINE.forget_metric)) -> str:
    """``0.3 [0.12, 0.51]``, ``0.01 (bound: floor not crossed)``, ``not reached``, ``–`` (none)."""
    if s is None or s.mean is None:
        return "not reached" if s is not None and s.status == NOT_REACHED else "–"
    text = fmt.format(s.mean)
    if s.low is not None and s.high is not None:
        text += f" [{fmt.format(s.low)}, {fmt.format(s.high)}]"
    if s.status == NOT_CROSSED:
        text += " (bound: floor not crossed)"
    return text


def setting_text(setting: Setting | None) -> str:
    """``lr 0.0001, num_epochs 5`` (an en dash for none)."""
    if setting is None:
        return "–"
    return ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in setting)


def is_selection_variant(method: str, claim: str) -> bool:
    """The claim method itself or one of its selection controls (``INFLUENCE+GD random``)."""
    return method == claim or method.startswith(claim + " ")


def _rivals_sentence(b: BenchmarkStudy, study: StudyConfig, claim: MethodRow) -> str:
    """The claim's headline reading against each rival's: better with separated intervals, or
    why not shown."""
    head = b.headline
    key, fmt = (head.name, study.mu_fraction), reading_fmt(head.forget_metric)
    better, one_step, not_shown = [], [], []
    for rival in study.rivals:
        r = b.row(rival)
        if r is None:
            not_shown.append(f"{rival} (not run)")
            continue
        c = separation(claim, r, study.mu_fraction, head)
        if c.outcome == "better":
            (one_step if c.why == ONE_KS_STEP else better).append(rival)
        else:
            reading = fmt_summary(r.readings[key], fmt)
            not_shown.append(f"{rival} ({c.outcome}: {c.why}; {reading})")
    way = "higher" if head.higher_forget else "lower"
    mu = head.utility_metric
    return (
        f"At {mu.title} {mu.format(b.levels[key])} ({study.mu_fraction:g} x target), "
        f"{study.claim}'s {head.forget_metric.title} is {fmt_summary(claim.readings[key], fmt)}"
        + (
            f"; {way} than {', '.join(better)} with non-overlapping 95 % intervals"
            if better
            else ""
        )
        + (f"; {way} than {', '.join(one_step)}, but {ONE_KS_STEP}" if one_step else "")
        + (f"; not shown against {', '.join(not_shown)}" if not_shown else "")
        + "."
    )


def _attack_clause(b: BenchmarkStudy, study: StudyConfig, attack: str, claim: MethodRow) -> str:
    """One attack: the claim's forget fact recall before -> after, the rivals it is lower than,
    and the methods whose forgetting the attack brought back."""
    mine = claim.robust.get(attack)
    if mine is None:
        return f"{attack}: not measured"
    lower = [
        rv
        for rv in study.rivals
        if (r := b.row(rv))
        and attack in r.robust
        and compare(mine[1], r.robust[attack][1], ROBUST).outcome == "better"
    ]
    back = [r.method for r in b.rows if attack in r.robust and regained(*r.robust[attack])]
    fmt = reading_fmt(ROBUST)
    return (
        f"{attack}: {study.claim}'s {ROBUST.title} "
        f"{fmt_summary(mine[0], fmt)} -> {fmt_summary(mine[1], fmt)}"
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


def _controls_sentence(b: BenchmarkStudy, study: StudyConfig, claim: MethodRow) -> str:
    """The claim against its selection controls (random, inverse, oracle) at the main level."""
    head = b.headline
    key, fmt = (head.name, study.mu_fraction), reading_fmt(head.forget_metric)
    controls = []
    for name in ("random", "inverse", "oracle"):
        r = b.row(f"{study.claim} {name}")
        if r is None:
            controls.append(f"{name}: not run")
            continue
        c = separation(claim, r, study.mu_fraction, head)
        why = f", but {ONE_KS_STEP}" if c.why == ONE_KS_STEP else ""
        controls.append(f"vs {name} {fmt_summary(r.readings[key], fmt)}: {c.outcome}{why}")
    return "Influence selection (same token count) " + "; ".join(controls) + "."


def verdict(b: BenchmarkStudy, study: StudyConfig) -> str:
    """One sentence per question, built from the numbers: what was shown and what was not (the
    attacks' sentence only when ``study.attacks`` names some)."""
    head = b.headline
    key, fmt = (head.name, study.mu_fraction), reading_fmt(head.forget_metric)
    if key not in b.levels:
        return (
            f"No verdict: the benchmark has no target {head.utility_metric.title} to match "
            "(no reference evaluation of the target model?)."
        )
    claim = b.row(study.claim)
    if claim is None:
        return f"No verdict: the sweep has no {study.claim} runs."
    parts = [_rivals_sentence(b, study, claim)]
    if study.attacks:
        attacks = "; ".join(_attack_clause(b, study, a, claim) for a in study.attacks)
        parts.append(f"After the attacks, at each method's matched setting: {attacks}.")
    parts.append(_controls_sentence(b, study, claim))
    full, tnpo = b.row(f"{study.claim} p=100"), b.row("TNPO+GD")
    if full is not None and tnpo is not None:  # the same loss: a check of the pipeline
        parts.append(
            f"Check: at p = 100 % {study.claim} reads {fmt_summary(full.readings[key], fmt)}, "
            f"TNPO+GD {fmt_summary(tnpo.readings[key], fmt)} (the same loss)."
        )
    return " ".join(parts)
