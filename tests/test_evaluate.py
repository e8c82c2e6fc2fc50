"""Batched scoring and generation against the one-at-a-time path, metrics.json, reuse, errors,
the report; and (slow) forget quality of the prepared tiny target and retain models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from npo_lib.cli import main as npo
from npo_lib.commands.evaluation import METRICS_FILE, evaluate
from npo_lib.config import EvalConfig, load_config
from npo_lib.errors import DataError, EvalError
from npo_lib.eval.compute import answer_prompt, load_eval_data
from npo_lib.eval.generation import greedy_generate
from npo_lib.eval.scoring import score_targets
from npo_lib.models.families import get_family
from npo_lib.models.loading import check_tokenizer
from npo_lib.viz.report import load_run, report

ROOT = Path(__file__).resolve().parents[1]
TAGS = get_family("tiny").tags
FAST = EvalConfig(max_new_tokens=6)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread (several spin against each other on a busy CPU)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _texts(folder: Path) -> list[str]:
    out = []
    for f in sorted(folder.glob("*.json")):
        if f.name == "meta.json":
            continue
        for line in f.read_text().splitlines():
            rec = json.loads(line) if line.strip() else None
            if isinstance(rec, dict):
                out += [v for k, v in rec.items() if isinstance(v, str) and k != "fact_spans"]
                out += rec.get("perturbed_answer") or []
    return out


def _random_llama(tok, folder: Path, seed: int, vocab: int | None = None) -> str:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab or len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> dict[str, str]:
    """A small generated benchmark, a byte-level BPE (300) and two random 2-layer Llamas."""
    from npo_lib.config import BenchmarkConfig
    from npo_lib.embedded.benchmark import generate_benchmark
    from npo_lib.embedded.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("eval_world")
    data = generate_benchmark(
        BenchmarkConfig(
            n_authors=10, questions_per_author=4, n_holdout_authors=2, n_retain_eval_authors=2
        ),
        root / "data",
    )
    tok = train_tokenizer(_texts(data), 300)
    return {
        "data": str(data),
        "model": _random_llama(tok, root / "model", 0),
        "retain": _random_llama(tok, root / "retain", 1),
        "small": _random_llama(tok, root / "small", 2, vocab=len(tok) - 40),
        "cache": str(root / "cache"),
    }


def _cfg(world: dict[str, str], **kw):
    over = {"data_path": world["data"], "model_path": world["model"], "cache_dir": world["cache"]}
    return load_config(overrides={**over, **kw})


@pytest.fixture(scope="session")
def model_tok(world):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(world["model"], attn_implementation="sdpa")
    return model.eval(), AutoTokenizer.from_pretrained(world["model"])


def test_batched_scoring_equals_one_at_a_time(world, model_tok):
    model, tok = model_tok
    recs = load_eval_data(_cfg(world)).sets["forget"]
    prompts = [answer_prompt(r, TAGS) for r in recs]
    cands = [[r["answer"], r["paraphrased_answer"], *r["perturbed_answer"]] for r in recs]
    assert prompts[0].endswith("<|assistant|><think>\n\n</think>\n\n")  # U q A Ts Te
    batched = score_targets(model, tok, prompts, cands, batch_size=3, progress=False)
    single = score_targets(model, tok, prompts, cands, batch_size=1, flatten=False, progress=False)
    for row_b, row_s, c in zip(batched, single, cands, strict=True):
        assert len(row_b) == len(row_s) == len(c)
        for b, s in zip(row_b, row_s):
            np.testing.assert_allclose(b.logprobs, s.logprobs, atol=1e-5)
            np.testing.assert_allclose(np.exp(-b.nll), np.exp(-s.nll), atol=1e-5)
            np.testing.assert_allclose(b.mu, s.mu, atol=1e-5)
            np.testing.assert_allclose(b.sigma, s.sigma, atol=1e-5)
            assert (b.argmax_ok == s.argmax_ok).all()
    # the target is the answer's tokens plus EOS, scored after the prompt
    n_answer = len(tok(cands[0][0], add_special_tokens=False)["input_ids"])
    assert batched[0][0].logprobs.shape == (n_answer + 1,)


def test_batched_greedy_generation_equals_one_at_a_time(world, model_tok):
    model, tok = model_tok
    data = load_eval_data(_cfg(world))
    prompts = [answer_prompt(r, TAGS) for r in data.sets["forget"] + data.sets["real_authors"][:6]]
    batched = greedy_generate(model, tok, prompts, max_new_tokens=12, batch_size=8, progress=False)
    single = greedy_generate(model, tok, prompts, max_new_tokens=12, batch_size=1, progress=False)
    assert batched == single
    assert any(batched)


def test_generation_of_several_lists_in_one_pass_equals_one_call_per_list(world, model_tok):
    from npo_lib.eval.generation import greedy_generate_many

    model, tok = model_tok
    data = load_eval_data(_cfg(world))
    lists = [
        [answer_prompt(r, TAGS) for r in data.sets[name][:5]]
        for name in ("forget", "real_authors", "holdout")
    ]
    many = greedy_generate_many(model, tok, lists, max_new_tokens=8, batch_size=2, progress=False)
    assert many == [
        greedy_generate(model, tok, ps, max_new_tokens=8, batch_size=2, progress=False)
        for ps in lists
    ]
    assert [len(m) for m in many] == [len(ps) for ps in lists] and all(len(ps) >= 2 for ps in lists)


def test_metrics_json_schema_reuse_and_report(world, tmp_path, monkeypatch, capsys):
    cfg = _cfg(world, retain_model_path=world["retain"])
    res = evaluate(cfg, out_dir=tmp_path / "run", options=FAST, progress=False)
    saved = json.loads((tmp_path / "run" / METRICS_FILE).read_text())
    assert saved == res
    assert {"aggregates", "per_item", "identity", "seconds", "notes", "counts"} <= set(res)
    agg = res["aggregates"]
    for key in (
        "forget_quality", "model_utility", "forget_prob", "forget_rouge", "forget_truth_ratio",
        "retain_prob", "retain_rouge", "retain_truth_ratio", "real_authors_prob",
        "world_facts_truth_ratio", "forget_fact_recall", "forget_trace_fact_recall",
        "retain_fact_recall", "forget_cot_rouge", "forget_cot_stepwise", "forget_zerothink_rouge",
        "forget_lessthink_rouge", "forget_extraction_strength", "forget_exact_memorisation",
        "mia_min_k_auc", "mia_min_k_plus_plus_auc", "privleak",
    ):  # fmt: skip
        assert agg[key] is not None, key
    assert 0 <= agg["forget_quality"] <= 1 and 0 <= agg["model_utility"] <= 1
    from npo_lib.eval.registry import METRICS

    assert set(agg) <= set(METRICS), set(agg) - set(METRICS)  # every number is registered
    data = load_eval_data(cfg)
    counts = {k: len(v) for k, v in data.sets.items()}
    assert res["counts"] == counts and counts["holdout"] > 0
    for key, values in res["per_item"].items():
        name = (
            key.split("_mia_")[0]
            if "_mia_" in key
            else next(s for s in counts if key.startswith(s))
        )
        assert set(values) == {str(i) for i in range(counts[name])}, key
    ident = res["identity"]
    for key in (
        "model_path",
        "model_fingerprint",
        "data_path",
        "data_fingerprint",
        "split",
        "task_id",
        "config",
    ):
        assert key in ident, key
    assert ident["split"] == cfg.split and ident["config"]["data_path"] == world["data"]
    assert ident["role"] == "run"

    # the retain model was evaluated once, cached under cache_path/eval, and is its own reference
    cached = list((Path(world["cache"]) / "eval").glob("*/metrics.json"))
    assert len(cached) == 1
    ref = json.loads(cached[0].read_text())
    assert ref["aggregates"]["forget_quality"] == 1.0 and ref["aggregates"]["privleak"] == 0.0

    # reuse: same identity -> no computation; recompute=True computes again
    import dataclasses

    from npo_lib.benchmarks import BENCHMARK_PLUGINS

    def boom(*a, **k):
        raise AssertionError("recomputed")

    tofu = dataclasses.replace(BENCHMARK_PLUGINS["tofu"], compute=boom)
    monkeypatch.setitem(BENCHMARK_PLUGINS, "tofu", tofu)  # what npo eval measures through
    again = evaluate(cfg, out_dir=tmp_path / "run", options=FAST, progress=False)
    assert again == res
    with pytest.raises(AssertionError, match="recomputed"):
        evaluate(cfg, out_dir=tmp_path / "run", options=FAST, recompute=True, progress=False)
    monkeypatch.undo()

    # the retain model evaluated as a run: role "retain", FQ 1, rows ordered retain first
    r = evaluate(
        _cfg(world, model_path=world["retain"], retain_model_path=world["retain"]),
        out_dir=tmp_path / "retain_run",
        options=FAST,
        progress=False,
    )
    assert r["identity"]["role"] == "retain" and r["aggregates"]["forget_quality"] == 1.0
    table, csv_path = report([tmp_path / "run", tmp_path / "retain_run"], tmp_path / "r.csv")
    lines = table.splitlines()
    assert lines[0].startswith("| run | forget quality ↑ | model utility ↑")
    assert lines[2].startswith("| retain (retain_run)") and lines[3].startswith("| run |")
    assert csv_path.read_text().splitlines()[0].startswith("run,forget_quality,model_utility")
    assert load_run(tmp_path / "run").metrics == res
    assert npo(["report", str(tmp_path / "run")]) == 0
    assert "| run |" in capsys.readouterr().out
    assert npo(["report", str(tmp_path / "nothing")]) == 2
    assert "no evaluation in" in capsys.readouterr().err


def test_without_retain_model_or_holdout_the_reasons_are_recorded(world, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(world["data"], data)
    for f in data.glob("holdout*.json"):  # holdout.json and TOFU's holdout01/05/10.json
        f.unlink()
    res = evaluate(
        _cfg(world, data_path=str(data)),
        out_dir=tmp_path / "run",
        options=EvalConfig(max_new_tokens=2, reasoning=False),
        progress=False,
    )
    agg, notes = res["aggregates"], res["notes"]
    assert agg["forget_quality"] is None and "retain_model_path" in notes["forget_quality"]
    assert agg["privleak"] is None and "mia_min_k_auc" not in agg
    assert (
        "MIA and privleak skipped" in notes["mia"]
        and "holdout10.json, holdout.json" in notes["mia"]
    )
    assert agg["model_utility"] is not None and "forget_zerothink_rouge" not in agg


def test_tokenizer_model_mismatch_fails_naming_both(world, model_tok):
    from transformers import AutoModelForCausalLM

    _, tok = model_tok
    small = AutoModelForCausalLM.from_pretrained(world["small"])
    with pytest.raises(EvalError, match=r"tokenizer TOK does not match model MOD: .*tokens.* rows"):
        check_tokenizer(small, tok, model_name="MOD", tokenizer_name="TOK")
    with pytest.raises(EvalError) as e:
        evaluate(
            _cfg(world),
            world["small"],
            out_dir=world["cache"] + "/x",
            tokenizer_path=world["model"],
            retain_reference=None,
            options=FAST,
            progress=False,
        )
    assert world["small"] in str(e.value) and world["model"] in str(e.value)


def test_missing_file_fails_naming_it(world, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(world["data"], data)
    (data / "world_facts_perturbed.json").unlink()
    with pytest.raises(DataError, match="world_facts_perturbed.json"):
        evaluate(
            _cfg(world, data_path=str(data)), out_dir=tmp_path / "run", options=FAST, progress=False
        )
    with pytest.raises(DataError, match="forget42_perturbed.json"):
        evaluate(
            _cfg(world, split="forget42"), out_dir=tmp_path / "run", options=FAST, progress=False
        )


def test_npo_eval_writes_next_to_save_dir_and_names_a_bad_folder(world, tmp_path, capsys):
    args = [
        "eval",
        f"data_path={world['data']}",
        f"model_path={world['model']}",
        f"cache_dir={world['cache']}",
        f"save_dir={tmp_path / 'run'}",
        "max_length=64",
        "eval.max_new_tokens=2",
    ]
    assert npo(args) == 0
    out = capsys.readouterr().out
    assert "forget_quality" in out and str(tmp_path / "run" / METRICS_FILE) in out
    assert npo([*args, "--retain-model-path", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "retain_model_path folder not found" in err[0]
    assert npo([*args, "eval.max_new_token=3"]) == 2
    assert "unknown key 'eval.max_new_token'" in capsys.readouterr().err


# ----------------------------------------------------------------------------- vLLM (optional)


def test_vllm_generator_without_vllm_or_gpu_says_why_and_decodes_with_transformers(
    world, model_tok, capsys
):
    from npo_lib.eval.compute import EvalData, compute_metrics
    from npo_lib.eval.generation import vllm_unavailable

    why = vllm_unavailable()
    if why is None:
        pytest.skip(
            "vLLM and a GPU are here: test_vllm_generation_keeps_the_outputs_contract covers it"
        )
    model, tok = model_tok
    data = load_eval_data(_cfg(world))
    small = EvalData(data.data_path, {k: v[:3] for k, v in data.sets.items()})
    hf = compute_metrics(model, tok, TAGS, small, FAST, progress=False)
    vl = compute_metrics(
        model, tok, TAGS, small, EvalConfig(max_new_tokens=6, generator="vllm"), progress=False
    )
    assert (
        vl["notes"]["generator"]
        == f"eval.generator=vllm skipped: {why}; generations by transformers"
    )
    assert why in capsys.readouterr().err
    assert vl["generations"] == hf["generations"] and "generator" not in hf["notes"]
    with pytest.raises(Exception, match="eval.generator must be hf or vllm"):
        EvalConfig(generator="tgi")


def test_vllm_generation_keeps_the_outputs_contract(tmp_path, tokenizer):
    """Runs only where vLLM and a CUDA GPU are (bench/gpu_check.sh runs it)."""
    from npo_lib.eval.generation import VllmGenerator, greedy_generate, vllm_unavailable

    why = vllm_unavailable()
    if why is not None:
        pytest.skip(f"eval.generator=vllm: {why}")
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)  # head_dim 64: a shape vLLM's attention kernels take
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        initializer_range=0.5,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    prompts = ["Question: who wrote it?\nAnswer:", "The author was born in", "Name the book:"]
    engine = VllmGenerator(str(tmp_path / "m"), tokenizer, dtype="float32")
    greedy = engine.greedy(prompts, max_new_tokens=8)
    assert len(greedy) == 3 and all(isinstance(g, str) for g in greedy)
    assert engine.greedy(prompts, max_new_tokens=8) == greedy  # greedy is deterministic
    hf_model = LlamaForCausalLM.from_pretrained(tmp_path / "m").cuda()
    hf = greedy_generate(hf_model, tokenizer, prompts, max_new_tokens=8, progress=False)
    same_start = sum(a[:3] == b[:3] for a, b in zip(greedy, hf))
    assert same_start >= 2, (greedy, hf)  # other kernels may break a near-tie, not most prompts
    samples = engine.sample(prompts, k=3, temperature=1.0, seed=0, max_new_tokens=8)
    assert [len(s) for s in samples] == [3, 3, 3]
    assert (
        engine.sample(prompts, k=3, temperature=1.0, seed=0, max_new_tokens=8) == samples
    )  # seeded


# ----------------------------------------------------------------------------- slow


@pytest.mark.slow
def test_forget_quality_of_prepared_target_and_retain(prepared_embedded, tmp_path):
    from npo_lib.embedded.paths import embedded_paths

    prepared, summary = prepared_embedded
    target = evaluate(prepared, out_dir=tmp_path / "target", progress=False)
    retain = evaluate(
        prepared, str(embedded_paths(prepared).retain), out_dir=tmp_path / "retain", progress=False
    )
    for name, res in (("target", target), ("retain", retain)):
        a = res["aggregates"]
        print(
            f"{name}: FQ {a['forget_quality']:.3g}  MU {a['model_utility']:.3f}  "
            f"forget fact recall {a['forget_fact_recall']:.2f}  privleak {a['privleak']:.1f}"
        )
    assert target["identity"]["role"] == "target" and retain["identity"]["role"] == "retain"
    assert retain["aggregates"]["forget_quality"] == 1.0
    assert target["aggregates"]["forget_quality"] < 0.01, (
        "the target's forget truth ratios look like the retain model's; prepare's memorisation "
        f"check: {summary.recall} (passed: {summary.passed})"
    )
