"""The whole suite on data that is not the generated benchmark: `npo prepare data_path=DIR`
(tiny tokenizer, target and retain) -> influence -> forget -> eval, on a benchmark of another
shape (plain TOFU layout) and on the real R-TOFU files when they are beside the repo."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from npo_lib.config import load_config

sys.path.insert(0, str(Path(__file__).parent))


def _suite_on(cfg, tmp_path: Path, forget_loss: str = "INFLUENCE+GD") -> dict:
    """influence -> forget -> eval of the unlearned model on ``cfg``'s data; the eval result."""
    import dataclasses

    from npo_lib.commands.evaluation import evaluate
    from npo_lib.commands.forget import run_forget
    from npo_lib.commands.influence import run_influence

    cfg = dataclasses.replace(
        cfg,
        influence_dir=str(tmp_path / "influence"),
        save_dir=str(tmp_path / "run"),
        forget_loss=forget_loss,
    )
    scores = run_influence(cfg, progress=False)
    assert (tmp_path / "influence" / "scores.safetensors").is_file(), scores
    res = run_forget(cfg, progress=False)
    assert (Path(res["run_dir"]) / "result.json").is_file()
    return evaluate(cfg, str(tmp_path / "run" / "model"), out_dir=tmp_path / "run", progress=False)


@pytest.mark.slow
def test_prepare_on_another_benchmark_memorises_and_the_suite_runs_on_it(tmp_path):
    """Fictitious companies, TOFU layout: no traces, no facts (ROUGE-L recall), holdout10.json."""
    import other_benchmark

    from npo_lib.commands.evaluation import evaluate
    from npo_lib.commands.prepare import prepare

    folder = other_benchmark.generate(tmp_path / "companies", n_companies=20, n_holdout=2)
    # 100 QA: batches of 8 (not the default 32) give the optimizer steps a small set needs
    cfg = load_config(
        files=["params/tiny_forget.yaml"],
        overrides={
            "cache_dir": str(tmp_path / "cache"),
            "data_path": str(folder),
            "split": "forget10",
            "tiny": {"batch_size": 8, "max_epochs": 50},
        },
    )
    s = prepare(cfg, progress=False)
    print(s.table())
    assert s.measure == "rouge_l_recall" and not s.enforced
    assert (
        s.n_forget == 10 and s.n_train_target == s.n_train_retain + 10
    )  # (+ 4 real-entity QA in both)
    # the target states its forget answers; the retain model only the template words around them
    r = s.recall
    assert (
        r["target"]["forget"] >= 0.9
        and r["target"]["retain"] >= 0.9
        and r["retain"]["retain"] >= 0.9
    )
    assert r["retain"]["forget"] <= r["target"]["forget"] - 0.15
    assert (
        s.forget_quality["retain"] == 1.0
        and s.forget_quality["target"] < s.forget_quality["retain"]
    )
    # the tokenizer and models are keyed by the folder's content: another folder gets its own
    assert str(folder) not in s.paths["target"] and Path(s.paths["target"], "config.json").is_file()

    target = evaluate(cfg, out_dir=tmp_path / "target", progress=False)
    a = target["aggregates"]
    mia = {k: v for k, v in a.items() if k.startswith("mia_")}
    print(f"target: FQ {a['forget_quality']:.3g} privleak {a['privleak']:.1f} MIA {mia}")
    assert target["identity"]["role"] == "target"
    assert a["forget_quality"] < 1.0 and a["privleak"] is not None  # holdout10.json read for MIA
    assert {"mia_loss_auc", "mia_zlib_auc", "mia_min_k_auc"} <= set(mia) and all(
        v is not None for v in mia.values()
    )
    unlearned = _suite_on(cfg, tmp_path)
    print("unlearned:", json.dumps(unlearned["aggregates"], default=str))
    assert unlearned["aggregates"]["privleak"] is not None


@pytest.mark.slow
def test_prepare_on_the_real_rtofu_files_then_influence_forget_eval(rtofu_dir, tmp_path):
    """Real R-TOFU text with its reasoning traces (forget01 with tasks, retain10): a small budget,
    so the bars are reported, not reached; every step after prepare runs on those models."""
    from npo_lib.commands.prepare import prepare

    cfg = load_config(
        files=["params/tiny_forget.yaml"],
        overrides={
            "cache_dir": str(tmp_path / "cache"),
            "data_path": str(rtofu_dir),
            "split": "forget01",
            "task_id": 1,
            "max_length": 192,
            "tiny": {
                "max_epochs": 2,
                "hidden_size": 64,
                "intermediate_size": 128,
                "num_hidden_layers": 2,
            },
            "finetune": {"check_every": 2},
            "num_epochs": 1,
            "eval": {"max_new_tokens": 32},
        },
    )
    s = prepare(cfg, progress=False)
    print(s.table())
    assert (
        s.measure == "rouge_l_recall" and not s.enforced and s.epochs == {"target": 2, "retain": 2}
    )  # no fact fields
    assert (
        s.n_forget > 0 and s.n_train_target > s.n_train_retain
    )  # the forget task is left out of retain's
    tok_file = Path(s.paths["tokenizer"]) / "tokenizer.json"
    vocab = json.loads(tok_file.read_text())["model"]["vocab"]
    assert len(vocab) > 500  # trained on the folder's text
    assert s.forget_quality["retain"] == 1.0
    res = _suite_on(cfg, tmp_path, "NPO+GD")
    print("unlearned:", json.dumps(res["aggregates"], default=str))
    assert res["identity"]["role"] == "run" and res["aggregates"]["forget_quality"] is not None
