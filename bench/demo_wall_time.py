"""Wall time of the main job, `npo run params/demo.yaml`, against its 10-minute budget.

    python bench/demo_wall_time.py [--cache DIR] [--keep]

Runs the pipeline (prepare -> influence -> forget NPO+GD and INFLUENCE+GD -> evaluation ->
token visualisation, every step an executed notebook) in a temporary runs folder and, unless
``--cache`` is given, a fresh temporary model cache, so nothing is reused: the time a user sees
on a fresh clone after install. Prints the wall time per step and the ratio to 600 s.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from npo_lib.workflow.pipeline import run_pipeline  # noqa: E402

BUDGET_S = 600.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", help="model cache to use (default: a fresh temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folders")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tnpo-demo-bench-"))
    spec = yaml.safe_load((ROOT / "params/demo.yaml").read_text())
    spec["params"] = [str(ROOT / p) for p in spec["params"]]
    spec["runs_dir"] = str(tmp / "runs")
    os.environ["TNPO_CACHE"] = args.cache or str(tmp / "cache")
    (tmp / "demo.yaml").write_text(yaml.safe_dump(spec))
    os.chdir(tmp)
    t0 = time.perf_counter()
    res = run_pipeline(tmp / "demo.yaml", stream=False)
    wall = time.perf_counter() - t0
    for s in res["steps"]:
        print(f"  {s['name']:<24} {s['status']:<8} {s['seconds']:7.1f} s")
    if res.get("report"):
        print("\n" + res["report"] + "\n")
    print(
        f"npo run params/demo.yaml: {wall:.1f} s wall ({'ok' if res['ok'] else 'FAILED'}), "
        f"{wall / BUDGET_S:.2f} of the {BUDGET_S:.0f} s budget, {os.cpu_count()} CPUs"
    )
    if not args.keep:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
