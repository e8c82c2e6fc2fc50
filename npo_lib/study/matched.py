"""The robustness attacks at each method's matched setting (``npo study --run``'s last step).

Each method's matched setting (:func:`npo_lib.study.readings.analyse`) is evaluated again under
``study.attacks`` into ``<run>/attacks/`` (its own metrics and notebook; the run's evaluation is
left as it is), for every seed there, so the attacks run only where the verdict is read and not on
every point of the search.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from npo_lib.config import StudyConfig, nest_keys
from npo_lib.errors import ReportError
from npo_lib.study.readings import analyse
from npo_lib.study.runs import (
    ATTACKS_DIR,
    ReferencesFn,
    load_results,
    references_for,
    run_folders,
)
from npo_lib.workflow.executors import local_device_slots
from npo_lib.workflow.steps import Step, read_spec, run_steps
from npo_lib.workflow.sweep import SweepSpec, cpu_share, grid_points, point_name, sweep_steps


def _sweep_points(root: Path) -> tuple[SweepSpec | None, dict[str, dict[str, Any]]]:
    """A sweep folder's spec and its points by run name, from the sweep files of the plan's
    folder (``<runs_dir>/<plan>-plan/``, the starting files and every round's)."""
    specs: list[Any] = []
    for f in sorted(root.parent.glob("*-plan/**/*.yaml")):
        body = yaml.safe_load(f.read_text())
        if isinstance(body, dict) and body.get("name") == root.name and "grid" in body:
            specs.append(read_spec(f, SweepSpec))
    points: dict[str, dict[str, Any]] = {}
    for spec in specs:
        for pt in grid_points(spec.grid):
            points.setdefault(point_name(pt), pt)
    return (specs[0] if specs else None), points


def matched_attack_steps(
    root: str | Path,
    study: StudyConfig,
    *,
    references: ReferencesFn | None = None,
) -> list[list[Step]]:
    """The steps that attack each method's matched setting in sweep folder ``root``, one list
    per run (every seed there): the run's own setup and forget steps (unchanged, so skipped) and
    the evaluation notebook again with ``eval.robustness = study.attacks``, writing into
    ``<run>/attacks/`` (its own metrics and notebook; the run's evaluation is left as it is)."""
    root = Path(root)
    spec, points = _sweep_points(root)
    if spec is None:
        raise ReportError(f"{root}: no sweep file of this folder under {root.parent}/*-plan")
    attacked = nest_keys(spec.config, {"eval": {"robustness": list(study.attacks)}})
    out: list[list[Step]] = []
    for bench, results in load_results(run_folders(root), study).items():
        b = analyse(bench, results, (references or references_for)(results, root), study)
        matched = {(row.method, row.setting) for row in b.rows if row.setting is not None}
        for r in results:
            if (r.method, r.setting) in matched and (point := points.get(r.name)) is not None:
                out.append(run_attack_steps(spec, attacked, root, r.name, point))
    return out


def run_attack_steps(
    spec: SweepSpec, attacked: dict[str, Any], root: Path, name: str, point: dict[str, Any]
) -> list[Step]:
    """One run's setup and forget steps (its own, so skipped when done) and its evaluation under
    the attacks' config ``attacked``, writing into ``<run>/attacks/``."""
    one = {**asdict(spec), "grid": {k: [v] for k, v in point.items()}}
    setup, runs, _ = sweep_steps(SweepSpec(**one))
    forget = runs[name][0]
    evaluation = sweep_steps(SweepSpec(**{**one, "config": attacked}))[1][name][-1]
    evaluation.name = f"{name}: attacks"
    evaluation.params.update(eval_out_dir=str(root / name / ATTACKS_DIR))
    evaluation.output = root / name / ATTACKS_DIR / "notebooks" / "evaluation.ipynb"
    evaluation.deps = [*setup, forget]
    return [*setup, forget, evaluation]


def attack_matched(
    root: str | Path,
    study: StudyConfig,
    *,
    parallel: int = 1,
    references: ReferencesFn | None = None,
) -> dict[str, Any]:
    """Run :func:`matched_attack_steps` (``parallel`` runs at a time); a run already attacked
    is skipped, so the attacks run only where the verdict is read, not on every point of the
    search. Returns ``{"done", "skipped", "failed"}`` (failed: run names)."""
    steps = matched_attack_steps(root, study, references=references)
    todo = [st for st in steps if not st[-1].is_current()]
    failed: list[str] = []
    on_cpus = local_device_slots(1, 1)[0] is None  # with GPUs the threads are not what they share
    with (
        cpu_share(str(root), min(parallel, len(todo)), on_cpus),
        ThreadPoolExecutor(max(1, parallel)) as pool,
    ):
        for st, results in zip(
            todo, pool.map(lambda st: run_steps(st, stream=False), todo), strict=True
        ):
            if any(x.status == "failed" for x in results):
                failed.append(st[-1].name.split(":")[0])
    return {"done": len(todo) - len(failed), "skipped": len(steps) - len(todo), "failed": failed}
