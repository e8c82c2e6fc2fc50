"""The study plan and its driver (``npo study --plan`` / ``--run``).

``plan_study`` writes the sweep files that start a study from its plan
(``params/study_fair.yaml``): every benchmark x block of methods, each point's config checked
before anything runs. ``run_study`` runs the whole study, resumable: the starting sweeps, the
adaptive search's rounds (:mod:`npo_lib.study.search`), the attacks at each method's matched
setting (:mod:`npo_lib.study.matched`), then the study (:func:`npo_lib.study.study.write_study`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from npo_lib.config import StudyConfig, nest_keys
from npo_lib.errors import ReportError
from npo_lib.study.matched import attack_matched, matched_attack_steps
from npo_lib.study.readings import check_attacks
from npo_lib.study.runs import ReferencesFn
from npo_lib.study.search import extend_sweep, merge_round, next_file
from npo_lib.study.study import check_outputs, write_study
from npo_lib.utils.io import atomic_write_text
from npo_lib.workflow.steps import read_spec, spec_config
from npo_lib.workflow.sweep import SweepSpec, grid_points, run_sweep

__all__ = [  # the plan's commands, and the search and attack steps the CLI and tests reach here
    "StudyPlan",
    "attack_matched",
    "extend_sweep",
    "matched_attack_steps",
    "merge_round",
    "plan_study",
    "plan_sweeps",
    "run_study",
]


@dataclass
class StudyPlan:
    """A study plan: the starting sweeps of every benchmark x block of methods (``npo study
    --plan``).

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
                f"study plan block '{block}': unknown key(s) {', '.join(unknown)}; "
                "valid: grid, config, benchmarks"
            )
        grid = body["grid"] if own else body
        missing = (
            [b for b in (body.get("benchmarks") or []) if b not in plan.benchmarks] if own else []
        )
        if missing:
            raise ReportError(
                f"study plan block '{block}': unknown benchmark '{missing[0]}'; "
                f"valid: {', '.join(plan.benchmarks)}"
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
                f"# from {plan_file}: `npo sweep {file}`, then `npo study --extend {file}` "
                "until it proposes nothing\n" + yaml.safe_dump(body, sort_keys=False),
            )
        )
    out.mkdir(parents=True, exist_ok=True)
    for file, text in files:
        atomic_write_text(file, text)
    return [out / f"{stem}.yaml" for stem in sweeps]


class Sweeper:
    """Sweeps a file and keeps, per sweep folder, the runs finished, their seconds and the wall
    time; prints the time per run after each sweep."""

    def __init__(self, sweep: Callable[..., Mapping[str, Any]], parallel: int | None) -> None:
        self.sweep, self.parallel = sweep, parallel
        self.timing: dict[str, dict[str, float]] = {}

    def run(self, file: Path, tried: set[str]) -> None:
        """Sweep ``file``; the runs it tried (not skipped) join ``tried``."""
        res = self.sweep(file, parallel=self.parallel)
        t = self.timing.setdefault(res["name"], {"runs": 0, "seconds": 0.0, "wall": 0.0})
        ran = [(n, r) for n, r in res["status"].items() if r["status"] != "skipped"]
        t["runs"] += sum(r["status"] == "done" for _, r in ran)
        t["seconds"] += sum(float(r.get("seconds") or 0.0) for _, r in ran)
        t["wall"] += float(res["seconds"])
        tried.update(n for n, _ in ran)
        if t["runs"]:
            at_once = self.parallel or yaml.safe_load(file.read_text()).get("parallel", 1)
            print(
                f"study {res['name']}: {int(t['runs'])} runs so far, "
                f"{t['seconds'] / t['runs']:.0f} s per run, {t['wall'] / t['runs']:.0f} s wall "
                f"per run with {at_once} at a time",
                flush=True,
            )


