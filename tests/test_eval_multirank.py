"""``npo eval`` on 2 CPU ranks (torchrun, gloo) gives the metrics of one process: every score
within 1e-6, every generation identical, the robustness attacks included; rank 0 writes."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from npo_lib.utils.dist import map_shards, on_rank0, sharded

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-6


def test_without_a_process_group_sharding_is_the_plain_loop():
    with sharded() as on:
        assert on is False  # one process: nothing to share
        assert map_shards([3, 1, 2], lambda x: x * 10) == [30, 10, 20]
        assert on_rank0(lambda: "r0") == "r0"


def _retain_model(mini_world, folder: Path) -> str:
    """A second random Llama with the mini world's tokenizer: the retain model of the comparison."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(mini_world["model_path"])
    config = LlamaConfig.from_pretrained(mini_world["model_path"])
    torch.manual_seed(1)
    LlamaForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def _close(a, b, path: str, problems: list[str]) -> None:
    """Every number of ``a`` within TOL of ``b``, every string equal (recursively)."""
    if isinstance(a, dict):
        if set(a) != set(b):
            problems.append(f"{path}: keys {sorted(set(a) ^ set(b))} differ")
            return
        for k in a:
            _close(a[k], b[k], f"{path}.{k}", problems)
    elif isinstance(a, list):
        if len(a) != len(b):
            problems.append(f"{path}: lengths {len(a)} vs {len(b)}")
            return
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{path}[{i}]", problems)
    elif isinstance(a, float) and isinstance(b, float):
        if not (math.isclose(a, b, rel_tol=0, abs_tol=TOL) or (math.isnan(a) and math.isnan(b))):
            problems.append(f"{path}: {a!r} vs {b!r}")
    elif a != b:
        problems.append(f"{path}: {a!r} vs {b!r}")


@pytest.mark.slow
def test_two_rank_evaluation_equals_one_process(mini_world, tmp_path):
    retain = _retain_model(mini_world, tmp_path / "retain")
    args = [
        f"model_path={mini_world['model_path']}",
        f"data_path={mini_world['data_path']}",
        "split=forget10",
        "task_id=1",
        f"retain_model_path={retain}",
        "eval.max_new_tokens=8",
        "eval.batch_size=2",
        "eval.gen_batch_size=4",
        "eval.robustness=[relearn,quant8,quant4,leak_at_k,format_shift]",
        "eval.relearn_steps=2",
        "eval.relearn_lr=1e-3",
        "eval.leak_k=2",
        "dtype=float32",
    ]
    bindir = Path(sys.executable).parent
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{bindir}:{os.environ['PATH']}"}
    one = subprocess.run(
        [
            sys.executable,
            "-m",
            "npo_lib",
            "eval",
            *args,
            f"cache_dir={tmp_path / 'cache1'}",
            "--out-dir",
            str(tmp_path / "one"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(
        [
            str(bindir / "torchrun"),
            "--nproc_per_node",
            "2",
            "--master_port",
            "29581",
            "-m",
            "npo_lib",
            "eval",
            *args,
            f"cache_dir={tmp_path / 'cache2'}",
            "--out-dir",
            str(tmp_path / "two"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    a = json.loads((tmp_path / "one" / "eval" / "metrics.json").read_text())
    b = json.loads((tmp_path / "two" / "eval" / "metrics.json").read_text())
    assert (a["ranks"], b["ranks"]) == (1, 2)
    assert a["aggregates"]["forget_quality"] is not None  # the retain model's side ran sharded too
    problems: list[str] = []
    for key in ("aggregates", "per_item", "counts"):
        _close(a[key], b[key], key, problems)
    assert a["generations"] == b["generations"]  # identical text, every set and decoding
    assert set(a["robustness"]) == {"relearn", "quant8", "quant4", "leak_at_k", "format_shift"}
    strip = lambda r: {k: {kk: vv for kk, vv in v.items() if kk != "seconds"} for k, v in r.items()}  # noqa: E731
    _close(strip(a["robustness"]), strip(b["robustness"]), "robustness", problems)
    assert not problems, "\n".join(problems[:20])
    # the retain model's cached evaluation was written once, by rank 0, and also matches
    ra = json.loads(next((tmp_path / "cache1" / "eval").glob("*/metrics.json")).read_text())
    rb = json.loads(next((tmp_path / "cache2" / "eval").glob("*/metrics.json")).read_text())
    _close(ra["per_item"], rb["per_item"], "retain.per_item", problems)
    assert not problems, "\n".join(problems[:20])
