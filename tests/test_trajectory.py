"""Evaluation while a forget run trains: the selection rule and early stopping on trajectories
whose answer is known, the rule's grammar, and (end to end on a tiny world) trajectory.jsonl,
its equality with `npo eval` on each point's checkpoint, the selected model and early stop."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from npo_lib.commands.evaluation import evaluate
from npo_lib.commands.forget import check_forget_config, run_forget
from npo_lib.commands.trajectory import read_trajectory
from npo_lib.config import load_config
from npo_lib.errors import ConfigError
from npo_lib.eval.selection import parse_rule, select_point, stop_reason

MU, FQ = "model_utility", "forget_quality"


def _points(rows: list[tuple[float | None, float | None]]) -> list[dict]:
    """Step 0, 1, ... with (forget_quality, model_utility)."""
    return [{"step": i, "metrics": {FQ: fq, MU: mu}} for i, (fq, mu) in enumerate(rows)]


TRAJ = _points([(1e-5, 0.60), (1e-3, 0.59), (0.2, 0.58), (0.5, 0.55), (0.9, 0.40), (0.95, 0.2)])


def test_rule_grammar():
    rule = parse_rule("max  forget_quality s.t. model_utility >= 0.95 x target")
    assert (rule.goal, rule.metric) == ("max", FQ)
    c = rule.constraint
    assert (c.metric, c.op, c.bound, c.of_target) == (MU, ">=", 0.95, True)
    assert c.threshold({MU: 0.6}) == pytest.approx(0.57)
    assert rule.text == "max forget_quality s.t. model_utility >= 0.95 x target"
    plain = parse_rule("min forget_fact_recall s.t. retain_fact_recall >= 0.5")
    assert not plain.constraint.of_target and plain.constraint.threshold(None) == 0.5
    assert parse_rule("") is None and parse_rule("  ") is None
    for bad, what in [
        ("maximize forget_quality", "does not parse"),
        ("max forget_quality s.t. model_utility > 0.9", "does not parse"),
        ("max forget_quality s.t. model_utility >= x target", "does not parse"),
        ("max forget_qualty", "unknown metric 'forget_qualty'"),
        ("max forget_quality s.t. utility >= 0.9", "unknown metric 'utility'"),
    ]:
        with pytest.raises(ConfigError, match=what):
            parse_rule(bad)


def test_selection_on_a_known_trajectory():
    target = TRAJ[0]["metrics"]
    rule = parse_rule("max forget_quality s.t. model_utility >= 0.95 x target")  # MU >= 0.57
    sel = select_point(TRAJ, rule, target)
    assert (sel.step, sel.met, sel.values) == (2, True, {FQ: 0.2, MU: 0.58})
    assert "the 2 trained points meeting model_utility >= 0.95 x target" in sel.why
    assert select_point(TRAJ, parse_rule("max forget_quality"), target).step == 5
    assert select_point(TRAJ, parse_rule("min model_utility s.t. model_utility >= 0.5")).step == 3
    none = select_point(TRAJ, parse_rule("max forget_quality s.t. model_utility >= 0.9"))
    assert (none.step, none.met) == (5, False) and "the last step" in none.why
    last = select_point(TRAJ, None)
    assert (last.step, last.met) == (5, False)
    tie = _points([(0.0, 1.0), (0.3, 1.0), (0.3, 1.0)])  # a tie keeps the earliest
    assert select_point(tie, parse_rule("max forget_quality")).step == 1
    nulls = _points([(None, 1.0), (None, 0.9), (0.1, 0.8)])  # a null objective is no candidate
    assert select_point(nulls, parse_rule("max forget_quality")).step == 2
    with pytest.raises(ConfigError, match="not known"):
        select_point(nulls, parse_rule("max forget_quality s.t. forget_quality >= 1 x target"))


def test_early_stopping_on_a_known_trajectory():
    rule = parse_rule("max forget_quality s.t. model_utility >= 0.95 x target")
    target = TRAJ[0]["metrics"]
    stops = [stop_reason(TRAJ[: n + 1], rule, 2, target) for n in range(len(TRAJ))]
    # best feasible at step 2; steps 3 (infeasible) and 4 do not beat it: stop after step 4
    assert stops[:4] == [None] * 4 and "for 2 evaluation points (best at step 2)" in stops[4]
    assert stop_reason(TRAJ, rule, 0, target) is None and stop_reason(TRAJ, None, 2) is None
    # never feasible, utility only falling: it cannot come back, stop after `patience` falls
    strict = parse_rule("max forget_quality s.t. model_utility >= 0.99 x target")
    falls = [stop_reason(TRAJ[: n + 1], strict, 3, target) for n in range(len(TRAJ))]
    assert falls[:3] == [None] * 3 and "moved away from it at each of the last 3" in falls[3]
    rises = _points([(0.0, 0.5), (0.1, 0.4), (0.2, 0.45), (0.3, 0.3)])  # it rose once: go on
    assert stop_reason(rises, parse_rule("max forget_quality s.t. model_utility >= 0.9"), 2) is None
    # improving every point never stops
    better = _points([(0.0, 1.0), (0.1, 1.0), (0.2, 1.0), (0.3, 1.0)])
    assert stop_reason(better, parse_rule("max forget_quality"), 1) is None


def _args(world, run: Path, cache: Path, *over: str) -> list[str]:
    """The key=value arguments of a 4-step NPO run on the mini world (forget10: 4 questions)."""
    return [
        f"model_path={world['model_path']}",
        f"data_path={world['data_path']}",
        f"retain_model_path={world['model_path']}",
        f"save_dir={run}",
        f"cache_dir={cache}",
        "split=forget10",
        "task_id=1",
        "batch_size=2",
        "num_epochs=2",
        "lr=1e-3",
        "warmup_epochs=0",
        "forget_loss=NPO",
        "eval.max_new_tokens=6",
        *over,
    ]


def _cfg(world, run: Path, cache: Path, *over: str):
    return load_config(_args(world, run, cache, *over))


def test_config_errors_before_any_model_loads(mini_world, tmp_path):
    for over, what in [
        (["eval.during.select=max forget_quality"], "needs eval.during.every_steps"),
        (["eval.during.every_steps=1", "eval.during.patience=2"], "patience needs"),
        (["eval.during.every_steps=-1"], "must be >= 0"),
        (["eval.during.every_steps=1", "eval.during.select=max fq"], "unknown metric 'fq'"),
        (["eval.during.every_steps=1", "eval.during.metrics=[forget_qual]"], "forget_qual"),
        (["eval.during.every_steps=1", "eval.during.select=max forget_prob"], "does not measure"),
    ]:
        with pytest.raises(ConfigError, match=what):
            check_forget_config(_cfg(mini_world, tmp_path / "run", tmp_path, *over))


DURING = [
    "eval.during.every_steps=1",
    "eval.during.keep=10",
    "eval.during.metrics=[forget_prob,forget_quality,model_utility,forget_fact_recall,"
    "retain_fact_recall,forget_truth_ratio]",
    "eval.during.select=max forget_prob s.t. model_utility >= 0 x target",
]


@pytest.mark.slow
def test_points_equal_npo_eval_on_their_checkpoints(mini_world, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    monkeypatch.delenv("TNPO_CACHE", raising=False)
    run = tmp_path / "run"
    cfg = _cfg(mini_world, run, tmp_path / "cache", *DURING)
    res = run_forget(cfg, progress=False)
    points = read_trajectory(run / "trajectory.jsonl")
    assert [p["step"] for p in points] == list(range(res["steps"] + 1)) and res["steps"] == 4
    for p in points[1:]:  # the numbers in memory at step k are `npo eval`'s on its checkpoint
        ev = evaluate(cfg, p["checkpoint"], out_dir=tmp_path / f"ev{p['step']}", progress=False)
        for key, value in p["metrics"].items():
            assert value == pytest.approx(ev["aggregates"][key], abs=1e-6, rel=1e-6), (p, key)
    probs = [p["metrics"]["forget_prob"] for p in points[1:]]
    best = points[1 + probs.index(max(probs))]
    assert best["step"] < res["steps"]  # NPO lowers the forget probability: an early point
    sel = res["trajectory"]["selected"]
    assert sel["step"] == best["step"] and sel["checkpoint"] == best["checkpoint"]
    assert sel["rule"] == "max forget_prob s.t. model_utility >= 0 x target"
    assert json.loads((run / "result.json").read_text())["trajectory"]["selected"] == sel
    chosen = load_file(str(Path(best["checkpoint"]) / "model.safetensors"))
    saved = load_file(str(run / "model" / "model.safetensors"))
    assert all(torch.equal(chosen[k], saved[k]) for k in chosen)
    t = res["trajectory"]
    assert t["points"] == 5 and t["eval_seconds"] > 0 and res["train_seconds"] > 0
    assert res["train_seconds"] + t["eval_seconds"] + t["checkpoint_seconds"] <= res["seconds"]


class LogRecorder(TrainerCallback):
    """What the trainer's log hands its ``report_to`` loggers (TensorBoard, W&B): their on_log."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, dict]] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.seen.append((state.global_step, dict(logs or {})))


