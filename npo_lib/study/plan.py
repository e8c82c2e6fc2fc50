"""The adaptive frontier search and the study plan (``npo study --extend`` / ``--plan``).

``extend_sweep`` writes the next sweep files of the adaptive frontier search
(:func:`npo_lib.study.frontier.propose_next`): a method whose utility is still above the floor is
pushed further along its strength keys, one seed each; around the floor every seed runs.
``plan_study`` writes the sweep files that start a study from its plan
(``params/study_fair.yaml``): every benchmark x block of methods, each point's config checked
before anything runs.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from npo_lib.config import Config, StudyConfig, nest_keys, with_alias_keys
from npo_lib.errors import ReportError
from npo_lib.study.frontier import Axis, Proposal, RunResult, by_method, propose_next
from npo_lib.study.study import (
    ATTACKS_DIR,
    analyse,
    config_defaults,
    flatten,
    load_results,
    references_for,
    run_folders,
    write_study,
)
from npo_lib.utils.io import atomic_write_text
from npo_lib.workflow.executors import local_device_slots
from npo_lib.workflow.steps import Step, read_spec, run_steps, spec_config
from npo_lib.workflow.sweep import (
    SweepSpec,
    cpu_share,
    grid_points,
    point_name,
    run_sweep,
    sweep_steps,
)


def _axes(study: StudyConfig) -> list[Axis]:
    defaults = config_defaults()
    return [
        Axis(
            k,
            study.factor,
            limit=float(lim),
            integer=isinstance(defaults.get(k), int) and not isinstance(defaults.get(k), bool),
        )
        for k, lim in zip(study.strength_keys, study.limits)
    ]


def _spec_values(spec: Any) -> dict[str, Any]:
    """The flat config every point of a sweep starts from (its params files and config)."""
    return flatten(with_alias_keys(asdict(spec_config(spec)), Config))


def _next_file(out_dir: Path, stem: str, tag: str = "next") -> Path:
    """``<stem>-<tag>-NN.yaml``, numbered after the highest one already there (none is overwritten)."""
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
    method was seen in), then strength keys outside the grid whose value differs from the sweep's."""
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


def extend_sweep(
    spec_file: str | Path,
    out_dir: str | Path | None,
    study: StudyConfig,
    *,
    references: Callable[[Sequence[RunResult], Path], Mapping[str, Mapping[str, Any]]]
    | None = None,
) -> dict[str, Any]:
    """``npo study --extend SWEEP.yaml``: the adaptive frontier search's next round.

    Reads the sweep's finished runs (only the methods its grid holds), reads the utility floor
    (``study.mu_fraction`` x the target's model utility), asks :func:`propose_next` per method
    and writes the round as one sweep file, a grid per proposed point (same ``name`` and
    ``runs_dir``, so its runs land in the same folder and a finished run is skipped), into
    ``out_dir`` (default: beside the sweep file) as ``<stem>-next-NN.yaml``. Returns ``{"files", "proposals", "floor"}``; no file
    means every method's frontier around the floor is complete (or at its limits).
    """
    spec = read_spec(spec_file, SweepSpec)
    root = Path(spec.runs_dir) / spec.name
    base = _spec_values(spec)
    # this sweep's runs: its grid's values, and every other method key at the sweep's own value
    values = _grid_values(spec.grid)
    fixed = {
        k: {_norm(x) for x in v}
        for k, v in values.items()
        if k != "seed" and k not in study.strength_keys
    }
    fixed.update({k: {_norm(base.get(k))} for k in study.method_keys if k not in values})
    results = [
        r
        for rs in load_results(run_folders(root), study).values()
        for r in rs
        if all(_norm(r.config.get(k, base.get(k))) in vals for k, vals in fixed.items())
    ]
    if not results:
        raise ReportError(
            f"no evaluated runs of {spec_file} in {root}: run `npo sweep {spec_file}` first"
        )
    refs = (references or references_for)(results, root)
    target_mu = refs.get("target", {}).get("model_utility")
    if target_mu is None:
        raise ReportError(
            f"{root}: no target model utility to set the floor (the search needs the embedded benchmark's target)"
        )
    floor = study.mu_fraction * target_mu
    out = Path(out_dir) if out_dir is not None else Path(spec_file).parent
    grids, heads, proposals = [], [], []
    for method, rs in by_method(results).items():
        example = rs[0].config
        for p in propose_next(rs, floor, _axes(study), study.seeds, near=study.near):
            grid = proposal_grid(spec, p, example, base)
            grids.append(grid)
            heads.append(f"# {method}: {p.reason}")
            proposals.append(
                {
                    "method": method,
                    "setting": dict(p.setting),
                    "seeds": list(p.seeds),
                    "reason": p.reason,
                    "runs": [point_name(pt) for pt in grid_points(grid)],
                }
            )
    files = []
    if grids:
        out.mkdir(parents=True, exist_ok=True)
        file = _next_file(out, Path(spec_file).stem.split("-next-")[0])
        body = {
            "name": spec.name,
            "runs_dir": spec.runs_dir,
            "params": spec.params,
            "config": spec.config,
            "setup": spec.setup,
            "notebooks": spec.notebooks,
            "parallel": spec.parallel,
            "grid": grids,
        }
        head = (
            f"# next round of `npo study --extend {spec_file}`, a grid per proposed point:\n"
            + "\n".join(heads)
            + "\n"
        )
        atomic_write_text(file, head + yaml.safe_dump(body, sort_keys=False))
        files.append(str(file))
        for prop in proposals:
            prop["file"] = str(file)
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
    study: dict[str, Any] = field(
        default_factory=dict
    )  # study.* settings of this plan (search axes, seeds, ...)


