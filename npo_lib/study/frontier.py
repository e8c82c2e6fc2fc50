"""Method comparison at matched utility: Pareto frontiers, readings on them, seeds, next points.

Pure functions over a list of finished runs (:class:`RunResult`), no files, no models, so the
study's numbers can be checked by hand (``tests/test_frontier.py``).

Why frontiers: a grid point says little on its own, since a method can buy forgetting with
utility. Each method's runs of one seed form a cloud in the (utility, forgetting) plane; its
Pareto frontier is the best forgetting the method reached at each utility. The study reads every
frontier at the same utility level (e.g. 0.95 x the target's model utility), interpolating
between the two frontier points around the level, in log10 for forget quality (a p-value spanning
orders of magnitude), linearly for recalls. The pairs read (:data:`TRADEOFFS`) are the
benchmark's headline pairs of the metric registry (:data:`npo_lib.eval.registry.BENCHMARKS`): for
TOFU forget quality vs model utility, and forget fact recall vs retain fact recall.

A reading is only as good as the grid around it (:class:`Reading`):

* ``interpolated``: frontier points on both sides of the level;
* ``floor not crossed``: every point keeps more utility than the level; the best point is
  reported, a lower bound of what the method would reach if pushed harder (never extrapolated);
* ``not reached``: no point keeps the utility; nothing is reported.

Seeds: each seed has its own frontier and reading; :func:`summarise` gives the mean (geometric
for forget quality) and a bootstrap 95 % interval of it (``scipy.stats.bootstrap``, percentile).

The adaptive search that proposes a method's next grid points lives in
:mod:`npo_lib.study.adaptive`.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from npo_lib.eval.registry import TOFU, Metric, MetricPair

INTERPOLATED, NOT_CROSSED, NOT_REACHED = "interpolated", "floor not crossed", "not reached"
FORGET_ITEMS = "counts.forget"  # a run's number of forget items (metrics.json's counts)
_STATUS_ORDER = {INTERPOLATED: 0, NOT_CROSSED: 1, NOT_REACHED: 2}


@dataclass(frozen=True)
class RunResult:
    """One finished forget + evaluation run.

    ``method``: what is compared (e.g. ``NPO+GD``, ``INFLUENCE+GD random p=10``); ``setting``:
    its strength, the swept keys without the seed (e.g. ``(("lr", 2e-4), ("num_epochs", 5))``);
    ``metrics``: flat metric name -> value (``model_utility``, ``relearn.after.fact_recall``, ...).
    """

    method: str
    seed: int
    setting: tuple[tuple[str, Any], ...]
    metrics: Mapping[str, float | None]
    name: str = ""
    config: Mapping[str, Any] = field(default_factory=dict)  # the run's flat config (dotted keys)

    def get(self, key: str) -> float | None:
        v = self.metrics.get(key)
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


Tradeoff = MetricPair  # a (utility, forgetting) pair, declared by its benchmark in the registry

# The pairs the study reads, by name (``fq_mu`` first: the headline pair).
TRADEOFFS: dict[str, Tradeoff] = {p.name: p for p in TOFU.pairs}


# ----------------------------------------------------------------------------- frontier


def pareto_frontier(
    points: Iterable[tuple[float, float]], tradeoff: Tradeoff
) -> list[tuple[float, float]]:
    """The non-dominated (utility, forget) points, by utility ascending.

    A point is dominated when another keeps at least its utility and forgets at least as well,
    one of them strictly. Along the result the forgetting gets strictly worse as utility grows.
    """
    pts = sorted(
        {(float(u), float(f)) for u, f in points}, key=lambda p: (-p[0], -tradeoff.goodness(p[1]))
    )
    out: list[tuple[float, float]] = []
    best = -math.inf
    # utility descending: keep a point only if it forgets better than every higher-utility one
    for u, f in pts:
        g = tradeoff.goodness(f)
        if g > best:
            out.append((u, f))
            best = g
    return out[::-1]


@dataclass(frozen=True)
class Reading:
    """The forgetting metric read at ``level`` on one frontier."""

    value: float | None
    status: str
    level: float


def read_at(
    frontier: Sequence[tuple[float, float]],
    level: float,
    tradeoff: Tradeoff,
    *,
    crossed: bool = False,
) -> Reading:
    """Forgetting at utility ``level`` on a frontier (utility ascending), never extrapolated.

    ``crossed``: some run (not on the frontier) fell below the level. With no frontier point
    below it, every run beyond the level forgets worse than the last one keeping it: the
    frontier is flat there, and that point's forgetting is the reading (not a bound)."""
    above = [p for p in frontier if p[0] >= level]
    below = [p for p in frontier if p[0] < level]
    if not above:
        return Reading(None, NOT_REACHED, level)
    b = above[0]  # the lowest utility that still keeps the level: the best forgetting that does
    if not below:
        return Reading(b[1], INTERPOLATED if crossed else NOT_CROSSED, level)
    a = below[-1]
    t = (level - a[0]) / (b[0] - a[0])
    if tradeoff.log and a[1] > 0 and b[1] > 0:
        value = 10 ** (math.log10(a[1]) + t * (math.log10(b[1]) - math.log10(a[1])))
    else:
        value = a[1] + t * (b[1] - a[1])
    return Reading(value, INTERPOLATED, level)


