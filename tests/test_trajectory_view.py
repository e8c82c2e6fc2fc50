"""The trajectory figures without training: one run's path and loss terms from a synthetic
trajectory, the live view's display-handle updates, the evaluation callback's ``on_point`` hook,
and the dashboard's overlay of the trajectories in fake run folders."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from npo_lib.commands.forget import check_forget_config
from npo_lib.commands.trajectory import TRAJECTORY_FILE, TrajectoryCallback
from npo_lib.config import load_config
from npo_lib.eval.registry import TOFU
from npo_lib.viz.trajectory import (
    LiveTrajectory,
    headline_pair,
    plot_trajectories,
    plot_trajectory,
    run_benchmark,
    trajectory_overlay,
)

MU, FQ = "model_utility", "forget_quality"
PAIR = TOFU.headline


def _points(rows: list[tuple[float | None, float | None]], every: int = 2) -> list[dict]:
    """Steps 0, every, 2 * every, ... with (forget_quality, model_utility)."""
    return [
        {"step": i * every, "epoch": i / 4, "metrics": {FQ: fq, MU: mu}}
        for i, (fq, mu) in enumerate(rows)
    ]


TRAJ = _points([(1e-5, 0.60), (1e-3, 0.59), (0.2, 0.58), (0.5, 0.55), (0.9, 0.40)])
LOG = [{"step": s, "loss": 1.0 - s / 10, "forget/npo": 0.8 - s / 10} for s in range(1, 9)]


def _labelled(ax) -> dict[str, object]:
    return {h.get_label(): h for h in ax.get_legend_handles_labels()[0]}


def _star(ax) -> list[tuple[float, float]]:
    """The offsets of the star-marked scatter (the target)."""
    stars = [c for c in ax.collections if c.get_label() == "target (step 0)"]
    assert len(stars) == 1, [c.get_label() for c in ax.collections]
    return [tuple(xy) for xy in stars[0].get_offsets()]


def test_one_run_figure_the_headline_plane_the_target_and_the_loss_terms():
    fig = plot_trajectory(TRAJ, PAIR, log_rows=LOG, title="npo")
    plane, loss = fig.axes
    assert plane.get_xlabel() == PAIR.utility_metric.label
    assert plane.get_ylabel() == f"{PAIR.forget_metric.label} (log)" and PAIR.log
    assert plane.get_yscale() == "log"
    (path,) = [ln for ln in plane.lines if ln.get_label() == "evaluation points"]
    assert list(path.get_xdata()) == [0.60, 0.59, 0.58, 0.55, 0.40]
    assert list(path.get_ydata()) == [1e-5, 1e-3, 0.2, 0.5, 0.9]
    assert _star(plane) == [(0.60, 1e-5)]
    assert [t.get_text() for t in plane.texts] == ["0", "2", "4", "6", "8"]  # step labels
    terms = {ln.get_label(): list(ln.get_xdata()) for ln in loss.lines if ln.get_label()[0] != "_"}
    assert terms == {"loss": list(range(1, 9)), "forget/npo": list(range(1, 9))}
    dotted = [ln for ln in loss.lines if ln.get_linestyle() == ":"]
    assert sorted(ln.get_xdata()[0] for ln in dotted) == [0, 2, 4, 6, 8]  # the points' steps
    assert fig._suptitle.get_text() == "npo"


def test_points_at_one_place_share_one_step_label():
    flat = _points([(1.0, 0.0), (1.0, 0.0), (0.77, 0.0), (0.77, 0.0), (0.77, 0.0)], every=1)
    plane = plot_trajectory(flat, PAIR).axes[0]
    assert [t.get_text() for t in plane.texts] == ["0–1", "2–4"]


def test_a_point_without_the_pair_is_left_off_and_an_empty_path_says_so():
    pts = [*TRAJ[:2], {"step": 4, "metrics": {FQ: None, MU: 0.5}}]
    fig = plot_trajectory(pts, PAIR)
    (path,) = [ln for ln in fig.axes[0].lines if ln.get_label() == "evaluation points"]
    assert len(path.get_xdata()) == 2
    assert "no training step logged yet" in fig.axes[1].texts[0].get_text()
    empty = plot_trajectory([{"step": 0, "metrics": {MU: 0.5}}], PAIR).axes[0]
    assert not empty.lines and "no forget quality / model utility yet" in empty.texts[0].get_text()


def test_overlay_one_path_per_run_labelled_by_name_one_target_entry():
    late = _points([(1e-5, 0.60), (1e-4, 0.60), (0.05, 0.57)], every=3)
    runs = {"npo_gd": TRAJ, "influence_gd": late, "no_pair": [{"step": 0, "metrics": {}}]}
    fig = plot_trajectories(runs, PAIR)
    (ax,) = fig.axes
    named = {ln.get_label(): ln for ln in ax.lines if not ln.get_label().startswith("_")}
    assert set(named) == {"npo_gd", "influence_gd"}
    assert len(named["influence_gd"].get_xdata()) == 3
    assert named["npo_gd"].get_color() != named["influence_gd"].get_color()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels.count("target (step 0)") == 1 and {"npo_gd", "influence_gd"} <= set(labels)
    assert "no_pair" in fig.texts[0].get_text()  # listed under the plot


class FakeHandle:
    def __init__(self) -> None:
        self.updates: list[object] = []

    def update(self, obj) -> None:
        self.updates.append(obj)


class FakeDisplay:
    """IPython's ``display(obj, display_id=True)``: returns one handle, counts the calls."""

    def __init__(self) -> None:
        self.calls: list[object] = []
        self.handle = FakeHandle()

    def __call__(self, obj, display_id=False):
        assert display_id is True
        self.calls.append(obj)
        return self.handle


