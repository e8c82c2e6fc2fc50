"""The embedded default under every CPU kernel path this machine offers: does each bar hold?

    python bench/kernel_paths.py [--paths default,avx2,avx512] [--threads 1,2] [--out FILE] [--keep]

Other CPUs round differently: which SIMD kernels torch picks decides the order of every sum, so
a recipe that passes on one machine may not on another. This script emulates the other machines
on this one. For each kernel path and thread count it runs, from an empty cache,

1. ``npo prepare`` (benchmark, tokenizer, target and retain models; its memorisation bars),
2. ``npo influence`` (the default scorer) and its AUROC against the fact tokens (bar >= 0.85),
3. one NPO+GD forget (``params/tiny_forget.yaml``) and ``npo eval`` of the unlearned model,

and prints one table row per run (recall, forget quality, AUROC, seconds). It exits non-zero
when any bar is missed. A kernel path is set for all three libraries that pick one:
``ATEN_CPU_CAPABILITY`` (ATen's vector kernels), ``ONEDNN_MAX_CPU_ISA`` (oneDNN) and
``MKL_ENABLE_INSTRUCTIONS`` (MKL's GEMMs, torch's BLAS on x86); ``OMP_NUM_THREADS`` sets the
threads. ``avx512`` runs only where ``torch.backends.cpu.get_cpu_capability()`` reports it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


AUROC_BAR = 0.85  # the default scorer against the fact tokens of forget10 task 1
# kernel path -> (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA, MKL_ENABLE_INSTRUCTIONS)
PATHS = {
    "default": ("default", "SSE41", "SSE4_2"),
    "avx2": ("avx2", "AVX2", "AVX2"),
    "avx512": ("avx512", "AVX512_CORE", "AVX512"),
}


def native_capability() -> str:
    import torch

    return str(torch.backends.cpu.get_cpu_capability()).lower()


def available(paths: list[str]) -> list[str]:
    """The requested paths this CPU can run (avx512 needs an AVX-512 CPU, avx2 an AVX2 one)."""
    native = native_capability()
    order = ["default", "avx2", "avx512"]
    top = order.index(native) if native in order else 0
    return [p for p in paths if order.index(p) <= top]


def npo(args: list[str], env: dict[str, str], log: Path) -> float:
    """Run ``python -m npo_lib ARGS`` with ``env``; its output goes to ``log``. Seconds taken."""
    t0 = time.perf_counter()
    with log.open("a") as fh:
        fh.write(f"\n$ npo {' '.join(args)}\n")
        fh.flush()
        rc = subprocess.run(
            [sys.executable, "-m", "npo_lib", *args],
            cwd=ROOT,
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
        ).returncode
    if rc != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-8:])
        raise RuntimeError(f"npo {args[0]} exited with {rc}:\n{tail}")
    return time.perf_counter() - t0


def run_one(path: str, threads: int, root: Path) -> dict:
    """Every step for one kernel path and thread count, in its own empty cache and run folder."""
    aten, onednn, mkl = PATHS[path]
    work = root / f"{path}-t{threads}"
    cache, runs = work / "cache", work / "runs"
    work.mkdir(parents=True)
    env = {
        **os.environ,
        "ATEN_CPU_CAPABILITY": aten,
        "ONEDNN_MAX_CPU_ISA": onednn,
        "MKL_ENABLE_INSTRUCTIONS": mkl,
        "OMP_NUM_THREADS": str(threads),
        "TNPO_CACHE": str(cache),
        "HF_HUB_OFFLINE": "1",
    }
    log = work / "log.txt"
    row: dict = {"path": path, "threads": threads, "errors": []}
    try:
        row["prepare_s"] = npo(["prepare"], env, log)
        summary = json.loads(next(cache.glob("tiny/*/retain-*/prepare_summary.json")).read_text())
        row.update(
            recall=summary["recall"],
            forget_quality=summary["forget_quality"],
            epochs=summary.get("epochs"),
            machine=summary.get("machine"),
            prepare_passed=summary["passed"],
        )
        influence = runs / "influence"
        row["influence_s"] = npo(["influence", f"influence_dir={influence}"], env, log)
        row["auroc"] = json.loads((influence / "meta.json").read_text())["auroc"]
        run = runs / "npo_gd"
        forget_args = ["params/tiny_forget.yaml", "params/npo_gd.yaml", f"save_dir={run}"]
        row["forget_s"] = npo(["forget", *forget_args], env, log)
        row["eval_s"] = npo(["eval", *forget_args, f"model_path={run / 'model'}"], env, log)
        agg = json.loads((run / "eval" / "metrics.json").read_text())["aggregates"]
        row["npo_gd"] = {
            k: agg.get(k)
            for k in ("forget_quality", "model_utility", "forget_fact_recall", "retain_fact_recall")
        }
    except (RuntimeError, StopIteration) as e:
        row["errors"].append(str(e) or "no prepare summary written")
    row["bars"] = bars(row)
    return row


def bars(row: dict) -> dict[str, bool]:
    """Every bar of one run: prepare's memorisation bars, the AUROC, and that NPO+GD forgets."""
    out = dict(row.get("prepare_passed") or {"npo prepare finished": False})
    out[f"influence AUROC >= {AUROC_BAR}"] = (
        row.get("auroc") is not None and row["auroc"] >= AUROC_BAR
    )
    npo_gd, target = row.get("npo_gd") or {}, (row.get("recall") or {}).get("target", {})
    out["NPO+GD lowers forget fact recall below the target's"] = npo_gd.get(
        "forget_fact_recall"
    ) is not None and npo_gd["forget_fact_recall"] < target.get("forget", 0.0)
    return out


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x:.1%}"