def plan_sweeps(
    plan: StudyPlan, blocks: Sequence[str] | None = None, benchmarks: Sequence[str] | None = None
) -> dict[str, dict[str, Any]]:
    """``<name>-<benchmark>-<block>`` -> the sweep file's content (grid: the block's, then seed);
    ``blocks`` / ``benchmarks``: only these (default all)."""
    for what, names, valid in (
        ("block", blocks, plan.blocks),
        ("benchmark", benchmarks, plan.benchmarks),
    ):
        unknown = [b for b in (names or []) if b not in valid]
        if unknown:
            raise ReportError(
                f"study plan: unknown {what} '{unknown[0]}'; valid: {', '.join(valid)}"
            )
    out = {}
    for block, body in plan.blocks.items():
        if blocks and block not in blocks:
            continue
        own = "grid" in body
        unknown = sorted(set(body) - {"grid", "config", "benchmarks"}) if own else []
        if unknown:
            raise ReportError(
                f"study plan block '{block}': unknown key(s) {', '.join(unknown)}; valid: grid, config, benchmarks"
            )
        grid = body["grid"] if own else body
        missing = (
            [b for b in (body.get("benchmarks") or []) if b not in plan.benchmarks] if own else []
        )
        if missing:
            raise ReportError(
                f"study plan block '{block}': unknown benchmark '{missing[0]}'; valid: {', '.join(plan.benchmarks)}"
            )
        for bench, extra in plan.benchmarks.items():
            if (own and body.get("benchmarks") and bench not in body["benchmarks"]) or (
                benchmarks and bench not in benchmarks
            ):
                continue
            config = (
                nest_keys(plan.config, extra, body.get("config") or {})
                if own
                else nest_keys(plan.config, extra)
            )
            name = (
                f"{plan.name}-{bench}-{block}"
                if own and body.get("config")
                else f"{plan.name}-{bench}"
            )
            out[f"{plan.name}-{bench}-{block}"] = {
                "name": name,
                "runs_dir": plan.runs_dir,
                "params": list(plan.params),
                "config": config,
                "setup": list(plan.setup),
                "notebooks": list(plan.notebooks),
                "parallel": plan.parallel,
                "grid": {**grid, "seed": list(plan.seeds)},
            }
    return out


def plan_study(
    plan_file: str | Path,
    out_dir: str | Path | None = None,
    *,
    overwrite: bool = False,
    reuse: bool = False,
    blocks: Sequence[str] | None = None,
    benchmarks: Sequence[str] | None = None,
) -> list[Path]:
    """``npo study --plan PLAN.yaml [--out DIR]``: write the starting sweep files (default into
    ``<runs_dir>/<name>-plan``), each checked (every grid point's config) before anything runs.
    An existing file is an error unless ``overwrite``, or ``reuse`` and it holds the same sweep
    (a resumed study; a changed plan is an error, so runs of two plans never mix)."""
    plan = read_spec(plan_file, StudyPlan)
    out = Path(out_dir) if out_dir is not None else Path(plan.runs_dir) / f"{plan.name}-plan"
    sweeps = plan_sweeps(plan, blocks, benchmarks)
    files = []
    for stem, body in sweeps.items():
        spec = SweepSpec(**body)
        for point in grid_points(spec.grid):
            spec_config(spec, point)
        file = out / f"{stem}.yaml"
        if file.exists() and not overwrite:
            if reuse and yaml.safe_load(file.read_text()) == body:
                continue
            raise ReportError(
                f"{file} exists"
                + (" and differs from the plan" if reuse else "")
                + ": remove it or choose another --out"
            )
        files.append(
            (
                file,
                f"# from {plan_file}: `npo sweep {file}`, then `npo study --extend {file}` until it proposes nothing\n"
                + yaml.safe_dump(body, sort_keys=False),
            )
        )
    out.mkdir(parents=True, exist_ok=True)
    for file, text in files:
        atomic_write_text(file, text)
    return [out / f"{stem}.yaml" for stem in sweeps]


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


