"""Batched evaluation against one example at a time, and on 2 ranks, on the tiny embedded model.

    python bench/eval_batched_vs_single.py [--cache DIR] [--max-new-tokens 200]
        [--threads 1] [--ranks 2]

Prepares params/tiny_quick.yaml into a temporary cache unless ``--cache`` already holds it (or
should keep it), evaluates the target model with :func:`npo_lib.eval.compute.compute_metrics`
(batched: all candidates of 8 items per forward, each prompt run once and shared through the
KV cache, 32 prompts per generation batch; single: one row per forward, one prompt per
generation), checks that every per-item metric agrees (probabilities within 1e-5, other numbers
within 1e-4 relative, generations identical) and prints the times and their ratio (target:
batched >= 4x faster). Then the batched evaluation again on ``--ranks`` processes (torchrun,
gloo, ``--threads`` each), which must give the same metrics, and its speed-up over one process.
Not a test: exits 1 only when the paths disagree.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from npo_lib.config import EvalConfig, load_config  # noqa: E402
from npo_lib.embedded.paths import embedded_paths, resolve_model_path  # noqa: E402
from npo_lib.eval.compute import EvalData, compute_metrics, load_eval_data  # noqa: E402
from npo_lib.models.families import get_family  # noqa: E402
from npo_lib.models.loading import load_model, load_tokenizer  # noqa: E402
from npo_lib.utils.dist import barrier, ensure_process_group, is_rank0, sharded  # noqa: E402

PROB_ATOL = 1e-5
REL_TOL = 1e-4
TARGET_RATIO = 4.0


def compare(a: dict, b: dict) -> list[str]:
    """Disagreements between two compute_metrics results (empty when they match)."""
    problems = []
    for key, values in a["per_item"].items():
        other = b["per_item"].get(key)
        if other is None or set(other) != set(values):
            problems.append(f"{key}: items differ")
            continue
        for i, v in values.items():
            w = other[i]
            ok = (
                abs(v - w) <= PROB_ATOL
                if key.endswith("_prob")
                else math.isclose(v, w, rel_tol=REL_TOL, abs_tol=PROB_ATOL)
            )
            if not ok:
                problems.append(f"{key}[{i}]: batched {v!r} vs single {w!r}")
    for key, texts in a["generations"].items():
        diff = [i for i, t in texts.items() if b["generations"][key][i] != t]
        if diff:
            problems.append(f"generations {key}: {len(diff)} differ (items {diff[:5]})")
    return problems


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", help="cache_dir holding (or to receive) the tiny_quick models")
    ap.add_argument("--max-new-tokens", type=int, default=200)
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads per process (default 1: a 1M-parameter model gains nothing from "
        "more, and on a shared machine extra threads spin against other processes; "
        "0 = torch's choice)",
    )
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument(
        "--dtype", default="float32", help="model dtype; bf16 rounding differs between batch shapes"
    )
    ap.add_argument(
        "--ranks", type=int, default=2, help="processes of the multi-rank run (0: skip it)"
    )
    ap.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="interleaved repetitions of each path; each part's fastest counts "
        "(a shared machine's load varies)",
    )
    ap.add_argument("--worker", help=argparse.SUPPRESS)  # internal: one rank of the multi-rank run
    return ap


def _load(args: argparse.Namespace, cache: str) -> tuple:
    """(cfg, tags, model, tokenizer, data) of the prepared tiny_quick target."""
    cfg = load_config(
        [str(ROOT / "params/tiny_quick.yaml"), f"cache_dir={cache}", f"dtype={args.dtype}"]
    )
    if not (embedded_paths(cfg).retain / "config.json").is_file():
        from npo_lib.commands.prepare import prepare

        print(f"preparing tiny_quick into {cache} ...")
        prepare(cfg, progress=False)
    tags = get_family(cfg.model_family).tags
    model = load_model(cfg, resolve_model_path(cfg), device=args.device)
    tokenizer = load_tokenizer(cfg, resolve_model_path(cfg))
    return cfg, tags, model, tokenizer, load_eval_data(cfg)


def _fastest(runs: list[dict]) -> dict:
    """The first result, each part's seconds the fastest of ``runs``."""
    out = runs[0]
    out["seconds"] = {k: min(r["seconds"][k] for r in runs) for k in out["seconds"]}
    return out


def _timed(model, tokenizer, tags, data, opt: EvalConfig, max_length: int) -> dict:
    """compute_metrics after a small warm-up (lazy initialisation, allocator), with its total."""
    small = EvalData(data.data_path, {k: v[:2] for k, v in data.sets.items()})
    compute_metrics(model, tokenizer, tags, small, EvalConfig(max_new_tokens=4), progress=False)
    barrier()
    t0 = time.perf_counter()
    res = compute_metrics(model, tokenizer, tags, data, opt, max_length=max_length, progress=False)
    res["seconds"]["total"] = time.perf_counter() - t0
    res["seconds"]["scoring+generation"] = res["seconds"]["scoring"] + res["seconds"]["generation"]
    return res


