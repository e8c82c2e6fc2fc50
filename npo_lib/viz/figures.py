"""Run figures as matplotlib ``Figure`` objects (no pyplot state): loss terms, forget quality vs
model utility, score distributions on fact and other tokens."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from npo_lib.eval.registry import TOFU
from npo_lib.utils.optional import require
from npo_lib.viz.tables import TokenTable, score_label

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def new_figure(**kw: Any) -> Figure:
    """A matplotlib Figure not attached to pyplot (no global state, safe in threads and kernels)."""
    return require("matplotlib.figure").Figure(**kw)


def save_figure(fig: Figure, path: str | Path | None) -> Figure:
    """Write ``fig`` to ``path`` (PNG at 120 dpi, parent folders made) when a path is given."""
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig


LOG_FILE = "log.jsonl"  # the per-step training log of a run folder


def read_log(run_dir: str | Path, *, growing: bool = False) -> list[dict[str, Any]]:
    """The training-step rows of a run's ``log.jsonl`` (those with a ``loss``; not the eval_*
    or summary rows). ``growing``: the log of a run still training, read as far as it is
    written (no file yet: no rows; a half-written last line is skipped)."""
    file = Path(run_dir) / LOG_FILE
    if not file.is_file():
        if growing:
            return []
        raise FileNotFoundError(f"no training log: {file} (written by `npo forget`)")
    rows = []
    for line in filter(str.strip, file.read_text().splitlines()):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if not growing:
                raise
    return [r for r in rows if "loss" in r and "train_runtime" not in r]


def plot_loss_terms(run_dir: str | Path, path: str | Path | None = None) -> Figure:
    """Total loss and every logged term (``forget/…``, ``reg/…``) against the step."""
    fig = new_figure(figsize=(6.5, 3.8))
    ax = fig.subplots()
    draw_loss_terms(ax, read_log(run_dir))
    ax.set_title(f"loss terms: {Path(run_dir).name}")
    return save_figure(fig, path)


def draw_loss_terms(ax: Any, rows: Sequence[Mapping[str, Any]]) -> None:
    """The total loss and every logged term (``forget/…``, ``reg/…``) of ``rows`` (log.jsonl's
    training-step rows) against the step, on ``ax``."""
    terms = ["loss", *sorted({k for r in rows for k in r if "/" in k})]
    for name in terms:
        pts = [(r["step"], r[name]) for r in rows if isinstance(r.get(name), int | float)]
        if pts:
            ax.plot(
                *zip(*pts),
                marker="." if len(pts) < 30 else None,
                label=name,
                lw=2 if name == "loss" else 1.2,
            )
    ax.set(xlabel="step", ylabel="loss term")
    ax.axhline(0, color="#999", lw=0.6)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")


# Marker of each run role in the forget quality / model utility plane.
ROLE_STYLE: dict[str, dict[str, Any]] = {
    "target": {"marker": "*", "s": 220, "color": "black", "zorder": 5},
    "retain": {"marker": "D", "s": 90, "color": "tab:green", "zorder": 5},
}
HEADLINE = TOFU.headline  # the plane: its utility on x, its forgetting on y


@dataclass(frozen=True)
class FqMuPoint:
    """One point of the forget quality / model utility plane: a run, or a setting's mean over
    seeds (with its spreads). ``group`` colours points alike (a method); ``role`` marks the
    target and the retain model."""

    name: str
    forget_quality: float | None
    model_utility: float | None
    role: str = "run"  # "target", "retain" or "run"
    group: str | None = None
    mu_err: float = 0.0
    fq_err: float = 0.0


def _plot_point(
    ax: Any, p: FqMuPoint, y: float, colours: Mapping[str, str], labelled: set[str]
) -> None:
    """One point: the role's marker, else its group's colour with error bars; each role and
    group labelled once."""
    if p.role in ROLE_STYLE:
        label = p.role if p.role not in labelled else None
        ax.scatter([p.model_utility], [y], label=label, **ROLE_STYLE[p.role])
        labelled.add(p.role)
        return
    g = p.group or "runs"
    ax.errorbar(
        [p.model_utility],
        [y],
        xerr=[p.mu_err] if p.mu_err else None,
        fmt="o",
        color=colours[g],
        label=g if g not in labelled else None,
        alpha=0.85,
        capsize=2,
    )
    labelled.add(g)


def plot_fq_mu(
    points: Sequence[FqMuPoint],
    *,
    floor: float | None = None,
    floor_label: str = "utility floor",
    annotate: bool = True,
    title: str = f"{HEADLINE.forget_metric.title} vs {HEADLINE.utility_metric.title}",
    path: str | Path | None = None,
) -> Figure:
    """The headline pair's plane: forget quality (log scale) against model utility, target and
    retain model marked.

    Points of one ``group`` share a colour and a legend entry (error bars when they carry
    spreads); ``floor`` draws the utility floor. Points without both numbers are listed under
    the plot. The legend sits outside the axes, so it never hides a point.
    """
    fig = new_figure(figsize=(7.5, 4.8))
    ax = fig.subplots()
    groups = list(dict.fromkeys(p.group or "runs" for p in points if p.role not in ROLE_STYLE))
    colours = {g: f"C{i % 10}" for i, g in enumerate(groups)}
    labelled: set[str] = set()
    missing = []
    for p in points:
        if p.forget_quality is None or p.model_utility is None:
            missing.append(p.name)
            continue
        y = max(p.forget_quality, 1e-300)  # a p-value of 0 still sits on the log axis
        _plot_point(ax, p, y, colours, labelled)
        if annotate:
            at = (p.model_utility, y)
            ax.annotate(p.name, at, textcoords="offset points", xytext=(5, 4), fontsize="x-small")
    if floor is not None:
        ax.axvline(floor, color="0.5", ls="--", lw=1, label=floor_label)
    forget, utility = HEADLINE.forget_metric, HEADLINE.utility_metric
    ax.set_yscale("log" if forget.log else "linear")
    ylabel = f"{forget.label} (log)" if forget.log else forget.label
    ax.set(xlabel=utility.label, ylabel=ylabel, title=title)
    if labelled or floor is not None:
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    if missing:
        note = f"no {forget.title} / {utility.title}: " + ", ".join(missing)
        fig.text(0.01, -0.02, note, fontsize="small")
    return save_figure(fig, path)


def plot_score_distributions(
    tables: Sequence[TokenTable],
    score: str = "influence",
    *,
    bins: int = 40,
    path: str | Path | None = None,
) -> Figure:
    """Histograms (densities, shared bins) of ``score`` on fact tokens and on the other tokens."""
    values = np.concatenate([t.scores[score] for t in tables]) if tables else np.zeros(0)
    fact = (
        np.concatenate([np.asarray(t.fact, dtype=bool) for t in tables])
        if tables
        else np.zeros(0, bool)
    )
    edges = np.histogram_bin_edges(values, bins=bins) if values.size else bins
    fig = new_figure(figsize=(6, 3.8))
    ax = fig.subplots()
    for name, sel, col in (("fact tokens", fact, "tab:red"), ("other tokens", ~fact, "tab:blue")):
        if sel.any():
            v = values[sel]
            ax.hist(
                v,
                bins=edges,
                density=True,
                alpha=0.55,
                color=col,
                label=f"{name} (n={v.size}, mean {v.mean():.3g})",
            )
    ax.set(
        xlabel=score_label(score),
        ylabel="density",
        title=f"{score_label(score)}: fact vs other tokens",
    )
    ax.legend(fontsize="small")
    return save_figure(fig, path)
