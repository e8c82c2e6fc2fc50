"""``npo sweep --executor local|slurm``: GPU sets of concurrent runs, the sbatch script of the
SLURM path, and (slow) a sweep through submitit's local executor with a failing point and a
resume."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from npo_lib.config.schema import SweepExecutorConfig
from npo_lib.errors import ConfigError
from npo_lib.workflow.executors import (
    PointJob,
    assign_devices,
    job_outcome,
    job_record,
    make_executor,
    slurm_parameters,
    visible_devices,
)
from npo_lib.workflow.steps import read_spec
from npo_lib.workflow.sweep import SweepSpec, run_sweep

# ----------------------------------------------------------------------------- GPU sets


def test_visible_devices_reads_the_variable_or_counts_the_gpus():
    assert visible_devices(None, 0) == []
    assert visible_devices(None, 3) == ["0", "1", "2"]
    assert visible_devices("4,5, 7", 8) == ["4", "5", "7"]  # the variable wins over the count
    assert visible_devices("GPU-aa,GPU-bb", 2) == ["GPU-aa", "GPU-bb"]
    assert visible_devices("", 8) == [] and visible_devices("-1", 8) == []


def test_eight_gpus_give_each_concurrent_run_its_own_set():
    gpus = [str(i) for i in range(8)]
    assert assign_devices(gpus, 8, 1) == [[str(i)] for i in range(8)]
    assert assign_devices(gpus, 4, 2) == [["0", "1"], ["2", "3"], ["4", "5"], ["6", "7"]]
    # more runs asked than GPU sets: as many slots as sets, none shared
    slots = assign_devices(gpus, 6, 3)
    assert slots == [["0", "1", "2"], ["3", "4", "5"]]
    flat = [d for s in slots for d in s]
    assert len(flat) == len(set(flat))
    # the visible subset is handed out as written
    assert assign_devices(["4", "6"], 2, 1) == [["4"], ["6"]]


def test_without_gpus_or_with_gpus_per_run_0_runs_are_not_pinned():
    assert assign_devices([], 3, 1) == [None, None, None]
    assert assign_devices(["0", "1"], 2, 0) == [None, None]


def test_runs_sharing_the_cpus_get_an_even_share_of_threads_unless_the_user_chose():
    from npo_lib.workflow.executors import cpu_threads_per_run

    assert (
        cpu_threads_per_run(2, 2, {}) == "1"
        and cpu_threads_per_run(4, 16, {}) == "4"
        and cpu_threads_per_run(3, 2, {}) == "1"
    )
    assert cpu_threads_per_run(1, 16, {}) is None  # one run at a time: every CPU
    assert cpu_threads_per_run(2, 16, {"OMP_NUM_THREADS": "8"}) is None  # the user's choice stands


def test_too_many_gpus_per_run_names_both_numbers():
    with pytest.raises(ConfigError, match="gpus_per_run=4 but only 2 GPU"):
        assign_devices(["0", "1"], 1, 4)
    with pytest.raises(ConfigError, match="parallel must be >= 1"):
        assign_devices(["0"], 0, 1)


# ----------------------------------------------------------------------------- the sweep file


def test_executor_block_is_checked_before_anything_runs(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(
        yaml.safe_dump(
            {"name": "s", "grid": {"lr": [1e-4]}, "executor": {"kind": "slurm", "partitoin": "gpu"}}
        )
    )
    with pytest.raises(ConfigError, match="unknown executor key.*partitoin"):
        read_spec(spec, SweepSpec)
    spec.write_text(
        yaml.safe_dump({"name": "s", "grid": {"lr": [1e-4]}, "executor": {"kind": "cloud"}})
    )
    with pytest.raises(ConfigError, match="executor.kind must be one of"):
        read_spec(spec, SweepSpec)
    spec.write_text(
        yaml.safe_dump(
            {"name": "s", "grid": {"lr": [1e-4]}, "executor": {"kind": "slurm", "gpus_per_run": 2}}
        )
    )
    s = read_spec(spec, SweepSpec)
    assert (
        s.executor.kind == "slurm"
        and s.executor.gpus_per_run == 2
        and s.executor.mem_gb == SweepExecutorConfig().mem_gb
    )


def test_the_repository_sweep_file_parses():
    root = Path(__file__).resolve().parents[1]
    spec = read_spec(root / "params/sweep.yaml", SweepSpec)
    assert isinstance(spec.executor, SweepExecutorConfig)


# ----------------------------------------------------------------------------- SLURM


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch) -> Path:
    """``srun`` and ``sbatch`` stand-ins on PATH: sbatch keeps the script it is given and answers
    as SLURM does, so submitit's own submission path runs up to the cluster."""
    pytest.importorskip("submitit")
    bindir, kept = tmp_path / "bin", tmp_path / "sbatch_scripts"
    bindir.mkdir()
    kept.mkdir()
    (bindir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bindir / "sbatch").write_text(
        f'#!/bin/sh\ncp "$1" {kept}/script.sh\necho "Submitted batch job 4242"\n'
    )
    # the queue as sacct lists it: one task running, one cancelled
    (bindir / "sacct").write_text(
        "#!/bin/sh\nprintf 'JobID|State|NodeList\\n"
        "4242_0|RUNNING|n1\\n4242_1|CANCELLED by 0|n1\\n'\n"
    )
    for f in bindir.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return kept