def _g(x: float | None) -> str:
    return "–" if x is None else f"{x:.2g}"


def _auroc(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"


def table(rows: list[dict]) -> str:
    head = (
        "| path | threads | target forget / retain recall | retain model forget / retain recall "
        "| target FQ | epochs (target, retain) | AUROC | NPO+GD forget recall, FQ, MU "
        "| prepare s | influence s | forget s | bars |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        rec, fq, ep, ng = (
            r.get("recall") or {},
            r.get("forget_quality") or {},
            r.get("epochs") or {},
            r.get("npo_gd") or {},
        )
        t, m = rec.get("target", {}), rec.get("retain", {})
        ok = all(r["bars"].values()) and not r["errors"]
        lines.append(
            f"| {r['path']} | {r['threads']} | {_pct(t.get('forget'))} / {_pct(t.get('retain'))} | "
            f"{_pct(m.get('forget'))} / {_pct(m.get('retain'))} | {_g(fq.get('target'))} | "
            f"{ep.get('target', '–')}, {ep.get('retain', '–')} | {_auroc(r.get('auroc'))} | "
            f"{_pct(ng.get('forget_fact_recall'))}, {_g(ng.get('forget_quality'))}, "
            f"{_g(ng.get('model_utility'))} | "
            f"{r.get('prepare_s', 0):.0f} | {r.get('influence_s', 0):.0f} | "
            f"{r.get('forget_s', 0):.0f} | {'ok' if ok else 'FAIL'} |"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--paths",
        default="default,avx2,avx512",
        help="kernel paths to run (those the CPU lacks are skipped)",
    )
    ap.add_argument("--threads", default="1,2", help="thread counts to run each path with")
    ap.add_argument(
        "--out", default=None, help="write every row as JSON here (default: only print)"
    )
    ap.add_argument("--keep", action="store_true", help="keep the temporary caches and runs")
    args = ap.parse_args()
    requested = [p.strip() for p in args.paths.split(",") if p.strip()]
    unknown = [p for p in requested if p not in PATHS]
    if unknown:
        ap.error(f"unknown kernel path(s) {', '.join(unknown)}; valid: {', '.join(PATHS)}")
    paths = available(requested)
    skipped = sorted(set(requested) - set(paths))
    print(
        f"native CPU capability: {native_capability()}; running {', '.join(paths)}"
        + (f" (this CPU lacks {', '.join(skipped)})" if skipped else ""),
        flush=True,
    )
    root = Path(tempfile.mkdtemp(prefix="tnpo-kernel-paths-"))
    rows = []
    try:
        for path in paths:
            for threads in (int(t) for t in args.threads.split(",")):
                print(f"== {path}, {threads} thread(s): {root / f'{path}-t{threads}'}", flush=True)
                rows.append(run_one(path, threads, root))
                for e in rows[-1]["errors"]:
                    print(f"   error: {e}", flush=True)
                print(table(rows[-1:]).splitlines()[-1], flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print("\n" + table(rows))
    failed = [
        f"{r['path']}/{r['threads']}: {name}"
        for r in rows
        for name, ok in r["bars"].items()
        if not ok
    ]
    failed += [
        f"{r['path']}/{r['threads']}: {e.splitlines()[0]}" for r in rows for e in r["errors"]
    ]
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))
    if failed:
        print("\nbars missed:\n  " + "\n  ".join(failed))
        return 1
    print("\nevery bar held on every kernel path")
    return 0


if __name__ == "__main__":
    sys.exit(main())
