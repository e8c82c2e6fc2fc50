"""Notebook steps: one parameterised notebook executed by papermill, its output notebook the record.

A step's key hashes the notebook, its parameters and the keys of the steps it depends on; a step
whose key matches its last successful execution is skipped, so re-running a pipeline or an
interrupted sweep only does what changed or is missing. The notebooks ship inside the package.
The console gets one line per step; papermill's and the kernel's output go to a log beside the
executed notebook (and onto stderr too with ``stream``, ``npo run -v``).
"""

from __future__ import annotations

import collections
import importlib.resources
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml

from npo_lib.commands.checks import check_config
from npo_lib.commands.folders import RESULT_FILE
from npo_lib.config import Config, load_config, nest_keys, read_params_file
from npo_lib.config.sources import params_path
from npo_lib.errors import ConfigError
from npo_lib.utils.hashing import fingerprint
from npo_lib.utils.io import atomic_write_json
from npo_lib.workflow.notebook import trust_notebook

NOTEBOOKS_DIR = (
    Path(str(importlib.resources.files("npo_lib"))) / "notebooks"
)  # package data: found after `pip install .` too
NOTEBOOKS = (
    "prepare",
    "finetune",
    "influence",
    "forget",
    "evaluation",
    "token_visualization",
    "dashboard",
)
DONE_SUFFIX, FAILED_SUFFIX, PARAMS_SUFFIX, LOG_SUFFIX = (
    ".done.json",
    ".failed.json",
    ".params.yaml",
    ".log",
)


def notebook_path(name: str | os.PathLike) -> Path:
    """``"forget"`` -> ``notebooks/forget.ipynb``; an existing path is returned as is."""
    p = Path(name)
    if p.suffix == ".ipynb":
        if not p.is_file():
            raise ConfigError(f"notebook not found: {p}")
        return p
    if str(name) not in NOTEBOOKS:
        raise ConfigError(
            f"unknown notebook '{name}'; valid: {', '.join(NOTEBOOKS)} or a path to an .ipynb"
        )
    return NOTEBOOKS_DIR / f"{name}.ipynb"


def papermill_command(
    notebook: Path, output: Path | str, params_file: Path, *, progress_bar: bool = True
) -> list[str]:
    """The command line of one execution: papermill through :mod:`.run_notebook` (which stops
    the kernel at once after the last cell) with this interpreter, the python3 kernel and the
    current folder as the notebook's working folder."""
    cmd = [
        sys.executable,
        "-m",
        "npo_lib.workflow.run_notebook",
        str(notebook),
        str(output),
        "-f",
        str(params_file),
        "--cwd",
        os.getcwd(),
        "--kernel",
        "python3",
    ]
    return cmd if progress_bar else [*cmd, "--no-progress-bar"]


@dataclass
class StepResult:
    name: str
    status: str  # "done", "skipped" (unchanged since its last success) or "failed"
    seconds: float = 0.0
    output: str = ""
    error: str = ""  # the failing cell's exception in one line (ename: evalue)
    log: str = ""  # papermill's and the kernel's output of the execution


@dataclass
class Step:
    """One notebook execution: ``notebook`` with ``params`` -> the executed ``output`` notebook."""

    name: str
    notebook: Path
    params: dict[str, Any]
    output: Path
    deps: list[Step] = field(default_factory=list)
    # passed to the notebook, not part of the key
    runtime: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """Changes when the notebook, the parameters or any upstream step changes."""
        return fingerprint(self.notebook.read_bytes(), self.params, [d.key for d in self.deps])

    def side_file(self, suffix: str) -> Path:
        return self.output.with_name(self.output.stem + suffix)

    @property
    def done_file(self) -> Path:
        return self.side_file(DONE_SUFFIX)

    @property
    def log_file(self) -> Path:
        """Beside the executed notebook: papermill's cell progress and parameter notices, the
        kernel's own warnings, a failing cell's traceback."""
        return self.side_file(LOG_SUFFIX)

    def last_success(self) -> dict[str, Any] | None:
        """The record of the last successful execution, if its output notebook is still there."""
        if not (self.done_file.is_file() and self.output.is_file()):
            return None
        return json.loads(self.done_file.read_text())

    def is_current(self) -> bool:
        done = self.last_success()
        return done is not None and done.get("key") == self.key

    def command(self, params_file: Path) -> list[str]:
        return papermill_command(self.notebook, self.output, params_file)


