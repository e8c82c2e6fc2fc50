"""The trajectory of unlearning as a figure: the headline pair's path and the loss terms.

A forget run with ``eval.during.*`` measures the model at evaluation points (step 0 = the
target, then every ``every_steps`` steps / every epoch) and writes them to
``<run>/trajectory.jsonl`` (:mod:`npo_lib.commands.trajectory`). :func:`plot_trajectory` draws
one run's points in the plane of its benchmark's headline pair (utility on x, forgetting on y,
e.g. TOFU's model utility and forget quality; :data:`npo_lib.eval.registry.BENCHMARKS`), the
target marked, beside the loss terms of ``log.jsonl`` against the step.
:func:`plot_trajectories` overlays the paths of several runs (the dashboard).

:class:`LiveTrajectory` is the forget notebook's live view: passed to
:func:`npo_lib.commands.forget.run_forget` as an ``on_point`` hook, it re-draws the figure into
one IPython display handle at each new point, so the notebook shows the path growing while the
run trains and the executed notebook keeps the last figure (a PNG output). It draws only in an
IPython kernel, on rank 0, with ``eval.during`` on; otherwise it is inert (no output at all).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from npo_lib.commands.resolve import Resolved
from npo_lib.commands.trajectory import TRAJECTORY_FILE, read_trajectory
from npo_lib.eval.registry import BENCHMARKS, TOFU, MetricPair
from npo_lib.utils import dist
from npo_lib.viz.figures import ROLE_STYLE, draw_loss_terms, new_figure, read_log, save_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

Point = Mapping[str, Any]  # one line of trajectory.jsonl: {"step", "epoch", "metrics", ...}
LOG_FLOOR = 1e-300  # a value of 0 (a p-value) still sits on a log axis
STEP_LABELS = 12  # paths of at most this many points label every point with its step


def headline_pair(benchmark: str) -> MetricPair:
    """The benchmark's headline pair (TOFU's when the benchmark has no pairs registered)."""
    return BENCHMARKS[benchmark].headline if benchmark in BENCHMARKS else TOFU.headline


def path_xy(points: Sequence[Point], pair: MetricPair) -> list[tuple[int, float, float]]:
    """(step, utility, forgetting) of the points measuring both metrics of ``pair``, in step
    order; the forgetting floored at :data:`LOG_FLOOR` on a log-scaled metric."""
    out = []
    for p in sorted(points, key=lambda p: p["step"]):
        m = p.get("metrics") or {}
        x, y = m.get(pair.utility), m.get(pair.forget)
        if isinstance(x, int | float) and isinstance(y, int | float):
            out.append((int(p["step"]), float(x), max(float(y), LOG_FLOOR) if pair.log else y))
    return out


def _target_xy(xy: Sequence[tuple[int, float, float]]) -> tuple[float, float] | None:
    """The step-0 point (the model before unlearning), when measured."""
    return (xy[0][1], xy[0][2]) if xy and xy[0][0] == 0 else None


def draw_path(
    ax: Any,
    points: Sequence[Point],
    pair: MetricPair,
    *,
    label: str | None = None,
    colour: str = "C0",
    target_label: str | None = "target (step 0)",
    steps: bool = True,
) -> bool:
    """One run's path on ``ax``: its points joined in step order, the target starred, the last
    point ringed and, on short paths, each point labelled with its step. Returns whether any
    point measured both metrics."""
    xy = path_xy(points, pair)
    if not xy:
        return False
    _, xs, ys = zip(*xy)
    ax.plot(xs, ys, "-o", color=colour, ms=4, lw=1.4, label=label)
    ax.scatter([xs[-1]], [ys[-1]], s=90, facecolors="none", edgecolors=colour, zorder=4)
    if (target := _target_xy(xy)) is not None:
        ax.scatter([target[0]], [target[1]], label=target_label, **ROLE_STYLE["target"])
    if steps:
        shown = xy if len(xy) <= STEP_LABELS else [xy[0], xy[-1]]
        for label, x, y in step_labels(shown):
            ax.annotate(
                label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize="x-small"
            )
    return True


def step_labels(xy: Sequence[tuple[int, float, float]]) -> list[tuple[str, float, float]]:
    """One label per place: consecutive points at the same place (no measured change) share
    one, ``first–last`` (``0–1``), instead of printing over each other."""
    runs: list[list[tuple[int, float, float]]] = []
    for p in xy:
        if runs and runs[-1][-1][1:] == p[1:]:
            runs[-1].append(p)
        else:
            runs.append([p])
    return [
        (str(r[0][0]) if len(r) == 1 else f"{r[0][0]}–{r[-1][0]}", r[0][1], r[0][2]) for r in runs
    ]


def style_plane(ax: Any, pair: MetricPair, title: str) -> None:
    """The plane's axes: the utility on x, the forgetting on y (log-scaled when the metric
    spans decades), arrows saying which side is better."""
    forget, utility = pair.forget_metric, pair.utility_metric
    ax.set_yscale("log" if pair.log else "linear")
    ylabel = f"{forget.label} (log)" if pair.log else forget.label
    ax.set(xlabel=utility.label, ylabel=ylabel, title=title)


def plot_trajectory(
    points: Sequence[Point],
    pair: MetricPair = TOFU.headline,
    *,
    log_rows: Sequence[Mapping[str, Any]] = (),
    title: str = "",
    path: str | Path | None = None,
) -> Figure:
    """One run's trajectory: left, the path of its evaluation points in the ``pair`` plane
    (target starred, latest ringed); right, its loss terms (``log_rows``: log.jsonl's
    training-step rows) against the step, the evaluation steps as dotted lines."""
    fig = new_figure(figsize=(11, 4.2), layout="constrained")
    plane, loss = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.1, 1]})
    forget, utility = pair.forget_metric, pair.utility_metric
    if not draw_path(plane, points, pair, label="evaluation points"):
        plane.text(
            0.5,
            0.5,
            f"no {forget.title} / {utility.title} yet",
            ha="center",
            transform=plane.transAxes,
        )
    style_plane(plane, pair, f"{forget.title} vs {utility.title}")
    if plane.get_legend_handles_labels()[0]:
        plane.legend(fontsize="small", loc="best")
    draw_loss_terms(loss, log_rows)
    if not log_rows:
        loss.text(
            0.5,
            0.5,
            "no training step logged yet (logging_steps)",
            ha="center",
            transform=loss.transAxes,
        )
    for p in points:
        loss.axvline(p["step"], color="0.7", ls=":", lw=0.8)
    last = max((p["step"] for p in points), default=0)
    loss.set_title(f"loss terms (evaluation points dotted; step {last})")
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def plot_trajectories(
    runs: Mapping[str, Sequence[Point]],
    pair: MetricPair = TOFU.headline,
    *,
    title: str | None = None,
    path: str | Path | None = None,
) -> Figure:
    """Several runs' paths overlaid in the ``pair`` plane, one line per run labelled by its
    name, each run's target (step 0) starred; runs without a point measuring both metrics
    are listed under the plot."""
    fig = new_figure(figsize=(7.5, 4.8))
    ax = fig.subplots()
    missing, starred = [], False
    for i, (name, points) in enumerate(runs.items()):
        drawn = draw_path(
            ax,
            points,
            pair,
            label=name,
            colour=f"C{i % 10}",
            target_label=None if starred else "target (step 0)",
            steps=False,
        )
        starred = starred or (drawn and _target_xy(path_xy(points, pair)) is not None)
        if not drawn:
            missing.append(name)
    forget, utility = pair.forget_metric, pair.utility_metric
    style_plane(ax, pair, title or f"trajectories: {forget.title} vs {utility.title}")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    if missing:
        fig.text(
            0.01,
            -0.02,
            f"no {forget.title} / {utility.title}: " + ", ".join(missing),
            fontsize="small",
        )
    return save_figure(fig, path)


def run_trajectories(folders: Mapping[str, str | Path]) -> dict[str, list[dict[str, Any]]]:
    """name -> the points of the run's ``trajectory.jsonl``, for the runs that have one (in the
    given order); the others are left out."""
    out = {}
    for name, folder in folders.items():
        if points := read_trajectory(Path(folder) / TRAJECTORY_FILE):
            out[name] = points
    return out


def in_kernel() -> bool:
    """Whether this process runs an IPython kernel (a notebook, papermill), not a terminal."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and hasattr(shell, "kernel")


