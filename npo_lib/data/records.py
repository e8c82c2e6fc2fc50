"""Readers of TOFU / R-TOFU files: JSON lines or one JSON array, text lines, hedging traces.

Errors name the file, the line (1-based) and the field, and reach the user as one line.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from npo_lib.errors import DataError

QA_FIELDS = ("question", "answer")


def _lines(path: Path) -> list[str]:
    """Lines split on '\\n' only (``splitlines`` would also split on U+2028 inside text)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"data file not found: {path}") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    while lines and not lines[-1].strip():  # trailing newline(s)
        lines.pop()
    return lines


def check_fields(
    records: Iterable[tuple[int, Any]], where: str, required: Sequence[str], unit: str = "line"
) -> list[dict]:
    """Every item is an object holding every required field (not None); else a DataError."""
    out = []
    for n, rec in records:
        if not isinstance(rec, dict):
            raise DataError(
                f"{where}, {unit} {n}: expected a JSON object, got {type(rec).__name__}"
            )
        for field in required:
            if rec.get(field) is None:
                raise DataError(
                    f"{where}, {unit} {n}: record has no field '{field}' "
                    f"(it has: {', '.join(rec) or 'nothing'})"
                )
        out.append(rec)
    return out


def read_records(path: str | Path, required: Sequence[str] = QA_FIELDS) -> list[dict]:
    """Records of a JSON-lines file (one object per line) or of a file holding one JSON array.

    Blank lines are skipped; line numbers in errors are 1-based lines of the file (for a JSON
    array, the 1-based position of the record).
    """
    path = Path(path)
    lines = _lines(path)
    first = next((line for line in lines if line.strip()), "")
    if first.lstrip().startswith("["):
        try:
            items = json.loads("\n".join(lines))
        except json.JSONDecodeError:
            items = None  # not one array: report the bad line below
        if isinstance(items, list):
            return check_fields(enumerate(items, 1), str(path), required, unit="record")
    parsed = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            parsed.append((n, json.loads(line)))
        except json.JSONDecodeError as e:
            raise DataError(
                f"{path}, line {n}: not valid JSON ({e.msg} at column {e.colno})"
            ) from None
    return check_fields(parsed, str(path), required)


def read_lines(path: str | Path) -> list[str]:
    """Stripped non-blank lines of a text file (idontknow.jsonl); JSON-string lines are decoded."""
    out = []
    for line in _lines(Path(path)):
        text = line.strip()
        if text.startswith('"'):
            try:
                decoded = json.loads(text)
            except json.JSONDecodeError:
                decoded = None
            if isinstance(decoded, str):
                text = decoded.strip()
        if text:
            out.append(text)
    return out


def read_idk_cot(path: str | Path) -> list[str]:
    """One trace per line (idkcot.jsonl): a JSON string, or the raw line when it is not JSON.

    Positions are kept (a blank line gives ""), because line i belongs to line i of forget01.
    """
    out = []
    for line in _lines(Path(path)):
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            value = line
        out.append(value if isinstance(value, str) else line)
    return out
