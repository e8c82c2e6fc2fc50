"""``npo sweep SWEEP.yaml``: a grid over config keys, each point a run folder executed through
the same notebooks; failures are recorded while the sweep goes on, and a re-run resumes it."""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import json
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from npo_lib.config import check_keys
from npo_lib.config.schema import SweepExecutorConfig
from npo_lib.errors import ConfigError
from npo_lib.utils.io import atomic_write_json, atomic_write_text
from npo_lib.viz.report import report
from npo_lib.workflow.executors import (
    PointJob,
    active_jobs,
    cpu_threads_per_run,
    job_outcome,
    job_record,
    local_device_slots,
    make_executor,
    point_record,
)
from npo_lib.workflow.steps import (
    Step,
    forget_mode,
    notebook_path,
    read_spec,
    run_steps,
    spec_config,
    step_params,
)


@dataclass
class SweepSpec:
    """``npo sweep`` file: a grid over config keys on top of shared config."""

    name: str = "sweep"
    params: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] | list[dict[str, list[Any]]] = field(
        default_factory=dict
    )  # config key -> values; or a list of such grids (their union)
    setup: list[str] = field(
        default_factory=list
    )  # notebooks run once before the grid (prepare, influence)
    notebooks: list[str] = field(default_factory=lambda: ["forget", "evaluation"])  # per grid point
    parallel: int = 1  # grid points executed at a time
    runs_dir: str = "runs"
    executor: SweepExecutorConfig = field(default_factory=SweepExecutorConfig)  # where points run

    def __post_init__(self) -> None:
        if isinstance(self.executor, Mapping):  # the file's executor: block
            valid = {f.name for f in fields(SweepExecutorConfig)}
            unknown = sorted(set(self.executor) - valid)
            if unknown:
                raise ConfigError(
                    f"sweep {self.name}: unknown executor key(s) {', '.join(unknown)}; "
                    f"valid: {', '.join(sorted(valid))}"
                )
            self.executor = SweepExecutorConfig(**self.executor)


def _slug(value: Any) -> str:
    s = format(value, "g") if isinstance(value, float) else str(value)
    return "".join(c if c.isalnum() or c in "+-._" else "_" for c in s)


def grid_points(
    grid: Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Sequence[Any]]],
) -> list[dict[str, Any]]:
    """Every combination of the grid's values, in the file's order. A list of grids gives the
    union of their points, in order, each point once (``npo study --extend`` writes one file per
    round this way, so all of a round's points run ``parallel`` at a time)."""
    if isinstance(grid, Sequence) and not isinstance(grid, str):
        out: dict[str, dict[str, Any]] = {}
        for i, g in enumerate(grid):
            if not isinstance(g, Mapping):
                raise ConfigError(
                    f"sweep grid: entry {i} of the list must be a mapping of config key -> "
                    f"values, got {g!r}"
                )
            for pt in grid_points(g):
                out.setdefault(point_name(pt), pt)
        return list(out.values())
    if not isinstance(grid, Mapping):
        raise ConfigError(
            "sweep grid must be a mapping of config key -> values (or a list of them), "
            f"got {grid!r}"
        )
    for k, v in grid.items():
        if not isinstance(v, list) or not v:
            raise ConfigError(f"sweep grid: '{k}' must be a non-empty list of values, got {v!r}")
    keys = list(grid)
    return [
        dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(grid[k] for k in keys))
    ]


def point_name(point: Mapping[str, Any]) -> str:
    """A run folder name from its grid values, e.g. ``forget_loss-NPO+GD_lr-0.0001``."""
    return "_".join(f"{k.split('.')[-1]}-{_slug(v)}" for k, v in point.items())