def png_image(fig: Figure) -> Any:
    """The figure as an IPython PNG image (what the executed notebook stores)."""
    import io

    from IPython.display import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return Image(data=buf.getvalue(), format="png")


class LiveTrajectory:
    """The forget notebook's live trajectory figure (see the module text).

    Call it with each new point (the ``on_point`` hook of ``run_forget``); it re-draws
    :func:`plot_trajectory` of the points so far and the run's log into one display handle.
    ``display`` is IPython's ``display`` (injectable: the tests count the updates). An inert
    view (``active`` False) has no hooks and draws nothing.
    """

    def __init__(
        self,
        run_dir: str | Path,
        pair: MetricPair,
        *,
        title: str = "",
        active: bool = True,
        display: Callable[..., Any] | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.pair = pair
        self.title = title
        self.active = active
        self.display = display
        self.points: list[dict[str, Any]] = []
        self.handle: Any = None
        self.draws = 0

    @classmethod
    def for_run(cls, run: Resolved) -> LiveTrajectory:
        """The view of a resolved forget run: active with ``eval.during`` on, in an IPython
        kernel, on rank 0; inert otherwise (a terminal, another rank, no evaluation points)."""
        cfg = run.cfg
        active = cfg.eval.during.enabled and in_kernel() and dist.is_rank0()
        title = f"{run.run_dir.name}: {run.spec.name}"
        return cls(run.run_dir, run.benchmark.metrics.headline, title=title, active=active)

    @property
    def hooks(self) -> tuple[Callable[[dict[str, Any]], None], ...]:
        """What ``run_forget(on_point=...)`` takes: this view when active, else nothing."""
        return (self,) if self.active else ()

    def __call__(self, point: Mapping[str, Any]) -> None:
        """A new evaluation point: keep it and re-draw (a resumed run's first point brings the
        earlier points of its trajectory.jsonl along)."""
        if not self.points and point["step"] > 0:
            file = self.run_dir / TRAJECTORY_FILE
            self.points = [p for p in read_trajectory(file) if p["step"] < point["step"]]
        self.points.append(dict(point))
        self.draw()

    def figure(self) -> Figure:
        """The figure of the points so far and the log written so far."""
        return plot_trajectory(
            self.points, self.pair, log_rows=read_log(self.run_dir, growing=True), title=self.title
        )

    def draw(self) -> None:
        """Show the current figure: the first draw opens the display handle, the next ones
        update it in place."""
        if not self.active or not self.points:
            return
        image = png_image(self.figure())
        if self.handle is None:
            show = self.display
            if show is None:
                from IPython.display import display as show
            self.handle = show(image, display_id=True)
        else:
            self.handle.update(image)
        self.draws += 1

    def close(self) -> None:
        """After training: the final figure, with the steps logged after the last point."""
        self.draw()


def run_benchmark(folder: str | Path) -> str:
    """The benchmark a run folder's ``config.yaml`` names (``tofu`` without one)."""
    import yaml

    file = Path(folder) / "config.yaml"
    conf = yaml.safe_load(file.read_text()) if file.is_file() else None
    bench = conf.get("benchmark") if isinstance(conf, dict) else None
    name = bench.get("name") if isinstance(bench, dict) else bench
    return name if isinstance(name, str) else "tofu"


def trajectory_overlay(folders: Mapping[str, str | Path]) -> Figure | None:
    """:func:`plot_trajectories` of the named run folders that hold a ``trajectory.jsonl``, in
    the headline plane of the first one's benchmark (runs on another benchmark, whose pair it
    does not measure, are listed under the plot); None when no run has a trajectory."""
    runs = run_trajectories(folders)
    if not runs:
        return None
    pair = headline_pair(run_benchmark(folders[next(iter(runs))]))
    return plot_trajectories(runs, pair)
