"""``python -m npo_lib.workflow.run_notebook NOTEBOOK OUTPUT -f PARAMS.yaml``: one step's papermill
execution, as ``papermill NOTEBOOK OUTPUT -f PARAMS.yaml`` runs it, except for the end: once the
last cell has run and the executed notebook is saved, the kernel is stopped at once.

Papermill's own command stops the kernel politely: the kernel manager sends it SIGINT and a
``shutdown_request``, and the kernel then tears down its threads (control, shell channel, IOPub)
while its main thread's exit handlers close their event loops. A ZMQ stream callback still
queued on one of those threads (the control channel finishing the shutdown request, a flush of
the output streams) can then run against a loop that is already closed, and the kernel prints
"Uncaught exception in ZMQStream callback ... RuntimeError: Event loop is closed" although every
cell succeeded. Nothing is left for the kernel to do at that point (its outputs are received
and saved), so it is stopped the way nbclient's ``shutdown_kernel="immediate"`` does: its
process group is killed, no teardown runs, no callback is left behind.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import yaml
from traitlets.config import Config

from npo_lib.utils.progress import PROGRESS_ENV


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m npo_lib.workflow.run_notebook")
    p.add_argument("notebook", help="the parameterised notebook")
    p.add_argument("output", help="the executed notebook (saved after every cell)")
    p.add_argument("-f", "--parameters-file", required=True, help="the parameters (YAML)")
    p.add_argument("--cwd", help="the kernel's working folder (default: this one)")
    p.add_argument("--kernel", default="python3", help="the kernel (default python3)")
    p.add_argument("--no-progress-bar", action="store_true", help="no per-cell progress bar")
    return p.parse_args(argv)


def kernel_config(sockets: Path) -> Config:
    """The kernel manager's settings: its channels over local (``ipc``) sockets in ``sockets``
    (a private temporary folder) where the platform has them, instead of TCP ports on localhost
    (on which the kernel warns that its traffic is not encrypted)."""
    if os.name == "nt":
        return Config()
    return Config({"KernelManager": {"transport": "ipc", "ip": str(sockets / "kernel")}})


def main(argv: Sequence[str] | None = None) -> int:
    """Execute the notebook; exit status 1 with the cell error when a cell fails, as papermill's
    command does (the executed notebook is saved with the failing cell marked either way)."""
    args = parse_args(argv)
    # as papermill's command: no debugger warning about frozen modules from the kernel
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    # the kernel inherits this: progress as whole lines, no widget bars saved in the notebook
    os.environ.setdefault(PROGRESS_ENV, "lines")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import papermill
    from papermill.exceptions import PapermillExecutionError

    parameters = yaml.safe_load(Path(args.parameters_file).read_text()) or {}
    try:
        with tempfile.TemporaryDirectory(prefix="tnpo-kernel-") as sockets:
            papermill.execute_notebook(
                args.notebook,
                args.output,
                parameters=parameters,
                kernel_name=args.kernel,
                cwd=args.cwd,
                progress_bar=not args.no_progress_bar,
                shutdown_kernel="immediate",
                config=kernel_config(Path(sockets)),
            )
    except PapermillExecutionError as e:
        print(f"PapermillExecutionError: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
