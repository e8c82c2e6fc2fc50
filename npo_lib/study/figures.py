"""The method study's figures: frontiers at matched utility and the selection controls.

Plain data in (the run layer computes the frontiers, see ``npo_lib.study.frontier``), a matplotlib
``Figure`` out (no pyplot state), saved as PNG when a path is given.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

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


def _err(iv: Interval) -> tuple[list[float], list[float]] | None:
    if iv.mean is None or iv.low is None or iv.high is None:
        return None
    return [max(iv.mean - iv.low, 0.0)], [max(iv.high - iv.mean, 0.0)]


def plot_frontiers(
    panels: Sequence[Panel], *, ncols: int = 2, path: str | Path | None = None
) -> Figure:
    """One axis per panel: every run (faint), each method's frontier (line), its readings at the
    utility levels (error bars: 95 % interval over seeds; hollow: a bound, the grid never
    crossed the level), the target and retain models, the levels (dotted)."""
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
    path: str | Path | None = None,
) -> Figure:
    """The selection controls: per benchmark (one axis each), one row per selection (influence
    top-p at each share, random, oracle, inverse, ...), its reading at matched utility with the
    95 % interval; hollow markers are bounds, missing rows never kept the utility."""
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
        if log_x:
            ax.set_xscale("log")
        ax.set(title=title, xlabel=xlabel)
        ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return save_figure(fig, path)
