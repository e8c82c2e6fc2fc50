"""The ``npo`` command: one subcommand per step, all taking the same config sources.

    npo prepare   [params.yaml ...] [key=value ...]   (data_path=DIR: the tiny models of your
                                                       own data)
    npo finetune  [params.yaml ...] [key=value ...]   (finetune.model=target|retain)
    npo forget    [params.yaml ...] [key=value ...]
    npo eval      [params.yaml ...] [key=value ...] [--out-dir DIR] [--recompute]
                  [--retain-model-path DIR]
    npo influence [params.yaml ...] [key=value ...] [--auroc-table]
    npo plan      [params.yaml ...] [key=value ...] [--command forget|finetune|influence]
                  [--json [FILE]]                 (peak GPU memory, before any model loads)
    npo losses                                (the objectives: equations, hyperparameters, inputs)
    npo report    RUN_DIR ... [--csv PATH] [--html FILE]
    npo run       PIPELINE.yaml               (prepare -> influence -> forget -> eval -> heatmaps)
    npo sweep     SWEEP.yaml [--parallel N] [--executor thread|local|slurm]
    npo launch    --nproc N NOTEBOOK.ipynb [-f PARAMS.yaml] [-p KEY VALUE] [-o OUT.ipynb]
    npo study     SWEEP_DIR [--sweep DIR] [--out docs] [key=value ...]
                  | --run PLAN.yaml [--blocks A,B] [--benchmarks A,B]
                  | --plan PLAN.yaml | --extend SWEEP.yaml

Params files and ``key=value`` overrides merge over the schema defaults (:mod:`npo_lib.config`);
``--print-config`` shows every key with its help. The config is checked and resolved once, here
(:func:`npo_lib.commands.resolve.resolve`: family, objective, model / data / retain model
folders, run folders), and the resolved run is what the command gets. An error a user can cause
(a bad key, value, file or folder, a missed bar) prints one line naming it and exits with 2; a
traceback means a bug.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from npo_lib.config import Config, annotated_yaml, load_config
from npo_lib.errors import UserError

if TYPE_CHECKING:
    from npo_lib.commands.resolve import Resolved

# ----------------------------------------------------------------------------- config commands


def cmd_prepare(res: Resolved, opts: argparse.Namespace) -> int:
    """The tiny models of the generated benchmark (or of ``data_path=DIR``): tokenizer, target,
    retain."""
    from npo_lib.commands.prepare import prepare

    summary = prepare(res)
    print()
    print(summary.table())
    s = summary.seconds
    print(
        f"prepared in {s['total']:.1f} s"
        + (f" (reused: {', '.join(summary.reused)})" if summary.reused else "")
        + f"; {summary.counts_line()}"
    )
    for k, v in summary.paths.items():
        print(f"  {k:<10} {v}")
    summary.raise_if_failed()  # a missed bar: one line naming it, the value and what to raise
    if not summary.enforced and summary.failures():
        print(
            "bars below on your own data are reported, not enforced: raise tiny.max_epochs for "
            "more memorisation"
        )
    return 0


def cmd_finetune(res: Resolved, opts: argparse.Namespace) -> int:
    """Fine-tune the target or the retain model (also ``python -m npo_lib.finetune``)."""
    from npo_lib.commands.finetune import run_finetune

    run_finetune(res)
    return 0


def cmd_forget(res: Resolved, opts: argparse.Namespace) -> int:
    """Unlearn the forget split with ``forget_loss`` (also ``python -m npo_lib.forget``)."""
    from npo_lib.commands.forget import run_forget

    run_forget(res)
    return 0


def cmd_eval(res: Resolved, opts: argparse.Namespace) -> int:
    """TOFU / R-TOFU / privacy metrics of ``model_path`` (default: the embedded target)."""
    from npo_lib.commands.evaluation import METRICS_FILE, default_out_dir, evaluate, summary
    from npo_lib.utils.dist import is_rank0

    out_dir = Path(opts.out_dir or default_out_dir(res))
    result = evaluate(res, out_dir=out_dir, recompute=opts.recompute)
    if not is_rank0():  # under torchrun / deepspeed every rank evaluates; rank 0 reports
        return 0
    print(f"{result['identity']['model_path']} ({result['identity']['role']})")
    print(summary(result))
    print(f"wrote {out_dir / METRICS_FILE} in {result['seconds'].get('total', 0.0):.1f} s")
    return 0


def _eval_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--out-dir", help="folder for eval/metrics.json (default: save_dir, else the model folder)"
    )
    p.add_argument("--recompute", action="store_true", help="recompute a finished evaluation")
    p.add_argument("--retain-model-path", help="the retain model (same as retain_model_path=...)")


def cmd_influence(res: Resolved, opts: argparse.Namespace) -> int:
    """Per-token influence scores of the forget split (also
    ``python -m npo_lib.compute_influence``)."""
    from npo_lib.commands.influence import auroc_table, format_auroc_table, run_influence

    if opts.auroc_table:
        print(format_auroc_table(auroc_table(res)))
        return 0
    run_influence(res)
    return 0


def _influence_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--auroc-table",
        action="store_true",
        help="print the AUROC against the fact tokens of every scorer and preconditioner "
        "(embedded benchmark); writes nothing",
    )


def cmd_plan(res: Resolved, opts: argparse.Namespace) -> int:
    """Peak GPU memory per device of a forget / finetune / influence run, before it loads."""
    import json

    from npo_lib.commands.plan import plan_run

    plan = plan_run(res.cfg, res.family, res.spec, res.model_path, opts.plan_command)
    if opts.json == "-":
        print(json.dumps(plan.to_json(), indent=2))
        return 0
    print(plan.table())
    if opts.json:
        Path(opts.json).write_text(json.dumps(plan.to_json(), indent=2) + "\n", encoding="utf-8")
        print(f"wrote {opts.json}")
    return 0


def _plan_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--command",
        dest="plan_command",
        choices=["forget", "finetune", "influence"],
        default="forget",
        help="the run to plan (default: forget)",
    )
    p.add_argument(
        "--json",
        nargs="?",
        const="-",
        metavar="FILE",
        help="the plan as JSON: on stdout instead of the table, or written to FILE",
    )


# name -> (handler, help, extra flags)
COMMANDS: dict[str, tuple[Callable[[Resolved, argparse.Namespace], int], str, Callable | None]] = {
    "prepare": (
        cmd_prepare,
        "make the embedded benchmark, tokenizer, target and retain models",
        None,
    ),
    "finetune": (
        cmd_finetune,
        "fine-tune the target (finetune.model=target) or the retain model from model_path / "
        "the hub",
        None,
    ),
    "forget": (
        cmd_forget,
        "unlearn the forget split with forget_loss (NPO+GD, INFLUENCE+GD, ...)",
        None,
    ),
    "eval": (
        cmd_eval,
        "evaluate a model: forget quality, model utility, privacy, fact recall",
        _eval_flags,
    ),
    "influence": (
        cmd_influence,
        "per-token influence scores of the forget split (input of INFLUENCE)",
        _influence_flags,
    ),
    "plan": (
        cmd_plan,
        "estimate a run's peak GPU memory per device from its config and say whether it fits",
        _plan_flags,
    ),
}

# ----------------------------------------------------------------------------- other commands


def cmd_losses(opts: argparse.Namespace) -> int:
    """The objective registry: every forget term and regularizer, its view and equation, its
    hyperparameters (key, default, help) and inputs (:mod:`npo_lib.training.describe`)."""
    from npo_lib.training.describe import format_objectives

    print(format_objectives())
    return 0


def cmd_report(opts: argparse.Namespace) -> int:
    from npo_lib.viz.report import report

    table, out = report(opts.run_dirs, opts.csv)
    print(table)
    print(f"\nCSV: {out}")
    if opts.html:
        from npo_lib.viz.dashboard import write_dashboard_html

        print(f"HTML: {write_dashboard_html(opts.run_dirs, opts.html).resolve()}")
    return 0


def cmd_run(opts: argparse.Namespace) -> int:
    """``npo run PIPELINE.yaml``: print the report table, the heatmap page and the wall time."""
    from npo_lib.workflow.pipeline import run_pipeline

    res = run_pipeline(opts.spec, stream=opts.verbose)  # a failed step printed its error
    if res.get("report"):
        print("\n" + res["report"])
        print(f"\nreport: {res['report_md']} (csv: {res['report_csv']})")
    if res.get("requests"):  # requests: true, the metrics after each request k
        print("\n" + res["requests"])
        print(f"\nrequests: {res['requests_md']} (csv: {res['requests_csv']})")
    if res.get("heatmaps"):
        print(f"heatmaps: {res['heatmaps']}")
    if res.get("dashboard"):
        print(f"dashboard: {res['dashboard']}")
    print(f"pipeline {res['name']}: {'ok' if res['ok'] else 'FAILED'} in {res['seconds']:.1f} s")
    return 0 if res["ok"] else 1


def cmd_sweep(opts: argparse.Namespace) -> int:
    from npo_lib.workflow.sweep import run_sweep

    res = run_sweep(opts.spec, parallel=opts.parallel, executor=opts.executor, stream=opts.verbose)
    if res.get("report"):
        print("\n" + res["report"])
    # failed or interrupted
    n_failed = sum(r["status"] not in ("done", "skipped") for r in res["status"].values())
    n_ok = len(res["status"]) - n_failed
    print(
        f"sweep {res['name']}: {n_ok} ok, {n_failed} failed or interrupted in "
        f"{res['seconds']:.1f} s"
    )
    return 0 if res["ok"] else 1


def cmd_launch(opts: argparse.Namespace) -> int:
    import yaml

    from npo_lib.workflow.launch import launch

    params = {k: yaml.safe_load(v) for k, v in opts.parameter}
    res = launch(
        opts.notebook,
        nproc=opts.nproc,
        params_files=opts.files,
        parameters=params,
        output=opts.output,
        port=opts.master_port,
        verbose=opts.verbose,
    )
    if res["returncode"] != 0:
        print(f"npo launch: rank {res.get('failed_rank')} failed:\n{res['error']}", file=sys.stderr)
        return 1
    print(f"rank 0: {res['output']}; other ranks: {res['ranks']} ({res['seconds']:.1f} s)")
    return 0


def cmd_study(opts: argparse.Namespace) -> int:
    from npo_lib.study.command import study_command

    return study_command(opts)


# commands that take their own arguments instead of the config sources
SPEC_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "losses": cmd_losses,
    "report": cmd_report,
    "run": cmd_run,
    "sweep": cmd_sweep,
    "launch": cmd_launch,
    "study": cmd_study,
}


VERBOSE = "also show papermill's and the kernels' output (always in a log beside each notebook)"


def _spec_parsers(sub: argparse._SubParsersAction) -> None:
    from npo_lib.study.command import add_study_arguments

    sub.add_parser(
        "losses",
        help="list the objectives (forget terms, regularizers): equations, hyperparameters, inputs",
    )
    run = sub.add_parser(
        "run",
        help="the pipeline: prepare, influence, forget, evaluate, visualise (executed notebooks)",
    )
    run.add_argument("spec", metavar="PIPELINE.yaml", help="e.g. params/demo.yaml, or demo")
    run.add_argument("-v", "--verbose", action="store_true", help=VERBOSE)
    sw = sub.add_parser("sweep", help="a grid of runs through the notebooks; resumable")
    sw.add_argument("spec", metavar="SWEEP.yaml", help="e.g. params/sweep.yaml")
    sw.add_argument("-v", "--verbose", action="store_true", help=VERBOSE)
    sw.add_argument("--parallel", type=int, help="grid points at a time (default: the file's)")
    sw.add_argument(
        "--executor",
        choices=["thread", "local", "slurm"],
        help="where points run: threads here, submitit processes here (own GPUs each), a SLURM "
        "job array (default: the file's executor.kind)",
    )
    _launch_parser(sub)
    add_study_arguments(
        sub.add_parser(
            "study",
            help="method comparison of finished sweeps: frontiers at matched utility, selection "
            "controls, attacks",
        )
    )
    rep = sub.add_parser("report", help="compare evaluated runs in a markdown table (and CSV)")
    rep.add_argument(
        "run_dirs", nargs="+", metavar="RUN_DIR", help="folders holding eval/metrics.json"
    )
    rep.add_argument("--csv", help="CSV path (default: report.csv beside the first run)")
    rep.add_argument(
        "--html",
        metavar="FILE",
        help="also the run dashboard as one static HTML file (table, FQ-MU plot, loss curves, "
        "heatmaps)",
    )


def _launch_parser(sub: argparse._SubParsersAction) -> None:
    la = sub.add_parser(
        "launch", help="a notebook on N ranks (DeepSpeed launcher, torchrun fallback)"
    )
    la.add_argument(
        "notebook",
        metavar="NOTEBOOK",
        help="notebooks/forget.ipynb or a name (forget, evaluation, ...)",
    )
    la.add_argument("--nproc", type=int, required=True, help="ranks")
    la.add_argument(
        "-f",
        "--parameters-file",
        action="append",
        default=[],
        dest="files",
        help="params YAML (repeatable)",
    )
    la.add_argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        default=[],
        metavar=("KEY", "VALUE"),
        help="one parameter (YAML value)",
    )
    la.add_argument(
        "-o", "--output", help="rank 0's executed notebook (default runs/<run>/notebooks/NOTEBOOK)"
    )
    la.add_argument("--master-port", type=int, default=29560)
    la.add_argument("-v", "--verbose", action="store_true", help=VERBOSE)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="npo",
        description="tnpo: NPO and influence-guided token-level unlearning (TOFU / R-TOFU).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_, flags) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument(
            "args",
            nargs="*",
            metavar="PARAMS.yaml|key=value",
            help="params files and overrides, merged in order",
        )
        p.add_argument(
            "--print-config",
            action="store_true",
            help="print the resolved config, each key with its help, and exit",
        )
        if flags is not None:
            flags(p)
    _spec_parsers(sub)
    return parser


def _with_flags(cfg: Config, opts: argparse.Namespace) -> Config:
    """The config with the keys a command's own flags set (``npo eval --retain-model-path``)."""
    if getattr(opts, "retain_model_path", None):
        return dataclasses.replace(cfg, retain_model_path=opts.retain_model_path)
    return cfg