def sweep_steps(spec: SweepSpec) -> tuple[list[Step], dict[str, list[Step]], Path]:
    """Setup steps, the steps of each grid point (run name -> steps) and the sweep folder."""
    root = Path(spec.runs_dir) / spec.name
    infl = root / "influence"
    check_keys(spec.config, type(spec_config(spec)), f"sweep {spec.name} config")
    setup: list[Step] = []
    for i, nb in enumerate(spec.setup, 1):
        extra = {"influence_dir": str(infl)} if nb == "influence" else {}
        setup.append(
            Step(
                nb,
                notebook_path(nb),
                step_params(spec, extra),
                root / "notebooks" / f"{i:02d}-{nb}.ipynb",
                deps=list(setup),
            )
        )
    runs: dict[str, list[Step]] = {}
    for point in grid_points(spec.grid):
        name, run = point_name(point), root / point_name(point)
        common = {**point, "influence_dir": str(infl)}
        steps: list[Step] = []
        for i, nb in enumerate(spec.notebooks, 1):
            extra: dict[str, Any] = dict(common)
            if nb == "forget":
                extra["save_dir"] = str(run)
            elif nb == "evaluation":
                extra.update(eval_model_path=str(run / "model"), eval_out_dir=str(run))
            elif nb == "token_visualization":
                extra.update(
                    unlearned_model_path=str(run / "model"), heatmap_file=str(run / "heatmaps.html")
                )
            steps.append(
                Step(
                    f"{name}: {nb}",
                    notebook_path(nb),
                    step_params(spec, extra),
                    run / "notebooks" / f"{i:02d}-{nb}.ipynb",
                    deps=[*setup, *steps],
                )
            )
            if nb == "forget":
                steps[-1].runtime.update(forget_mode(steps[-1]))
        runs[name] = steps
    return setup, runs, root


_NOT_RUN = {"seconds": 0.0, "error": "", "failed_step": "", "notebook": "", "log": ""}
Say = Callable[[str, dict[str, Any]], None]  # (point name, its status entry): record it


def _run_threads(
    runs: Mapping[str, list[Step]], order: Sequence[str], n: int, stream: bool, done: Say
) -> None:
    """Today's pool: ``n`` points at a time as threads of this process."""

    def say(name: str) -> Callable[[str], None]:
        """A point's step lines: on the console only when ``stream`` (``npo sweep -v``)."""
        return lambda s: print(f"[{name}] {s}", flush=True) if stream else None

    def one(name: str) -> tuple[str, dict[str, Any]]:
        steps = runs[name]
        return name, point_record(run_steps(steps, stream=stream and n == 1, say=say(name)))

    with ThreadPoolExecutor(max_workers=max(1, n)) as pool:
        for name, rec in pool.map(one, order):
            done(name, rec)


def _run_local(
    runs: Mapping[str, list[Step]],
    order: Sequence[str],
    slots: list[list[str] | None],
    executor: Any,
    started: Say,
    done: Say,
) -> None:
    """One submitit process per point, ``len(slots)`` at a time, each with its own device set
    (a thread per slot submits and waits; submitit runs, pickles and logs the jobs)."""
    free: queue.Queue[list[str] | None] = queue.Queue()
    for s in slots:
        free.put(s)
    lock = threading.Lock()  # submitit executors are not thread-safe

    def one(name: str) -> tuple[str, dict[str, Any]]:
        devices = free.get()
        try:
            with lock:
                job = executor.submit(PointJob(name, runs[name], devices))
            info = {**job_record(job), "devices": devices}
            started(name, {"status": "running", **_NOT_RUN, **info})
            return name, {**job_outcome(job), **info}
        finally:
            free.put(devices)

    with ThreadPoolExecutor(max_workers=len(slots)) as pool:
        for name, rec in pool.map(one, order):
            done(name, rec)


def _run_slurm(
    runs: Mapping[str, list[Step]],
    order: Sequence[str],
    executor: Any,
    status: Mapping[str, Any],
    started: Say,
    done: Say,
) -> None:
    """One SLURM job array, a task per point (``array_parallelism`` at a time); waits for it.
    Points whose job from an earlier run is still queued or running are waited on, not
    resubmitted."""
    import submitit

    jobs = active_jobs(dict(status), order, Path(executor.folder))
    fresh = [name for name in order if name not in jobs]
    if fresh:
        with executor.batch():
            pending = [executor.submit(PointJob(name, runs[name])) for name in fresh]
        jobs.update(zip(fresh, pending, strict=True))  # the batch fills its jobs on exit
    for name in fresh:
        started(name, {"status": "submitted", **_NOT_RUN, **job_record(jobs[name])})
    names = {job.job_id: name for name, job in jobs.items()}
    for job in submitit.helpers.as_completed(list(jobs.values()), poll_frequency=30):
        done(names[job.job_id], {**job_outcome(job), **job_record(job)})


