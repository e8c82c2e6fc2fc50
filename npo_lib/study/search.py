"""The adaptive frontier search's rounds as sweep files (``npo study --extend SWEEP.yaml``).

:func:`extend_sweep` reads a sweep's finished runs, asks
:func:`npo_lib.study.adaptive.propose_next` per method for the next points around the utility
floor (``study.mu_fraction`` x the target's utility of the headline pair), and writes them as one
sweep file, a grid per proposed point, whose runs land in the same folder (a finished run is
skipped). :func:`merge_round` joins a round's files that run in the same folder.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from npo_lib.config import Config, StudyConfig, with_alias_keys
from npo_lib.errors import ReportError
from npo_lib.eval.registry import MetricPair
from npo_lib.study.adaptive import Axis, Proposal, propose_next
from npo_lib.study.frontier import RunResult, by_method
from npo_lib.study.runs import (
    ReferencesFn,
    benchmark_metrics,
    config_defaults,
    flatten,
    load_results,
    references_for,
    run_folders,
)
from npo_lib.utils.io import atomic_write_text
from npo_lib.workflow.steps import read_spec, spec_config
from npo_lib.workflow.sweep import SweepSpec, grid_points, point_name

SPEC_KEYS = ("name", "runs_dir", "params", "config", "setup", "notebooks", "parallel")


def axes(study: StudyConfig) -> list[Axis]:
    """The search's axes: each strength key up to its limit, integer keys rounded."""
    defaults = config_defaults()
    return [
        Axis(
            k,
            study.factor,
            limit=float(lim),
            integer=isinstance(defaults.get(k), int) and not isinstance(defaults.get(k), bool),
        )
        for k, lim in zip(study.strength_keys, study.limits, strict=True)
    ]


def _spec_values(spec: Any) -> dict[str, Any]:
    """The flat config every point of a sweep starts from (its params files and config)."""
    return flatten(with_alias_keys(asdict(spec_config(spec)), Config))


def next_file(out_dir: Path, stem: str, tag: str = "next") -> Path:
    """``<stem>-<tag>-NN.yaml``, numbered after the highest one already there (none is
    overwritten)."""
    taken = [
        int(m.group(1))
        for p in out_dir.glob(f"{stem}-{tag}-*.yaml")
        if (m := re.match(rf"{re.escape(stem)}-{tag}-(\d+)", p.name))
    ]
    return out_dir / f"{stem}-{tag}-{max(taken, default=0) + 1:02d}.yaml"


def _grid_values(
    grid: Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Sequence[Any]]],
) -> dict[str, list[Any]]:
    """Config key -> every value it takes in a grid (or in any grid of a list), keys in order."""
    out: dict[str, list[Any]] = {}
    for g in [grid] if isinstance(grid, Mapping) else grid:
        for k, vs in g.items():
            out.setdefault(k, []).extend(v for v in vs if v not in out[k])
    return out


def proposal_grid(
    spec: Any, proposal: Proposal, example: Mapping[str, Any], base: Mapping[str, Any]
) -> dict[str, list[Any]]:
    """The grid of one proposed point, in the sweep's key order so its run folder gets the same
    name as a grid point would: the sweep's grid keys (method keys from ``example``, the run the
    method was seen in), then strength keys outside the grid whose value differs from the
    sweep's."""
    setting = dict(proposal.setting)
    grid: dict[str, list[Any]] = {}
    for k in _grid_values(spec.grid):
        grid[k] = (
            list(proposal.seeds)
            if k == "seed"
            else [setting[k] if k in setting else example.get(k, base.get(k))]
        )
    for k, v in setting.items():
        if k not in grid and v != base.get(k):
            grid[k] = [v]
    if "seed" not in grid:
        grid["seed"] = list(proposal.seeds)
    return grid


def _norm(v: Any) -> Any:
    """A grid value as compared with a run's config (``10`` in a grid is the config's ``10.0``)."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


def sweep_results(
    spec: SweepSpec, root: Path, study: StudyConfig, base: Mapping[str, Any]
) -> list[RunResult]:
    """The evaluated runs of this sweep in ``root``: its grid's values, and every other method
    key at the sweep's own value (other sweeps may share the folder)."""
    values = _grid_values(spec.grid)
    fixed = {
        k: {_norm(x) for x in v}
        for k, v in values.items()
        if k != "seed" and k not in study.strength_keys
    }
    fixed.update({k: {_norm(base.get(k))} for k in study.method_keys if k not in values})
    return [
        r
        for rs in load_results(run_folders(root), study).values()
        for r in rs
        if all(_norm(r.config.get(k, base.get(k))) in vals for k, vals in fixed.items())
    ]