def run_study(
    plan_file: str | Path,
    study: StudyConfig,
    *,
    out: str | Path | None = None,
    parallel: int | None = None,
    blocks: Sequence[str] | None = None,
    benchmarks: Sequence[str] | None = None,
    max_rounds: int = 12,
    sweep: Callable[..., Mapping[str, Any]] | None = None,
    write: Callable[..., Mapping[str, Any]] | None = None,
    attack: Callable[..., Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """``npo study --run PLAN.yaml``: the whole study, resumable.

    For each sweep folder of the plan (a benchmark, or a block with its own config), in the
    plan's order: sweep its starting files, then round after round ``--extend`` each of them
    and sweep the round's points together (:func:`merge_round`), until no method proposes a
    point, a round proposes only points that already failed here, or ``max_rounds``; then the
    attacks run at each method's matched setting (:func:`attack_matched`). Then the study of
    every folder goes to ``out`` (:func:`npo_lib.study.study.write_study`). ``blocks`` /
    ``benchmarks``: only these of the plan.
    Interrupted, it continues where it stopped: the starting files are reused, finished runs
    are skipped, and the search resumes from the runs on disk. Prints the time per run.
    """
    sweep = sweep or run_sweep
    write = write or write_study
    attack = attack or attack_matched
    plan = read_spec(plan_file, StudyPlan)
    plan_dir = Path(plan.runs_dir) / f"{plan.name}-plan"
    starts = plan_study(plan_file, plan_dir, reuse=True, blocks=blocks, benchmarks=benchmarks)
    folders: dict[str, list[Path]] = {}
    for f in starts:
        folders.setdefault(yaml.safe_load(f.read_text())["name"], []).append(f)
    timing: dict[str, dict[str, float]] = {}

    def run(file: Path, tried: set[str]) -> None:
        res = sweep(file, parallel=parallel)
        t = timing.setdefault(res["name"], {"runs": 0, "seconds": 0.0, "wall": 0.0})
        ran = [(n, r) for n, r in res["status"].items() if r["status"] not in ("skipped",)]
        t["runs"] += sum(r["status"] == "done" for _, r in ran)
        t["seconds"] += sum(float(r.get("seconds") or 0.0) for _, r in ran)
        t["wall"] += float(res["seconds"])
        tried.update(n for n, _ in ran)
        if t["runs"]:
            print(
                f"study {res['name']}: {int(t['runs'])} runs so far, {t['seconds'] / t['runs']:.0f} s per run, "
                f"{t['wall'] / t['runs']:.0f} s wall per run with {parallel or yaml.safe_load(file.read_text()).get('parallel', 1)} at a time",
                flush=True,
            )

    for name, files in folders.items():
        tried: set[str] = set()
        for f in files:
            run(f, tried)
        for r in range(1, max_rounds + 1):
            proposed = [
                res for f in files if (res := extend_sweep(f, plan_dir / "next", study))["files"]
            ]
            runs = {n for res in proposed for p in res["proposals"] for n in p["runs"]}
            if not proposed:
                print(
                    f"study {name}: every method's frontier around the floor is complete or at its limits",
                    flush=True,
                )
                break
            if runs <= tried:
                print(
                    f"study {name}: round {r} proposes only runs that already ran here and did not finish ({', '.join(sorted(runs))}); stopping",
                    flush=True,
                )
                break
            print(
                f"study {name}: round {r}: {len(runs)} runs for {len({p['method'] for res in proposed for p in res['proposals']})} methods",
                flush=True,
            )
            merged = merge_round(
                [f for res in proposed for f in res["files"]],
                _next_file(plan_dir / "next", name, "round"),
            )
            for f in merged:
                run(f, tried)
        else:
            print(
                f"study {name}: stopped after {max_rounds} rounds; `npo study --run {plan_file}` continues the search",
                flush=True,
            )
        if study.attacks:
            res = attack(Path(plan.runs_dir) / name, study, parallel=parallel or plan.parallel)
            print(
                f"study {name}: attacks at the matched settings: {res['done']} runs attacked, {res['skipped']} already were, "
                f"{len(res['failed'])} failed"
                + (f" ({', '.join(res['failed'])})" if res["failed"] else ""),
                flush=True,
            )
    result = dict(
        write([Path(plan.runs_dir) / n for n in folders], out if out is not None else "docs", study)
    )
    result["timing"] = timing
    return result


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
    references: Callable[[Sequence[RunResult], Path], Mapping[str, Mapping[str, Any]]]
    | None = None,
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
        for row in b.rows:
            for r in (
                r
                for r in results
                if row.setting is not None and r.method == row.method and r.setting == row.setting
            ):
                point = points.get(r.name)
                if point is None:
                    continue
                one = {**asdict(spec), "grid": {k: [v] for k, v in point.items()}}
                setup, runs, _ = sweep_steps(SweepSpec(**one))
                forget, evaluation = (
                    runs[r.name][0],
                    sweep_steps(SweepSpec(**{**one, "config": attacked}))[1][r.name][-1],
                )
                evaluation.name = f"{r.name}: attacks"
                evaluation.params.update(eval_out_dir=str(root / r.name / ATTACKS_DIR))
                evaluation.output = root / r.name / ATTACKS_DIR / "notebooks" / "evaluation.ipynb"
                evaluation.deps = [*setup, forget]
                out.append([*setup, forget, evaluation])
    return out


def attack_matched(
    root: str | Path,
    study: StudyConfig,
    *,
    parallel: int = 1,
    references: Callable[[Sequence[RunResult], Path], Mapping[str, Mapping[str, Any]]]
    | None = None,
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
