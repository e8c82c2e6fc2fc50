"""Notebooks under papermill, the step cache, sweeps and multi-rank launches (random tiny Llama)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

from npo_lib.errors import ConfigError
from npo_lib.workflow.notebook import config_from_namespace, injected_parameters
from npo_lib.workflow.steps import NOTEBOOKS, Step, notebook_path, run_steps
from npo_lib.workflow.sweep import grid_points, point_name, run_sweep

ROOT = Path(__file__).resolve().parents[1]


def _world_params(world, **over) -> dict:
    """Config keys of a quick forget run on the random mini model."""
    return {
        "model_path": world["model_path"],
        "data_path": world["data_path"],
        "split": "forget10",
        "task_id": 1,
        "batch_size": 4,
        "num_epochs": 1,
        "lr": 1e-3,
        "warmup_epochs": 0,
        "forget_loss": "NPO+GD",
        **over,
    }


# ----------------------------------------------------------------------------- fast


def test_notebooks_have_a_tagged_parameters_cell_and_no_config_defaults():
    from npo_lib.config import Config

    keys = set(Config.__dataclass_fields__)
    for name in NOTEBOOKS:
        nb = nbformat.read(notebook_path(name), as_version=4)
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, name
        declared = {
            line.split("=")[0].strip()
            for line in tagged[0].source.splitlines()
            if "=" in line and not line.lstrip().startswith("#")
        }
        assert "config_files" in declared and not declared & keys, (
            f"{name} redeclares config defaults {declared & keys}"
        )


def test_config_from_namespace_takes_injected_keys_and_names_a_typo(tmp_path):
    import math

    params = tmp_path / "p.yaml"
    params.write_text("lr: 3.0e-4\nnum_epochs: 7\n")
    ns = {
        "config_files": [str(params)],
        "math": math,
        "In": [],
        "_x": 1,
        "lr": 1e-3,
        "selection": {"method": "top_k", "k": 2},
    }
    assert set(injected_parameters(ns, ["config_files"])) == {"lr", "selection"}
    cfg = config_from_namespace(ns, ["config_files"], [str(params)])
    assert (cfg.lr, cfg.num_epochs, cfg.selection.method, cfg.selection.k) == (1e-3, 7, "top_k", 2)
    with pytest.raises(ConfigError, match="num_epoch.*num_epochs"):
        config_from_namespace({"num_epoch": 3}, ["config_files"])


def test_a_dotted_grid_key_reaches_the_notebook_as_a_nested_parameter(tmp_path):
    """``selection.method`` is no Python name: papermill would write ``selection.method = ...``
    into the parameters cell (a NameError); it goes in as ``selection={...}``, merged with the
    sweep config's ``selection``."""
    from npo_lib.config import nest_keys
    from npo_lib.workflow.sweep import SweepSpec, sweep_steps

    spec = SweepSpec(
        name="s",
        runs_dir=str(tmp_path),
        config={"selection": {"p": 20}, "eval.max_new_tokens": 8},
        grid={"forget_loss": ["INFLUENCE+GD"], "selection.method": ["random"]},
        notebooks=["forget"],
    )
    _, runs, _ = sweep_steps(spec)
    (steps,) = runs.values()
    params = steps[0].params
    assert all(k.isidentifier() for k in params)
    assert params["selection"] == {"p": 20, "method": "random"} and params["eval"] == {
        "max_new_tokens": 8
    }
    cfg = config_from_namespace(params, ["config_files"])
    assert (cfg.selection.method, cfg.selection.p, cfg.eval.max_new_tokens) == ("random", 20, 8)
    assert nest_keys({"a": {"b": 1, "c": 2}}, {"a.b": 3}, {"a": {"d": 4}}) == {
        "a": {"b": 3, "c": 2, "d": 4}
    }


def test_grid_points_and_run_names():
    pts = grid_points({"forget_loss": ["NPO+GD", "GA+GD"], "lr": [1e-4, 2e-4], "selection.k": [3]})
    assert len(pts) == 4 and pts[0] == {"forget_loss": "NPO+GD", "lr": 1e-4, "selection.k": 3}
    assert point_name(pts[1]) == "forget_loss-NPO+GD_lr-0.0002_k-3"
    assert len({point_name(p) for p in pts}) == 4
    with pytest.raises(ConfigError, match="'lr' must be a non-empty list"):
        grid_points({"lr": 1e-4})