def test_slurm_job_array_script_carries_the_executor_block(fake_slurm, tmp_path):
    cfg = SweepExecutorConfig(
        kind="slurm",
        partition="gpu",
        account="unlearn",
        gpus_per_run=2,
        cpus_per_run=12,
        mem_gb=96,
        timeout_min=180,
        array_parallelism=2,
        setup=["source .venv/bin/activate"],
        extra_sbatch={"constraint": "a100"},
    )
    params = slurm_parameters(cfg, "study")
    assert params["gpus_per_node"] == 2 and params["partition"] == "gpu" and params["mem"] == "96GB"
    ex = make_executor(cfg, "slurm", tmp_path / "jobs", "study")
    with ex.batch():
        jobs = [ex.submit(PointJob(f"p{i}", [])) for i in range(3)]
    script = (fake_slurm / "script.sh").read_text()
    for line in (
        "#SBATCH --partition=gpu",
        "#SBATCH --account=unlearn",
        "#SBATCH --gpus-per-node=2",
        "#SBATCH --cpus-per-task=12",
        "#SBATCH --mem=96GB",
        "#SBATCH --time=180",
        "#SBATCH --array=0-2%2",
        "#SBATCH --constraint=a100",
        "#SBATCH --job-name=npo-study",
        "source .venv/bin/activate",
    ):
        assert line in script, f"{line!r} not in the sbatch script:\n{script}"
    assert "--signal=USR2@" in script  # submitit's pre-emption / timeout signal: the job requeues
    assert "submitit.core._submit" in script
    recs = [job_record(j) for j in jobs]
    assert [r["job_id"] for r in recs] == ["4242_0", "4242_1", "4242_2"]
    assert all("4242_" in r["stdout"] and r["stdout"].endswith(".out") for r in recs)


def test_a_rerun_waits_on_jobs_still_queued_instead_of_submitting_twice(fake_slurm, tmp_path):
    from npo_lib.workflow.executors import active_jobs

    status = {
        "a": {"status": "running", "job_id": "4242_0"},
        "b": {"status": "submitted", "job_id": "4242_1"},
        "c": {"status": "failed", "job_id": "4242_2"},
        "d": {"status": "done"},
    }
    jobs = active_jobs(status, ["a", "b", "c", "d"], tmp_path / "jobs")
    assert list(jobs) == ["a"] and jobs["a"].job_id == "4242_0"  # b was cancelled: submitted again