def points_of(results: Iterable[RunResult], tradeoff: Tradeoff) -> list[tuple[float, float]]:
    """(utility, forget) of every run that has both metrics."""
    out = []
    for r in results:
        u, f = r.get(tradeoff.utility), r.get(tradeoff.forget)
        if u is not None and f is not None:
            out.append((u, f))
    return out


def by_method(results: Iterable[RunResult]) -> dict[str, list[RunResult]]:
    """Runs grouped by method, in first-seen order."""
    out: dict[str, list[RunResult]] = {}
    for r in results:
        out.setdefault(r.method, []).append(r)
    return out


def seed_readings(
    results: Sequence[RunResult], level: float, tradeoff: Tradeoff
) -> dict[int, Reading]:
    """Per seed: the frontier of that seed's runs read at ``level``."""
    out = {}
    for s in sorted({r.seed for r in results}):
        pts = points_of([r for r in results if r.seed == s], tradeoff)
        out[s] = read_at(
            pareto_frontier(pts, tradeoff), level, tradeoff, crossed=any(u < level for u, _ in pts)
        )
    return out


# ----------------------------------------------------------------------------- seeds


@dataclass(frozen=True)
class Summary:
    """Mean over seeds and its bootstrap 95 % interval (None with fewer than 2 seeds)."""

    mean: float | None
    low: float | None
    high: float | None
    n: int
    status: str = INTERPOLATED
    values: tuple[float, ...] = ()


