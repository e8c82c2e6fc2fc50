"""The attacks of `npo eval` (eval.robustness): quantization by hand, the relearning split, and
every attack through `evaluate` on a random tiny Llama, without touching the evaluated model."""

from __future__ import annotations

import pytest
import torch

from npo_lib.config import load_config
from npo_lib.errors import ConfigError
from npo_lib.eval.robustness import ATTACKS, relearn_split, rtn_quantize_


def test_rtn_quantization_by_hand():
    """4 bits: q in [-8, 7], s = max|w| / 7 per group of 2 input columns."""
    lin = torch.nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.7, -0.25, 0.03, 0.1]], dtype=torch.float32))
    head = torch.nn.Linear(4, 3)

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin, self.head = lin, head

        def get_output_embeddings(self):
            return self.head

    before = head.weight.clone()
    assert rtn_quantize_(Tiny(), bits=4, group_size=2) == 1  # the output head is left as it is
    s1, s2 = 0.7 / 7, 0.1 / 7
    expected = [
        round(0.7 / s1) * s1,
        round(-0.25 / s1) * s1,
        round(0.03 / s2) * s2,
        round(0.1 / s2) * s2,
    ]
    assert lin.weight[0].tolist() == pytest.approx(expected, abs=1e-7)
    assert lin.weight[0, 1].item() == pytest.approx(-0.2, abs=1e-7)  # -2.5 rounds to even: -2 · 0.1
    assert torch.equal(head.weight, before)


def test_relearn_split_is_seeded_disjoint_and_covers_the_set():
    records = [{"question": str(i)} for i in range(40)]
    held, rest = relearn_split(records, 0.2, seed=0)
    assert (
        len(held) == 8
        and len(rest) == 32
        and not set(held) & set(rest)
        and sorted(held + rest) == list(range(40))
    )
    assert relearn_split(records, 0.2, seed=0) == (held, rest) and relearn_split(
        records, 0.2, seed=1
    ) != (held, rest)


def test_an_unknown_attack_is_named_before_any_model_loads():
    from npo_lib.commands.checks import check_config

    with pytest.raises(
        ConfigError, match=r"eval.robustness: unknown attack 'quant3'; valid: relearn, quant8"
    ):
        check_config(load_config(["eval.robustness=[quant3]"]))


def test_every_attack_runs_on_a_copy_and_is_cached(mini_world, tmp_path):
    from npo_lib.commands.evaluation import evaluate
    from npo_lib.utils.hashing import model_fingerprint

    cfg = load_config(
        [
            f"model_path={mini_world['model_path']}",
            f"data_path={mini_world['data_path']}",
            f"cache_dir={tmp_path / 'cache'}",
            "split=forget10",
            "task_id=1",
            "eval.max_new_tokens=8",
            f"eval.robustness=[{','.join(ATTACKS)}]",
            "eval.relearn_steps=3",
            "eval.relearn_lr=1e-2",
            "eval.leak_k=2",
            "eval.quant_group_size=16",
        ]
    )
    fp = model_fingerprint(mini_world["model_path"])
    res = evaluate(cfg, out_dir=tmp_path / "a", retain_reference=None, progress=False)
    rb = res["robustness"]
    assert set(rb) == set(ATTACKS) and res["seconds"]["robustness"] > 0
    assert (
        model_fingerprint(mini_world["model_path"]) == fp
    )  # the attacks never write the evaluated model
    r = rb["relearn"]
    assert (
        r["held"] + r["measured"] == res["counts"]["forget"] and r["first_loss"] != r["last_loss"]
    )
    assert r["before"] != r["after"]  # three steps at lr 1e-2 move a random model
    assert rb["quant8"]["layers"] > 0 and set(rb["quant4"]["after"]) == {
        "rouge",
        "fact_recall",
        "prob",
        "truth_ratio",
    }
    assert 0 <= rb["leak_at_k"]["leak_at_k"] <= 1 and rb["leak_at_k"]["k"] == 2
    fs = rb["format_shift"]
    assert (
        fs["fill_in_blank"]["items"] == res["counts"]["forget"]
        and 0 <= fs["multiple_choice"]["accuracy"] <= 1
    )

    again = evaluate(cfg, out_dir=tmp_path / "a", retain_reference=None, progress=False)
    assert again["robustness"] == rb  # reused, not recomputed
    b = evaluate(cfg, out_dir=tmp_path / "b", retain_reference=None, progress=False)
    assert b["robustness"]["leak_at_k"] == {
        **rb["leak_at_k"],
        "seconds": b["robustness"]["leak_at_k"]["seconds"],
    }  # seeded


def test_format_shift_questions():
    from npo_lib.eval.robustness import blank_question, choice_question

    r = {
        "question": "Where was Ana born?",
        "answer": "Ana was born in Kuwait City.",
        "fact": "kuwait city",
    }
    assert blank_question(r) == "Fill in the blank: Ana was born in ____."
    assert blank_question({**r, "fact": "Baku"}) is None and blank_question({"answer": "x"}) is None
    assert choice_question(r, ["A.", "B."]) == "Where was Ana born? Choose one of: A. | B."


def test_npo_report_adds_a_table_of_the_attacks(tmp_path):
    import json

    from npo_lib.viz.report import report

    def write(name: str, role: str, robustness: dict | None) -> str:
        folder = tmp_path / name / "eval"
        folder.mkdir(parents=True)
        m = {
            "aggregates": {"forget_quality": 0.5},
            "identity": {"role": role},
            **({"robustness": robustness} if robustness else {}),
        }
        (folder / "metrics.json").write_text(json.dumps(m))
        return str(tmp_path / name)

    plain = write("plain", "run", None)
    text, _ = report([plain])
    assert "attacks" not in text
    attacked = write(
        "npo",
        "run",
        {
            "relearn": {
                "before": {"fact_recall": 0.5, "rouge": 0.9},
                "after": {"fact_recall": 0.75, "rouge": 0.95},
            },
            "leak_at_k": {"leak_at_k": 0.25},
        },
    )
    text, _ = report([plain, attacked])
    head, row = [
        line for line in text.splitlines() if line.startswith("| run") or line.startswith("| npo")
    ][-2:]
    assert head == "| run | relearn: held-out recall before ↓ | after relearning ↓ | leak@k ↓ |"
    assert row == "| npo | 50.0% | 75.0% | 25.0% |"


def test_quant8_and_quant4_share_one_probe_of_the_unquantized_model(monkeypatch):
    from types import SimpleNamespace

    import torch

    from npo_lib.config import EvalConfig
    from npo_lib.eval import robustness
    from npo_lib.eval.robustness import AttackContext, run_attacks

    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    seen = []

    def probe(ctx, m, records):
        seen.append(m is model)
        return {"fact_recall": 1.0 if m is model else 0.5}

    monkeypatch.setattr(robustness, "probe", probe)
    ctx = AttackContext(
        model,
        None,
        None,
        SimpleNamespace(sets={"forget": [{"question": "q"}]}),
        EvalConfig(quant_group_size=2),
        None,
        progress=False,
    )
    out = run_attacks(ctx, ["quant8", "quant4"])
    assert (
        seen.count(True) == 1 and seen.count(False) == 2
    )  # one plain probe, one per quantized copy
    assert out["quant8"]["before"] == out["quant4"]["before"] == {"fact_recall": 1.0} and out[
        "quant4"
    ]["after"] == {"fact_recall": 0.5}