def _run_setup(
    setup: list[Step], executor: Any, devices: list[str] | None, stream: bool, started: Say
) -> dict[str, Any]:
    """The setup notebooks here (thread executor, or nothing left to do), else as one job."""
    if executor is None or all(s.is_current() for s in setup):
        return point_record(run_steps(setup, stream=stream))
    job = executor.submit(PointJob("setup", setup, devices))
    started("_setup", {"status": "running", **_NOT_RUN, **job_record(job)})
    return {**job_outcome(job), **job_record(job)}


@contextlib.contextmanager
def cpu_share(name: str, n: int, on_cpus: bool) -> Iterator[None]:
    """While ``n`` points run at a time on this machine's CPUs, ``OMP_NUM_THREADS`` is their even
    share (:func:`cpu_threads_per_run`); the notebook kernels and submitit's local jobs inherit
    it, the setup before kept every CPU."""
    threads = cpu_threads_per_run(n, os.cpu_count(), os.environ) if on_cpus else None
    if threads is not None:
        os.environ["OMP_NUM_THREADS"] = threads
        print(
            f"sweep {name}: {n} runs at a time on {os.cpu_count()} CPUs: "
            f"OMP_NUM_THREADS={threads} each",
            flush=True,
        )
    try:
        yield
    finally:
        if threads is not None:
            os.environ.pop("OMP_NUM_THREADS", None)


def executor_kind(spec: SweepSpec, n: int, kind: str | None) -> tuple[str, list[list[str] | None]]:
    """Where the points run and the device sets of the concurrent ones: ``kind`` (default: the
    file's ``executor.kind``); ``thread`` turns into ``local`` when several points at a time
    would share a machine's GPUs and submitit can give each its own."""
    kind = kind or spec.executor.kind
    if kind not in ("thread", "local", "slurm"):
        raise ConfigError(f"sweep executor must be thread, local or slurm, got {kind!r}")
    slots = local_device_slots(n, spec.executor.gpus_per_run) if kind != "slurm" else []
    if kind == "thread" and len(slots) > 1 and slots[0] is not None:
        if importlib.util.find_spec("submitit") is None:
            print(
                f"sweep {spec.name}: {len(slots)} threads share the GPUs; "
                "pip install -e '.[cluster]' gives each run its own",
                flush=True,
            )
        else:
            print(
                f"sweep {spec.name}: {len(slots)} runs at a time on GPUs: each a local job "
                f"pinned to its own ({slots[0]!r}, ...)",
                flush=True,
            )
            kind = "local"
    return kind, slots


class StatusFile:
    """``<sweep>/status.json``: each point's entry, rewritten whole after every change (the
    threads of the pool record through one lock)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.status: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
        self.lock = threading.Lock()

    def record(self, name: str, rec: dict[str, Any]) -> None:
        with self.lock:
            self.status[name] = rec
            atomic_write_json(self.path, self.status)


def point_line(name: str, rec: Mapping[str, Any]) -> str:
    """A finished point on one line: its status, seconds and, failed, the step and cell error,
    and the step's log."""
    took = f" in {rec['seconds']:.0f} s" if rec.get("seconds") else ""
    if rec["status"] not in ("failed", "interrupted"):
        return f"{name}: {rec['status']}{took}"
    error = rec["error"].splitlines()[-1] if rec["error"] else ""
    where = rec.get("log") or rec.get("stderr")  # the step's log, or the job's stderr
    log = f"; log: {where}" if where else ""
    return f"{name}: {rec['status']}{took} ({rec['failed_step']}: {error}{log})"


