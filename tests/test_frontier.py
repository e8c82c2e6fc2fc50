"""Frontiers, readings at matched utility, seed intervals and the adaptive search, on results
whose answers can be checked by hand."""

from __future__ import annotations

import math

import pytest

from npo_lib.study.adaptive import Axis, propose_next
from npo_lib.study.frontier import (
    INTERPOLATED,
    NOT_CROSSED,
    NOT_REACHED,
    TRADEOFFS,
    Reading,
    RunResult,
    Summary,
    at_matched_utility,
    compare,
    ks_step,
    matched_setting,
    mean_interval,
    metric_at,
    pareto_frontier,
    read_at,
    summarise,
    within_one_ks_step,
)

FQ, RECALL = TRADEOFFS["fq_mu"], TRADEOFFS["recall"]


def _r(
    method: str, seed: int, lr: float, mu: float, fq: float, epochs: int = 5, **extra: float
) -> RunResult:
    return RunResult(
        method,
        seed,
        (("lr", lr), ("num_epochs", epochs)),
        {"model_utility": mu, "forget_quality": fq, **extra},
    )


def test_pareto_frontier_drops_dominated_points():
    pts = [(0.80, 0.01), (0.78, 0.1), (0.70, 1.0), (0.75, 0.05), (0.80, 0.005)]
    assert pareto_frontier(pts, FQ) == [(0.70, 1.0), (0.78, 0.1), (0.80, 0.01)]
    # lower forget recall is better: (0.85, 0.6) is beaten by (0.9, 0.5)
    assert pareto_frontier([(0.9, 0.5), (0.8, 0.2), (0.85, 0.6)], RECALL) == [
        (0.8, 0.2),
        (0.9, 0.5),
    ]


def test_reading_interpolates_in_log_fq_and_never_extrapolates():
    front = [(0.70, 1.0), (0.78, 0.1), (0.80, 0.01)]
    r = read_at(front, 0.74, FQ)  # half-way between 1.0 and 0.1 in log10: 10^-0.5
    assert r.status == INTERPOLATED and r.value == pytest.approx(10**-0.5)
    assert read_at(front, 0.79, FQ).value == pytest.approx(10**-1.5)
    assert read_at(front, 0.78, FQ).value == pytest.approx(0.1)  # on a point: that point
    low = read_at(front, 0.60, FQ)  # every point keeps more utility: the best one, flagged
    assert (low.status, low.value) == (NOT_CROSSED, 1.0)
    high = read_at(front, 0.85, FQ)
    assert (high.status, high.value) == (NOT_REACHED, None)
    assert read_at([(0.8, 0.2), (0.9, 0.5)], 0.85, RECALL).value == pytest.approx(
        0.35
    )  # linear for recalls


def test_seed_means_are_geometric_for_fq_with_a_bootstrap_interval():
    s = mean_interval([0.1, 0.01, 0.001], log=True)
    assert s.mean == pytest.approx(0.01) and s.n == 3
    assert 0.001 <= s.low < 0.01 < s.high <= 0.1
    lin = mean_interval([1.0, 2.0, 3.0])
    assert lin.mean == pytest.approx(2.0) and 1.0 <= lin.low < 2.0 < lin.high <= 3.0
    assert mean_interval([0.5, 0.5, 0.5]) == Summary(0.5, 0.5, 0.5, 3, values=(0.5, 0.5, 0.5))
    assert mean_interval([0.4]).low is None  # one seed: no interval


