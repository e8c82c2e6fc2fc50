"""``npo report RUN_DIR...``: compare evaluated runs in one markdown table (and a CSV).

Each run folder holds ``eval/metrics.json`` (written by
:func:`npo_lib.commands.evaluation.evaluate`); a folder holding ``metrics.json`` itself (the
cached retain evaluation) or the file's own path works too. Rows of the target and the retain
model come first, then the runs in the given order. The columns are the metrics the registry
(:mod:`npo_lib.eval.registry`) shows in the report, each titled with its better direction, then
the columns the attacks the runs hold declare (:data:`npo_lib.eval.robustness.ATTACKS`).

A sequence of unlearning requests (MUSE's scalability and sustainability) gets a table of its
own, one row per request k (:func:`request_report`).
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
from npo_lib.eval.registry import TOFU, metrics_for
from npo_lib.eval.robustness import AttackColumn, attack_columns
from npo_lib.utils.io import atomic_write_json, atomic_write_text, write_csv_rows
from npo_lib.utils.machine import machine_line
from npo_lib.viz.figures import FqMuPoint

VIEW = "report"  # the registry view whose metrics the table shows, in its order
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
    """The headline pair's point (forget quality, model utility) of each evaluated run folder
    (role from its metrics)."""
    pair, points = TOFU.headline, []
    for run in ordered([load_run(d) for d in run_dirs]):
        agg = run.metrics["aggregates"]
        points.append(FqMuPoint(run.name, agg.get(pair.forget), agg.get(pair.utility), run.role))
    return points


def ordered(runs: Sequence[Run]) -> list[Run]:
    """Target first, retain second, then the rest in the given order (a stable sort)."""
    return sorted(runs, key=lambda r: ROLE_ORDER.get(r.role, len(ROLE_ORDER)))


def run_attack_columns(runs: Sequence[Run]) -> list[AttackColumn]:
    """The columns of the attacks any of the runs' evaluations holds."""
    held = {a for r in runs for a in r.metrics.get("robustness") or {}}
    return attack_columns(held)


def rows(runs: Sequence[Run], view: str = VIEW) -> list[dict[str, Any]]:
    """One dict per run: ``name``, the raw aggregate of each metric ``view`` shows (None when
    absent), then the number of each attack column any run holds (keyed ``<attack>.<path>``)."""
    held = [r.metrics["aggregates"] for r in runs]
    attacks, metrics = run_attack_columns(runs), metrics_for(view, held)
    return [
        {
            "name": r.name,
            **{m.key: r.metrics["aggregates"].get(m.key) for m in metrics},
            **{c.key: c.value(r.metrics.get("robustness")) for c in attacks},
        }
        for r in ordered(runs)
    ]


def _markdown(head: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    """A GitHub markdown table, the first column left-aligned, the others right-aligned."""
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---", *["---:"] * (len(head) - 1)]) + "|",
    ]
    return "\n".join([*lines, *("| " + " | ".join(cells) + " |" for cells in body)])


def markdown_table(table: Sequence[Mapping[str, Any]]) -> str:
    """A GitHub markdown table of :func:`rows`' metric columns (null as an en dash), each titled
    with its direction (↑ higher is better, ↓ lower, →0 closer to 0)."""
    metrics = metrics_for(VIEW, table[:1])  # the columns rows() kept
    return _markdown(
        ["run", *(m.label for m in metrics)],
        [[str(row["name"]), *(m.format(row[m.key]) for m in metrics)] for row in table],
    )


def write_csv(table: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """The same rows with full-precision numbers (empty cell for null), keyed columns."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    keys = [k for k in (table[0] if table else {"name": None}) if k != "name"]
    with p.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["run", *keys])
        for row in table:
            w.writerow([row["name"], *("" if row[k] is None else row[k] for k in keys)])
    return p


def robustness_table(runs: Sequence[Run]) -> str | None:
    """A markdown table of the attacks the runs' evaluations hold (None when none has any): the
    columns each attack declares."""
    runs = [r for r in ordered(runs) if r.metrics.get("robustness")]
    if not runs:
        return None
    cols = run_attack_columns(runs)
    return _markdown(
        ["run", *(c.label for c in cols)],
        [[r.name, *(c.format(c.value(r.metrics["robustness"])) for c in cols)] for r in runs],
    )


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


# ----------------------------------------------------------------------------- requests


def request_rows(
    target: str | Path,
    requests: Sequence[str | Path],
    *,
    starts_from: Mapping[str, str] | None = None,
    reference: str | Path | None = None,
) -> list[dict[str, Any]]:
    """One row per unlearning request of a sequence (MUSE's scalability and sustainability,
    Shi et al. 2024, §5): ``k`` = 0 the target, ``k`` = 1..n each run folder of ``requests``
    in order, then the ``reference`` (the retain model) without ``k``. Each row: ``k``,
    ``run``, ``starts_from`` (the run a request's unlearning started from: ``starts_from[run]``,
    else the target) and the raw aggregate of each metric the report shows (None if absent)."""
    base = load_run(target)
    runs = [load_run(d) for d in requests]
    ref = [load_run(reference)] if reference is not None else []
    metrics = metrics_for(VIEW, [r.metrics["aggregates"] for r in (base, *runs, *ref)])
    starts = dict(starts_from or {})

    def row(k: int | None, run: Run, name: str, start: str) -> dict[str, Any]:
        values = {m.key: run.metrics["aggregates"].get(m.key) for m in metrics}
        return {"k": k, "run": name, "starts_from": start, **values}

    out = [row(0, base, "target", "")]
    out += [row(k, r, r.name, starts.get(r.name, "target")) for k, r in enumerate(runs, 1)]
    return out + [row(None, r, "retain", "") for r in ref]


def request_markdown(table: Sequence[Mapping[str, Any]]) -> str:
    """:func:`request_rows` as a GitHub markdown table, each metric titled with its direction."""
    keys = [k for k in table[0] if k not in ("k", "run", "starts_from")]
    metrics = [m for m in metrics_for(VIEW) if m.key in keys]
    body = [
        [
            "" if row["k"] is None else str(row["k"]),
            str(row["run"]),
            str(row["starts_from"]) or "–",
            *(m.format(row[m.key]) for m in metrics),
        ]
        for row in table
    ]
    return _markdown(["k", "run", "starts from", *(m.label for m in metrics)], body)


def request_report(
    target: str | Path,
    requests: Sequence[str | Path],
    out_dir: str | Path,
    *,
    starts_from: Mapping[str, str] | None = None,
    reference: str | Path | None = None,
) -> tuple[str, dict[str, Path]]:
    """The request table (:func:`request_rows`) as markdown, and written into ``out_dir`` as
    ``requests.md``, ``requests.csv`` (full precision, empty cell for null; the reference row
    has an empty ``k``) and ``requests.json`` (the rows as a list)."""
    table = request_rows(target, requests, starts_from=starts_from, reference=reference)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = request_markdown(table)
    files = {"md": out / "requests.md", "csv": out / "requests.csv", "json": out / "requests.json"}
    atomic_write_text(files["md"], text + "\n")
    atomic_write_json(files["json"], table)
    write_csv_rows(files["csv"], table)
    return text, files