def kernel_env() -> dict[str, str]:
    """The kernel runs this interpreter: its bin folder first on PATH."""
    bindir = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONUNBUFFERED": "1",
    }


def error_summary(log_tail: str) -> str:
    """The failing cell's exception line(s) from papermill's log, else its last lines."""
    lines = [ln for ln in log_tail.splitlines() if ln.strip()]
    for i in range(len(lines) - 1, -1, -1):
        if "PapermillExecutionError" in lines[i]:
            return "\n".join(lines[i:])[-2000:]
    return "\n".join(lines[-15:])


def cell_error(notebook: Path) -> str:
    """The failing cell's exception as one line, ``ename: evalue``, read from the executed
    notebook papermill saved; "" when it holds none (the kernel died, papermill failed)."""
    try:
        cells = json.loads(notebook.read_text()).get("cells", [])
    except (OSError, ValueError):
        return ""
    for cell in cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                return " ".join(f"{out.get('ename', '')}: {out.get('evalue', '')}".split())
    return ""


def tee(cmd: list[str], log_file: Path, stream: bool, **popen: Any) -> tuple[int, str]:
    """Run ``cmd`` with its stdout and stderr into ``log_file`` (and onto stderr when
    ``stream``); returns its exit status and the tail of its output."""
    tail: collections.deque[bytes] = collections.deque(maxlen=400)
    with open(log_file, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **popen)
        assert proc.stdout is not None
        for chunk in iter(lambda: proc.stdout.read1(4096), b""):  # type: ignore[union-attr]
            log.write(chunk)
            tail.append(chunk)
            if stream:
                sys.stderr.buffer.write(chunk)
                sys.stderr.flush()
        rc = proc.wait()
    return rc, b"".join(tail).decode(errors="replace")


def execute(step: Step, *, stream: bool = False) -> StepResult:
    """Run one step with papermill (a subprocess: its kernel, its memory) and record the result.

    Papermill's and the kernel's output (cell progress, parameter notices, kernel warnings) go
    to :attr:`Step.log_file`, and onto stderr too when ``stream`` (``npo run -v``). On failure
    papermill has already saved the executed notebook with the failing cell marked;
    ``<output>.failed.json`` records the cell's error.
    """
    step.output.parent.mkdir(parents=True, exist_ok=True)
    params_file = step.side_file(PARAMS_SUFFIX)
    params_file.write_text(yaml.safe_dump({**step.params, **step.runtime}, sort_keys=False))
    for stale in (step.done_file, step.side_file(FAILED_SUFFIX)):
        stale.unlink(missing_ok=True)
    t0 = time.perf_counter()
    rc, tail = tee(step.command(params_file), step.log_file, stream, env=kernel_env())
    seconds = time.perf_counter() - t0
    out, log = str(step.output), str(step.log_file)
    if rc == 0:
        trust_notebook(step.output)  # JupyterLab then draws its saved widgets without a kernel
        atomic_write_json(
            step.done_file, {"key": step.key, "seconds": seconds, "params": step.params}
        )
        return StepResult(step.name, "done", seconds, out, log=log)
    last = error_summary(tail).splitlines()[-1:] or [""]
    error = cell_error(step.output) or f"papermill exited with {rc}: {last[0]}"
    atomic_write_json(
        step.side_file(FAILED_SUFFIX), {"key": step.key, "returncode": rc, "error": error}
    )
    return StepResult(step.name, "failed", seconds, out, error, log)


