"""Headless execution of the parameterised notebooks: steps, the main pipeline, sweeps, launches.

Every unit of work is a :class:`Step`: one notebook executed by papermill with a parameters file,
its output notebook kept as the record. A step's key hashes the notebook, its parameters and the
keys of the steps it depends on; a step whose key matches its last successful execution is
skipped, so re-running a pipeline or an interrupted sweep only does what changed or is missing.

* ``npo run params/demo.yaml``: prepare -> influence -> forget (each method) -> evaluation
  (target, retain, each method) -> token visualisation, then the report table;
* ``npo sweep params/sweep.yaml``: a grid over config keys, each point a run folder executed
  through the same notebooks, failures recorded while the sweep goes on;
* ``npo launch --nproc N notebooks/forget.ipynb -f params.yaml``: one papermill kernel per rank
  under the DeepSpeed launcher (torchrun as a fallback).
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from npo_lib.config import ConfigError, load_config, read_params_file

NOTEBOOKS_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = ("prepare", "influence", "forget", "evaluation", "token_visualization")
DONE_SUFFIX, FAILED_SUFFIX, PARAMS_SUFFIX, LOG_SUFFIX = ".done.json", ".failed.json", ".params.yaml", ".log"


def notebook_path(name: str | os.PathLike) -> Path:
    """``"forget"`` -> ``notebooks/forget.ipynb``; an existing path is returned as is."""
    p = Path(name)
    if p.suffix == ".ipynb":
        if not p.is_file():
            raise ConfigError(f"notebook not found: {p}")
        return p
    if str(name) not in NOTEBOOKS:
        raise ConfigError(f"unknown notebook '{name}'; valid: {', '.join(NOTEBOOKS)} or a path to an .ipynb")
    return NOTEBOOKS_DIR / f"{name}.ipynb"


def _hash(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else json.dumps(p, sort_keys=True, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------- one step


@dataclass
class StepResult:
    name: str
    status: str  # "done", "skipped" (unchanged since its last success) or "failed"
    seconds: float = 0.0
    output: str = ""
    error: str = ""  # the failing cell's exception and the tail of papermill's log


@dataclass
class Step:
    """One notebook execution: ``notebook`` with ``params`` -> the executed ``output`` notebook."""

    name: str
    notebook: Path
    params: dict[str, Any]
    output: Path
    deps: list[Step] = field(default_factory=list)
    runtime: dict[str, Any] = field(default_factory=dict)  # passed to the notebook, not part of the key

    @property
    def key(self) -> str:
        """Changes when the notebook, the parameters or any upstream step changes."""
        return _hash(self.notebook.read_bytes(), self.params, [d.key for d in self.deps])

    def _side(self, suffix: str) -> Path:
        return self.output.with_name(self.output.stem + suffix)

    @property
    def done_file(self) -> Path:
        return self._side(DONE_SUFFIX)

    def last_success(self) -> dict[str, Any] | None:
        """The record of the last successful execution, if its output notebook is still there."""
        if not (self.done_file.is_file() and self.output.is_file()):
            return None
        return json.loads(self.done_file.read_text())

    def is_current(self) -> bool:
        done = self.last_success()
        return done is not None and done.get("key") == self.key

    def command(self, params_file: Path) -> list[str]:
        return [
            sys.executable, "-m", "papermill", str(self.notebook), str(self.output),
            "-f", str(params_file), "--cwd", os.getcwd(), "--kernel", "python3",
        ]


def _env() -> dict[str, str]:
    """The kernel runs this interpreter: its bin folder first on PATH."""
    bindir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONUNBUFFERED": "1"}


def _error_summary(log_tail: str) -> str:
    """The failing cell's exception line(s) from papermill's log, else its last lines."""
    lines = [ln for ln in log_tail.splitlines() if ln.strip()]
    for i in range(len(lines) - 1, -1, -1):
        if "PapermillExecutionError" in lines[i]:
            return "\n".join(lines[i:])[-2000:]
    return "\n".join(lines[-15:])


def execute(step: Step, *, stream: bool = True) -> StepResult:
    """Run one step with papermill (a subprocess: its kernel, its memory) and record the result.

    Output streams to stderr when ``stream`` (papermill's cell progress bar), and always to
    ``<output>.log``. On failure papermill has already saved the executed notebook with the
    failing cell marked; ``<output>.failed.json`` records the error.
    """
    step.output.parent.mkdir(parents=True, exist_ok=True)
    params_file = step._side(PARAMS_SUFFIX)
    params_file.write_text(yaml.safe_dump({**step.params, **step.runtime}, sort_keys=False))
    for stale in (step.done_file, step._side(FAILED_SUFFIX)):
        stale.unlink(missing_ok=True)
    t0 = time.perf_counter()
    tail: collections.deque[bytes] = collections.deque(maxlen=400)
    with open(step._side(LOG_SUFFIX), "wb") as log:
        proc = subprocess.Popen(step.command(params_file), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=_env())
        assert proc.stdout is not None
        for chunk in iter(lambda: proc.stdout.read1(4096), b""):  # type: ignore[union-attr]
            log.write(chunk)
            tail.append(chunk)
            if stream:
                sys.stderr.buffer.write(chunk)
                sys.stderr.flush()
        rc = proc.wait()
    seconds = time.perf_counter() - t0
    if rc == 0:
        step.done_file.write_text(json.dumps({"key": step.key, "seconds": seconds, "params": step.params}, indent=2, default=str))
        return StepResult(step.name, "done", seconds, str(step.output))
    error = _error_summary(b"".join(tail).decode(errors="replace")) or f"papermill exited with {rc}"
    step._side(FAILED_SUFFIX).write_text(json.dumps({"key": step.key, "returncode": rc, "error": error}, indent=2))
    return StepResult(step.name, "failed", seconds, str(step.output), error)


def run_steps(steps: Sequence[Step], *, stream: bool = True, say: Any = print) -> list[StepResult]:
    """Execute ``steps`` in order, skipping current ones; stops at the first failure."""
    results = []
    for i, step in enumerate(steps, 1):
        head = f"[{i}/{len(steps)}] {step.name}"
        if step.is_current():
            say(f"{head}: unchanged, skipped ({step.output})")
            results.append(StepResult(step.name, "skipped", 0.0, str(step.output)))
            continue
        why = "parameters or inputs changed" if step.last_success() else "new"
        say(f"{head}: running {step.notebook.name} ({why}) -> {step.output}")
        res = execute(step, stream=stream)
        results.append(res)
        say(f"{head}: {res.status} in {res.seconds:.1f} s")
        if res.status == "failed":
            say(f"{head} failed; executed notebook with the failing cell: {res.output}\n{res.error}")
            break
    return results


# ----------------------------------------------------------------------------- specs


@dataclass
class PipelineSpec:
    """``npo run`` file: shared config, the methods to compare, where the heatmaps look."""

    name: str = "demo"
    params: list[str] = field(default_factory=list)  # config params files for every step
    config: dict[str, Any] = field(default_factory=dict)  # config keys for every step
    methods: dict[str, dict[str, Any]] = field(default_factory=dict)  # method -> config keys of its forget run
    visualize: str | None = None  # method whose unlearned model the heatmaps compare; default: first INFLUENCE one
    runs_dir: str = "runs"


@dataclass
class SweepSpec:
    """``npo sweep`` file: a grid over config keys on top of shared config."""

    name: str = "sweep"
    params: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)  # config key -> values
    setup: list[str] = field(default_factory=list)  # notebooks run once before the grid (prepare, influence)
    notebooks: list[str] = field(default_factory=lambda: ["forget", "evaluation"])  # per grid point
    parallel: int = 1  # grid points executed at a time
    runs_dir: str = "runs"


def _read_spec(path: str | os.PathLike, schema: type) -> Any:
    """A spec file checked against its dataclass: unknown keys and bad params files named."""
    values = read_params_file(path)
    valid = {f for f in schema.__dataclass_fields__}
    unknown = sorted(set(values) - valid)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(valid))}")
    spec = schema(**values)
    for p in spec.params:
        if not Path(p).is_file():
            raise ConfigError(f"{path}: params file not found: {p}")
    return spec


def _config(spec: PipelineSpec | SweepSpec, extra: Mapping[str, Any] | None = None) -> Any:
    """The merged, validated Config of a step (fails before any notebook starts)."""
    return load_config(files=spec.params, overrides={**spec.config, **(extra or {})})


def _step_params(spec: PipelineSpec | SweepSpec, extra: Mapping[str, Any]) -> dict[str, Any]:
    """A notebook's papermill parameters: params files (by path) plus config keys and its own."""
    return {"config_files": [str(Path(p).resolve()) for p in spec.params], **spec.config, **extra}


# ----------------------------------------------------------------------------- npo run


def pipeline_steps(spec: PipelineSpec) -> tuple[list[Step], dict[str, Path]]:
    """The steps of the main pipeline and the folders the report compares (name -> folder)."""
    from npo_lib.embedded import embedded_paths
    from npo_lib.losses import parse_loss

    if not spec.methods:
        raise ConfigError(f"pipeline '{spec.name}': no methods to compare (methods: {{name: {{forget_loss: ...}}}})")
    root = Path(spec.runs_dir) / spec.name
    nbdir = root / "notebooks"
    infl = root / "influence"
    base = _config(spec)
    embedded = base.model_family == "tiny" and not base.model_path
    cfgs = {m: _config(spec, {**o, "influence_dir": str(infl)}) for m, o in spec.methods.items()}
    needs_influence = [m for m, c in cfgs.items() if "token_weights" in parse_loss(c.forget_loss).needs]
    vis = spec.visualize or (needs_influence[0] if needs_influence else None)
    if vis is not None and vis not in spec.methods:
        raise ConfigError(f"pipeline '{spec.name}': visualize={vis} is not one of the methods ({', '.join(spec.methods)})")

    steps: list[Step] = []
    prep = None
    if embedded:
        prep = Step("prepare", notebook_path("prepare"), _step_params(spec, {}), nbdir / "01-prepare.ipynb")
        steps.append(prep)
    up = [prep] if prep else []
    influence = None
    if needs_influence:
        influence = Step("influence", notebook_path("influence"), _step_params(spec, {"influence_dir": str(infl)}),
                         nbdir / "02-influence.ipynb", deps=list(up))
        steps.append(influence)
    folders: dict[str, Path] = {}
    evals: list[Step] = []
    if embedded:
        paths = embedded_paths(base)
        for role, model_dir in (("target", paths.target), ("retain", paths.retain)):
            folders[role] = root / role
            evals.append(Step(f"evaluate {role}", notebook_path("evaluation"),
                              _step_params(spec, {"eval_model_path": str(model_dir), "eval_out_dir": str(root / role)}),
                              nbdir / f"04-evaluation-{role}.ipynb", deps=list(up)))
    forgets: dict[str, Step] = {}
    for m, over in spec.methods.items():
        run = root / m
        folders[m] = run
        deps = list(up) + ([influence] if m in needs_influence and influence else [])
        forgets[m] = Step(f"forget {m}", notebook_path("forget"),
                          _step_params(spec, {**over, "influence_dir": str(infl), "save_dir": str(run)}),
                          nbdir / f"03-forget-{m}.ipynb", deps=deps)
        evals.append(Step(f"evaluate {m}", notebook_path("evaluation"),
                          _step_params(spec, {**over, "eval_model_path": str(run / "model"), "eval_out_dir": str(run)}),
                          nbdir / f"04-evaluation-{m}.ipynb", deps=[forgets[m]]))
    steps += list(forgets.values()) + evals
    if vis is not None and influence is not None:
        steps.append(Step("token visualisation", notebook_path("token_visualization"),
                          _step_params(spec, {**spec.methods[vis], "influence_dir": str(infl),
                                              "unlearned_model_path": str(root / vis / "model"),
                                              "heatmap_file": str(root / "heatmaps.html"),
                                              "compare_runs": [str(f) for f in folders.values()]}),
                          nbdir / "05-token_visualization.ipynb", deps=[influence, forgets[vis], *evals]))
    for s in forgets.values():  # a re-run replaces the stale finished run; an interrupted one resumes
        s.runtime.update(_forget_mode(s))
    return steps, folders


def _forget_mode(step: Step) -> dict[str, bool]:
    """``overwrite`` when the run folder holds a finished run of other inputs, else ``resume``."""
    done = step.last_success()
    return {"overwrite": True, "resume": False} if done is not None else {"overwrite": False, "resume": True}


def run_pipeline(spec_file: str | os.PathLike, *, stream: bool = True) -> dict[str, Any]:
    """``npo run``: execute the pipeline, then write and print the report table."""
    from npo_lib.report import report

    t0 = time.perf_counter()
    spec = _read_spec(spec_file, PipelineSpec)
    steps, folders = pipeline_steps(spec)
    root = Path(spec.runs_dir) / spec.name
    results = run_steps(steps, stream=stream)
    summary: dict[str, Any] = {"name": spec.name, "steps": [asdict(r) for r in results], "ok": all(r.status != "failed" for r in results)}
    if summary["ok"]:
        table, csv_path = report([folders[k] for k in folders], root / "report.csv")
        (root / "report.md").write_text(table + "\n")
        summary.update(report=table, report_csv=str(csv_path))
        heatmaps = root / "heatmaps.html"
        if heatmaps.is_file():
            summary["heatmaps"] = str(heatmaps.resolve())
    summary["seconds"] = time.perf_counter() - t0
    (root / "pipeline.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


# ----------------------------------------------------------------------------- npo sweep


def _slug(value: Any) -> str:
    s = format(value, "g") if isinstance(value, float) else str(value)
    return "".join(c if c.isalnum() or c in "+-._" else "_" for c in s)


def grid_points(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, in the file's order."""
    for k, v in grid.items():
        if not isinstance(v, list) or not v:
            raise ConfigError(f"sweep grid: '{k}' must be a non-empty list of values, got {v!r}")
    keys = list(grid)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(grid[k] for k in keys))]


def point_name(point: Mapping[str, Any]) -> str:
    """A run folder name from its grid values, e.g. ``forget_loss-NPO+GD_lr-0.0001``."""
    return "_".join(f"{k.split('.')[-1]}-{_slug(v)}" for k, v in point.items())


def sweep_steps(spec: SweepSpec) -> tuple[list[Step], dict[str, list[Step]], Path]:
    """Setup steps, the steps of each grid point (run name -> steps) and the sweep folder."""
    from npo_lib.config import _check_keys  # the schema's key check, with suggestions

    root = Path(spec.runs_dir) / spec.name
    infl = root / "influence"
    _check_keys(spec.config, type(_config(spec)), f"sweep {spec.name} config")
    setup: list[Step] = []
    for i, nb in enumerate(spec.setup, 1):
        extra = {"influence_dir": str(infl)} if nb == "influence" else {}
        setup.append(Step(nb, notebook_path(nb), _step_params(spec, extra), root / "notebooks" / f"{i:02d}-{nb}.ipynb", deps=list(setup)))
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
                extra.update(unlearned_model_path=str(run / "model"), heatmap_file=str(run / "heatmaps.html"))
            steps.append(Step(f"{name}: {nb}", notebook_path(nb), _step_params(spec, extra), run / "notebooks" / f"{i:02d}-{nb}.ipynb", deps=[*setup, *steps]))
            if nb == "forget":
                steps[-1].runtime.update(_forget_mode(steps[-1]))
        runs[name] = steps
    return setup, runs, root


def _write_status(file: Path, status: Mapping[str, Any]) -> None:
    tmp = file.with_suffix(".tmp")
    tmp.write_text(json.dumps(status, indent=2, default=str))
    os.replace(tmp, file)


def run_sweep(spec_file: str | os.PathLike, *, parallel: int | None = None, stream: bool = True) -> dict[str, Any]:
    """``npo sweep``: setup once, then every grid point (``parallel`` at a time).

    ``<sweep>/status.json`` records each run (done, failed with its error, skipped); a re-run
    skips finished runs and repeats failed or interrupted ones; the sweep ends with the report
    table of every finished run.
    """
    from npo_lib.report import report

    t0 = time.perf_counter()
    spec = _read_spec(spec_file, SweepSpec)
    setup, runs, root = sweep_steps(spec)
    root.mkdir(parents=True, exist_ok=True)
    status_file = root / "status.json"
    status: dict[str, Any] = json.loads(status_file.read_text()) if status_file.is_file() else {}
    setup_res = run_steps(setup, stream=stream)
    if any(r.status == "failed" for r in setup_res):
        status["_setup"] = {"status": "failed", "error": setup_res[-1].error}
        _write_status(status_file, status)
        return {"name": spec.name, "ok": False, "status": status, "seconds": time.perf_counter() - t0}
    n = parallel or spec.parallel
    order = list(runs)

    def one(name: str) -> tuple[str, dict[str, Any]]:
        steps = runs[name]
        res = run_steps(steps, stream=stream and n == 1, say=lambda s: print(f"[{name}] {s}", flush=True))
        failed = [r for r in res if r.status == "failed"]
        state = "failed" if failed else ("skipped" if all(r.status == "skipped" for r in res) else "done")
        return name, {
            "status": state,
            "seconds": sum(r.seconds for r in res),
            "error": failed[0].error if failed else "",
            "failed_step": failed[0].name if failed else "",
            "notebook": failed[0].output if failed else "",
        }

    with ThreadPoolExecutor(max_workers=max(1, n)) as pool:
        for i, (name, rec) in enumerate(pool.map(one, order), 1):
            status[name] = rec
            _write_status(status_file, status)
            print(f"sweep {spec.name}: {i}/{len(order)} {name}: {rec['status']}"
                  + (f" ({rec['failed_step']}: {rec['error'].splitlines()[-1] if rec['error'] else ''})" if rec["status"] == "failed" else ""), flush=True)
    finished = [root / name for name in order if status[name]["status"] != "failed" and (root / name / "eval" / "metrics.json").is_file()]
    out: dict[str, Any] = {"name": spec.name, "status": {k: status[k] for k in order}, "ok": all(status[k]["status"] != "failed" for k in order)}
    if finished:
        table, csv_path = report(finished, root / "report.csv")
        (root / "report.md").write_text(table + "\n")
        out.update(report=table, report_csv=str(csv_path))
    out["seconds"] = time.perf_counter() - t0
    return out


# ----------------------------------------------------------------------------- npo launch


def launcher_command(nproc: int, script: Path, port: int) -> list[str]:
    """DeepSpeed's launcher running ``script`` once per rank; torchrun when DeepSpeed is absent."""
    bindir = Path(sys.executable).parent
    ds = shutil.which("deepspeed", path=str(bindir)) or shutil.which("deepspeed")
    if ds:
        return [ds, "--num_gpus", str(nproc), "--master_port", str(port), "--no_python", "--no_local_rank", str(script)]
    torchrun = shutil.which("torchrun", path=str(bindir)) or shutil.which("torchrun")
    if not torchrun:
        raise ConfigError("npo launch needs DeepSpeed's `deepspeed` or torch's `torchrun` on PATH")
    return [torchrun, "--nproc_per_node", str(nproc), "--master_port", str(port), "--no-python", str(script)]


def launch(
    notebook: str | os.PathLike,
    *,
    nproc: int,
    params_files: Sequence[str] = (),
    parameters: Mapping[str, Any] | None = None,
    output: str | os.PathLike | None = None,
    port: int = 29560,
) -> dict[str, Any]:
    """Execute ``notebook`` on ``nproc`` ranks, one papermill kernel per rank.

    The launcher sets RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT per rank and the kernels
    inherit them, so ``npo_lib`` code in the notebook joins one process group. Rank 0's executed
    notebook is ``output`` (default ``runs/<save_dir or run name>/notebooks/<notebook>``), the
    others go to ``ranks/`` beside it. If any rank fails the launcher stops the rest; the error
    of the first failing rank is returned.
    """
    from npo_lib.forget import run_dir

    nb = notebook_path(notebook)
    params = dict(parameters or {})
    cfg = load_config(files=list(params_files), overrides={k: v for k, v in params.items() if k != "config_files"})  # fails early
    out = Path(output) if output else run_dir(cfg) / "notebooks" / nb.name
    ranks = out.parent / "ranks"
    ranks.mkdir(parents=True, exist_ok=True)
    merged: dict[str, Any] = {"config_files": [str(Path(p).resolve()) for p in params_files], **params}
    params_file = out.with_name(out.stem + PARAMS_SUFFIX)
    params_file.write_text(yaml.safe_dump(merged, sort_keys=False))
    papermill = [sys.executable, "-m", "papermill", str(nb), "OUT", "-f", str(params_file), "--cwd", os.getcwd(), "--kernel", "python3", "--no-progress-bar"]
    rank_out = f'"{ranks}/{out.stem}.rank${{RANK}}.ipynb"'
    body = " ".join(shlex.quote(a) for a in papermill).replace("OUT", '"$OUT"')
    with tempfile.NamedTemporaryFile("w", suffix=".sh", delete=False, prefix="tnpo-launch-") as f:
        f.write(
            "#!/usr/bin/env bash\nset -e\n"
            f'if [ "${{RANK:-0}}" = 0 ]; then OUT={shlex.quote(str(out))}; else OUT={rank_out}; fi\n'
            f'exec {body} > "{ranks}/rank${{RANK:-0}}.log" 2>&1\n'
        )
    script = Path(f.name)
    script.chmod(0o755)
    t0 = time.perf_counter()
    try:
        rc = subprocess.run(launcher_command(nproc, script, port), env={**_env(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}).returncode
    finally:
        script.unlink(missing_ok=True)
    result: dict[str, Any] = {"returncode": rc, "output": str(out), "ranks": str(ranks), "seconds": time.perf_counter() - t0}
    if rc != 0:
        errors = {}
        for r in range(nproc):
            log = ranks / f"rank{r}.log"
            text = log.read_text(errors="replace") if log.is_file() else ""
            if "PapermillExecutionError" in text or "Error" in text:
                errors[r] = _error_summary(text)
        first = min(errors) if errors else None
        result.update(failed_rank=first, error=errors.get(first, f"launcher exited with {rc}; logs in {ranks}") if first is not None else f"launcher exited with {rc}; logs in {ranks}")
    return result
