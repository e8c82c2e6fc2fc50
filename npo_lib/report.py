"""``npo report RUN_DIR...``: compare evaluated runs in one markdown table (and a CSV).

Each run folder holds ``eval/metrics.json`` (written by :func:`npo_lib.evaluate.evaluate`); a
folder holding ``metrics.json`` itself (the cached retain evaluation) or the file's own path
works too. Rows of the target and the retain model come first, then the runs in the given order.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

METRICS_FILE = Path("eval") / "metrics.json"  # relative to a run folder (npo_lib.evaluate writes)
# (column title, aggregate key, format) in table order after the name.
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("forget quality", "forget_quality", "{:.3g}"),
    ("model utility", "model_utility", "{:.3f}"),
    ("forget fact recall", "forget_fact_recall", "{:.1%}"),
    ("retain fact recall", "retain_fact_recall", "{:.1%}"),
    ("forget ROUGE", "forget_rouge", "{:.3f}"),
    ("privleak", "privleak", "{:.1f}"),
)
ROLE_ORDER = {"target": 0, "retain": 1}  # every other role ("run") keeps the given order after


class ReportError(ValueError):
    """A run folder has no readable metrics.json."""


@dataclass
class Run:
    name: str
    role: str
    path: Path  # the metrics.json read
    metrics: dict[str, Any]


def metrics_file(run_dir: str | Path) -> Path:
    """``<run>/eval/metrics.json``, ``<run>/metrics.json`` or the file itself, first found."""
    p = Path(run_dir).expanduser()
    for cand in (p / METRICS_FILE, p / "metrics.json", p):
        if cand.is_file():
            return cand
    raise ReportError(f"no evaluation in {p}: expected {p / METRICS_FILE} (run `npo eval` first)")


def load_run(run_dir: str | Path) -> Run:
    """Read one run's metrics; its name is the run folder's name (role tagged for target/retain)."""
    file = metrics_file(run_dir)
    try:
        metrics = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise ReportError(f"{file} is not valid JSON: {e}") from None
    if not isinstance(metrics, Mapping) or "aggregates" not in metrics:
        raise ReportError(f"{file} has no 'aggregates': not an `npo eval` metrics.json")
    role = metrics.get("identity", {}).get("role", "run")
    folder = file.parent.parent if file.parent.name == METRICS_FILE.parent.name else file.parent
    name = folder.name if role in ("run", folder.name) else f"{role} ({folder.name})"
    return Run(name, role, file, dict(metrics))


def ordered(runs: Sequence[Run]) -> list[Run]:
    """Target first, retain second, then the rest in the given order (a stable sort)."""
    return sorted(runs, key=lambda r: ROLE_ORDER.get(r.role, len(ROLE_ORDER)))


def rows(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """One dict per run: ``name`` and the raw aggregate of each column (None when absent)."""
    return [
        {"name": r.name, **{key: r.metrics["aggregates"].get(key) for _, key, _ in COLUMNS}}
        for r in ordered(runs)
    ]


def _fmt(value: Any, fmt: str) -> str:
    return "–" if value is None else fmt.format(value)


def markdown_table(table: Sequence[Mapping[str, Any]]) -> str:
    """A GitHub markdown table of :func:`rows` (null as an en dash)."""
    head = ["run", *(title for title, _, _ in COLUMNS)]
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---", *["---:"] * len(COLUMNS)]) + "|",
    ]
    for row in table:
        cells = [str(row["name"]), *(_fmt(row[key], fmt) for _, key, fmt in COLUMNS)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_csv(table: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """The same rows with full-precision numbers (empty cell for null)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["run", *(key for _, key, _ in COLUMNS)])
        for row in table:
            w.writerow(
                [row["name"], *("" if row[key] is None else row[key] for _, key, _ in COLUMNS)]
            )
    return p


def machines(runs: Sequence[Run]) -> str:
    """Where the numbers came from: the distinct kernel paths / torch versions of the runs'
    evaluations (other CPUs round differently, so a figure names its machine)."""
    from npo_lib.machine import machine_line

    seen = list(dict.fromkeys(machine_line(r.metrics["machine"]) for r in runs if r.metrics.get("machine")))
    return "measured on: " + ("; ".join(seen) if seen else "unrecorded (evaluations before machine records)")


def report(run_dirs: Sequence[str | Path], csv_path: str | Path | None = None) -> tuple[str, Path]:
    """Markdown table of the runs, a line naming the machine(s) they were measured on, and the
    CSV path written (default: next to the first run's metrics.json, ``report.csv``)."""
    if not run_dirs:
        raise ReportError("no run folders given")
    runs = [load_run(d) for d in run_dirs]
    table = rows(runs)
    out = write_csv(table, csv_path or runs[0].path.parent / "report.csv")
    return f"{markdown_table(table)}\n\n{machines(runs)}", out


def cmd_report(run_dirs: list[str], csv_path: str | None = None) -> int:
    """``npo report RUN_DIR... [--csv PATH]``: print the comparison table, write the CSV."""
    try:
        table, out = report(run_dirs, csv_path)
    except ReportError as e:
        print(f"npo report: {e}", file=sys.stderr)
        return 2
    print(table)
    print(f"\nCSV: {out}")
    return 0