def run_points(
    spec: SweepSpec,
    runs: Mapping[str, list[Step]],
    pending: list[str],
    status: StatusFile,
    *,
    n: int,
    kind: str,
    slots: list[list[str] | None],
    executor: Any,
    stream: bool,
) -> None:
    """The pending grid points through ``executor`` (``kind``), ``n`` at a time; each finished
    point is recorded and printed as one line."""
    finished_count = iter(range(len(runs) - len(pending) + 1, len(runs) + 1))

    def done(name: str, rec: dict[str, Any]) -> None:
        status.record(name, rec)
        line = point_line(name, rec)
        print(f"sweep {spec.name}: {next(finished_count)}/{len(runs)} {line}", flush=True)

    with cpu_share(spec.name, min(n, len(pending)), kind != "slurm" and slots[0] is None):
        if kind == "thread":
            _run_threads(runs, pending, n, stream, done)
        elif kind == "local":
            _run_local(runs, pending, slots, executor, status.record, done)
        else:
            _run_slurm(runs, pending, executor, status.status, status.record, done)


def sweep_summary(spec: SweepSpec, root: Path, order: list[str], kind: str, status: dict) -> dict:
    """The sweep's result: each point's entry, and the report table of every finished run."""
    finished = [
        root / name
        for name in order
        if status[name]["status"] in ("done", "skipped")
        and (root / name / "eval" / "metrics.json").is_file()
    ]
    out: dict[str, Any] = {
        "name": spec.name,
        "status": {k: status[k] for k in order},
        "executor": kind,
        "ok": all(status[k]["status"] in ("done", "skipped") for k in order),
    }
    if finished:
        table, csv_path = report(finished, root / "report.csv")
        atomic_write_text(root / "report.md", table + "\n")
        out.update(report=table, report_csv=str(csv_path))
    return out


def run_sweep(
    spec_file: str | os.PathLike,
    *,
    parallel: int | None = None,
    executor: str | None = None,
    stream: bool = False,
) -> dict[str, Any]:
    """``npo sweep``: setup once, then every grid point (``parallel`` at a time).

    ``executor`` (default: the file's ``executor.kind``): ``thread`` runs points as threads of
    this process; ``local`` as submitit processes, each pinned to its own GPUs
    (``executor.gpus_per_run``; chosen by itself when ``thread`` would run several points on a
    machine with GPUs); ``slurm`` as one SLURM job array through submitit (the setup notebooks
    first, as a job of their own). ``<sweep>/status.json`` records each run (done, failed with
    its error, skipped, interrupted; job id and log files under submitit); a re-run skips
    finished runs and repeats failed or interrupted ones; the sweep ends with the report table of
    every finished run. The console shows a line per setup step and per point; ``stream`` adds
    papermill's and the kernels' output, else in each step's log.
    """
    t0 = time.perf_counter()
    spec = read_spec(spec_file, SweepSpec)
    setup, runs, root = sweep_steps(spec)
    root.mkdir(parents=True, exist_ok=True)
    status = StatusFile(root / "status.json")
    n = parallel or spec.parallel
    kind, slots = executor_kind(spec, n, executor)
    folder = Path(spec.executor.folder or root / "jobs")
    sub = make_executor(spec.executor, kind, folder, spec.name) if kind != "thread" else None
    # 1. setup notebooks, once (a job of their own under submitit)
    setup_rec = _run_setup(setup, sub, slots[0] if slots else None, stream, status.record)
    if setup_rec["status"] in ("failed", "interrupted"):
        status.record("_setup", setup_rec)
        seconds = time.perf_counter() - t0
        return {
            "name": spec.name,
            "ok": False,
            "status": status.status,
            "executor": kind,
            "seconds": seconds,
        }
    status.status.pop("_setup", None)
    # 2. the grid points: finished ones are skipped without a job
    order = list(runs)
    pending = [name for name in order if not all(s.is_current() for s in runs[name])]
    for name in order:
        if name not in pending:
            status.record(name, {"status": "skipped", **_NOT_RUN})
    run_points(
        spec, runs, pending, status, n=n, kind=kind, slots=slots, executor=sub, stream=stream
    )
    out = sweep_summary(spec, root, order, kind, status.status)
    out["seconds"] = time.perf_counter() - t0
    return out
