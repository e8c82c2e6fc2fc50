"""``npo sweep SWEEP.yaml``: a grid over config keys, each point a run folder executed through
the same notebooks; failures are recorded while the sweep goes on, and a re-run resumes it."""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from npo_lib.config import check_keys
from npo_lib.errors import ConfigError
from npo_lib.run.report import report
from npo_lib.run.steps import (
    Step,
    forget_mode,
    notebook_path,
    read_spec,
    run_steps,
    spec_config,
    step_params,
)
from npo_lib.utils.io import atomic_write_json, atomic_write_text


@dataclass
class SweepSpec:
    """``npo sweep`` file: a grid over config keys on top of shared config."""

    name: str = "sweep"
    params: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)  # config key -> values
    setup: list[str] = field(default_factory=list)  # notebooks run once before the grid (prepare, influence)
    notebooks: list[str] = field(default_factory=lambda: ["forget", "evaluation"])  # per grid point
    parallel: int = 1  # grid points executed at a time
    runs_dir: str = "runs"





def _slug(value: Any) -> str:
    s = format(value, "g") if isinstance(value, float) else str(value)
    return "".join(c if c.isalnum() or c in "+-._" else "_" for c in s)


def grid_points(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, in the file's order."""
    for k, v in grid.items():
        if not isinstance(v, list) or not v:
            raise ConfigError(f"sweep grid: '{k}' must be a non-empty list of values, got {v!r}")
    keys = list(grid)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(grid[k] for k in keys))]


def point_name(point: Mapping[str, Any]) -> str:
    """A run folder name from its grid values, e.g. ``forget_loss-NPO+GD_lr-0.0001``."""
    return "_".join(f"{k.split('.')[-1]}-{_slug(v)}" for k, v in point.items())


def sweep_steps(spec: SweepSpec) -> tuple[list[Step], dict[str, list[Step]], Path]:
    """Setup steps, the steps of each grid point (run name -> steps) and the sweep folder."""
    root = Path(spec.runs_dir) / spec.name
    infl = root / "influence"
    check_keys(spec.config, type(spec_config(spec)), f"sweep {spec.name} config")
    setup: list[Step] = []
    for i, nb in enumerate(spec.setup, 1):
        extra = {"influence_dir": str(infl)} if nb == "influence" else {}
        setup.append(Step(nb, notebook_path(nb), step_params(spec, extra), root / "notebooks" / f"{i:02d}-{nb}.ipynb", deps=list(setup)))
    runs: dict[str, list[Step]] = {}
    for point in grid_points(spec.grid):
        name, run = point_name(point), root / point_name(point)
        common = {**point, "influence_dir": str(infl)}
        steps: list[Step] = []
        for i, nb in enumerate(spec.notebooks, 1):
            extra: dict[str, Any] = dict(common)
            if nb == "forget":
                extra["save_dir"] = str(run)
            elif nb == "evaluation":
                extra.update(eval_model_path=str(run / "model"), eval_out_dir=str(run))
            elif nb == "token_visualization":
                extra.update(unlearned_model_path=str(run / "model"), heatmap_file=str(run / "heatmaps.html"))
            steps.append(Step(f"{name}: {nb}", notebook_path(nb), step_params(spec, extra), run / "notebooks" / f"{i:02d}-{nb}.ipynb", deps=[*setup, *steps]))
            if nb == "forget":
                steps[-1].runtime.update(forget_mode(steps[-1]))
        runs[name] = steps
    return setup, runs, root


def run_sweep(spec_file: str | os.PathLike, *, parallel: int | None = None, stream: bool = True) -> dict[str, Any]:
    """``npo sweep``: setup once, then every grid point (``parallel`` at a time).

    ``<sweep>/status.json`` records each run (done, failed with its error, skipped); a re-run
    skips finished runs and repeats failed or interrupted ones; the sweep ends with the report
    table of every finished run.
    """
    t0 = time.perf_counter()
    spec = read_spec(spec_file, SweepSpec)
    setup, runs, root = sweep_steps(spec)
    root.mkdir(parents=True, exist_ok=True)
    status_file = root / "status.json"
    status: dict[str, Any] = json.loads(status_file.read_text()) if status_file.is_file() else {}
    setup_res = run_steps(setup, stream=stream)
    if any(r.status == "failed" for r in setup_res):
        status["_setup"] = {"status": "failed", "error": setup_res[-1].error}
        atomic_write_json(status_file, status)
        return {"name": spec.name, "ok": False, "status": status, "seconds": time.perf_counter() - t0}
    n = parallel or spec.parallel
    order = list(runs)

    def one(name: str) -> tuple[str, dict[str, Any]]:
        steps = runs[name]
        res = run_steps(steps, stream=stream and n == 1, say=lambda s: print(f"[{name}] {s}", flush=True))
        failed = [r for r in res if r.status == "failed"]
        state = "failed" if failed else ("skipped" if all(r.status == "skipped" for r in res) else "done")
        return name, {
            "status": state,
            "seconds": sum(r.seconds for r in res),
            "error": failed[0].error if failed else "",
            "failed_step": failed[0].name if failed else "",
            "notebook": failed[0].output if failed else "",
        }

    with ThreadPoolExecutor(max_workers=max(1, n)) as pool:
        for i, (name, rec) in enumerate(pool.map(one, order), 1):
            status[name] = rec
            atomic_write_json(status_file, status)
            print(f"sweep {spec.name}: {i}/{len(order)} {name}: {rec['status']}"
                  + (f" ({rec['failed_step']}: {rec['error'].splitlines()[-1] if rec['error'] else ''})" if rec["status"] == "failed" else ""), flush=True)
    finished = [root / name for name in order if status[name]["status"] != "failed" and (root / name / "eval" / "metrics.json").is_file()]
    out: dict[str, Any] = {"name": spec.name, "status": {k: status[k] for k in order}, "ok": all(status[k]["status"] != "failed" for k in order)}
    if finished:
        table, csv_path = report(finished, root / "report.csv")
        atomic_write_text(root / "report.md", table + "\n")
        out.update(report=table, report_csv=str(csv_path))
    out["seconds"] = time.perf_counter() - t0
    return out
