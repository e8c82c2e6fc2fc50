"""The ``npo`` command: one subcommand per pipeline step, all taking the same config sources.

    npo prepare [params.yaml ...] [key=value ...]
    npo forget  [params.yaml ...] [key=value ...]
    npo eval    [params.yaml ...] [key=value ...] [--out-dir DIR] [--recompute]
    npo influence [params.yaml ...] [key=value ...] [--auroc-table]
    npo report  RUN_DIR ... [--csv PATH]
    npo run     PIPELINE.yaml                 (prepare -> influence -> forget -> eval -> heatmaps)
    npo sweep   SWEEP.yaml [--parallel N]     (a grid of runs through the notebooks)
    npo launch  --nproc N NOTEBOOK.ipynb [-f PARAMS.yaml] [-p KEY VALUE] [-o OUT.ipynb]
    npo study   SWEEP_DIR [--out docs]        (mean ± std over seeds, FQ-MU plot, the claim)

Params files and ``key=value`` overrides merge over the schema defaults (npo_lib.config);
any bad key, value or path fails before a model loads.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from npo_lib.config import Config, ConfigError, load_config, to_yaml


def cmd_prepare(cfg: Config, opts: argparse.Namespace) -> int:
    """Generate the embedded benchmark, train its tokenizer, target and retain models."""
    from npo_lib.prepare import prepare

    summary = prepare(cfg)
    print()
    print(summary.table())
    s = summary.seconds
    print(
        f"prepared in {s['total']:.1f} s"
        + (f" (reused: {', '.join(summary.reused)})" if summary.reused else "")
        + f"; target trained on {summary.n_train_target} QA, retain on {summary.n_train_retain},"
        f" forget set {cfg.split} task {cfg.task_id}: {summary.n_forget} QA"
    )
    for k, v in summary.paths.items():
        print(f"  {k:<10} {v}")
    summary.raise_if_failed()  # a missed bar: one line naming it, the value and what to raise
    return 0


def cmd_forget(cfg: Config, opts: argparse.Namespace) -> int:
    """Unlearn the forget split with ``forget_loss`` (also ``python -m npo_lib.forget``)."""
    from npo_lib.forget import run_forget

    run_forget(cfg)
    return 0


def cmd_eval(cfg: Config, opts: argparse.Namespace) -> int:
    """TOFU / R-TOFU / privacy metrics of ``model_path`` (default: the embedded target)."""
    from npo_lib.evaluate import cmd_eval as run

    return run(cfg, opts)


def _eval_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out-dir", help="folder for eval/metrics.json (default: save_dir, else the model folder)")
    p.add_argument("--recompute", action="store_true", help="recompute a finished evaluation")
    p.add_argument("--retain-model-path", help="retain model for forget quality / privleak on real data")


def cmd_influence(cfg: Config, opts: argparse.Namespace) -> int:
    """Per-token influence scores of the forget split for INFLUENCE (also ``python -m npo_lib.compute_influence``)."""
    from npo_lib.compute_influence import auroc_table, format_auroc_table, run_influence

    if opts.auroc_table:
        print(format_auroc_table(auroc_table(cfg)))
        return 0
    run_influence(cfg)
    return 0


def _influence_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--auroc-table", action="store_true",
                   help="print the AUROC against the fact tokens of every scorer and preconditioner (embedded benchmark); writes nothing")


# name -> (handler, help, extra flags); later steps register here.
COMMANDS: dict[str, tuple[Callable[[Config, argparse.Namespace], int], str, Callable | None]] = {
    "prepare": (cmd_prepare, "make the embedded benchmark, tokenizer, target and retain models", None),
    "forget": (cmd_forget, "unlearn the forget split with forget_loss (NPO+GD, INFLUENCE+GD, ...)", None),
    "eval": (cmd_eval, "evaluate a model: forget quality, model utility, privacy, fact recall", _eval_flags),
    "influence": (cmd_influence, "per-token influence scores of the forget split (input of INFLUENCE)", _influence_flags),
}


def cmd_report(opts: argparse.Namespace) -> int:
    from npo_lib.report import cmd_report as run

    return run(opts.run_dirs, opts.csv)


def cmd_run(opts: argparse.Namespace) -> int:
    """``npo run PIPELINE.yaml``: print the report table, the heatmap page and the wall time."""
    from npo_lib.pipeline import run_pipeline

    res = run_pipeline(opts.spec)
    if res.get("report"):
        print("\n" + res["report"])
    if res.get("heatmaps"):
        print(f"\nheatmaps: {res['heatmaps']}")
    failed = [s for s in res["steps"] if s["status"] == "failed"]
    for s in failed:
        print(f"\nstep '{s['name']}' failed; executed notebook: {s['output']}\n{s['error']}", file=sys.stderr)
    print(f"pipeline {res['name']}: {'ok' if res['ok'] else 'FAILED'} in {res['seconds']:.1f} s")
    return 0 if res["ok"] else 1


def cmd_sweep(opts: argparse.Namespace) -> int:
    from npo_lib.pipeline import run_sweep

    res = run_sweep(opts.spec, parallel=opts.parallel)
    if res.get("report"):
        print("\n" + res["report"])
    n_failed = sum(r["status"] == "failed" for r in res["status"].values())
    print(f"sweep {res['name']}: {len(res['status']) - n_failed} ok, {n_failed} failed in {res['seconds']:.1f} s")
    return 0 if res["ok"] else 1


def cmd_launch(opts: argparse.Namespace) -> int:
    import yaml

    from npo_lib.pipeline import launch

    params = {k: yaml.safe_load(v) for k, v in opts.parameter}
    res = launch(opts.notebook, nproc=opts.nproc, params_files=opts.files, parameters=params, output=opts.output, port=opts.master_port)
    if res["returncode"] != 0:
        print(f"npo launch: rank {res.get('failed_rank')} failed:\n{res['error']}", file=sys.stderr)
        return 1
    print(f"rank 0: {res['output']}; other ranks: {res['ranks']} ({res['seconds']:.1f} s)")
    return 0


def cmd_study(opts: argparse.Namespace) -> int:
    from npo_lib.study import cmd_study as run

    return run(opts.sweep_dir, opts.out, opts.group_by, opts.mu_fraction)


# commands that take their own spec files instead of the config sources
SPEC_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "report": cmd_report,
    "run": cmd_run,
    "sweep": cmd_sweep,
    "launch": cmd_launch,
    "study": cmd_study,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="npo",
        description="tnpo: NPO and influence-guided token-level unlearning (TOFU / R-TOFU).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_, flags) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("args", nargs="*", metavar="PARAMS.yaml|key=value", help="params files and overrides, merged in order")
        p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
        if flags is not None:
            flags(p)
    run = sub.add_parser("run", help="the pipeline: prepare, influence, forget, evaluate, visualise (executed notebooks)")
    run.add_argument("spec", metavar="PIPELINE.yaml", help="e.g. params/demo.yaml")
    sw = sub.add_parser("sweep", help="a grid of runs through the notebooks; resumable")
    sw.add_argument("spec", metavar="SWEEP.yaml", help="e.g. params/sweep.yaml")
    sw.add_argument("--parallel", type=int, help="grid points at a time (default: the file's)")
    la = sub.add_parser("launch", help="a notebook on N ranks (DeepSpeed launcher, torchrun fallback)")
    la.add_argument("notebook", metavar="NOTEBOOK", help="notebooks/forget.ipynb or a name (forget, evaluation, ...)")
    la.add_argument("--nproc", type=int, required=True, help="ranks")
    la.add_argument("-f", "--parameters-file", action="append", default=[], dest="files", help="params YAML (repeatable)")
    la.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"), help="one parameter (YAML value)")
    la.add_argument("-o", "--output", help="rank 0's executed notebook (default runs/<run>/notebooks/NOTEBOOK)")
    la.add_argument("--master-port", type=int, default=29560)
    st = sub.add_parser("study", help="method comparison of a finished sweep: mean ± std table and FQ-MU plot")
    st.add_argument("sweep_dir", metavar="SWEEP_DIR", help="e.g. runs/study")
    st.add_argument("--out", default="docs", help="folder for study.md, study.csv, study_fq_mu.png (default docs)")
    st.add_argument("--group-by", default="forget_loss,lr,num_epochs", help="config keys of a setting (seeds vary inside)")
    st.add_argument("--mu-fraction", type=float, default=0.95, help="utility floor as a fraction of the target's")
    rep = sub.add_parser("report", help="compare evaluated runs in a markdown table (and CSV)")
    rep.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="folders holding eval/metrics.json")
    rep.add_argument("--csv", help="CSV path (default: report.csv beside the first run)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = [a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith(("--local_rank", "--local-rank"))]
    opts = build_parser().parse_args(argv)
    if opts.command in SPEC_COMMANDS:
        try:
            return SPEC_COMMANDS[opts.command](opts)
        except ConfigError as e:
            print(f"npo {opts.command}: {e}", file=sys.stderr)
            return 2
    try:
        cfg = load_config(opts.args)
    except ConfigError as e:
        print(f"npo {opts.command}: config error: {e}", file=sys.stderr)
        return 2
    if opts.print_config:
        print(to_yaml(cfg), end="")
        return 0
    from npo_lib.prepare import PrepareError

    handler = COMMANDS[opts.command][0]
    try:
        return handler(cfg, opts)
    except (ConfigError, PrepareError) as e:
        print(f"npo {opts.command}: {e}", file=sys.stderr)
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