def test_points_reach_the_trainer_log_and_their_cost_is_recorded(mini_world, tmp_path):
    """Every point's numbers reach the callbacks' on_log (where TensorBoard and W&B write) as
    eval_<metric> at its step, and log.jsonl; result.json holds the training time without the
    evaluation (train_seconds) and the evaluation's and checkpoints' time, point by point."""
    run, rec = tmp_path / "run", LogRecorder()
    over = ["retain_model_path=null", "num_epochs=1", "eval.during.every_steps=1"]
    cfg = _cfg(mini_world, run, tmp_path / "cache", *over, "eval.during.metrics=[forget_prob]")
    res = run_forget(cfg, callbacks=[rec], progress=False)
    points = read_trajectory(run / "trajectory.jsonl")
    assert [p["step"] for p in points] == [0, 1, 2] == list(range(res["steps"] + 1))
    logged = {step: logs for step, logs in rec.seen if "eval_forget_prob" in logs}
    assert sorted(logged) == [0, 1, 2]
    assert [step for step, logs in rec.seen if "loss" in logs] == [1, 2]  # still every step's
    for p in points:
        assert logged[p["step"]]["eval_forget_prob"] == p["metrics"]["forget_prob"]
        assert logged[p["step"]]["eval_seconds"] == p["seconds"]["eval"] > 0
    lines = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "eval_forget_prob" in x] == [0, 1, 2]
    t = json.loads((run / "result.json").read_text())["trajectory"]
    assert t["eval_seconds"] == pytest.approx(sum(p["seconds"]["eval"] for p in points))
    assert t["checkpoint_seconds"] == pytest.approx(sum(p["seconds"]["checkpoint"] for p in points))
    during = t["eval_seconds"] + t["checkpoint_seconds"]
    assert 0 < res["train_seconds"] and res["train_seconds"] + during <= res["seconds"]


