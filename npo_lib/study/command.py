"""``npo study``: its arguments, and which of its forms runs (a whole plan, a plan's starting
sweep files, the adaptive search's next ones, or the study of finished sweeps)."""

from __future__ import annotations

import argparse
import json

from npo_lib.config import Config, load_config
from npo_lib.errors import UserError


def add_study_arguments(st: argparse.ArgumentParser) -> None:
    """The arguments of ``npo study``."""
    st.add_argument(
        "sweep_dir", nargs="?", metavar="SWEEP_DIR", help="e.g. runs/study_fair-default"
    )
    st.add_argument(
        "args",
        nargs="*",
        metavar="PARAMS.yaml|key=value",
        help="study.* settings, e.g. study.mu_fraction=0.9",
    )
    st.add_argument(
        "--sweep",
        action="append",
        default=[],
        metavar="SWEEP_DIR",
        help="another sweep folder, e.g. the second benchmark's (repeatable)",
    )
    st.add_argument(
        "--out",
        help="folder for study.md, study.csv, study_frontier.png, study_selection.png "
        "(default: SWEEP_DIR/study; with --run: <runs_dir>/<plan>-study; --out docs replaces "
        "the published study); with --plan / --extend: where the sweep files go",
    )
    st.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier study (or sweep files) in the --out folder",
    )
    st.add_argument(
        "--extend",
        metavar="SWEEP.yaml",
        help="write the adaptive search's next sweep files for this sweep's finished runs",
    )
    st.add_argument(
        "--plan",
        metavar="PLAN.yaml",
        help="write the starting sweep files of a study plan, e.g. params/study_fair.yaml",
    )
    st.add_argument(
        "--run",
        metavar="PLAN.yaml",
        help="the whole study of a plan, resumable: sweeps, adaptive rounds, attacks at the "
        "matched settings, then --out",
    )
    st.add_argument(
        "--blocks", metavar="A,B", help="with --run / --plan: only these blocks of the plan"
    )
    st.add_argument(
        "--benchmarks", metavar="A,B", help="with --run / --plan: only these benchmarks of the plan"
    )
    st.add_argument("--parallel", type=int, help="with --run: runs at a time (default: the plan's)")


def study_config(opts: argparse.Namespace) -> Config:
    """The study's config: a plan's ``study.*`` settings under the command line's."""
    from npo_lib.study.plan import StudyPlan
    from npo_lib.workflow.steps import read_spec

    args = list(opts.args)
    if opts.sweep_dir is not None and (
        "=" in opts.sweep_dir or opts.sweep_dir.endswith((".yaml", ".yml"))
    ):
        # a setting, not a folder: the folder is optional with --plan / --extend
        args.insert(0, opts.sweep_dir)
        opts.sweep_dir = None
    plan_file = opts.run or opts.plan
    own = read_spec(plan_file, StudyPlan).study if plan_file else {}
    return load_config([*(f"study.{k}={json.dumps(v)}" for k, v in own.items()), *args])


def plan_command(opts: argparse.Namespace, cfg: Config) -> int:
    """``--run`` (the whole study of a plan) or ``--plan`` (its starting sweep files)."""
    from npo_lib.study.plan import plan_study, run_study

    blocks = [b for b in (opts.blocks or "").split(",") if b] or None
    benchmarks = [b for b in (opts.benchmarks or "").split(",") if b] or None
    if opts.run:
        res = run_study(
            opts.run,
            cfg.study,
            out=opts.out,
            parallel=opts.parallel,
            blocks=blocks,
            benchmarks=benchmarks,
            overwrite=opts.overwrite,
        )
        print(res["markdown"])
        files = (str(v) for k, v in res.items() if k not in ("markdown", "studies", "timing"))
        print(f"\nwrote {', '.join(files)}")
        return 0
    files = plan_study(
        opts.plan, opts.out, blocks=blocks, benchmarks=benchmarks, overwrite=opts.overwrite
    )
    print("\n".join(f"npo sweep {f} --parallel 2" for f in files))
    return 0


def extend_command(opts: argparse.Namespace, cfg: Config) -> int:
    """``--extend``: the adaptive search's next sweep files."""
    from npo_lib.study.plan import extend_sweep

    res = extend_sweep(opts.extend, opts.out, cfg.study)
    for p in res["proposals"]:
        print(f"{p['method']}: {p['reason']} -> {p['file']} ({len(p['runs'])} runs)")
    print(
        "\n".join(f"npo sweep {f}" for f in res["files"])
        if res["files"]
        else "no new points: every method's frontier around the floor "
        f"({res['floor']:.3f}) is complete or at its limits"
    )
    return 0


def study_command(opts: argparse.Namespace) -> int:
    """``npo study`` with the parsed arguments of :func:`add_study_arguments`."""
    from npo_lib.study.study import write_study

    cfg = study_config(opts)
    if opts.run or opts.plan:
        return plan_command(opts, cfg)
    if opts.extend:
        return extend_command(opts, cfg)
    if opts.sweep_dir is None:
        raise UserError("give SWEEP_DIR (or --plan PLAN.yaml / --extend SWEEP.yaml)")
    res = write_study([opts.sweep_dir, *opts.sweep], opts.out, cfg.study, overwrite=opts.overwrite)
    print(res["markdown"])
    files = (str(v) for k, v in res.items() if k not in ("markdown", "studies"))
    print(f"\nwrote {', '.join(files)}")
    return 0
