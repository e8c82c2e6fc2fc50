"""The ``npo`` command: one subcommand per pipeline step, all taking the same config sources.

    npo prepare [params.yaml ...] [key=value ...]
    npo forget  [params.yaml ...] [key=value ...]

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
    return 0 if all(summary.passed.values()) else 1


def cmd_forget(cfg: Config, opts: argparse.Namespace) -> int:
    """Unlearn the forget split with ``forget_loss`` (also ``python -m npo_lib.forget``)."""
    from npo_lib.forget import run_forget

    run_forget(cfg)
    return 0


# name -> (handler, help); later steps register here.
COMMANDS: dict[str, tuple[Callable[[Config, argparse.Namespace], int], str]] = {
    "prepare": (cmd_prepare, "make the embedded benchmark, tokenizer, target and retain models"),
    "forget": (cmd_forget, "unlearn the forget split with forget_loss (NPO+GD, INFLUENCE+GD, ...)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="npo",
        description="tnpo: NPO and influence-guided token-level unlearning (TOFU / R-TOFU).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("args", nargs="*", metavar="PARAMS.yaml|key=value", help="params files and overrides, merged in order")
        p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = [a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith(("--local_rank", "--local-rank"))]
    opts = build_parser().parse_args(argv)
    try:
        cfg = load_config(opts.args)
    except ConfigError as e:
        print(f"npo {opts.command}: config error: {e}", file=sys.stderr)
        return 2
    if opts.print_config:
        print(to_yaml(cfg), end="")
        return 0
    handler, _ = COMMANDS[opts.command]
    try:
        return handler(cfg, opts)
    except ConfigError as e:
        print(f"npo {opts.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