@pytest.mark.slow
@pytest.mark.parametrize("lora", [0, 4])
def test_patience_stops_training_and_keeps_the_selected_weights(
    mini_world, tmp_path, monkeypatch, lora
):
    from safetensors.torch import load_file

    monkeypatch.delenv("TNPO_CACHE", raising=False)
    run = tmp_path / "run"
    over = [*DURING, "eval.during.patience=1", "eval.during.keep=1", f"LoRA.r={lora}"]
    res = run_forget(_cfg(mini_world, run, tmp_path / "cache", *over), progress=False)
    stop, sel = res["trajectory"]["stopped_early"], res["trajectory"]["selected"]
    assert res["steps"] == stop["step"] < 4 and "has not improved" in stop["why"]
    assert sel["step"] < stop["step"]  # the weights of an earlier point are loaded and saved
    kept = sorted(p.name for p in (run / "trajectory").iterdir())
    assert f"step-{sel['step']}" in kept and len(kept) <= 2
    name = "adapter_model.safetensors" if lora else "model.safetensors"
    chosen = load_file(str(Path(sel["checkpoint"]) / name))
    saved = load_file(str(run / ("adapter" if lora else "model") / name))
    assert chosen.keys() == saved.keys() and all(torch.equal(chosen[k], saved[k]) for k in chosen)