def _search(
    name: str,
    files: list[Path],
    plan_dir: Path,
    study: StudyConfig,
    sweeper: Sweeper,
    *,
    max_rounds: int,
    references: ReferencesFn | None,
) -> str | None:
    """The starting sweeps of one sweep folder, then its adaptive rounds until no method
    proposes a point or a round proposes only runs already tried here (returns why), or
    ``max_rounds`` (returns None)."""
    tried: set[str] = set()
    for f in files:
        sweeper.run(f, tried)
    for r in range(1, max_rounds + 1):
        proposed = [
            res
            for f in files
            if (res := extend_sweep(f, plan_dir / "next", study, references=references))["files"]
        ]
        runs = {n for res in proposed for p in res["proposals"] for n in p["runs"]}
        if not proposed:
            return "every method's frontier around the floor is complete or at its limits"
        if runs <= tried:
            return (
                f"round {r} proposes only runs that already ran here and did not finish "
                f"({', '.join(sorted(runs))}); stopping"
            )
        methods = {p["method"] for res in proposed for p in res["proposals"]}
        print(f"study {name}: round {r}: {len(runs)} runs for {len(methods)} methods", flush=True)
        round_file = next_file(plan_dir / "next", name, "round")
        for f in merge_round([f for res in proposed for f in res["files"]], round_file):
            sweeper.run(f, tried)
    return None


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
    references: ReferencesFn | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """``npo study --run PLAN.yaml``: the whole study, resumable.

    For each sweep folder of the plan (a benchmark, or a block with its own config), in the
    plan's order: sweep its starting files, then round after round ``--extend`` each of them
    and sweep the round's points together (:func:`merge_round`), until no method proposes a
    point, a round proposes only points that already failed here, or ``max_rounds``; then the
    attacks run at each method's matched setting (:func:`attack_matched`). Then the study of
    every folder goes to ``out`` (default ``<runs_dir>/<name>-study``, beside the plan's sweep
    files; an earlier study there is refused before anything runs, unless ``overwrite``:
    :func:`npo_lib.study.study.write_study`). ``blocks`` /
    ``benchmarks``: only these of the plan; ``references``: the target / retain aggregates of a
    benchmark (default: evaluated beside the runs).
    Interrupted, it continues where it stopped: the starting files are reused, finished runs
    are skipped, and the search resumes from the runs on disk. Prints the time per run.
    """
    check_attacks(study)
    write, attack = write or write_study, attack or attack_matched
    plan = read_spec(plan_file, StudyPlan)
    plan_dir = Path(plan.runs_dir) / f"{plan.name}-plan"
    out = Path(out) if out is not None else Path(plan.runs_dir) / f"{plan.name}-study"
    check_outputs(out, overwrite)
    starts = plan_study(plan_file, plan_dir, reuse=True, blocks=blocks, benchmarks=benchmarks)
    folders: dict[str, list[Path]] = {}
    for f in starts:
        folders.setdefault(yaml.safe_load(f.read_text())["name"], []).append(f)
    sweeper = Sweeper(sweep or run_sweep, parallel)
    for name, files in folders.items():
        why = _search(
            name, files, plan_dir, study, sweeper, max_rounds=max_rounds, references=references
        )
        more = f"`npo study --run {plan_file}` continues the search"
        print(f"study {name}: {why or f'stopped after {max_rounds} rounds; {more}'}", flush=True)
        if study.attacks:
            root, at_once = Path(plan.runs_dir) / name, parallel or plan.parallel
            _print_attacks(name, attack(root, study, parallel=at_once, references=references))
    roots = [Path(plan.runs_dir) / n for n in folders]
    result = dict(write(roots, out, study, references=references, overwrite=overwrite))
    return {**result, "timing": sweeper.timing}


def _print_attacks(name: str, res: Mapping[str, Any]) -> None:
    failed = f" ({', '.join(res['failed'])})" if res["failed"] else ""
    print(
        f"study {name}: attacks at the matched settings: {res['done']} runs attacked, "
        f"{res['skipped']} already were, {len(res['failed'])} failed{failed}",
        flush=True,
    )