def mean_interval(
    values: Sequence[float],
    *,
    log: bool = False,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> Summary:
    """Mean (geometric when ``log``) and bootstrap interval of the mean over ``values``."""
    vals = [float(v) for v in values]
    if not vals:
        return Summary(None, None, None, 0)
    if log and min(vals) <= 0:
        log = False  # a zero cannot be averaged in log; fall back to the arithmetic mean
    x = np.log10(vals) if log else np.asarray(vals)
    back = (lambda v: float(10**v)) if log else float
    mean = back(float(np.mean(x)))
    if len(vals) < 2:
        return Summary(mean, None, None, 1, values=tuple(vals))
    if float(np.ptp(x)) == 0.0:
        return Summary(mean, mean, mean, len(vals), values=tuple(vals))
    from scipy.stats import bootstrap

    res = bootstrap(
        (x,),
        np.mean,
        confidence_level=confidence,
        n_resamples=n_resamples,
        method="percentile",
        random_state=np.random.default_rng(seed),
        vectorized=True,
    )
    ci = res.confidence_interval
    return Summary(mean, back(float(ci.low)), back(float(ci.high)), len(vals), values=tuple(vals))


def summarise(readings: Mapping[int, Reading], tradeoff: Tradeoff) -> Summary:
    """Mean and interval of the seeds' readings; the status is the weakest of them (a seed that
    never keeps the utility makes the method ``not reached``: no mean over the other seeds)."""
    if not readings:
        return Summary(None, None, None, 0, NOT_REACHED)
    status = max((r.status for r in readings.values()), key=_STATUS_ORDER.__getitem__)
    if status == NOT_REACHED:
        return Summary(None, None, None, len(readings), NOT_REACHED)
    s = mean_interval([r.value for r in readings.values() if r.value is not None], log=tradeoff.log)
    return Summary(s.mean, s.low, s.high, s.n, status, s.values)


def at_matched_utility(
    results: Sequence[RunResult], level: float, tradeoff: Tradeoff
) -> dict[str, Summary]:
    """Per method: its forgetting at utility ``level`` (mean over seeds, interval, status)."""
    return {
        m: summarise(seed_readings(rs, level, tradeoff), tradeoff)
        for m, rs in by_method(results).items()
    }


# ----------------------------------------------------------------------------- settings


def setting_means(
    results: Sequence[RunResult], metric: str
) -> dict[tuple[tuple[str, Any], ...], float]:
    """Mean of ``metric`` over the seeds of every setting that has it."""
    groups: dict[tuple[tuple[str, Any], ...], list[float]] = {}
    for r in results:
        v = r.get(metric)
        if v is not None:
            groups.setdefault(r.setting, []).append(v)
    return {k: statistics.fmean(v) for k, v in groups.items()}


def matched_setting(
    results: Sequence[RunResult], level: float, tradeoff: Tradeoff
) -> tuple[tuple[str, Any], ...] | None:
    """The setting a method is judged at: of the settings whose seed-mean utility keeps
    ``level``, the one that forgets best (seed means); None when none keeps it."""
    mu = setting_means(results, tradeoff.utility)
    fg = setting_means(results, tradeoff.forget)
    keep = [s for s, u in mu.items() if u >= level and s in fg]
    return max(keep, key=lambda s: (tradeoff.goodness(fg[s]), -mu[s])) if keep else None


def metric_at(
    results: Sequence[RunResult],
    setting: tuple[tuple[str, Any], ...],
    metric: str,
    *,
    log: bool = False,
) -> Summary:
    """``metric`` over the seeds of one setting: mean and bootstrap interval."""
    return mean_interval(
        [v for r in results if r.setting == setting and (v := r.get(metric)) is not None], log=log
    )


# ----------------------------------------------------------------------------- comparison


@dataclass(frozen=True)
class Comparison:
    """Whether method ``a`` forgets better than ``b`` at the same level, and how sure."""

    outcome: str  # "better", "worse", "overlap" (intervals overlap), "not comparable"
    why: str


def compare(a: Summary, b: Summary, tradeoff: Tradeoff | Metric) -> Comparison:
    """``better`` / ``worse`` only when the two 95 % intervals do not overlap; both readings
    interpolated (a lower bound or a missing reading is ``not comparable``). ``tradeoff`` says
    which way is better: a pair (its forgetting) or one metric."""
    for s, who in ((a, "first"), (b, "second")):
        if s.mean is None or s.status == NOT_REACHED:
            return Comparison("not comparable", f"the {who} method never keeps the utility level")
        if s.status == NOT_CROSSED:
            return Comparison(
                "not comparable",
                f"the {who} method's grid never crossed the utility level (a bound, not a reading)",
            )
        if s.low is None or s.high is None:
            return Comparison(
                "not comparable", f"the {who} method has fewer than 2 seeds at the level"
            )
    ga_lo, ga_hi = sorted((tradeoff.goodness(a.low), tradeoff.goodness(a.high)))
    gb_lo, gb_hi = sorted((tradeoff.goodness(b.low), tradeoff.goodness(b.high)))
    if ga_lo > gb_hi:
        return Comparison("better", "its interval lies entirely on the better side")
    if ga_hi < gb_lo:
        return Comparison("worse", "its interval lies entirely on the worse side")
    return Comparison("overlap", "the 95 % intervals overlap")


# ----------------------------------------------------------------------------- KS steps


def ks_step(results: Iterable[RunResult]) -> float | None:
    """The step of the KS statistic D behind forget quality, 1/n for the n forget items the runs
    were evaluated on (the retain model's truth ratios are on the same items); None when the
    runs do not record n (evaluations before it was kept)."""
    n = max((int(v) for r in results if (v := r.get(FORGET_ITEMS))), default=0)
    return 1.0 / n if n > 0 else None


def within_one_ks_step(reading: Summary, ks: Summary | None, step: float | None) -> bool:
    """Whether a forget-quality reading's interval rests on at most one KS step: it is one value
    (low == high over 2+ seeds), or the seeds' KS statistics D read at the same level span at
    most ``step`` (1/n), so the seeds' p-values differ by at most one of the few values a KS
    p-value takes with n items."""
    if reading.low is None or reading.high is None:
        return False
    if reading.low == reading.high:
        return True
    if ks is None or step is None or len(ks.values) < 2:
        return False
    return max(ks.values) - min(ks.values) <= step * (1 + 1e-9)
