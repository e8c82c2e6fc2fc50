"""Extra evaluation time of the robustness attacks, as a ratio to the plain evaluation.

    python bench/attack_time.py [--cache DIR] [--model PATH] [--threads N]

Evaluates one model (default: the embedded target; ``npo prepare`` into ``--cache`` first when it
is missing) in one process: the plain evaluation (teacher-forced scoring + greedy generation of
every set), then each attack of :data:`npo_lib.eval.robustness.ATTACKS` alone, with the tiny
models' attack settings of ``params/tiny_forget.yaml``. Prints seconds and the ratio
attack / plain per attack and for all together; every side runs ``--repeats`` times,
interleaved, and its fastest run counts. Not a test: timings vary with machine load.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.timing import interleaved, ratio_cell  # noqa: E402
from npo_lib.config import load_config  # noqa: E402
from npo_lib.embedded.paths import resolve_model_path  # noqa: E402
from npo_lib.eval.compute import compute_metrics, load_eval_data  # noqa: E402
from npo_lib.eval.robustness import ATTACKS, AttackContext, run_attacks  # noqa: E402
from npo_lib.models.families import get_family  # noqa: E402
from npo_lib.models.loading import load_model, load_tokenizer  # noqa: E402
from npo_lib.utils.machine import machine_info  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--cache",
        default=None,
        help="cache_dir holding the embedded models (default: the config's)",
    )
    ap.add_argument(
        "--model", default=None, help="model folder to attack (default: the embedded target)"
    )
    ap.add_argument(
        "--repeats", type=int, default=3, help="runs per side, interleaved (fastest counts)"
    )
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    over = [f"cache_dir={args.cache}"] if args.cache else []
    cfg = load_config([str(ROOT / "params/tiny_forget.yaml"), *over])
    if args.model is None:
        from npo_lib.commands.prepare import prepare

        prepare(cfg, progress=False).raise_if_failed()
    path = args.model or resolve_model_path(cfg)
    model, tok = load_model(cfg, path).eval(), load_tokenizer(cfg, path)
    tags, data = get_family(cfg.model_family).tags, load_eval_data(cfg)

    def plain() -> tuple[float, None]:
        t0 = time.perf_counter()
        compute_metrics(model, tok, tags, data, cfg.eval, max_length=cfg.max_length, progress=False)
        return time.perf_counter() - t0, None

    def attack(name: str) -> tuple[float, None]:
        opt = dataclasses.replace(cfg.eval, robustness=[name])
        ctx = AttackContext(model, tok, tags, data, opt, cfg.max_length, False)
        return run_attacks(ctx, [name])[name]["seconds"], None

    sides = {"plain": plain} | {name: (lambda n=name: attack(n)) for name in ATTACKS}
    times = interleaved(sides, args.repeats)
    base = times.pop("plain")
    print(f"model {path}; {machine_info()}")
    print(f"fastest of {args.repeats} interleaved runs per side (+ spread: slowest / fastest - 1)")
    print(f"plain evaluation: {base.cell()}")
    for name, t in times.items():
        print(f"  {name:<10} {t.cell():>16}   {ratio_cell(t, base)} the plain evaluation")
    total = sum(t.fastest for t in times.values())
    print(f"  {'all':<10} {total:9.2f} s {'':>6}   {total / base.fastest:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
