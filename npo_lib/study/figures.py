"""The method study's figures: frontiers at matched utility and the selection controls.

Plain data in (the run layer computes the frontiers, see ``npo_lib.study.frontier``), a matplotlib
``Figure`` out (no pyplot state), saved as PNG when a path is given.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from npo_lib.utils.optional import require
from npo_lib.viz.figures import new_figure, save_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass
class Interval:
    """A mean over seeds with its 95 % interval (None bounds: no interval) and how it was read."""

    mean: float | None
    low: float | None = None
    high: float | None = None
    status: str = "interpolated"


@dataclass
class FrontierCurve:
    """One method in one (utility, forgetting) panel: its seed-mean frontier, every run, its
    readings at the utility levels (level -> interval)."""

    method: str
    frontier: list[tuple[float, float]]
    runs: list[tuple[float, float]] = field(default_factory=list)
    readings: dict[float, Interval] = field(default_factory=dict)


@dataclass
class Panel:
    """A (utility, forgetting) plane of one benchmark."""

    title: str
    xlabel: str
    ylabel: str
    curves: list[FrontierCurve]
    log_y: bool = False
    references: dict[str, tuple[float, float]] = field(
        default_factory=dict
    )  # target / retain -> (x, y)
    levels: list[float] = field(default_factory=list)


REFERENCE_STYLE = {"target": ("*", "black"), "retain": ("D", "tab:green")}
# The utility axis is zoomed on the floor (the lowest level): runs down to ZOOM_BELOW x the floor
# below it stay in view, so a few runs at utility 0 do not squeeze the readings into a corner.
ZOOM_BELOW = 0.25
ZOOM_PAD = 0.05  # of the zoomed width, each side
OUTSIDE_MARKER = "<"  # a run left of the zoomed axis, drawn at its edge (a left triangle)


def zoom_limits(
    xs: Sequence[float], levels: Sequence[float], keep: Sequence[float] = ()
) -> tuple[float, float] | None:
    """The utility axis's limits around the floor ``min(levels)``: from the lowest utility among
    the runs ``xs`` within ``ZOOM_BELOW`` x floor below the floor (the floor when none is) to the
    highest of the levels, ``keep`` (the target and retain models) and those runs, widened by
    ``ZOOM_PAD`` of the width each side. None without levels (no floor: matplotlib's axis)."""
    if not levels:
        return None
    floor = min(levels)
    near = [x for x in xs if x >= floor * (1 - ZOOM_BELOW)]
    lo, hi = min([*near, floor]), max([*levels, *keep, *near])
    pad = ZOOM_PAD * (hi - lo) if hi > lo else 0.01
    return lo - pad, hi + pad


def outside_runs(curves: Sequence[FrontierCurve], left: float) -> dict[str, list[float]]:
    """Per method, the forgetting of its runs left of ``left`` (the zoomed axis's edge)."""
    out: dict[str, list[float]] = {}
    for c in curves:
        ys = [y for x, y in c.runs if x < left]
        if ys:
            out[c.method] = ys
    return out


def _draw_outside(ax: Any, panel: Panel, colors: Sequence[Any]) -> None:
    """Zoom the panel's utility axis (:func:`zoom_limits`) and draw the runs left of it at its
    edge (◀), each method's labelled with its name and run count."""
    xs = [x for c in panel.curves for x, _ in c.runs]
    limits = zoom_limits(xs, panel.levels, [x for x, _ in panel.references.values()])
    if limits is None:
        return
    ax.set_xlim(*limits)
    color_of = {c.method: colors[i % len(colors)] for i, c in enumerate(panel.curves)}
    for method, ys in outside_runs(panel.curves, limits[0]).items():
        edge = [limits[0]] * len(ys)
        ax.scatter(
            edge, ys, marker=OUTSIDE_MARKER, s=24, color=color_of[method], zorder=4, clip_on=False
        )
        ax.annotate(
            f"{method} ({len(ys)})",
            (limits[0], sorted(ys)[len(ys) // 2]),
            xytext=(5, 0),
            textcoords="offset points",
            fontsize=6,
            va="center",
            color=color_of[method],
        )


def _err(iv: Interval) -> tuple[list[float], list[float]] | None:
    if iv.mean is None or iv.low is None or iv.high is None:
        return None
    return [max(iv.mean - iv.low, 0.0)], [max(iv.high - iv.mean, 0.0)]


def plot_frontiers(
    panels: Sequence[Panel], *, ncols: int = 2, path: str | Path | None = None
) -> Figure:
    """One axis per panel: every run (faint), each method's frontier (line), its readings at the
    utility levels (error bars: 95 % interval over seeds; hollow: a bound, the grid never
    crossed the level), the target and retain models, the levels (dotted). The utility axis is
    zoomed on the floor (:func:`zoom_limits`); runs left of it sit at its edge (◀), labelled."""
    nrows = max(1, -(-len(panels) // ncols))
    fig = new_figure(figsize=(6.4 * ncols, 4.6 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False).flatten()
    n_methods = max((len(p.curves) for p in panels), default=1)
    colors = require("matplotlib").colormaps["tab10" if n_methods <= 10 else "tab20"].colors
    for ax, panel in zip(axes, panels):
        for i, c in enumerate(panel.curves):
            color = colors[i % len(colors)]
            if c.runs:
                ax.scatter(*zip(*c.runs), s=9, color=color, alpha=0.3, linewidths=0)
            if c.frontier:
                ax.plot(*zip(*c.frontier), "-", marker=".", color=color, lw=1.4, label=c.method)
            for level, iv in c.readings.items():
                if iv.mean is None:
                    continue
                err = _err(iv)
                face = color if iv.status == "interpolated" else "none"
                ax.errorbar(
                    [level], [iv.mean], yerr=err, fmt="o", ms=6, color=color, mfc=face, capsize=3
                )
        for role, (x, y) in panel.references.items():
            marker, color = REFERENCE_STYLE.get(role, ("s", "grey"))
            ax.scatter([x], [y], marker=marker, s=120, color=color, zorder=5, label=role)
        for level in panel.levels:
            ax.axvline(level, ls=":", color="grey", lw=1)
        if panel.log_y:
            ax.set_yscale("log")
        _draw_outside(ax, panel, colors)
        ax.set(title=panel.title, xlabel=panel.xlabel, ylabel=panel.ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2, loc="best")
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_selection(
    groups: Mapping[str, Mapping[str, Interval]],
    *,
    xlabel: str,
    log_x: bool = True,
    axes_of: Mapping[str, tuple[str, bool]] | None = None,
    path: str | Path | None = None,
) -> Figure:
    """The selection controls: per benchmark (one axis each), one row per selection (influence
    top-p at each share, random, oracle, inverse, ...), its reading at matched utility with the
    95 % interval; hollow markers are bounds, missing rows never kept the utility. ``axes_of``:
    per group, its own (axis title, log) where benchmarks read different forgetting (else
    ``xlabel``, ``log_x``)."""
    n = max(1, len(groups))
    rows = max((len(g) for g in groups.values()), default=1)
    fig = new_figure(figsize=(6.0 * n, 0.45 * rows + 1.6))
    axes = fig.subplots(1, n, squeeze=False)[0]
    for ax, (title, items) in zip(axes, groups.items()):
        labels = list(items)
        for y, label in enumerate(labels):
            iv = items[label]
            if iv.mean is None:
                ax.text(
                    0.02,
                    y,
                    "not reached",
                    transform=ax.get_yaxis_transform(),
                    va="center",
                    fontsize=8,
                    color="grey",
                )
                continue
            err = _err(iv)
            face = "tab:blue" if iv.status == "interpolated" else "none"
            ax.errorbar([iv.mean], [y], xerr=err, fmt="o", color="tab:blue", mfc=face, capsize=3)
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        ax.invert_yaxis()
        label, log = (axes_of or {}).get(title, (xlabel, log_x))
        if log:
            ax.set_xscale("log")
        ax.set(title=title, xlabel=label)
        ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return save_figure(fig, path)
