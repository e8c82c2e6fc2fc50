"""Progress display in notebooks: a widget bar when a person runs the notebook, a few plain lines
when papermill does.

Every long loop of the library uses ``tqdm.auto``. In a Jupyter kernel that is the ipywidgets bar,
which is right in JupyterLab; executed by papermill the widgets are saved into the notebook, and
once closed only their text fallback stays (``reference log-probs: 0%| | 0/5`` between the
results). :func:`use_progress` picks the display for the whole kernel:

- ``bar``: tqdm's own choice (the widget bar in a notebook, a terminal bar elsewhere);
- ``lines``: :class:`LineProgress`, whole lines on stdout at the start, at each quarter and at
  the end of a loop (at most one per ``every`` seconds between quarters); loops shorter than
  ``delay`` seconds print nothing;
- ``off``: no progress output.

``auto`` reads ``$TNPO_PROGRESS`` (bar, lines or off; :mod:`npo_lib.workflow.run_notebook`, which
executes every pipeline step, sets ``lines``), else takes ``lines`` when the kernel was started
by papermill's own command (its parent process) and ``bar`` otherwise.
"""

from __future__ import annotations

import io
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm import std as tqdm_std

PROGRESS_ENV = "TNPO_PROGRESS"


class LineProgress(tqdm_std.tqdm):
    """A tqdm that writes whole lines, never a carriage return: at the start, at 25 / 50 / 75 /
    100 % and at the end, and at most once per ``every`` seconds in between.

    Loops that finish within ``delay`` seconds (default 2) print nothing at all.
    """

    every: float = 60.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("file", sys.stdout)  # the cell's plain text output (stderr shows red)
        kwargs.setdefault("delay", 2.0)
        kwargs.setdefault("mininterval", 1.0)
        kwargs["dynamic_ncols"] = False
        kwargs["ncols"] = 0  # no bar: "desc: 50%| 19/38 [00:03<00:03, 5.2it/s]"
        self._quarter, self._said_t, self._said_n = -1, 0.0, -1
        super().__init__(*args, **kwargs)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if msg is not None or self.disable:  # tqdm clearing its line: lines are never rewritten
            return True
        quarter = int(4 * self.n / self.total) if self.total else 0
        now = time.time()
        if quarter > self._quarter or now - self._said_t >= self.every:
            self._say()
            self._quarter, self._said_t = quarter, now
        return True

    def _say(self) -> None:
        if self.n == self._said_n:
            return
        self._said_n = self.n
        self.fp.write(self.format_meter(**self.format_dict).strip() + "\n")
        self.fp.flush()

    def close(self) -> None:
        if not self.disable and self._said_n >= 0:  # a loop that showed its start shows its end
            self._say()
        self.fp = io.StringIO()  # tqdm's own close writes a bare "\r" or "\n": not wanted
        super().close()


def _launched_by_papermill() -> bool:
    """Whether this process's parent is papermill (a kernel it started)."""
    try:
        cmd = (
            Path(f"/proc/{os.getppid()}/cmdline")
            .read_bytes()
            .replace(b"\0", b" ")
            .decode(errors="replace")
        )
    except OSError:
        try:
            import psutil  # other systems, where installed

            cmd = " ".join(psutil.Process(os.getppid()).cmdline())
        except Exception:
            return False
    return "papermill" in cmd


def progress_mode(mode: str = "auto") -> str:
    """``bar``, ``lines`` or ``off`` for ``mode`` (``auto``: see the module doc)."""
    if mode == "auto":
        mode = os.environ.get(PROGRESS_ENV) or ("lines" if _launched_by_papermill() else "bar")
    if mode not in PROGRESS_MODES:
        raise ValueError(
            f"progress mode '{mode}' is unknown; valid: auto, {', '.join(PROGRESS_MODES)}"
        )
    return mode


def _off(*args: Any, **kwargs: Any) -> tqdm_std.tqdm:
    return tqdm_std.tqdm(*args, **{**kwargs, "disable": True})


# mode -> the class (or factory) the kernel's tqdm.auto should hand out; None keeps tqdm's choice
PROGRESS_MODES: dict[str, Callable[..., Any] | None] = {
    "bar": None,
    "lines": LineProgress,
    "off": _off,
}
_ORIGINAL: dict[str, Any] = {}


def use_progress(mode: str = "auto") -> str:
    """Make every ``tqdm.auto`` bar of this process use ``mode``; returns the mode taken.

    ``tqdm.auto.tqdm`` is replaced (transformers looks it up at each call), and so is the
    ``tqdm`` name the already imported ``npo_lib`` modules bound from it.
    """
    import tqdm.auto as auto
    import tqdm.autonotebook as autonb

    mode = progress_mode(mode)
    original = _ORIGINAL.setdefault("tqdm", auto.tqdm)
    cls = PROGRESS_MODES[mode] or original
    current = auto.tqdm
    for module in (auto, autonb):
        module.tqdm = cls
    for name, module in list(sys.modules.items()):
        if name.startswith("npo_lib") and getattr(module, "tqdm", None) in (original, current):
            module.tqdm = cls
    return mode