# Run under torchrun: `npo` with the sharded loops of the evaluation counted on each rank (the
# items this rank did, the items of the loop), written to $SHARD_COUNTS<rank>.json at the end.
COUNTING_NPO = """
import json, os, sys
from pathlib import Path
from npo_lib.eval import generation, scoring
from npo_lib.utils import dist
done = {"mine": 0, "all": 0}
def counted(shard):
    def run(items, work, *args, **kwargs):
        if not dist.sharding_active():
            return shard(items, work, *args, **kwargs)
        done["all"] += len(items)
        def mine(item):
            done["mine"] += 1
            return work(item)
        return shard(items, mine, *args, **kwargs)
    return run
for module in (generation, scoring):
    module.map_shards = counted(module.map_shards)
from npo_lib.cli import main
code = main(sys.argv[1:])
Path(os.environ["SHARD_COUNTS"] + f"{dist.rank()}.json").write_text(json.dumps(done))
sys.exit(code)
"""


@pytest.mark.slow
def test_two_ranks_write_the_trajectory_of_one(mini_world, tmp_path, monkeypatch):
    """DDP on 2 CPU ranks (gloo) with 1 example per rank trains as 1 process with batch 2 (the
    same seeded order, rank r taking the r-th half of each batch; NPO's loss is a mean over
    examples, DDP averages the ranks' gradients), so every point's metrics agree to 1e-6 (float
    reduction order); each rank measures its share of every point and rank 0 alone writes."""
    import os
    import subprocess
    import sys

    monkeypatch.delenv("TNPO_CACHE", raising=False)
    over = [
        "retain_model_path=null",  # the retain reference is `npo eval`'s (test_eval_multirank)
        "eval.during.every_steps=1",
        "eval.during.keep=1",
        "eval.during.metrics=[forget_prob,forget_truth_ratio,forget_fact_recall]",
        "eval.batch_size=1",  # 4 forget questions: 4 scored and 4 decoded batches to share
        "eval.gen_batch_size=1",
    ]
    script = tmp_path / "counting_npo.py"
    script.write_text(COUNTING_NPO)
    root = Path(__file__).resolve().parents[1]
    bindir = Path(sys.executable).parent
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PATH": f"{bindir}:{os.environ['PATH']}",
        "PYTHONPATH": str(root),
    }
    torchrun = [str(bindir / "torchrun"), "--nproc_per_node", "2", "--master_port", "29583"]
    runs = {"one": ([sys.executable], 2), "two": (torchrun, 1)}  # batch 2, or 1 per rank
    for name, (launch, batch) in runs.items():
        args = _args(mini_world, tmp_path / name, tmp_path / f"cache-{name}", *over)
        out = subprocess.run(
            [*launch, str(script), "forget", *args, f"batch_size={batch}"],
            cwd=root,
            env={**env, "SHARD_COUNTS": str(tmp_path / f"{name}-rank")},
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    one, two = (json.loads((tmp_path / n / "result.json").read_text()) for n in runs)
    assert (one["world_size"], two["world_size"]) == (1, 2) and one["steps"] == two["steps"] == 4
    # the same training: every step's loss logged (rank-averaged; a point's line does not
    # replace it), equal but for float32 rounding (NPO's loss, ~10, is a difference of log-probs)
    losses = [
        {x["step"]: x["loss"] for x in read_trajectory(tmp_path / n / "log.jsonl") if "loss" in x}
        for n in runs
    ]
    assert sorted(losses[0]) == sorted(losses[1]) == [1, 2, 3, 4]
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    assert two["train_loss"] == pytest.approx(one["train_loss"], rel=1e-6)
    a = read_trajectory(tmp_path / "one" / "trajectory.jsonl")
    b = read_trajectory(tmp_path / "two" / "trajectory.jsonl")  # one line per point: rank 0's
    assert [p["step"] for p in a] == [p["step"] for p in b] == list(range(5))
    for p, q in zip(a, b):
        assert p["epoch"] == q["epoch"] and p["metrics"].keys() == q["metrics"].keys()
        for key, value in p["metrics"].items():
            assert q["metrics"][key] == pytest.approx(value, abs=1e-6), (p["step"], key)
    counts = [json.loads((tmp_path / f"two-rank{r}.json").read_text()) for r in (0, 1)]
    assert counts[0]["all"] == counts[1]["all"] > 0  # both ranks ran the same sharded loops
    assert counts[0]["mine"] + counts[1]["mine"] == counts[0]["all"]  # each item once
    assert min(c["mine"] for c in counts) >= 0.4 * counts[0]["all"], counts  # a fair share
