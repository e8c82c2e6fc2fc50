"""Files written so that an interruption never leaves half of one: write a sibling, then rename.

A reader (a later run, another rank, a notebook) sees the old file or the new one, never a
truncated one; a folder (a model, a benchmark) appears under its final name only when complete.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _sibling(path: Path) -> Path:
    return path.with_name(f"{path.name}.tmp-{os.getpid()}")


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a sibling path for a writer that takes a file name (safetensors, a model); on success
    it is renamed to ``path``, on an exception removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(path)
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` (parents created) through a renamed sibling file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(path)
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> Path:
    """``obj`` as JSON (non-ASCII kept, unknown types by ``str``), written atomically."""
    return atomic_write_text(
        path, json.dumps(obj, indent=indent, ensure_ascii=False, default=str) + "\n"
    )


def write_jsonl(path: str | os.PathLike, rows: Iterable[Any]) -> int:
    """One JSON value per line, written atomically; returns the number of lines."""
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return len(lines)


def write_csv_rows(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]]) -> Path:
    """``rows`` as a CSV written atomically: the columns every row has in first-seen order, full
    precision, an empty cell for None or a missing key."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with atomic_file(path) as tmp, tmp.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    return Path(path)


def read_json(path: str | os.PathLike) -> Any | None:
    """The JSON in ``path``, or None when the file is missing or not valid JSON."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


@contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty sibling folder to fill; on success it becomes ``final``.

    If another process made ``final`` first, theirs is kept and ours dropped. On an exception
    the sibling is removed and ``final`` is left as it was.
    """
    final = Path(final)
    tmp = _sibling(final)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        os.replace(tmp, final)