def test_spec_errors_name_the_key_before_any_notebook_runs(tmp_path):
    from npo_lib.workflow.pipeline import PipelineSpec
    from npo_lib.workflow.steps import read_spec
    from npo_lib.workflow.sweep import sweep_steps

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmethod: {a: {forget_loss: NPO+GD}}\n")
    with pytest.raises(ConfigError, match="unknown key.*method.*valid:.*methods"):
        read_spec(bad, PipelineSpec)
    from npo_lib.workflow.sweep import SweepSpec

    bad.write_text("name: x\nconfig: {num_epoch: 2}\ngrid: {lr: [1.0e-4]}\n")
    with pytest.raises(ConfigError, match="num_epoch"):
        sweep_steps(read_spec(bad, SweepSpec))


def test_step_key_follows_parameters_notebook_and_upstream(tmp_path):
    nb = notebook_path("forget")
    a = Step("a", nb, {"lr": 1e-3}, tmp_path / "a.ipynb")
    b = Step("b", nb, {"x": 1}, tmp_path / "b.ipynb", deps=[a])
    k = b.key
    b.runtime["resume"] = True  # run mode is not an input
    assert b.key == k
    a.params["lr"] = 2e-3
    assert b.key != k


# ----------------------------------------------------------------------------- papermill


@pytest.mark.slow
def test_forget_and_evaluation_notebooks_run_headless_and_skip_when_unchanged(
    mini_world, tmp_path, capsys
):
    run = tmp_path / "run"
    forget = Step(
        "forget",
        notebook_path("forget"),
        {"config_files": [], **_world_params(mini_world, save_dir=str(run))},
        tmp_path / "nb" / "forget.ipynb",
    )
    ev = Step(
        "evaluate",
        notebook_path("evaluation"),
        {
            "config_files": [],
            **_world_params(mini_world),
            "eval_model_path": str(run / "model"),
            "eval_out_dir": str(run),
        },
        tmp_path / "nb" / "evaluation.ipynb",
        deps=[forget],
    )
    res = run_steps([forget, ev], stream=False)
    assert [r.status for r in res] == ["done", "done"], res[-1].error
    result = json.loads((run / "result.json").read_text())
    assert result["forget_loss"] == "NPO+GD" and result["steps"] > 0
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["identity"]["model_path"] == str(run / "model")
    executed = nbformat.read(ev.output, as_version=4)
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in executed.cells)
    assert any(
        o.get("output_type") in ("display_data", "execute_result")
        for c in executed.cells
        if c.cell_type == "code"
        for o in c.outputs
    )
    # progress under the pipeline is whole lines: no widget bars, no carriage returns saved
    for nb in (forget.output, ev.output):
        for c in nbformat.read(nb, as_version=4).cells:
            for o in c.get("outputs", []):
                text = "".join(o.get("text", "")) + o.get("data", {}).get("text/plain", "")
                assert "\r" not in text and "0%|" not in text, (nb.name, text[:200])
    # unchanged inputs: both skipped; a changed parameter re-runs the step and its dependants
    assert [r.status for r in run_steps([forget, ev], stream=False)] == ["skipped", "skipped"]
    ev.params["eval_recompute"] = True
    assert [r.status for r in run_steps([forget, ev], stream=False)] == ["skipped", "done"]