def test_methods_read_at_matched_utility_over_seeds():
    # per seed two points around MU 0.74; FQ 1 at 0.70 and 10^-(seed+1) at 0.78
    # -> 10^-(seed+1)/2 at 0.74
    runs = [
        r
        for s in range(3)
        for r in (_r("A", s, 4e-4, 0.70, 1.0), _r("A", s, 2e-4, 0.78, 10.0 ** -(s + 1)))
    ]
    runs += [_r("B", s, 2e-4, 0.78, 0.01) for s in range(3)]  # never pushed below the level
    runs += [
        _r("C", 0, 2e-4, 0.78, 0.5),
        _r("C", 1, 2e-4, 0.60, 0.9),
    ]  # seed 1 never keeps the utility
    got = at_matched_utility(runs, 0.74, FQ)
    expect = [10 ** (-(s + 1) / 2) for s in range(3)]
    assert got["A"].status == INTERPOLATED and got["A"].values == pytest.approx(expect)
    assert got["A"].mean == pytest.approx(math.prod(expect) ** (1 / 3))
    assert got["B"].status == NOT_CROSSED and got["B"].mean == pytest.approx(0.01)
    assert got["C"].status == NOT_REACHED and got["C"].mean is None
    assert summarise({}, FQ).status == NOT_REACHED
    assert summarise({0: Reading(0.2, INTERPOLATED, 0.7)}, FQ).mean == pytest.approx(0.2)


def test_comparison_needs_separated_intervals_and_real_readings():
    a, b = Summary(0.3, 0.2, 0.4, 3), Summary(0.03, 0.01, 0.05, 3)
    assert compare(a, b, FQ).outcome == "better" and compare(b, a, FQ).outcome == "worse"
    assert compare(a, Summary(0.25, 0.1, 0.3, 3), FQ).outcome == "overlap"
    assert compare(a, Summary(0.3, 0.3, 0.3, 3, NOT_CROSSED), FQ).outcome == "not comparable"
    assert compare(a, Summary(None, None, None, 3, NOT_REACHED), FQ).outcome == "not comparable"
    # recall: lower is better, so the lower interval wins
    assert (
        compare(Summary(0.1, 0.05, 0.15, 3), Summary(0.5, 0.4, 0.6, 3), RECALL).outcome == "better"
    )


def test_matched_setting_is_the_strongest_that_keeps_the_level():
    runs = [
        _r("A", s, lr, mu + 0.001 * s, fq, relearn=0.1 * (s + 1))
        for s in range(3)
        for lr, mu, fq in ((1e-4, 0.80, 0.01), (2e-4, 0.76, 0.1), (4e-4, 0.70, 0.5))
    ]
    setting = matched_setting(runs, 0.74, FQ)
    assert setting == (("lr", 2e-4), ("num_epochs", 5))
    assert metric_at(runs, setting, "relearn").mean == pytest.approx(0.2)
    assert matched_setting(runs, 0.9, FQ) is None


AXES = (Axis("lr", 2.0, limit=1e-3), Axis("num_epochs", 2.0, limit=10, integer=True))


def test_search_scouts_further_while_the_floor_is_not_crossed():
    runs = [_r("A", 0, 1e-4, 0.80, 0.001), _r("A", 0, 2e-4, 0.78, 0.01)]
    got = propose_next(runs, 0.72, AXES, [0, 1, 2])
    assert [(dict(p.setting), p.seeds) for p in got] == [
        ({"lr": 4e-4, "num_epochs": 5}, (0,)),
        ({"lr": 2e-4, "num_epochs": 10}, (0,)),
    ]
    flat = [
        _r("A", 0, 1e-4, 0.79, 0.001),
        _r("A", 0, 2e-4, 0.80, 0.001),
        _r("A", 0, 4e-4, 0.80, 0.002),
    ]
    got = propose_next(
        flat, 0.72, (Axis("lr", 2.0, limit=1e-2),), [0, 1, 2]
    )  # lr 1e-4 has the lowest utility, its step ran
    assert [(dict(p.setting), p.seeds) for p in got] == [({"lr": 8e-4, "num_epochs": 5}, (0,))]
    at_limits = [_r("A", 0, 8e-4, 0.78, 0.01, epochs=10)]  # lr x2 = 1.6e-3 > limit, epochs at limit
    assert propose_next(at_limits, 0.72, AXES, [0, 1, 2]) == []


