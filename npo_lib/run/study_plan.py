"""The adaptive frontier search and the study plan (``npo study --extend`` / ``--plan``).

``extend_sweep`` writes the next sweep files of the adaptive frontier search
(:func:`npo_lib.run.frontier.propose_next`): a method whose utility is still above the floor is
pushed further along its strength keys, one seed each; around the floor every seed runs.
``plan_study`` writes the sweep files that start a study from its plan
(``params/study_fair.yaml``): every benchmark x block of methods, each point's config checked
before anything runs.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from npo_lib.config import StudyConfig
from npo_lib.errors import ReportError
from npo_lib.run.frontier import Axis, Proposal, RunResult, by_method, propose_next
from npo_lib.run.steps import read_spec, spec_config
from npo_lib.run.study import config_defaults, flatten, load_results, references_for, run_folders
from npo_lib.run.sweep import SweepSpec, grid_points, point_name
from npo_lib.utils.io import atomic_write_text


def _axes(study: StudyConfig) -> list[Axis]:
    defaults = config_defaults()
    return [Axis(k, study.factor, limit=float(lim), integer=isinstance(defaults.get(k), int) and not isinstance(defaults.get(k), bool))
            for k, lim in zip(study.strength_keys, study.limits)]


def _spec_values(spec: Any) -> dict[str, Any]:
    """The flat config every point of a sweep starts from (its params files and config)."""
    return flatten(asdict(spec_config(spec)))


def _next_files(out_dir: Path, stem: str) -> Iterator[Path]:
    """``<stem>-next-NN.yaml`` names after the highest one already there (none is overwritten)."""
    taken = [int(m.group(1)) for p in out_dir.glob(f"{stem}-next-*.yaml") if (m := re.search(r"-next-(\d+)\.yaml$", p.name))]
    i = max(taken, default=0)
    while True:
        i += 1
        yield out_dir / f"{stem}-next-{i:02d}.yaml"


def proposal_grid(spec: Any, proposal: Proposal, example: Mapping[str, Any], base: Mapping[str, Any]) -> dict[str, list[Any]]:
    """The grid of one proposed point, in the sweep's key order so its run folder gets the same
    name as a grid point would: the sweep's grid keys (method keys from ``example``, the run the
    method was seen in), then strength keys outside the grid whose value differs from the sweep's."""
    setting = dict(proposal.setting)
    grid: dict[str, list[Any]] = {}
    for k in spec.grid:
        grid[k] = list(proposal.seeds) if k == "seed" else [setting[k] if k in setting else example.get(k, base.get(k))]
    for k, v in setting.items():
        if k not in grid and v != base.get(k):
            grid[k] = [v]
    if "seed" not in grid:
        grid["seed"] = list(proposal.seeds)
    return grid