@pytest.mark.slow
def test_a_failing_cell_stops_the_notebook_names_the_error_and_keeps_earlier_outputs(
    mini_world, tmp_path
):
    run = tmp_path / "run"
    good = Step(
        "forget",
        notebook_path("forget"),
        {"config_files": [], **_world_params(mini_world, save_dir=str(run))},
        tmp_path / "nb" / "1.ipynb",
    )
    bad = Step(
        "evaluate",
        notebook_path("evaluation"),
        {
            "config_files": [],
            **_world_params(mini_world),
            "eval_model_path": str(tmp_path / "missing"),
            "eval_out_dir": str(run),
            "num_epoch": 2,
        },
        tmp_path / "nb" / "2.ipynb",
        deps=[good],
    )
    res = run_steps([good, bad], stream=False)
    assert [r.status for r in res] == ["done", "failed"]
    assert "num_epoch" in res[1].error and "num_epochs" in res[1].error
    executed = nbformat.read(
        bad.output, as_version=4
    )  # papermill saved it with the failing cell marked
    errors = [
        o
        for c in executed.cells
        if c.cell_type == "code"
        for o in c.outputs
        if o.get("output_type") == "error"
    ]
    assert errors and errors[0]["ename"] == "ConfigError"
    assert (run / "result.json").is_file() and good.is_current()  # the earlier step's outputs stay
    assert json.loads(bad.output.with_name("2.failed.json").read_text())["error"] == res[1].error
    # the command line exits non-zero with the cell's error
    cmd = [
        sys.executable,
        "-m",
        "papermill",
        str(notebook_path("evaluation")),
        str(tmp_path / "3.ipynb"),
        "-p",
        "num_epoch",
        "2",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert r.returncode != 0 and "num_epoch" in r.stderr


@pytest.mark.slow
def test_sweep_records_a_failed_run_goes_on_and_resumes(mini_world, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(_world_params(mini_world)))
    spec = tmp_path / "sweep.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "name": "s",
                "params": [str(base)],
                "runs_dir": str(tmp_path / "runs"),
                "grid": {"forget_loss": ["NPO+GD", "NOPE+GD"]},
                "notebooks": ["forget", "evaluation"],
            }
        )
    )
    res = run_sweep(spec, stream=False)
    st = res["status"]
    assert [st[k]["status"] for k in st] == ["done", "failed"]
    assert "NOPE" in st["forget_loss-NOPE+GD"]["error"] and st["forget_loss-NOPE+GD"][
        "failed_step"
    ].endswith("forget")
    assert (
        "forget_loss-NPO+GD" in res["report"] and "NOPE" not in res["report"]
    )  # the table of finished runs
    status_file = tmp_path / "runs" / "s" / "status.json"
    assert json.loads(status_file.read_text())["forget_loss-NOPE+GD"]["status"] == "failed"
    # an interrupted sweep: the first run lost its evaluation; a re-run only redoes what is missing
    (
        tmp_path / "runs" / "s" / "forget_loss-NPO+GD" / "notebooks" / "02-evaluation.done.json"
    ).unlink()
    again = run_sweep(spec, stream=False)["status"]
    assert [again[k]["status"] for k in again] == ["done", "failed"]
    assert again["forget_loss-NPO+GD"]["seconds"] < st["forget_loss-NPO+GD"]["seconds"]
    assert [v["status"] for v in run_sweep(spec, stream=False)["status"].values()] == [
        "skipped",
        "failed",
    ]