def run_steps(
    steps: Sequence[Step],
    *,
    stream: bool = False,
    say: Callable[[str], Any] = print,
    live: bool = False,
) -> list[StepResult]:
    """Execute ``steps`` in order, skipping current ones; stops at the first failure.

    ``say`` gets one line per step: its name, done / skipped / failed and the seconds it took;
    a failure adds its cell error and where its notebook and log are. ``live`` (a terminal)
    shows the running step on the line its result then replaces; ``stream`` shows papermill's
    and the kernel's output as it comes, and a line before each step.
    """
    results = []
    width = max((len(s.name) for s in steps), default=0)
    for i, step in enumerate(steps, 1):
        head = f"[{i}/{len(steps)}] {step.name:<{width}}"
        if step.is_current():
            say(f"{head}  skipped (unchanged)")
            results.append(StepResult(step.name, "skipped", 0.0, str(step.output)))
            continue
        if stream:
            why = "parameters or inputs changed" if step.last_success() else "new"
            say(f"{head}  running {step.notebook.name} ({why}) -> {step.output}")
        elif live:
            print(f"{head}  running", end="\r", flush=True)
        res = execute(step, stream=stream)
        results.append(res)
        say(f"{head}  {res.status:<7} {res.seconds:7.1f} s")
        if res.status == "failed":
            say(f"  {res.error}\n  notebook: {res.output}\n  log: {res.log}")
            break
    return results


def read_spec(path: str | os.PathLike, schema: type) -> Any:
    """A spec file checked against its dataclass: unknown keys and bad params files named.

    ``path`` is a file, or the name of one shipped with the package (``npo run demo``). The
    params files it lists become absolute paths (:func:`spec_params_file`).
    """
    path = params_path(path)
    values = read_params_file(path)
    valid = {f for f in schema.__dataclass_fields__}
    unknown = sorted(set(values) - valid)
    if unknown:
        raise ConfigError(
            f"{path}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(valid))}"
        )
    spec = schema(**values)
    if not isinstance(spec.params, list):
        raise ConfigError(f"{path}: params must be a list of params files, got {spec.params!r}")
    spec.params = [str(spec_params_file(path, p)) for p in spec.params]
    return spec


def spec_params_file(spec_file: Path, entry: str | os.PathLike) -> Path:
    """A params file a spec lists, as an absolute path: relative to the spec file's folder (so a
    packaged pipeline finds its neighbours after ``pip install``), else to the current folder,
    else a packaged one by name."""
    p = Path(entry).expanduser()
    for candidate in (spec_file.parent / p, p, params_path(p)):
        if candidate.is_file():
            return candidate.resolve()
    raise ConfigError(
        f"{spec_file}: params file not found: {entry} (looked beside {spec_file.name}, in the "
        "current folder and among the packaged ones)"
    )


class Spec(Protocol):
    """What a pipeline or sweep file shares: params files and config keys for every step."""

    params: list[str]
    config: dict[str, Any]


def spec_config(spec: Spec, extra: Mapping[str, Any] | None = None) -> Config:
    """The merged, checked Config of a step (fails before any notebook starts): the spec's and
    the step's keys merged key by key, as :func:`step_params` hands them to the notebook (a
    method's ``benchmark: {muse: ...}`` keeps the spec's ``benchmark: {name: muse}``)."""
    cfg = load_config(files=spec.params, overrides=nest_keys(spec.config, extra or {}))
    check_config(cfg)
    return cfg


def step_params(spec: Spec, extra: Mapping[str, Any]) -> dict[str, Any]:
    """A notebook's papermill parameters: params files (by path) plus config keys and its own,
    nested (a dotted grid key such as ``selection.method`` is no Python name: it is passed as
    ``selection={"method": ...}``, merged key by key with the config's ``selection``)."""
    return {
        "config_files": [str(Path(p).resolve()) for p in spec.params],
        **nest_keys(spec.config, extra),
    }


def forget_mode(step: Step) -> dict[str, bool]:
    """``overwrite`` when the run folder holds a finished run this step did not record (of other
    inputs, or one stopped after training but before its step was marked done), else ``resume``."""
    finished = (
        step.last_success() is not None
        or (Path(str(step.params.get("save_dir", ""))) / RESULT_FILE).is_file()
    )
    return (
        {"overwrite": True, "resume": False} if finished else {"overwrite": False, "resume": True}
    )
