"""Where the grid points of ``npo sweep`` run: threads of this process, submitit jobs on this
machine, or a SLURM job array through submitit (the ``executor:`` block of the sweep file).

submitit does the scheduling, pickling, logging and requeueing; this module only turns the sweep
file's block into its parameters, gives each concurrent local run its own GPUs, and wraps a grid
point as one picklable job that runs the same notebooks as the thread pool does.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from npo_lib.config.schema import SweepExecutorConfig
from npo_lib.errors import ConfigError
from npo_lib.workflow.steps import Step, StepResult, run_steps

# SLURM / submitit states of a job that stopped without failing on its own: the point is not
# "failed", it is re-submitted by the next `npo sweep` (its finished notebooks are skipped)
INTERRUPTED_STATES = (
    "CANCELLED",
    "PREEMPTED",
    "TIMEOUT",
    "NODE_FAIL",
    "BOOT_FAIL",
    "DEADLINE",
    "INTERRUPTED",
)
# states of a SLURM job that will still run: a re-run of the sweep waits on it
ACTIVE_STATES = (
    "PENDING",
    "RUNNING",
    "REQUEUED",
    "CONFIGURING",
    "COMPLETING",
    "RESIZING",
    "SUSPENDED",
)


def visible_devices(env: str | None, device_count: int) -> list[str]:
    """The GPUs this process may hand out: ``CUDA_VISIBLE_DEVICES`` as written (indices or
    UUIDs) when set, else ``0 .. device_count-1``; an empty or ``-1`` variable hides them all."""
    if env is not None:
        ids = [d.strip() for d in env.split(",") if d.strip()]
        return [] if ids[:1] == ["-1"] else ids
    return [str(i) for i in range(device_count)]


def assign_devices(
    devices: Sequence[str], parallel: int, gpus_per_run: int
) -> list[list[str] | None]:
    """Device sets of the concurrent runs of a local sweep: slot i gets the i-th block of
    ``gpus_per_run`` devices, so no two concurrent runs share a GPU.

    Returns one entry per slot; ``None`` means "not pinned" (no GPU visible, or
    ``gpus_per_run=0``), and then there are ``parallel`` slots. With GPUs, the number of slots is
    ``min(parallel, len(devices) // gpus_per_run)``: a run never waits for a GPU another holds.
    A ``gpus_per_run`` larger than the visible GPUs is an error naming both.
    """
    if parallel < 1:
        raise ConfigError(f"sweep: parallel must be >= 1, got {parallel}")
    if gpus_per_run == 0 or not devices:
        return [None] * parallel
    slots = len(devices) // gpus_per_run
    if slots == 0:
        raise ConfigError(
            f"sweep executor.gpus_per_run={gpus_per_run} but only {len(devices)} GPU(s) are "
            f"visible ({','.join(devices)}): lower gpus_per_run"
        )
    return [
        list(devices[i * gpus_per_run : (i + 1) * gpus_per_run])
        for i in range(min(parallel, slots))
    ]


def local_device_slots(parallel: int, gpus_per_run: int) -> list[list[str] | None]:
    """:func:`assign_devices` for this machine (``CUDA_VISIBLE_DEVICES``, torch's GPU count)."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return assign_devices(
        visible_devices(os.environ.get("CUDA_VISIBLE_DEVICES"), count), parallel, gpus_per_run
    )


def cpu_threads_per_run(parallel: int, cpus: int | None, env: Mapping[str, str]) -> str | None:
    """``OMP_NUM_THREADS`` for each of ``parallel`` runs sharing this machine's ``cpus`` without
    GPUs: an even share (at least 1), so that N runs at a time do not start N x cpus threads and
    slow each other down; None when one run at a time or the user set the variable."""
    if parallel <= 1 or "OMP_NUM_THREADS" in env:
        return None
    return str(max(1, (cpus or 1) // parallel))


def point_record(results: Sequence[StepResult]) -> dict[str, Any]:
    """The status.json entry of one grid point from the results of its notebook steps."""
    failed = [r for r in results if r.status == "failed"]
    state = (
        "failed"
        if failed
        else ("skipped" if all(r.status == "skipped" for r in results) else "done")
    )
    return {
        "status": state,
        "seconds": sum(r.seconds for r in results),
        "error": failed[0].error if failed else "",
        "failed_step": failed[0].name if failed else "",
        "notebook": failed[0].output if failed else "",
        "log": failed[0].log if failed else "",
    }


@dataclass
class PointJob:
    """One grid point as a submitit job: its notebook steps, run in order in the job's process.

    ``devices`` pins the job to those GPUs (``CUDA_VISIBLE_DEVICES`` of its notebook kernels).
    submitit calls :meth:`checkpoint` when SLURM pre-empts the job or its time runs out: the job
    is requeued as it is, and its notebooks that finished are skipped (the forget notebook
    resumes from its last checkpoint).
    """

    name: str
    steps: list[Step]
    devices: list[str] | None = None

    def __call__(self) -> dict[str, Any]:
        if self.devices is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(self.devices)
        return point_record(
            run_steps(
                self.steps, stream=False, say=lambda s: print(f"[{self.name}] {s}", flush=True)
            )
        )

    def checkpoint(self) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(self)


def _submitit() -> Any:
    try:
        import submitit
    except ImportError:
        raise ConfigError(
            "npo sweep --executor local|slurm needs submitit: pip install -e '.[cluster]'"
        ) from None
    return submitit


def slurm_parameters(cfg: SweepExecutorConfig, name: str) -> dict[str, Any]:
    """``SlurmExecutor.update_parameters`` keywords of the sweep file's executor block."""
    params: dict[str, Any] = {
        "job_name": f"npo-{name}",
        "time": cfg.timeout_min,
        "cpus_per_task": cfg.cpus_per_run,
        "mem": f"{cfg.mem_gb}GB",
        "array_parallelism": cfg.array_parallelism,
        "nodes": 1,
        "ntasks_per_node": 1,
    }
    if cfg.gpus_per_run:
        params["gpus_per_node"] = cfg.gpus_per_run
    params.update(
        {k: v for k in ("partition", "account", "qos") if (v := getattr(cfg, k)) is not None}
    )
    if cfg.setup:
        params["setup"] = list(cfg.setup)
    if cfg.extra_sbatch:
        params["additional_parameters"] = dict(cfg.extra_sbatch)
    return params


def make_executor(cfg: SweepExecutorConfig, kind: str, folder: Path, name: str) -> Any:
    """A submitit executor writing its pickles and logs under ``folder``: ``local`` (a process
    per job on this machine) or ``slurm`` (sbatch; needs ``srun`` on PATH)."""
    submitit = _submitit()
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "local":
        ex = submitit.LocalExecutor(folder=folder, max_num_timeout=cfg.max_requeues)
        ex.update_parameters(timeout_min=cfg.timeout_min)
        return ex
    if kind == "slurm":
        try:
            ex = submitit.SlurmExecutor(folder=folder, max_num_timeout=cfg.max_requeues)
        except RuntimeError as e:  # no srun: not on a SLURM login node
            raise ConfigError(f"npo sweep --executor slurm: {e}") from None
        ex.update_parameters(**slurm_parameters(cfg, name))
        return ex
    raise ConfigError(f"sweep executor '{kind}' is not a submitit executor (local or slurm)")


def active_jobs(status: dict[str, Any], names: Sequence[str], folder: Path) -> dict[str, Any]:
    """The SLURM jobs of ``names`` that an earlier ``npo sweep`` submitted and that are still
    queued or running (their ids in ``status``): a re-run waits on them instead of submitting
    the point a second time into the same run folder."""
    import submitit

    out: dict[str, Any] = {}
    for name in names:
        rec = status.get(name) or {}
        if rec.get("status") in ("submitted", "running") and rec.get("job_id"):
            job = submitit.SlurmJob(folder=folder, job_id=str(rec["job_id"]))
            if str(job.state).upper().startswith(ACTIVE_STATES):
                out[name] = job
    return out


def job_record(job: Any) -> dict[str, str]:
    """Job id and log files of a submitted job (status.json keeps them per point)."""
    return {
        "job_id": str(job.job_id),
        "stdout": str(job.paths.stdout),
        "stderr": str(job.paths.stderr),
    }


def job_outcome(job: Any) -> dict[str, Any]:
    """Wait for ``job`` and return its point's status entry: the job's own record; ``failed``
    with the exception when the job raised; ``interrupted`` when it was cancelled, pre-empted
    past its requeues or lost its node (the next ``npo sweep`` submits it again)."""
    try:
        return dict(job.result())
    except Exception as e:  # noqa: BLE001 - any job failure is recorded, the sweep goes on
        state = str(getattr(job, "state", "UNKNOWN"))
        if any(state.upper().startswith(s) for s in INTERRUPTED_STATES):
            return {
                "status": "interrupted",
                "seconds": 0.0,
                "error": f"job {job.job_id} {state}: re-run npo sweep to resume it",
                "failed_step": "",
                "notebook": "",
                "log": "",
            }
        text = "".join(traceback.format_exception_only(type(e), e)).strip()
        return {
            "status": "failed",
            "seconds": 0.0,
            "error": text[-2000:],
            "failed_step": "job",
            "notebook": "",
            "log": "",  # the job's own stderr file is in its record
        }
