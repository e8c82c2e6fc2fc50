"""``npo launch --nproc N NOTEBOOK -f params.yaml``: one papermill kernel per rank under the
DeepSpeed launcher (torchrun as a fallback); the kernels inherit RANK / WORLD_SIZE."""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from npo_lib.commands.folders import run_dir
from npo_lib.config import load_config
from npo_lib.config.sources import params_path
from npo_lib.errors import ConfigError
from npo_lib.workflow.steps import (
    PARAMS_SUFFIX,
    cell_error,
    error_summary,
    kernel_env,
    notebook_path,
    papermill_command,
    tee,
)


def launcher_command(nproc: int, script: Path, port: int) -> list[str]:
    """DeepSpeed's launcher running ``script`` once per rank; torchrun when DeepSpeed is absent."""
    bindir = Path(sys.executable).parent
    ds = shutil.which("deepspeed", path=str(bindir)) or shutil.which("deepspeed")
    if ds:
        return [
            ds,
            "--num_gpus",
            str(nproc),
            "--master_port",
            str(port),
            "--no_python",
            "--no_local_rank",
            str(script),
        ]
    torchrun = shutil.which("torchrun", path=str(bindir)) or shutil.which("torchrun")
    if not torchrun:
        raise ConfigError("npo launch needs DeepSpeed's `deepspeed` or torch's `torchrun` on PATH")
    return [
        torchrun,
        "--nproc_per_node",
        str(nproc),
        "--master_port",
        str(port),
        "--no-python",
        str(script),
    ]


def launch_script(papermill: list[str], out: Path, ranks: Path) -> Path:
    """A shell script the launcher starts once per rank: papermill into rank 0's ``out`` or
    ``ranks/<stem>.rank<R>.ipynb``, its output into ``ranks/rank<R>.log``."""
    rank_out = f'"{ranks}/{out.stem}.rank${{RANK}}.ipynb"'
    body = " ".join(shlex.quote(a) for a in papermill).replace("OUT", '"$OUT"')
    with tempfile.NamedTemporaryFile("w", suffix=".sh", delete=False, prefix="tnpo-launch-") as f:
        f.write(
            "#!/usr/bin/env bash\nset -e\n"
            f'if [ "${{RANK:-0}}" = 0 ]; then OUT={shlex.quote(str(out))}; '
            f"else OUT={rank_out}; fi\n"
            f'exec {body} > "{ranks}/rank${{RANK:-0}}.log" 2>&1\n'
        )
    script = Path(f.name)
    script.chmod(0o755)
    return script


def rank_error(nproc: int, out: Path, ranks: Path) -> tuple[int | None, str]:
    """The first failing rank and its cell error in one line (from its executed notebook, else
    the last line of its log)."""
    for r in range(nproc):
        notebook = out if r == 0 else ranks / f"{out.stem}.rank{r}.ipynb"
        log = ranks / f"rank{r}.log"
        error = cell_error(notebook)
        text = log.read_text(errors="replace") if log.is_file() else ""
        if not error and ("PapermillExecutionError" in text or "Error" in text):
            error = (error_summary(text).splitlines() or [""])[-1]
        if error:
            return r, f"{error} (notebook: {notebook}; log: {log})"
    return None, ""


def launch(
    notebook: str | os.PathLike,
    *,
    nproc: int,
    params_files: Sequence[str] = (),
    parameters: Mapping[str, Any] | None = None,
    output: str | os.PathLike | None = None,
    port: int = 29560,
    verbose: bool = False,
) -> dict[str, Any]:
    """Execute ``notebook`` on ``nproc`` ranks, one papermill kernel per rank.

    The launcher sets RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT per rank and the kernels
    inherit them, so ``npo_lib`` code in the notebook joins one process group. Rank 0's executed
    notebook is ``output`` (default ``runs/<save_dir or run name>/notebooks/<notebook>``), the
    others go to ``ranks/`` beside it with each rank's log, and the launcher's own output to
    ``ranks/launcher.log`` (also on stderr when ``verbose``). If any rank fails the launcher
    stops the rest; the error of the first failing rank is returned.
    """
    nb = notebook_path(notebook)
    params = dict(parameters or {})
    overrides = {k: v for k, v in params.items() if k != "config_files"}
    cfg = load_config(files=list(params_files), overrides=overrides)  # fails early
    out = Path(output) if output else run_dir(cfg) / "notebooks" / nb.name
    ranks = out.parent / "ranks"
    ranks.mkdir(parents=True, exist_ok=True)
    files = [str(params_path(p).resolve()) for p in params_files]
    params_file = out.with_name(out.stem + PARAMS_SUFFIX)
    params_file.write_text(yaml.safe_dump({"config_files": files, **params}, sort_keys=False))
    script = launch_script(
        papermill_command(nb, "OUT", params_file, progress_bar=False), out, ranks
    )
    env = {**kernel_env(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    t0 = time.perf_counter()
    try:
        cmd = launcher_command(nproc, script, port)
        rc, _ = tee(cmd, ranks / "launcher.log", verbose, env=env)
    finally:
        script.unlink(missing_ok=True)
    result: dict[str, Any] = {
        "returncode": rc,
        "output": str(out),
        "ranks": str(ranks),
        "seconds": time.perf_counter() - t0,
    }
    if rc != 0:
        first, error = rank_error(nproc, out, ranks)
        where = f"launcher exited with {rc}; logs in {ranks}"
        result.update(failed_rank=first, error=error or where)
    return result