def test_without_srun_the_slurm_executor_says_so(tmp_path, monkeypatch):
    pytest.importorskip("submitit")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ConfigError, match="--executor slurm"):
        make_executor(SweepExecutorConfig(kind="slurm"), "slurm", tmp_path / "jobs", "s")


def test_a_cancelled_job_is_interrupted_not_failed():
    class Cancelled:  # what submitit reports for a job scancel stopped
        job_id, state = "7_1", "CANCELLED by 1000"

        def result(self):
            raise RuntimeError("job 7_1 has state CANCELLED")

    rec = job_outcome(Cancelled())
    assert rec["status"] == "interrupted" and "re-run npo sweep" in rec["error"]
    Cancelled.state = "FAILED"
    assert job_outcome(Cancelled())["status"] == "failed"


# ----------------------------------------------------------------------------- local executor


def _world_params(world, **over) -> dict:
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
        "eval": {"max_new_tokens": 8},
        **over,
    }


@pytest.mark.slow
def test_local_executor_sweep_records_jobs_goes_on_after_a_failure_and_resumes(
    mini_world, tmp_path, monkeypatch
):
    pytest.importorskip("submitit")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(_world_params(mini_world)))
    spec = tmp_path / "sweep.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "name": "s",
                "params": [str(base)],
                "runs_dir": str(tmp_path / "runs"),
                "parallel": 2,
                "grid": {"forget_loss": ["NPO+GD", "NOPE+GD"]},
                "notebooks": ["forget", "evaluation"],
                "executor": {"kind": "local", "gpus_per_run": 1},
            }
        )
    )
    res = run_sweep(spec, stream=False)
    st = res["status"]
    good, bad = st["forget_loss-NPO+GD"], st["forget_loss-NOPE+GD"]
    assert res["executor"] == "local" and (good["status"], bad["status"]) == ("done", "failed")
    assert "NOPE" in bad["error"] and bad["failed_step"].endswith("forget")
    assert "forget_loss-NPO+GD" in res["report"] and "NOPE" not in res["report"]
    # each point was a submitit job of its own: its id and log files are recorded
    assert good["job_id"] != bad["job_id"]
    log = Path(good["stdout"])
    assert log.is_file() and "[forget_loss-NPO+GD]" in log.read_text()
    saved = json.loads((tmp_path / "runs" / "s" / "status.json").read_text())
    assert (
        saved["forget_loss-NOPE+GD"]["status"] == "failed"
        and saved["forget_loss-NPO+GD"]["job_id"] == good["job_id"]
    )
    # an interrupted point lost its evaluation: the re-run submits only what is missing
    (
        tmp_path / "runs" / "s" / "forget_loss-NPO+GD" / "notebooks" / "02-evaluation.done.json"
    ).unlink()
    again = run_sweep(spec, stream=False)["status"]
    assert [again[k]["status"] for k in again] == ["done", "failed"]
    assert again["forget_loss-NPO+GD"]["job_id"] != good["job_id"]
    assert (
        again["forget_loss-NPO+GD"]["seconds"] < good["seconds"]
    )  # the forget notebook was skipped
    third = run_sweep(spec, stream=False)["status"]
    assert [third[k]["status"] for k in third] == ["skipped", "failed"]
    assert "job_id" not in third["forget_loss-NPO+GD"]  # a finished point gets no job


def test_npo_sweep_executor_flag_fails_in_one_line_off_a_cluster(tmp_path, monkeypatch, capsys):
    pytest.importorskip("submitit")
    from npo_lib.cli import main as npo

    spec = tmp_path / "s.yaml"
    spec.write_text(
        yaml.safe_dump({"name": "s", "runs_dir": str(tmp_path / "runs"), "grid": {"lr": [1e-4]}})
    )
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun: not a SLURM login node
    assert npo(["sweep", str(spec), "--executor", "slurm"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--executor slurm" in err[0] and "srun" in err[0]
    root = tmp_path / "runs" / "s"
    assert not (root / "status.json").exists() and not (root / "lr-0.0001").exists()  # nothing ran
