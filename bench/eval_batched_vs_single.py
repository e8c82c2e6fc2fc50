"""Batched evaluation against one example at a time, on the tiny embedded model and data.

    python bench/eval_batched_vs_single.py [--cache DIR] [--max-new-tokens 200] [--threads 1]

Prepares params/tiny_quick.yaml into a temporary cache unless ``--cache`` already holds it (or
should keep it), evaluates the target model twice with :func:`npo_lib.eval.compute.compute_metrics`
(batched: all candidates of 8 items per forward, 32 prompts per generation batch; single: one
row per forward, one prompt per generation), checks that every per-item metric agrees
(probabilities within 1e-5, other numbers within 1e-4 relative, generations identical) and
prints the times and their ratio (target: batched >= 4x faster). Not a test: exits 1 only when
the two paths disagree.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from npo_lib.config import EvalConfig, load_config  # noqa: E402
from npo_lib.embedded.paths import embedded_paths, resolve_model_path  # noqa: E402
from npo_lib.eval.compute import EvalData, compute_metrics, load_eval_data  # noqa: E402
from npo_lib.models.families import get_family  # noqa: E402
from npo_lib.models.loading import load_model, load_tokenizer  # noqa: E402

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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", help="cache_dir holding (or to receive) the tiny_quick models")
    ap.add_argument("--max-new-tokens", type=int, default=200)
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: a 1M-parameter model gains nothing from more, and on a "
        "shared machine extra threads spin against other processes; 0 = torch's choice)",
    )
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument(
        "--dtype", default="float32", help="model dtype; bf16 rounding differs between batch shapes"
    )
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    tmp = None if args.cache else tempfile.TemporaryDirectory(prefix="tnpo-bench-")
    cache = args.cache or tmp.name
    cfg = load_config(
        [str(ROOT / "params/tiny_quick.yaml"), f"cache_dir={cache}", f"dtype={args.dtype}"]
    )
    if not (embedded_paths(cfg).retain / "config.json").is_file():
        from npo_lib.run.prepare import prepare

        print(f"preparing tiny_quick into {cache} ...")
        prepare(cfg, progress=False)
    tags = get_family(cfg.model_family).tags
    model = load_model(cfg, resolve_model_path(cfg), device=args.device)
    tokenizer = load_tokenizer(cfg, resolve_model_path(cfg))
    data = load_eval_data(cfg)
    print(
        f"model {embedded_paths(cfg).target} on {model.device}, {torch.get_num_threads()} threads; "
        f"sets: {', '.join(f'{k} {len(v)}' for k, v in data.sets.items())}"
    )

    # warm-up (lazy initialisation, allocator) so that neither timed path pays it
    small = EvalData(data.data_path, {k: v[:2] for k, v in data.sets.items()})
    compute_metrics(model, tokenizer, tags, small, EvalConfig(max_new_tokens=4), progress=False)
    runs = {}
    for name, opt in (
        ("batched", EvalConfig(max_new_tokens=args.max_new_tokens)),
        ("single", EvalConfig(max_new_tokens=args.max_new_tokens, batch_size=1, gen_batch_size=1, flatten=False)),
    ):
        t0 = time.perf_counter()
        res = compute_metrics(model, tokenizer, tags, data, opt, max_length=cfg.max_length, progress=False)
        res["seconds"]["total"] = time.perf_counter() - t0
        runs[name] = res

    b, s = runs["batched"]["seconds"], runs["single"]["seconds"]
    for t in (b, s):
        t["scoring+generation"] = t["scoring"] + t["generation"]
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
    if problems:
        print(f"[FAIL] {len(problems)} disagreements:\n  " + "\n  ".join(problems[:20]))
        return 1
    print(f"[ok] {n_items} per-item values and every generation agree")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