def test_live_view_draws_once_then_updates_the_same_handle_per_point(tmp_path):
    (tmp_path / "log.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in LOG) + '{"step": 9, "lo'  # a half-written line
    )
    show = FakeDisplay()
    live = LiveTrajectory(tmp_path, PAIR, title="run", display=show)
    assert live.hooks == (live,)
    points = TRAJ[:3]
    for p in points:
        live(p)
    assert len(show.calls) == 1 and len(show.handle.updates) == len(points) - 1
    assert live.draws == len(points) and [p["step"] for p in live.points] == [0, 2, 4]
    for image in [*show.calls, *show.handle.updates]:
        assert image.format == "png" and image.data[:8] == b"\x89PNG\r\n\x1a\n"
    loss = live.figure().axes[1]
    assert {ln.get_label() for ln in loss.lines} >= {"loss", "forget/npo"}
    live.close()  # the final figure: one more update of the same handle
    assert len(show.calls) == 1 and len(show.handle.updates) == len(points)


def test_live_view_of_a_resumed_run_starts_from_the_file(tmp_path):
    (tmp_path / TRAJECTORY_FILE).write_text("".join(json.dumps(p) + "\n" for p in TRAJ[:4]))
    live = LiveTrajectory(tmp_path, PAIR, display=FakeDisplay())
    live(TRAJ[3])  # the first point after resuming (already appended to the file)
    assert [p["step"] for p in live.points] == [0, 2, 4, 6]


def test_inert_view_has_no_hooks_and_draws_nothing(tmp_path):
    show = FakeDisplay()
    live = LiveTrajectory(tmp_path, PAIR, active=False, display=show)
    assert live.hooks == ()
    live(TRAJ[0])
    live.close()
    assert show.calls == [] and live.draws == 0


def _cfg(mini_world, tmp_path, *over):
    return load_config(
        [
            f"model_path={mini_world['model_path']}",
            f"data_path={mini_world['data_path']}",
            f"save_dir={tmp_path / 'run'}",
            f"cache_dir={tmp_path / 'cache'}",
            "split=forget10",
            "task_id=1",
            "forget_loss=NPO",
            *over,
        ]
    )


