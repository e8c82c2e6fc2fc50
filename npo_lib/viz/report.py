"""``npo report RUN_DIR...``: compare evaluated runs in one markdown table (and a CSV).

Each run folder holds ``eval/metrics.json`` (written by :func:`npo_lib.commands.evaluation.evaluate`); a
folder holding ``metrics.json`` itself (the cached retain evaluation) or the file's own path
works too. Rows of the target and the retain model come first, then the runs in the given order.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from npo_lib.commands.evaluation import METRICS_FILE
from npo_lib.errors import ReportError
from npo_lib.eval.compute import HEADLINE_METRICS
from npo_lib.utils.machine import machine_line
from npo_lib.viz.figures import FqMuPoint

COLUMNS = HEADLINE_METRICS  # table order after the name
ROLE_ORDER = {"target": 0, "retain": 1}  # every other role ("run") keeps the given order after


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


def fq_mu_points(run_dirs: Sequence[str | Path]) -> list[FqMuPoint]:
    """The forget quality / model utility point of each evaluated run folder (role from its metrics)."""
    points = []
    for run in ordered([load_run(d) for d in run_dirs]):
        agg = run.metrics["aggregates"]
        points.append(
            FqMuPoint(run.name, agg.get("forget_quality"), agg.get("model_utility"), role=run.role)
        )
    return points


def ordered(runs: Sequence[Run]) -> list[Run]:
    """Target first, retain second, then the rest in the given order (a stable sort)."""
    return sorted(runs, key=lambda r: ROLE_ORDER.get(r.role, len(ROLE_ORDER)))


def rows(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """One dict per run: ``name`` and the raw aggregate of each column (None when absent)."""
    return [
        {"name": r.name, **{m.key: r.metrics["aggregates"].get(m.key) for m in COLUMNS}}
        for r in ordered(runs)
    ]


def markdown_table(table: Sequence[Mapping[str, Any]]) -> str:
    """A GitHub markdown table of :func:`rows` (null as an en dash)."""
    head = ["run", *(m.title for m in COLUMNS)]
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---", *["---:"] * len(COLUMNS)]) + "|",
    ]
    for row in table:
        cells = [str(row["name"]), *(m.format(row[m.key]) for m in COLUMNS)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_csv(table: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """The same rows with full-precision numbers (empty cell for null)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["run", *(m.key for m in COLUMNS)])
        for row in table:
            w.writerow([row["name"], *("" if row[m.key] is None else row[m.key] for m in COLUMNS)])
    return p


# robustness column -> (attack, path inside its result, format); memorisation is fact recall, else ROUGE
ROBUSTNESS_COLUMNS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "relearn: held-out recall before": ("relearn", ("before", "recall"), "{:.1%}"),
    "after relearning": ("relearn", ("after", "recall"), "{:.1%}"),
    "quant8 recall": ("quant8", ("after", "recall"), "{:.1%}"),
    "quant4 recall": ("quant4", ("after", "recall"), "{:.1%}"),
    "leak@k": ("leak_at_k", ("leak_at_k",), "{:.1%}"),
    "fill-in-blank recall": ("format_shift", ("fill_in_blank", "fact_recall"), "{:.1%}"),
    "multiple choice": ("format_shift", ("multiple_choice", "accuracy"), "{:.1%}"),
}


def _attack_value(result: Mapping[str, Any] | None, path: tuple[str, ...]) -> float | None:
    v: Any = result
    for key in path:
        if not isinstance(v, Mapping):
            return None
        v = (
            (v.get("fact_recall") if v.get("fact_recall") is not None else v.get("rouge"))
            if key == "recall"
            else v.get(key)
        )
    return v if isinstance(v, (int, float)) else None


def robustness_table(runs: Sequence[Run]) -> str | None:
    """A markdown table of the attacks the runs' evaluations hold (None when none has any)."""
    runs = [r for r in ordered(runs) if r.metrics.get("robustness")]
    if not runs:
        return None
    cols = [
        c
        for c, (a, _, _) in ROBUSTNESS_COLUMNS.items()
        if any(a in r.metrics["robustness"] for r in runs)
    ]
    lines = [
        "| run | " + " | ".join(cols) + " |",
        "|" + "|".join(["---", *["---:"] * len(cols)]) + "|",
    ]
    for r in runs:
        cells = []
        for c in cols:
            attack, path, fmt = ROBUSTNESS_COLUMNS[c]
            v = _attack_value(r.metrics["robustness"].get(attack), path)
            cells.append("–" if v is None else fmt.format(v))
        lines.append(f"| {r.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machines(runs: Sequence[Run]) -> str:
    """Where the numbers came from: the distinct kernel paths / torch versions of the runs'
    evaluations (other CPUs round differently, so a figure names its machine)."""
    seen = list(
        dict.fromkeys(machine_line(r.metrics["machine"]) for r in runs if r.metrics.get("machine"))
    )
    return "measured on: " + (
        "; ".join(seen) if seen else "unrecorded (evaluations before machine records)"
    )


def report(run_dirs: Sequence[str | Path], csv_path: str | Path | None = None) -> tuple[str, Path]:
    """Markdown table of the runs, a line naming the machine(s) they were measured on, and the
    CSV path written (default: next to the first run's metrics.json, ``report.csv``)."""
    if not run_dirs:
        raise ReportError("no run folders given")
    runs = [load_run(d) for d in run_dirs]
    table = rows(runs)
    out = write_csv(table, csv_path or runs[0].path.parent / "report.csv")
    attacks = robustness_table(runs)
    text = markdown_table(table) + (
        f"\n\nattacks (eval.robustness):\n\n{attacks}" if attacks else ""
    )
    return f"{text}\n\n{machines(runs)}", out