def _norm(v: Any) -> Any:
    """A grid value as compared with a run's config (``10`` in a grid is the config's ``10.0``)."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


def extend_sweep(spec_file: str | Path, out_dir: str | Path | None, study: StudyConfig, *,
                 references: Callable[[Sequence[RunResult], Path], Mapping[str, Mapping[str, Any]]] | None = None) -> dict[str, Any]:
    """``npo study --extend SWEEP.yaml``: the adaptive frontier search's next round.

    Reads the sweep's finished runs (only the methods its grid holds), reads the utility floor
    (``study.mu_fraction`` x the target's model utility), asks :func:`propose_next` per method
    and writes one sweep file per proposed point (same ``name`` and ``runs_dir``, so its runs land
    in the same folder and a finished run is skipped) into ``out_dir`` (default: beside the
    sweep file) as ``<stem>-next-NN.yaml``. Returns ``{"files", "proposals", "floor"}``; no file
    means every method's frontier around the floor is complete (or at its limits).
    """
    spec = read_spec(spec_file, SweepSpec)
    root = Path(spec.runs_dir) / spec.name
    base = _spec_values(spec)
    # this sweep's runs: its grid's values, and every other method key at the sweep's own value
    fixed = {k: {_norm(x) for x in v} for k, v in spec.grid.items() if k != "seed" and k not in study.strength_keys}
    fixed.update({k: {_norm(base.get(k))} for k in study.method_keys if k not in spec.grid})
    results = [r for rs in load_results(run_folders(root), study).values() for r in rs
               if all(_norm(r.config.get(k, base.get(k))) in vals for k, vals in fixed.items())]
    if not results:
        raise ReportError(f"no evaluated runs of {spec_file} in {root}: run `npo sweep {spec_file}` first")
    refs = (references or references_for)(results, root)
    target_mu = refs.get("target", {}).get("model_utility")
    if target_mu is None:
        raise ReportError(f"{root}: no target model utility to set the floor (the search needs the embedded benchmark's target)")
    floor = study.mu_fraction * target_mu
    out = Path(out_dir) if out_dir is not None else Path(spec_file).parent
    out.mkdir(parents=True, exist_ok=True)
    names = _next_files(out, Path(spec_file).stem.split("-next-")[0])
    files, proposals = [], []
    for method, rs in by_method(results).items():
        example = rs[0].config
        for p in propose_next(rs, floor, _axes(study), study.seeds, near=study.near):
            grid = proposal_grid(spec, p, example, base)
            file = next(names)
            body = {"name": spec.name, "runs_dir": spec.runs_dir, "params": spec.params, "config": spec.config,
                    "setup": spec.setup, "notebooks": spec.notebooks, "parallel": spec.parallel, "grid": grid}
            head = f"# {method}: {p.reason}\n# next round of `npo study --extend {spec_file}`\n"
            atomic_write_text(file, head + yaml.safe_dump(body, sort_keys=False))
            files.append(str(file))
            proposals.append({"method": method, "setting": dict(p.setting), "seeds": list(p.seeds), "reason": p.reason,
                              "runs": [point_name(pt) for pt in grid_points(grid)], "file": str(file)})
    return {"files": files, "proposals": proposals, "floor": floor}


@dataclass
class StudyPlan:
    """A study plan: the starting sweeps of every benchmark x block of methods (``npo study --plan``).

    A block is a grid (config key -> values; the seeds are added), or ``{grid, config,
    benchmarks}``: a grid with config of its own (e.g. another ``influence.scorer``), run on the
    named benchmarks only (default: all). The sweeps of one benchmark share its ``name``
    (``<name>-<benchmark>``), so their runs, the influence scores and the reference evaluations
    sit in one folder; a block with its own config gets its own folder
    (``<name>-<benchmark>-<block>``), since its influence step differs.
    """

    name: str = "study"
    runs_dir: str = "runs"
    params: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    setup: list[str] = field(default_factory=lambda: ["prepare", "influence"])
    notebooks: list[str] = field(default_factory=lambda: ["forget", "evaluation"])
    parallel: int = 2
    seeds: list[int] = field(default_factory=lambda: [0])
    benchmarks: dict[str, dict[str, Any]] = field(default_factory=lambda: {"default": {}})
    blocks: dict[str, dict[str, Any]] = field(default_factory=dict)


def _merge(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """``b`` over ``a``, nested mappings merged key by key."""
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


def plan_sweeps(plan: StudyPlan) -> dict[str, dict[str, Any]]:
    """``<name>-<benchmark>-<block>`` -> the sweep file's content (grid: the block's, then seed)."""
    out = {}
    for block, body in plan.blocks.items():
        own = "grid" in body
        unknown = sorted(set(body) - {"grid", "config", "benchmarks"}) if own else []
        if unknown:
            raise ReportError(f"study plan block '{block}': unknown key(s) {', '.join(unknown)}; valid: grid, config, benchmarks")
        grid = body["grid"] if own else body
        missing = [b for b in (body.get("benchmarks") or []) if b not in plan.benchmarks] if own else []
        if missing:
            raise ReportError(f"study plan block '{block}': unknown benchmark '{missing[0]}'; valid: {', '.join(plan.benchmarks)}")
        for bench, extra in plan.benchmarks.items():
            if own and body.get("benchmarks") and bench not in body["benchmarks"]:
                continue
            config = _merge(_merge(plan.config, extra), body.get("config") or {}) if own else _merge(plan.config, extra)
            name = f"{plan.name}-{bench}-{block}" if own and body.get("config") else f"{plan.name}-{bench}"
            out[f"{plan.name}-{bench}-{block}"] = {
                "name": name, "runs_dir": plan.runs_dir, "params": list(plan.params),
                "config": config, "setup": list(plan.setup), "notebooks": list(plan.notebooks),
                "parallel": plan.parallel, "grid": {**grid, "seed": list(plan.seeds)},
            }
    return out


def plan_study(plan_file: str | Path, out_dir: str | Path | None = None, *, overwrite: bool = False) -> list[Path]:
    """``npo study --plan PLAN.yaml [--out DIR]``: write the starting sweep files (default into
    ``<runs_dir>/<name>-plan``), each checked (every grid point's config) before anything runs;
    existing files are kept unless ``overwrite``."""
    plan = read_spec(plan_file, StudyPlan)
    out = Path(out_dir) if out_dir is not None else Path(plan.runs_dir) / f"{plan.name}-plan"
    sweeps = plan_sweeps(plan)
    files = []
    for stem, body in sweeps.items():
        spec = SweepSpec(**body)
        for point in grid_points(spec.grid):
            spec_config(spec, point)
        file = out / f"{stem}.yaml"
        if file.exists() and not overwrite:
            raise ReportError(f"{file} exists: remove it or choose another --out")
        files.append((file, f"# from {plan_file}: `npo sweep {file}`, then `npo study --extend {file}` until it proposes nothing\n"
                            + yaml.safe_dump(body, sort_keys=False)))
    out.mkdir(parents=True, exist_ok=True)
    for file, text in files:
        atomic_write_text(file, text)
    return [f for f, _ in files]


