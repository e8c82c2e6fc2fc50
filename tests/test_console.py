"""What `npo run` and `npo sweep` print: one line per step or point, then the report and the paths
of the outputs; papermill's and the kernels' output goes to a log beside each executed notebook
(`-v` shows it too), and a failed step names its cell error, notebook and log."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from npo_lib.cli import main as npo
from npo_lib.workflow.steps import Step, notebook_path, run_steps

STEP_LINE = re.compile(r"^\[(\d+)/(\d+)\] (.+?) +(done|skipped \(unchanged\)|failed) *([\d.]+ s)?$")


def _world_config(world) -> dict:
    """Config keys of a quick forget run on the random mini model (no prepare step)."""
    return {
        "model_path": world["model_path"],
        "data_path": world["data_path"],
        "split": "forget10",
        "task_id": 1,
        "batch_size": 4,
        "num_epochs": 1,
        "lr": 1e-3,
        "warmup_epochs": 0,
        "eval": {"max_new_tokens": 8},
    }


def _failing_step(world, tmp_path: Path) -> Step:
    """An evaluation whose parameters hold a typo: its first cell fails, before any model loads."""
    params = {"config_files": [], **_world_config(world), "num_epoch": 2}
    return Step("evaluate", notebook_path("evaluation"), params, tmp_path / "nb" / "eval.ipynb")


def test_a_failed_step_prints_its_cell_error_notebook_and_log_and_nothing_else(
    mini_world, tmp_path, capfd
):
    step = _failing_step(mini_world, tmp_path)
    lines: list[str] = []
    (res,) = run_steps([step], say=lines.append)
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")  # the kernel's and papermill's output stayed in the log
    assert res.status == "failed" and "\n" not in res.error
    assert res.error.startswith("ConfigError: ") and "num_epoch" in res.error
    head, detail = lines
    m = STEP_LINE.match(head)
    assert m and m.group(3) == "evaluate" and m.group(4) == "failed", head
    assert detail.splitlines() == [
        f"  {res.error}",
        f"  notebook: {step.output}",
        f"  log: {step.log_file}",
    ]
    log = step.log_file.read_text()
    assert "Executing notebook with kernel: python3" in log  # papermill's notices
    assert "Passed unknown parameter: num_epoch" in log
    assert "PapermillExecutionError" in log and "num_epoch" in log  # the cell's traceback
    # -v: the same output on stderr as it comes, and a line before the step
    lines.clear()
    run_steps([step], stream=True, say=lines.append)
    out, err = capfd.readouterr()
    assert "Executing notebook with kernel: python3" in err and "PapermillExecutionError" in err
    assert lines[0].startswith("[1/1] evaluate  running evaluation.ipynb (new)")


@pytest.mark.slow
def test_npo_run_prints_a_line_per_step_then_the_report_and_the_outputs(
    mini_world, tmp_path, capfd, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "p.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "name": "quiet",
                "config": _world_config(mini_world),
                "methods": {"npo_gd": {"forget_loss": "NPO+GD"}},
                "runs_dir": str(tmp_path / "runs"),
            }
        )
    )
    assert npo(["run", str(spec)]) == 0
    out, err = capfd.readouterr()
    assert err == ""
    lines = out.splitlines()
    root = tmp_path / "runs" / "quiet"
    table = (root / "report.md").read_text().rstrip("\n").splitlines()
    steps = [STEP_LINE.match(ln) for ln in lines[:2]]
    assert [(m.group(3), m.group(4)) for m in steps if m] == [
        ("forget npo_gd", "done"),
        ("evaluate npo_gd", "done"),
    ], lines[:2]
    assert lines[2:] == [
        "",
        *table,
        "",
        f"report: {root / 'report.md'} (csv: {root / 'report.csv'})",
        f"dashboard: {(root / 'dashboard.html').resolve()}",
        lines[-1],
    ]
    assert re.fullmatch(r"pipeline quiet: ok in [\d.]+ s", lines[-1])
    log = (root / "notebooks" / "03-forget-npo_gd.log").read_text()
    assert "Output Notebook: " in log and "Passed unknown parameter: save_dir" in log
    assert "Executing:" in log  # the cell progress bar
    for text in ("Traceback", "Uncaught exception", "Event loop is closed", "without encryption"):
        assert text not in log, text
    # unchanged: every step skipped, one line each
    assert npo(["run", str(spec)]) == 0
    lines = capfd.readouterr().out.splitlines()
    assert [STEP_LINE.match(ln).group(4) for ln in lines[:2]] == ["skipped (unchanged)"] * 2


@pytest.mark.slow
def test_npo_sweep_prints_a_line_per_point(mini_world, tmp_path, capfd, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "s.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "name": "s",
                "config": _world_config(mini_world),
                "runs_dir": str(tmp_path / "runs"),
                "grid": {"forget_loss": ["NPO+GD", "NOPE+GD"]},
                "notebooks": ["forget"],
            }
        )
    )
    assert npo(["sweep", str(spec)]) == 1
    out, err = capfd.readouterr()
    assert err == ""
    good, bad, summary = out.splitlines()
    assert re.fullmatch(r"sweep s: 1/2 forget_loss-NPO\+GD: done in \d+ s", good), good
    log = tmp_path / "runs" / "s" / "forget_loss-NOPE+GD" / "notebooks" / "01-forget.log"
    assert bad.startswith("sweep s: 2/2 forget_loss-NOPE+GD: failed in ")
    assert "NOPE" in bad and bad.endswith(f"; log: {log})") and log.is_file()
    assert summary.startswith("sweep s: 1 ok, 1 failed or interrupted in ")