def _dispatch(opts: argparse.Namespace) -> int:
    from npo_lib.commands.checks import check_config
    from npo_lib.commands.resolve import resolve

    if opts.command in SPEC_COMMANDS:
        return SPEC_COMMANDS[opts.command](opts)
    cfg = _with_flags(load_config(opts.args), opts)
    if opts.print_config:
        check_config(cfg)
        print(annotated_yaml(cfg))
        return 0
    return COMMANDS[opts.command][0](resolve(cfg, opts.command), opts)


def main(argv: Sequence[str] | None = None) -> int:
    argv = [
        a
        for a in (sys.argv[1:] if argv is None else argv)
        if not a.startswith(("--local_rank", "--local-rank"))
    ]
    opts = build_parser().parse_args(argv)
    try:
        return _dispatch(opts)
    except UserError as e:
        print(f"npo {opts.command}: {e}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:  # a path the user gave that is not there
        print(f"npo {opts.command}: file not found: {e.filename or e}", file=sys.stderr)
        return 2
    finally:
        _destroy_process_group()


def _destroy_process_group() -> None:
    """Tear down a process group the command started (multi-rank forget / influence).

    Left to interpreter exit, the gloo group's threads are destroyed while still joinable and a
    rank can abort with "terminate called without an active exception" after its work is done
    (seen with ZeRO-3 on 2 CPU ranks), which fails the launch.
    """
    if "torch" not in sys.modules:  # commands that never loaded torch pay nothing
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()  # no rank tears down while another still talks to it
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