@pytest.mark.slow
def test_launch_runs_the_forget_notebook_on_two_ranks(mini_world, tmp_path):
    pytest.importorskip("deepspeed")
    params = tmp_path / "p.yaml"
    params.write_text(yaml.safe_dump(_world_params(mini_world, save_dir=str(tmp_path / "run"))))
    out = tmp_path / "nb" / "forget.ipynb"
    bindir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"}
    r = subprocess.run(
        [
            str(bindir / "npo"),
            "launch",
            "--nproc",
            "2",
            "notebooks/forget.ipynb",
            "-f",
            str(params),
            "-o",
            str(out),
            "--master-port",
            "29571",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rank1 = out.parent / "ranks" / "forget.rank1.ipynb"
    assert out.is_file() and rank1.is_file()
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["world_size"] == 2
    shown = "".join(
        o.get("text", "") + json.dumps(o.get("data", {}))
        for c in nbformat.read(rank1, as_version=4).cells
        if c.cell_type == "code"
        for o in c.outputs
    )
    assert "world_size" in shown  # rank 1's kernel ran the same cells
    # a failing rank stops the launch and its error comes back
    r = subprocess.run(
        [
            str(bindir / "npo"),
            "launch",
            "--nproc",
            "2",
            "forget",
            "-f",
            str(params),
            "-p",
            "task_id",
            "99",
            "-p",
            "save_dir",
            str(tmp_path / "run2"),
            "-o",
            str(tmp_path / "bad.ipynb"),
            "--master-port",
            "29572",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode != 0 and "99" in r.stderr and "rank" in r.stderr


@pytest.mark.slow
def test_npo_run_pipeline_end_to_end_and_skips_unchanged_steps(
    prepared_embedded, tmp_path, monkeypatch
):
    from npo_lib.workflow.pipeline import run_pipeline

    cfg, _ = prepared_embedded
    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "demo.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "name": "demo",
                "params": [str(ROOT / "params/tiny_forget.yaml")],
                "config": {"cache_dir": cfg.cache_dir},
                "methods": {
                    "npo_gd": {"forget_loss": "NPO+GD"},
                    "influence_gd": {"forget_loss": "INFLUENCE+GD"},
                },
                "runs_dir": str(tmp_path / "runs"),
            },
            sort_keys=False,
        )
    )  # methods run and are reported in the order the file lists them
    res = run_pipeline(spec, stream=False)
    assert res["ok"], [s for s in res["steps"] if s["status"] == "failed"]
    names = [s["name"] for s in res["steps"]]
    assert names[:2] == ["prepare", "influence"] and names[-1] == "token visualisation"
    lines = [
        ln
        for ln in res["report"].splitlines()
        if ln.startswith("| ") and "forget quality" not in ln
    ]
    assert [ln.split("|")[1].strip() for ln in lines] == [
        "target",
        "retain",
        "npo_gd",
        "influence_gd",
    ]
    root = tmp_path / "runs" / "demo"
    assert (root / "report.csv").is_file() and res["heatmaps"] == str(
        (root / "heatmaps.html").resolve()
    )
    page = (root / "heatmaps.html").read_text()
    assert page.count("<span") > 100 and "Δ log p" in page  # the unlearned-vs-target row is there
    vis = nbformat.read(root / "notebooks" / "05-token_visualization.ipynb", as_version=4)
    assert "application/vnd.jupyter.widget-state+json" in vis.metadata.get(
        "widgets", {}
    )  # explorer state kept
    # unchanged: every step skipped; one method's change re-runs only what depends on it
    again = run_pipeline(spec, stream=False)
    assert {s["status"] for s in again["steps"]} == {"skipped"}
    spec.write_text(
        spec.read_text().replace("forget_loss: NPO+GD", "forget_loss: NPO+GD\n    num_epochs: 2")
    )
    third = run_pipeline(spec, stream=False)
    ran = [s["name"] for s in third["steps"] if s["status"] == "done"]
    assert ran == ["forget npo_gd", "evaluate npo_gd", "token visualisation"], ran


def test_finetune_notebook_runs_headless_and_records_the_memorisation_report(mini_world, tmp_path):
    run = tmp_path / "ft"
    params = {
        "config_files": [],
        "model_path": mini_world["model_path"],
        "data_path": mini_world["data_path"],
        "save_dir": str(run),
        "finetune": {
            "model": "retain",
            "lr": 1e-3,
            "num_epochs": 1,
            "batch_size": 4,
            "effective_batch_size": 8,
            "warmup_epochs": 0,
        },
    }
    step = Step("finetune", notebook_path("finetune"), params, tmp_path / "nb" / "finetune.ipynb")
    res = run_steps([step], stream=False)
    assert res[0].status == "done", res[0].error
    result = json.loads((run / "result.json").read_text())
    assert result["model"] == "retain" and set(result["memorisation"]) == {"forget", "retain"}
    executed = nbformat.read(step.output, as_version=4)
    shown = [
        o
        for c in executed.cells
        if c.cell_type == "code"
        for o in c.outputs
        if o.get("output_type") in ("display_data", "execute_result")
    ]
    assert any("fact_recall" in str(o.get("data", {})) for o in shown)


def test_a_pipeline_with_a_finetune_block_unlearns_the_models_it_fine_tunes(mini_world, tmp_path):
    from npo_lib.workflow.pipeline import PipelineSpec, pipeline_steps

    spec = PipelineSpec(
        name="hub",
        runs_dir=str(tmp_path),
        config={"model_family": "llama3.2-1b", "data_path": mini_world["data_path"]},
        methods={"npo_gd": {"forget_loss": "NPO+GD"}},
        finetune={"LoRA": {"r": 8}, "save_merged": True},
    )
    steps, folders = pipeline_steps(spec)
    names = [s.name for s in steps]
    assert names[:2] == ["finetune target", "finetune retain"] and "prepare" not in names
    target, retain = (
        tmp_path / "hub" / "finetune-target" / "model",
        tmp_path / "hub" / "finetune-retain" / "model",
    )
    assert [s.params["finetune"]["model"] for s in steps[:2]] == ["target", "retain"]
    forget = next(s for s in steps if s.name == "forget npo_gd")
    assert forget.params["model_path"] == str(target) and forget.params["retain_model_path"] == str(
        retain
    )
    assert {d.name for d in forget.deps} == {"finetune target", "finetune retain"}
    assert set(folders) == {"target", "retain", "npo_gd"}
    with pytest.raises(ConfigError, match="save_merged"):
        pipeline_steps(PipelineSpec(**{**spec.__dict__, "finetune": {"LoRA": {"r": 8}}}))


def test_a_run_stopped_after_training_but_before_its_step_was_recorded_is_trained_again(tmp_path):
    """Killed between the forget notebook's last cell and the step's done record: the folder
    holds result.json that no step vouches for, so the re-run overwrites instead of refusing."""
    from npo_lib.workflow.steps import Step, forget_mode, notebook_path

    run = tmp_path / "run"
    step = Step(
        "p: forget",
        notebook_path("forget"),
        {"save_dir": str(run)},
        run / "notebooks" / "01-forget.ipynb",
    )
    assert forget_mode(step) == {
        "overwrite": False,
        "resume": True,
    }  # nothing there, or an interrupted training
    run.mkdir()
    (run / "result.json").write_text("{}")
    assert forget_mode(step) == {"overwrite": True, "resume": False}
