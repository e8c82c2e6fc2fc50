"""`npo finetune` on a random tiny Llama: what target and retain train on, run folders, resume,
LoRA with a merged model, the stop criterion, and ZeRO-3 on 2 CPU ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import TrainerCallback

from npo_lib.commands.finetune import check_finetune_config, run_finetune
from npo_lib.config import load_config
from npo_lib.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def _args(world, run: Path, *over: str) -> list[str]:
    return [
        f"model_path={world['model_path']}",
        f"data_path={world['data_path']}",
        f"save_dir={run}",
        "split=forget10",
        "task_id=1",
        "finetune.lr=1e-3",
        "finetune.num_epochs=2",
        "finetune.batch_size=4",
        "finetune.effective_batch_size=8",
        "finetune.warmup_epochs=0",
        "save_steps=2",
        *over,
    ]


def _cfg(world, run: Path, *over: str):
    return load_config(_args(world, run, *over))


def _losses(run: Path) -> list[tuple[int, float]]:
    rows = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if x.strip()]
    return [
        (r["step"], r["loss"])
        for r in rows
        if "loss" in r and "check" not in r and "train_runtime" not in r
    ]


class _Interrupt(TrainerCallback):
    def __init__(self, at: int) -> None:
        self.at = at

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == self.at:
            raise KeyboardInterrupt(f"stop at {self.at}")


def test_target_trains_on_everything_retain_without_the_forget_task(mini_world, tmp_path):
    from npo_lib.benchmarks import get_benchmark
    from npo_lib.data.sources import load_forget

    tofu = get_benchmark("tofu")
    cfg = _cfg(mini_world, tmp_path / "t", "finetune.extra_sets=[world_facts_perturbed]")
    target = tofu.load_records(mini_world["data_path"], "train_target", cfg)
    retain = tofu.load_records(
        mini_world["data_path"],
        "train_retain",
        load_config(_args(mini_world, tmp_path / "r", "finetune.model=retain")),
    )
    forget = {r["question"] for r in load_forget(mini_world["data_path"], "forget10", 1)}
    assert forget <= {r["question"] for r in target} and not forget & {
        r["question"] for r in retain
    }
    from npo_lib.data.sources import load_eval_set

    extra = {r["question"] for r in load_eval_set(mini_world["data_path"], "world_facts_perturbed")}
    assert extra <= {r["question"] for r in target} and not extra & {r["question"] for r in retain}


def test_finetune_resumes_to_the_uninterrupted_trajectory_and_never_overwrites(
    mini_world, tmp_path
):
    full = tmp_path / "full"
    res = run_finetune(_cfg(mini_world, full), progress=False)
    assert (
        (full / "model" / "config.json").is_file()
        and (full / "result.json").is_file()
        and (full / "config.yaml").is_file()
    )
    assert res["steps"] > 2 and res["memorisation"]["forget"]  # the report of the saved model
    with pytest.raises(ConfigError, match="finished run"):
        check_finetune_config(_cfg(mini_world, full))
    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        run_finetune(_cfg(mini_world, cut), callbacks=[_Interrupt(3)], progress=False)
    assert not (cut / "result.json").exists() and (cut / "checkpoints" / "checkpoint-2").is_dir()
    with pytest.raises(ConfigError, match="resume=true"):
        check_finetune_config(_cfg(mini_world, cut))
    again = run_finetune(_cfg(mini_world, cut, "resume=true"), progress=False)
    assert again["resumed_from"].endswith("checkpoint-2")
    a, b = _losses(full), _losses(cut)
    assert [s for s, _ in a] == [s for s, _ in b] == list(range(1, res["steps"] + 1))
    for (_, x), (_, y) in zip(a, b):
        assert y == pytest.approx(x, rel=1e-5, abs=1e-6)


def test_lora_saves_the_adapter_and_a_merged_model(mini_world, tmp_path):
    from transformers import AutoModelForCausalLM

    run = tmp_path / "lora"
    res = run_finetune(
        _cfg(mini_world, run, "LoRA.r=4", "save_merged=true", "finetune.lr=1e-2"), progress=False
    )
    assert (run / "adapter" / "adapter_config.json").is_file()
    merged = AutoModelForCausalLM.from_pretrained(
        str(run / "model")
    )  # a plain model: no peft needed to load it
    assert merged.config.model_type == "llama" and res["saved_model"] == str(run / "model")
    base = AutoModelForCausalLM.from_pretrained(mini_world["model_path"])
    assert any((p - q).abs().max() > 0 for p, q in zip(merged.parameters(), base.parameters()))


def test_the_stop_criterion_ends_training_and_is_logged(mini_world, tmp_path):
    run = tmp_path / "stop"
    res = run_finetune(
        _cfg(
            mini_world,
            run,
            "finetune.num_epochs=6",
            "finetune.check_every=1",
            "finetune.stop_loss=100.0",
        ),
        progress=False,
    )
    assert (
        res["stopped_early"]
        and res["epochs"] == 1
        and len(res["checks"]) == 1
        and res["checks"][0]["passed"]
    )
    checks = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if '"check"' in x]
    assert [c["check"] for c in checks] == res["checks"]
    # a recall bar a random model cannot reach: every check measures it, training runs its budget
    res = run_finetune(
        _cfg(
            mini_world,
            tmp_path / "recall",
            "finetune.check_every=1",
            "finetune.stop_forget_recall=1.0",
        ),
        progress=False,
    )
    assert (
        not res["stopped_early"]
        and res["epochs"] == 2
        and [c["epoch"] for c in res["checks"]] == [1, 2]
    )
    assert all(
        not c["passed"] and c["measured"]["forget"]["fact_recall"] < 1.0 for c in res["checks"]
    )


def test_recall_stop_under_zero3_is_refused_before_any_model_loads(mini_world, tmp_path):
    cfg = _cfg(
        mini_world,
        tmp_path / "z3",
        f"ds_config={ROOT / 'params/ds/zero3.json'}",
        "finetune.stop_forget_recall=0.9",
    )
    with pytest.raises(ConfigError, match=r"finetune\.stop_\*_recall .* ZeRO-3"):
        check_finetune_config(cfg)
    assert not (tmp_path / "z3").exists()


@pytest.mark.slow
def test_zero3_on_two_ranks_matches_one_process_at_step_one(mini_world, tmp_path):
    """Global batch 8: 1 rank x 4 x 2 accumulation = 2 ranks x 4 x 1, so step 1's loss agrees."""
    pytest.importorskip("deepspeed")
    single = tmp_path / "single"
    run_finetune(_cfg(mini_world, single, "finetune.num_epochs=1"), progress=False)
    multi = tmp_path / "multi"
    bindir = Path(sys.executable).parent
    args = _args(
        mini_world,
        multi,
        "finetune.num_epochs=1",
        "finetune.stop_loss=0.0",
        f"ds_config={ROOT / 'params/ds/zero3.json'}",
    )
    cmd = [
        str(bindir / "deepspeed"),
        "--num_gpus",
        "2",
        "--master_port",
        "29541",
        "--module",
        "npo_lib.finetune",
        *args,
    ]
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads((multi / "result.json").read_text())
    assert res["world_size"] == 2 and (multi / "model" / "config.json").is_file()
    (s1, x), (m1, y) = _losses(single)[0], _losses(multi)[0]
    assert s1 == m1 == 1 and y == pytest.approx(x, rel=2e-3)