def test_for_run_is_inert_outside_a_kernel_or_without_eval_during(mini_world, tmp_path):
    on = check_forget_config(_cfg(mini_world, tmp_path, "eval.during.every_steps=1"))
    off = check_forget_config(_cfg(mini_world, tmp_path))
    for res in (on, off):  # pytest is no IPython kernel: nothing is drawn in a terminal
        live = LiveTrajectory.for_run(res)
        assert not live.active and live.hooks == ()
        assert live.pair == PAIR and live.run_dir == res.run_dir


def test_the_callback_calls_its_hooks_with_each_point_record(mini_world, tmp_path):
    res = check_forget_config(_cfg(mini_world, tmp_path, "eval.during.every_steps=1"))
    res.run_dir.mkdir(parents=True)
    seen: list[dict] = []
    cb = TrajectoryCallback(res, on_point=[seen.append])
    control = SimpleNamespace(should_training_stop=False, should_log=True)
    logged: list[dict] = []

    def log(logs: dict) -> None:  # as transformers' Trainer.log: on_log clears should_log
        logged.append(logs)
        control.should_log = False

    cb.bind(SimpleNamespace(log=log))
    cb.measure = lambda: {FQ: 0.5, MU: 0.6}  # the numbers are not the point here
    cb.point(SimpleNamespace(global_step=0, epoch=0.0), control)
    assert logged[0]["eval_forget_quality"] == 0.5
    assert control.should_log  # the step's training loss is still logged after the point
    assert len(seen) == 1 and seen[0]["step"] == 0 and seen[0]["metrics"] == {FQ: 0.5, MU: 0.6}
    written = json.loads((res.run_dir / TRAJECTORY_FILE).read_text())
    assert written == seen[0]  # the hook sees the line trajectory.jsonl holds


def _fake_run(root: Path, name: str, points: list[dict] | None, benchmark: str = "tofu") -> Path:
    folder = root / name
    (folder / "eval").mkdir(parents=True)
    agg = (points or [{"metrics": {FQ: 0.1, MU: 0.5}}])[-1]["metrics"]
    (folder / "eval" / "metrics.json").write_text(json.dumps({"aggregates": agg}))
    (folder / "config.yaml").write_text(f"benchmark:\n  name: {benchmark}\n")
    if points is not None:
        (folder / TRAJECTORY_FILE).write_text("".join(json.dumps(p) + "\n" for p in points))
    return folder


def test_dashboard_overlays_the_runs_with_a_trajectory(tmp_path):
    from npo_lib.viz.dashboard import RunDashboard, write_dashboard_html

    runs = tmp_path / "runs"
    late = _points([(1e-5, 0.60), (0.05, 0.57)], every=3)
    folders = {
        "a_npo": _fake_run(runs, "a_npo", TRAJ),
        "b_influence": _fake_run(runs, "b_influence", late),
        "c_plain": _fake_run(runs, "c_plain", None),  # trained without eval.during
    }
    fig = trajectory_overlay(folders)
    (ax,) = fig.axes
    named = sorted(ln.get_label() for ln in ax.lines if not ln.get_label().startswith("_"))
    assert named == ["a_npo", "b_influence"] and not fig.texts  # c_plain skipped silently
    assert trajectory_overlay({"c_plain": folders["c_plain"]}) is None
    dash = RunDashboard(runs)
    assert dash.trajectories.layout.display is None and dash.trajectories.value[:4] == b"\x89PNG"
    page = write_dashboard_html(runs, tmp_path / "dashboard.html").read_text()
    assert page.count('class="tnpo-trajectories"') == 1
    alone = RunDashboard(folders["c_plain"])  # no trajectory: no overlay shown
    assert alone.trajectories.layout.display == "none"
    assert (
        "tnpo-trajectories"
        not in write_dashboard_html(folders["c_plain"], tmp_path / "plain.html").read_text()
    )


def test_the_overlay_reads_the_benchmark_from_the_run_config(tmp_path):
    folder = _fake_run(tmp_path, "m", TRAJ, benchmark="muse")
    assert run_benchmark(folder) == "muse" and run_benchmark(tmp_path / "none") == "tofu"
    assert headline_pair("no_such_benchmark") == PAIR
    assert headline_pair("tofu") is TOFU.headline