def test_search_gives_every_seed_around_the_floor_and_splits_a_wide_gap():
    runs = [
        _r("A", 0, 2e-4, 0.78, 0.01),
        _r("A", 0, 8e-4, 0.60, 0.9),
        _r("A", 0, 1e-4, 0.85, 0.001),
    ]
    got = {
        tuple(dict(p.setting).items()): p.seeds
        for p in propose_next(runs, 0.72, AXES, [0, 1, 2], near=0.01)
    }
    assert got == {
        (("lr", 8e-4), ("num_epochs", 5)): (1, 2),  # just below the floor
        (("lr", 2e-4), ("num_epochs", 5)): (1, 2),  # just above it
        (("lr", 4e-4), ("num_epochs", 5)): (0,),  # half-way (geometric) between them: a scout
    }  # 1e-4 (MU 0.85) is far from the floor: no more seeds
    done = [_r("A", s, lr, mu, 0.1) for s in (0, 1, 2) for lr, mu in ((2e-4, 0.73), (8e-4, 0.715))]
    assert (
        propose_next(done, 0.72, AXES, [0, 1, 2], near=0.01) == []
    )  # gap 0.015 < 2 x near, all seeds
    all_below = [_r("A", 0, 4e-4, 0.60, 0.9, epochs=10)]
    got = propose_next(all_below, 0.72, AXES, [0, 1, 2])
    assert {tuple(dict(p.setting).items()) for p in got if p.seeds == (0,)} == {
        (("lr", 2e-4), ("num_epochs", 10)),
        (("lr", 4e-4), ("num_epochs", 5)),
    }


def test_a_seed_whose_own_runs_all_fall_below_the_floor_runs_the_next_weaker_setting():
    # seed-mean utility at lr 2e-4 keeps the floor (0.73), but seed 1 lost more there (0.71)
    runs = [
        _r("A", 0, 1e-4, 0.80, 0.001),
        _r("A", 0, 2e-4, 0.75, 0.01),
        _r("A", 1, 2e-4, 0.71, 0.01),
        _r("A", 2, 2e-4, 0.73, 0.01),
        *(_r("A", s, 4e-4, 0.65, 0.5) for s in (0, 1, 2)),
    ]
    got = {
        tuple(dict(p.setting).items()): p.seeds
        for p in propose_next(runs, 0.72, AXES, [0, 1, 2], near=0.01)
    }
    assert got[(("lr", 1e-4), ("num_epochs", 5))] == (
        1,
    )  # seed 1 needs a point of its own above the floor
    assert all(
        1 not in seeds
        for setting, seeds in got.items()
        if setting != (("lr", 1e-4), ("num_epochs", 5))
    )  # only there


def test_runs_beyond_the_floor_that_forget_worse_make_a_flat_frontier_not_a_bound():
    # the run below the floor forgets worse than the one above: the frontier is flat at the floor
    runs = [_r("A", 0, 1e-4, 0.80, 0.001), _r("A", 0, 2e-4, 0.70, 0.0005)]
    (r,) = at_matched_utility(runs, 0.72, FQ).values()
    assert (r.status, r.mean) == (INTERPOLATED, pytest.approx(0.001))
    (never,) = at_matched_utility(
        runs[:1], 0.72, FQ
    ).values()  # nothing below the level: still a bound
    assert never.status == NOT_CROSSED


def test_the_matched_setting_gets_every_seed_even_far_from_the_floor():
    # lr 1e-4 keeps utility 0.80, far above the floor, and forgets best of the settings that keep it
    runs = [
        _r("A", 0, 1e-4, 0.80, 0.05),
        _r("A", 0, 2e-4, 0.75, 0.01),
        *(_r("A", s, 4e-4, 0.70, 0.5) for s in (0, 1, 2)),
        *(_r("A", s, 2e-4, 0.75, 0.01) for s in (1, 2)),
    ]
    got = {
        tuple(dict(p.setting).items()): p.seeds
        for p in propose_next(runs, 0.72, AXES, [0, 1, 2], near=0.01)
    }
    assert got[(("lr", 1e-4), ("num_epochs", 5))] == (1, 2)


