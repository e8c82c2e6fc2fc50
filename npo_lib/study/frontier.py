"""Method comparison at matched utility: Pareto frontiers, readings on them, seeds, next points.

Pure functions over a list of finished runs (:class:`RunResult`), no files, no models, so the
study's numbers can be checked by hand (``tests/test_frontier.py``).

Why frontiers: a grid point says little on its own, since a method can buy forgetting with
utility. Each method's runs of one seed form a cloud in the (utility, forgetting) plane; its
Pareto frontier is the best forgetting the method reached at each utility. The study reads every
frontier at the same utility level (e.g. 0.95 x the target's model utility), interpolating
between the two frontier points around the level, in log10 for forget quality (a p-value spanning
orders of magnitude), linearly for recalls. Two pairs are read (:data:`TRADEOFFS`): forget quality
vs model utility (TOFU's pair) and forget fact recall vs retain fact recall.

A reading is only as good as the grid around it (:class:`Reading`):

* ``interpolated``: frontier points on both sides of the level;
* ``floor not crossed``: every point keeps more utility than the level; the best point is
  reported, a lower bound of what the method would reach if pushed harder (never extrapolated);
* ``not reached``: no point keeps the utility; nothing is reported.

Seeds: each seed has its own frontier and reading; :func:`summarise` gives the mean (geometric
for forget quality) and a bootstrap 95 % interval of it (``scipy.stats.bootstrap``, percentile).

:func:`propose_next` is the adaptive search: from a method's finished grid it proposes the next
points, stepping the strongest setting further (higher lr, more epochs, larger forget_coeff)
until the utility floor is crossed, then splitting the gap around the floor; points far from the
floor get one seed, points at the floor all of them.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

INTERPOLATED, NOT_CROSSED, NOT_REACHED = "interpolated", "floor not crossed", "not reached"
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


@dataclass(frozen=True)
class Tradeoff:
    """A (utility, forgetting) pair: the utility is better higher; ``higher_forget`` says which
    way the forgetting metric is better; ``log``: interpolate and average in log10."""

    name: str
    utility: str
    forget: str
    higher_forget: bool
    log: bool
    label: str

    def goodness(self, value: float) -> float:
        return value if self.higher_forget else -value


TRADEOFFS: dict[str, Tradeoff] = {
    "fq_mu": Tradeoff(
        "fq_mu",
        "model_utility",
        "forget_quality",
        True,
        True,
        "forget quality at matched model utility",
    ),
    "recall": Tradeoff(
        "recall",
        "retain_fact_recall",
        "forget_fact_recall",
        False,
        False,
        "forget fact recall at matched retain fact recall",
    ),
}


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
    for (
        u,
        f,
    ) in (
        pts
    ):  # utility descending: keep a point only if it forgets better than every higher-utility one
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


def compare(a: Summary, b: Summary, tradeoff: Tradeoff) -> Comparison:
    """``better`` / ``worse`` only when the two 95 % intervals do not overlap; both readings
    interpolated (a lower bound or a missing reading is ``not comparable``)."""
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


# ----------------------------------------------------------------------------- adaptive search


@dataclass(frozen=True)
class Axis:
    """A strength knob of the search: stepped by ``factor`` up to ``limit`` (``integer``: rounded)."""

    key: str
    factor: float = 2.0
    limit: float | None = None
    integer: bool = False

    def step(self, value: float, *, down: bool = False) -> float | int | None:
        """The next value up (or down); None past ``limit`` or when rounding leaves it unchanged."""
        nxt = value / self.factor if down else value * self.factor
        nxt = int(round(nxt)) if self.integer else float(f"{nxt:.6g}")
        if (
            nxt == value
            or (not down and self.limit is not None and nxt > self.limit)
            or (self.integer and nxt < 1)
        ):
            return None
        return nxt

    def middle(self, a: float, b: float) -> float | int:
        m = math.sqrt(a * b) if a > 0 and b > 0 else (a + b) / 2
        return int(round(m)) if self.integer else float(f"{m:.6g}")


@dataclass(frozen=True)
class Proposal:
    """A point to run next: its setting, the seeds it needs, and why."""

    setting: tuple[tuple[str, Any], ...]
    seeds: tuple[int, ...]
    reason: str


def _with(
    setting: tuple[tuple[str, Any], ...], key: str, value: Any
) -> tuple[tuple[str, Any], ...]:
    d = dict(setting)
    d[key] = value
    return tuple(d.items())


def _seed_brackets(
    results: Sequence[RunResult],
    mu: Mapping[tuple[tuple[str, Any], ...], float],
    floor: float,
    seeds: Sequence[int],
    utility: str,
    axes: Sequence[Axis],
) -> list[tuple[tuple[tuple[str, Any], ...], int, str]]:
    """(setting, seed, why) for each seed whose own runs all fall on one side of the floor: the
    setting nearest (by seed-mean utility ``mu``) on the other side that it has not run, so that
    every seed's frontier brackets the floor (seeds differ in utility). Where the seed has run
    every such setting, its own edge setting is stepped one step further along each axis."""
    out = []
    for seed in seeds:
        mine = {
            r.setting: r.get(utility)
            for r in results
            if r.seed == seed and r.get(utility) is not None
        }
        for direction, pick in (("above", max), ("below", min)) if mine else ():
            if any((u >= floor) == (direction == "above") for u in mine.values()):
                continue
            why = f"seed {seed}: no point of its own {direction} the floor {floor:.3f}"
            edge = pick(mu[s] for s in mine if s in mu)  # this seed's weakest (strongest) setting
            others = [
                s
                for s in mu
                if s not in mine and (mu[s] > edge if direction == "above" else mu[s] < edge)
            ]
            if others:
                out.append((min(others, key=lambda s: abs(mu[s] - edge)), seed, why))
                continue
            last = pick(
                mine, key=lambda s: mine[s]
            )  # its own weakest (strongest) run: step past it
            for ax in axes:
                value = dict(last).get(ax.key)
                nxt = None if value is None else ax.step(float(value), down=direction == "above")
                if nxt is not None:
                    out.append(
                        (
                            _with(last, ax.key, nxt),
                            seed,
                            f"{why}; {ax.key} {'/' if direction == 'above' else 'x'}{ax.factor:g}",
                        )
                    )
    return out


def propose_next(
    results: Sequence[RunResult],
    floor: float,
    axes: Sequence[Axis],
    seeds: Sequence[int],
    *,
    near: float = 0.01,
    utility: str = "model_utility",
) -> list[Proposal]:
    """The next points of one method's grid (``results`` all of one method).

    * Floor not crossed (every setting's seed-mean utility >= ``floor``): step the strongest
      setting (lowest utility) one step along each axis, one seed each: a scout.
    * Every setting below the floor: step the weakest one back along each axis (one seed).
    * Crossed: the settings next to the floor (the weakest below it, the strongest above it, and
      any within ``near`` of it) get every seed; if the gap between the two around the floor is
      wider than ``2 * near`` in utility, the point half-way between them (geometric mean of each
      axis that differs) is scouted with one seed. A seed whose own runs all fall on one side of
      the floor also runs the nearest setting on the other side (by seed-mean utility), so that
      every seed's frontier can be read at the floor. The matched setting (:func:`matched_setting`)
      gets every seed too, wherever it lies.

    Points already run (with those seeds) are not proposed again; an empty list means the
    method's frontier around the floor is complete or every axis is at its limit.
    """
    mu = setting_means(results, utility)
    if not mu:
        return []
    done = {(r.setting, r.seed) for r in results}
    all_seeds, scout = tuple(seeds), tuple(seeds[:1])
    out: dict[tuple[tuple[str, Any], ...], Proposal] = {}

    def add(setting: tuple[tuple[str, Any], ...], want: tuple[int, ...], reason: str) -> None:
        missing = tuple(s for s in want if (setting, s) not in done)
        if missing and setting not in out:
            out[setting] = Proposal(setting, missing, reason)
        elif missing:  # already proposed: add the seeds it lacks
            p = out[setting]
            out[setting] = Proposal(setting, tuple(sorted({*p.seeds, *missing})), p.reason)

    above = {s: u for s, u in mu.items() if u >= floor}
    below = {s: u for s, u in mu.items() if u < floor}
    if not below:
        # step the setting of lowest utility; where its steps all ran (utility need not fall
        # with strength), the next lowest, and so on
        for strongest in sorted(above, key=lambda s: above[s]):
            for ax in axes:
                value = dict(strongest).get(ax.key)
                nxt = None if value is None else ax.step(float(value))
                if nxt is not None:
                    add(
                        _with(strongest, ax.key, nxt),
                        scout,
                        f"scout: strongest setting keeps utility {above[strongest]:.3f} >= floor {floor:.3f}; {ax.key} x{ax.factor:g}",
                    )
            if out:
                break
        return list(out.values())
    a = min(above, key=lambda s: above[s]) if above else None  # just above the floor
    b = max(below, key=lambda s: below[s])  # just below it
    if a is None:  # every setting is below the floor: step the weakest one back
        for ax in axes:
            value = dict(b).get(ax.key)
            prev = None if value is None else ax.step(float(value), down=True)
            if prev is not None:
                add(
                    _with(b, ax.key, prev),
                    scout,
                    f"scout: weakest setting has utility {mu[b]:.3f} < floor {floor:.3f}; {ax.key} /{ax.factor:g}",
                )
    for s in dict.fromkeys(
        [b, *([a] if a else []), *(s for s, u in mu.items() if abs(u - floor) <= near)]
    ):
        add(s, all_seeds, f"at the floor: utility {mu[s]:.3f} vs {floor:.3f}")
    if (
        utility == TRADEOFFS["fq_mu"].utility
        and (m := matched_setting(results, floor, TRADEOFFS["fq_mu"])) is not None
    ):
        add(
            m,
            all_seeds,
            "the matched setting (best forget quality keeping the floor): the attacks are read there",
        )
    for setting, seed, reason in _seed_brackets(results, mu, floor, all_seeds, utility, axes):
        add(setting, (seed,), reason)
    if a is not None and mu[a] - mu[b] > 2 * near:
        mid = a
        da, db = dict(a), dict(b)
        for ax in axes:
            if ax.key in da and ax.key in db and da[ax.key] != db[ax.key]:
                mid = _with(mid, ax.key, ax.middle(float(da[ax.key]), float(db[ax.key])))
        if mid not in (a, b) and mid not in mu:
            add(mid, scout, f"split the gap around the floor: utility {mu[a]:.3f} / {mu[b]:.3f}")
    return list(out.values())
