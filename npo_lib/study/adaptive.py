"""The adaptive frontier search: from a method's finished grid, the next points to run.

:func:`propose_next` steps the strongest setting further (higher lr, more epochs, larger
forget_coeff) until the utility floor is crossed, then splits the gap around the floor; points far
from the floor get one seed, points at the floor all of them, so that every seed's Pareto
frontier (:mod:`npo_lib.study.frontier`) can be read at the floor. Pure functions, no files.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from npo_lib.eval.registry import TOFU, MetricPair
from npo_lib.study.frontier import RunResult, matched_setting, setting_means

Setting = tuple[tuple[str, Any], ...]
HEADLINE = TOFU.headline  # the default benchmark's headline pair (a benchmark passes its own)


@dataclass(frozen=True)
class Axis:
    """A strength knob of the search: stepped by ``factor`` up to ``limit`` (``integer``:
    rounded)."""

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
            # its own weakest (strongest) run: step past it
            last = pick(mine, key=lambda s: mine[s])
            for ax in axes:
                value = dict(last).get(ax.key)
                nxt = None if value is None else ax.step(float(value), down=direction == "above")
                if nxt is not None:
                    op = "/" if direction == "above" else "x"
                    out.append(
                        (_with(last, ax.key, nxt), seed, f"{why}; {ax.key} {op}{ax.factor:g}")
                    )
    return out


class ProposalSet:
    """Proposals being collected: a setting proposed twice gets the union of its seeds, a
    (setting, seed) already run is never proposed."""

    def __init__(self, done: set[tuple[Setting, int]]) -> None:
        self.done = done
        self.out: dict[Setting, Proposal] = {}

    def add(self, setting: Setting, want: Sequence[int], reason: str) -> None:
        missing = tuple(s for s in want if (setting, s) not in self.done)
        if not missing:
            return
        if setting in self.out:  # already proposed: add the seeds it lacks
            p = self.out[setting]
            self.out[setting] = Proposal(setting, tuple(sorted({*p.seeds, *missing})), p.reason)
        else:
            self.out[setting] = Proposal(setting, missing, reason)

    def step(
        self, setting: Setting, axes: Sequence[Axis], seeds: Sequence[int], why: str, *, down: bool
    ) -> None:
        """``setting`` one step up (or down) along each axis that can still move."""
        for ax in axes:
            value = dict(setting).get(ax.key)
            nxt = None if value is None else ax.step(float(value), down=down)
            if nxt is not None:
                op = "/" if down else "x"
                self.add(_with(setting, ax.key, nxt), seeds, f"{why}; {ax.key} {op}{ax.factor:g}")


def _split_gap(
    props: ProposalSet,
    a: Setting,
    b: Setting,
    mu: Mapping[Setting, float],
    axes: Sequence[Axis],
    scout: Sequence[int],
) -> None:
    """Scout the point half-way between ``a`` (above the floor) and ``b`` (below it): the
    geometric mean of each axis on which they differ."""
    mid = a
    da, db = dict(a), dict(b)
    for ax in axes:
        if ax.key in da and ax.key in db and da[ax.key] != db[ax.key]:
            mid = _with(mid, ax.key, ax.middle(float(da[ax.key]), float(db[ax.key])))
    if mid not in (a, b) and mid not in mu:
        props.add(mid, scout, f"split the gap around the floor: utility {mu[a]:.3f} / {mu[b]:.3f}")


def _scout_stronger(
    props: ProposalSet,
    above: dict[Setting, float],
    floor: float,
    axes: Sequence[Axis],
    scout: tuple[int, ...],
) -> None:
    """Floor not crossed: step the setting of lowest utility one step stronger; where its steps
    all ran (utility need not fall with strength), the next lowest, and so on."""
    for strongest in sorted(above, key=lambda s: above[s]):
        keeps = f"utility {above[strongest]:.3f} >= floor {floor:.3f}"
        props.step(strongest, axes, scout, f"scout: strongest setting keeps {keeps}", down=False)
        if props.out:
            break


def propose_next(
    results: Sequence[RunResult],
    floor: float,
    axes: Sequence[Axis],
    seeds: Sequence[int],
    *,
    near: float = 0.01,
    pair: MetricPair = HEADLINE,
    utility: str | None = None,
) -> list[Proposal]:
    """The next points of one method's grid (``results`` all of one method), around the floor
    on the utility of ``pair`` (the benchmark's headline pair; ``utility``: another metric's).

    * Floor not crossed (every setting's seed-mean utility >= ``floor``): step the strongest
      setting (lowest utility) one step along each axis, one seed each: a scout.
    * Every setting below the floor: step the weakest one back along each axis (one seed).
    * Crossed: the settings next to the floor (the weakest below it, the strongest above it, and
      any within ``near`` of it) get every seed; if the gap between the two around the floor is
      wider than ``2 * near`` in utility, the point half-way between them (geometric mean of each
      axis that differs) is scouted with one seed. A seed whose own runs all fall on one side of
      the floor also runs the nearest setting on the other side (by seed-mean utility), so that
      every seed's frontier can be read at the floor. The matched setting
      (:func:`~npo_lib.study.frontier.matched_setting`) gets every seed too, wherever it lies.

    Points already run (with those seeds) are not proposed again; an empty list means the
    method's frontier around the floor is complete or every axis is at its limit.
    """
    utility = utility or pair.utility
    mu = setting_means(results, utility)
    if not mu:
        return []
    props = ProposalSet({(r.setting, r.seed) for r in results})
    all_seeds, scout = tuple(seeds), tuple(seeds[:1])
    above = {s: u for s, u in mu.items() if u >= floor}
    below = {s: u for s, u in mu.items() if u < floor}
    if not below:
        _scout_stronger(props, above, floor, axes, scout)
        return list(props.out.values())
    a = min(above, key=lambda s: above[s]) if above else None  # just above the floor
    b = max(below, key=lambda s: below[s])  # just below it
    if a is None:  # every setting is below the floor: step the weakest one back
        why = f"scout: weakest setting has utility {mu[b]:.3f} < floor {floor:.3f}"
        props.step(b, axes, scout, why, down=True)
    at_floor = [b, *([a] if a else []), *(s for s, u in mu.items() if abs(u - floor) <= near)]
    for s in dict.fromkeys(at_floor):
        props.add(s, all_seeds, f"at the floor: utility {mu[s]:.3f} vs {floor:.3f}")
    matched = matched_setting(results, floor, pair) if utility == pair.utility else None
    if matched is not None:
        why = f"the matched setting (best {pair.forget_metric.title} keeping the floor)"
        props.add(matched, all_seeds, f"{why}: the attacks are read there")
    for setting, seed, reason in _seed_brackets(results, mu, floor, all_seeds, utility, axes):
        props.add(setting, (seed,), reason)
    if a is not None and mu[a] - mu[b] > 2 * near:
        _split_gap(props, a, b, mu, axes, scout)
    return list(props.out.values())