def test_a_seed_that_ran_every_setting_without_crossing_steps_past_its_own_strongest():
    # lr 4e-4 crosses the floor on the seed mean, but seed 2 keeps 0.73 there and has run every
    # setting
    runs = [
        *(_r("A", s, lr, mu, 0.01) for s in (0, 1) for lr, mu in ((2e-4, 0.76), (4e-4, 0.66))),
        _r("A", 2, 2e-4, 0.78, 0.01),
        _r("A", 2, 4e-4, 0.73, 0.01),
    ]
    got = {
        tuple(dict(p.setting).items()): p.seeds
        for p in propose_next(runs, 0.72, (Axis("lr", 2.0, limit=1e-3),), [0, 1, 2], near=0.01)
    }
    assert got[(("lr", 8e-4), ("num_epochs", 5))] == (2,)  # one step further, for seed 2 only
    capped = propose_next(runs, 0.72, (Axis("lr", 2.0, limit=5e-4),), [0, 1, 2], near=0.01)
    assert all(dict(p.setting)["lr"] <= 5e-4 for p in capped)  # not past the axis limit


def test_an_interval_is_within_one_ks_step_when_it_is_one_value_or_its_d_spans_one_step():
    step = ks_step([_r("a", 0, 1e-4, 0.8, 0.5, **{"counts.forget": 36})])
    assert step == pytest.approx(1 / 36) and ks_step([_r("a", 0, 1e-4, 0.8, 0.5)]) is None
    one_value = Summary(0.71, 0.71, 0.71, 3)
    assert within_one_ks_step(one_value, None, None)  # [0.71, 0.71]: degenerate
    wide = Summary(0.5, 0.3, 0.7, 3)
    d = Summary(0.12, 0.1, 0.13, 3, values=(0.10, 0.12, 0.10 + 1 / 36))
    assert within_one_ks_step(wide, d, step)  # D spans exactly one step of 1/36
    far = Summary(0.12, 0.1, 0.2, 3, values=(0.10, 0.12, 0.10 + 2 / 36))
    assert not within_one_ks_step(wide, far, step)  # two steps
    assert not within_one_ks_step(wide, d, None)  # n unknown: only a single value is marked
    assert not within_one_ks_step(Summary(0.5, None, None, 1), d, step)  # no interval


def test_the_frontier_axis_zooms_on_the_floor_and_returns_the_runs_left_of_it():
    from npo_lib.study.figures import FrontierCurve, outside_runs, zoom_limits

    xs = [0.0, 0.05, 0.6, 0.7, 0.78, 0.81]  # two runs at utility ~0 would squeeze the axis
    lo, hi = zoom_limits(xs, [0.76, 0.784], keep=[0.80, 0.82])
    # floor 0.76: runs down to 0.57 stay in view, so 0.6 .. 0.82 (target / retain), padded 5 %
    assert (lo, hi) == (pytest.approx(0.6 - 0.011), pytest.approx(0.82 + 0.011))
    assert zoom_limits(xs, []) is None  # no floor: the axis is not zoomed
    assert zoom_limits([0.0], [0.76]) == (pytest.approx(0.75), pytest.approx(0.77))
    curves = [
        FrontierCurve("NPO+GD", [], runs=[(0.0, 1e-3), (0.7, 1e-2)]),
        FrontierCurve("GA+GD", [], runs=[(0.05, 0.5), (0.0, 0.2), (0.78, 1e-3)]),
        FrontierCurve("WGA+GD", [], runs=[(0.81, 1e-3)]),
    ]
    assert outside_runs(curves, lo) == {"NPO+GD": [1e-3], "GA+GD": [0.5, 0.2]}


def test_the_frontier_figure_labels_the_runs_left_of_its_zoomed_axis():
    from npo_lib.study.figures import FrontierCurve, Panel, plot_frontiers

    curve = FrontierCurve("NPO+GD", [(0.7, 1e-2), (0.8, 1e-3)], runs=[(0.0, 0.3), (0.7, 1e-2)])
    panel = Panel("t", "MU", "FQ", [curve], log_y=True, references={"target": (0.8, 1e-4)})
    panel.levels = [0.76, 0.784]
    ax = plot_frontiers([panel]).axes[0]
    assert ax.get_xlim()[0] == pytest.approx(0.7 - 0.005)
    assert [t.get_text() for t in ax.texts] == ["NPO+GD (1)"]