def worker(args: argparse.Namespace) -> int:
    """One rank of the multi-rank run: the batched evaluation, items shared across ranks; rank
    0 writes its result to ``--worker``."""
    ensure_process_group()
    cfg, tags, model, tokenizer, data = _load(args, args.cache)
    opt = EvalConfig(max_new_tokens=args.max_new_tokens)
    with sharded():
        res = _fastest(
            [_timed(model, tokenizer, tags, data, opt, cfg.max_length) for _ in range(args.repeat)]
        )
    if is_rank0():
        Path(args.worker).write_text(json.dumps(res, default=str))
    return 0


def multi_rank(
    args: argparse.Namespace, cache: str, one_rank: Callable[[], dict], batched: dict
) -> list[str]:
    """The batched evaluation on ``--ranks`` processes next to one process, interleaved
    (``--repeat`` times: a ``--ranks`` run, then a one-process run; each part's fastest counts),
    and the disagreements of the multi-rank result with the one-process one."""
    out = Path(cache) / "bench-multirank.json"
    cmd = [
        str(Path(sys.executable).parent / "torchrun"),
        "--nproc_per_node",
        str(args.ranks),
        "--master_port",
        "29597",
        __file__,
        "--worker",
        str(out),
        "--cache",
        cache,
        "--max-new-tokens",
        str(args.max_new_tokens),
        "--threads",
        str(args.threads),
        "--dtype",
        args.dtype,
        "--repeat",
        "1",
    ]
    if args.device:
        cmd += ["--device", args.device]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads or os.cpu_count())}
    multis, singles = [], []
    for _ in range(args.repeat):
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            return [f"{args.ranks}-rank run failed:\n{r.stderr[-3000:]}"]
        multis.append(json.loads(out.read_text()))
        singles.append(one_rank())
    multi = _fastest(multis)
    multi["per_item"] = {k: {int(i): v for i, v in d.items()} for k, d in multi["per_item"].items()}
    multi["generations"] = {
        k: {int(i): v for i, v in d.items()} for k, d in multi["generations"].items()
    }
    b, m = _fastest(singles)["seconds"], multi["seconds"]
    print(
        f"\n{'':<20}{'1 rank s':>10}{f'{args.ranks} ranks s':>11}{'speed-up':>10}"
        f"   (fastest of {args.repeat} interleaved)"
    )
    for part in ("scoring", "generation", "scoring+generation", "total"):
        print(f"{part:<20}{b[part]:>10.2f}{m[part]:>11.2f}{b[part] / m[part]:>9.2f}x")
    print(
        f"({args.ranks} processes of {args.threads or 'all'} thread(s) each on "
        f"{os.cpu_count()} CPUs; "
        f"load average {os.getloadavg()[0]:.1f} at the end)"
    )
    return compare(multi, batched)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        return worker(args)
    tmp = None if args.cache else tempfile.TemporaryDirectory(prefix="tnpo-bench-")
    cache = args.cache or tmp.name
    cfg, tags, model, tokenizer, data = _load(args, cache)
    print(
        f"model {embedded_paths(cfg).target} on {model.device}, {torch.get_num_threads()} threads; "
        f"sets: {', '.join(f'{k} {len(v)}' for k, v in data.sets.items())}"
    )
    paths = {
        "batched": EvalConfig(max_new_tokens=args.max_new_tokens),
        "single": EvalConfig(
            max_new_tokens=args.max_new_tokens, batch_size=1, gen_batch_size=1, flatten=False
        ),
    }
    timed: dict[str, list[dict]] = {name: [] for name in paths}
    for _ in range(args.repeat):  # interleaved: both paths see the same spells of load
        for name, opt in paths.items():
            timed[name].append(_timed(model, tokenizer, tags, data, opt, cfg.max_length))
    runs = {name: _fastest(r) for name, r in timed.items()}
    print(
        f"fastest of {args.repeat} interleaved runs per path; load average {os.getloadavg()[0]:.1f}"
    )

    b, s = runs["batched"]["seconds"], runs["single"]["seconds"]
    print(f"\n{'':<20}{'batched s':>10}{'single s':>10}{'ratio':>8}")
    for part in ("scoring", "generation", "scoring+generation", "total"):
        print(f"{part:<20}{b[part]:>10.2f}{s[part]:>10.2f}{s[part] / b[part]:>7.1f}x")
    print("(total adds the metric arithmetic, ROUGE included, which batching does not change)")
    ratio = s["scoring+generation"] / b["scoring+generation"]
    print(
        f"[{'ok' if ratio >= TARGET_RATIO else 'below target'}] batched is {ratio:.1f}x faster "
        f"(target >= {TARGET_RATIO:.0f}x)"
    )
    problems = compare(runs["batched"], runs["single"])
    n_items = sum(len(v) for v in runs["batched"]["per_item"].values())
    if args.ranks > 1:

        def one_rank() -> dict:
            return _timed(model, tokenizer, tags, data, paths["batched"], cfg.max_length)

        problems += [
            f"{args.ranks} ranks: {p}" for p in multi_rank(args, cache, one_rank, runs["batched"])
        ]
    if problems:
        print(f"[FAIL] {len(problems)} disagreements:\n  " + "\n  ".join(problems[:20]))
        return 1
    print(
        f"[ok] {n_items} per-item values and every generation agree"
        + (f" (single, batched and {args.ranks} ranks)" if args.ranks > 1 else "")
    )
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