def utility_floor(
    refs: Mapping[str, Mapping[str, Any]], study: StudyConfig, root: Path, pair: MetricPair
) -> float:
    """``study.mu_fraction`` x the target's utility on ``pair`` (the benchmark's headline pair);
    fails without it."""
    target = refs.get("target", {}).get(pair.utility)
    if target is None:
        raise ReportError(
            f"{root}: no target {pair.utility_metric.title} to set the floor "
            "(the search needs the embedded benchmark's target)"
        )
    return study.mu_fraction * target


def _write_round(
    spec_file: str | Path, spec: SweepSpec, out: Path, grids: list[Any], heads: list[str]
) -> Path:
    """The round as one sweep file ``<stem>-next-NN.yaml``, each grid headed by its reason."""
    out.mkdir(parents=True, exist_ok=True)
    file = next_file(out, Path(spec_file).stem.split("-next-")[0])
    body = {**{k: getattr(spec, k) for k in SPEC_KEYS}, "grid": grids}
    head = f"# next round of `npo study --extend {spec_file}`, a grid per proposed point:\n"
    atomic_write_text(file, head + "\n".join(heads) + "\n" + yaml.safe_dump(body, sort_keys=False))
    return file


def extend_sweep(
    spec_file: str | Path,
    out_dir: str | Path | None,
    study: StudyConfig,
    *,
    references: ReferencesFn | None = None,
) -> dict[str, Any]:
    """``npo study --extend SWEEP.yaml``: the adaptive frontier search's next round.

    Reads the sweep's finished runs (only the methods its grid holds), reads the utility floor
    (``study.mu_fraction`` x the target's utility on the headline pair of the benchmark the runs
    name: TOFU's model utility, MUSE's KnowMem retain), asks :func:`propose_next` per method
    and writes the round as one sweep file, a grid per proposed point (same ``name`` and
    ``runs_dir``, so its runs land in the same folder and a finished run is skipped), into
    ``out_dir`` (default: beside the sweep file) as ``<stem>-next-NN.yaml``. Returns
    ``{"files", "proposals", "floor"}``; no file means every method's frontier around the floor
    is complete (or at its limits).
    """
    spec = read_spec(spec_file, SweepSpec)
    root = Path(spec.runs_dir) / spec.name
    base = _spec_values(spec)
    results = sweep_results(spec, root, study, base)
    if not results:
        raise ReportError(
            f"no evaluated runs of {spec_file} in {root}: run `npo sweep {spec_file}` first"
        )
    pair = benchmark_metrics(results).headline
    floor = utility_floor((references or references_for)(results, root), study, root, pair)
    grids, heads, proposals = [], [], []
    for method, rs in by_method(results).items():
        for p in propose_next(rs, floor, axes(study), study.seeds, near=study.near, pair=pair):
            grid = proposal_grid(spec, p, rs[0].config, base)
            grids.append(grid)
            heads.append(f"# {method}: {p.reason}")
            runs = [point_name(pt) for pt in grid_points(grid)]
            proposals.append(
                {
                    "method": method,
                    "setting": dict(p.setting),
                    "seeds": list(p.seeds),
                    "reason": p.reason,
                    "runs": runs,
                }
            )
    if not grids:
        return {"files": [], "proposals": proposals, "floor": floor}
    out = Path(out_dir) if out_dir is not None else Path(spec_file).parent
    file = str(_write_round(spec_file, spec, out, grids, heads))
    for prop in proposals:
        prop["file"] = file
    return {"files": [file], "proposals": proposals, "floor": floor}


def merge_round(files: Sequence[str | Path], out_file: Path) -> list[Path]:
    """One sweep file for the files of a round that run in the same folder with the same
    config (their grids concatenated), so all their points run ``parallel`` at a time; a file
    that differs stays on its own. Returns the files to sweep."""
    groups: dict[str, tuple[dict[str, Any], list[Any]]] = {}
    for f in files:
        body = yaml.safe_load(Path(f).read_text())
        key = yaml.safe_dump({k: v for k, v in body.items() if k != "grid"}, sort_keys=True)
        grid = body["grid"]
        groups.setdefault(key, (body, []))[1].extend(grid if isinstance(grid, list) else [grid])
    if len(groups) == len(files):
        return [Path(f) for f in files]
    out = []
    for i, (body, grids) in enumerate(groups.values()):
        file = out_file if i == 0 else out_file.with_name(f"{out_file.stem}-{i}{out_file.suffix}")
        atomic_write_text(
            file,
            f"# {len(grids)} proposed points of the round, from {', '.join(map(str, files))}\n"
            + yaml.safe_dump({**body, "grid": grids}, sort_keys=False),
        )
        out.append(file)
    return out
