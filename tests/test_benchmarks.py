"""Benchmark plug-ins: selected by name before any model loads, each declaring its layout,
training kind, metrics and headline pair in one registry entry."""

from __future__ import annotations

import pytest

from npo_lib.benchmarks import BENCHMARK_PLUGINS, check_data_folder, get_benchmark
from npo_lib.commands.resolve import resolve
from npo_lib.config.sources import load_config
from npo_lib.errors import ConfigError
from npo_lib.eval.registry import metric


def test_benchmark_name_shorthand_and_default():
    assert load_config([]).benchmark.name == "tofu"
    assert load_config(["benchmark=tofu"]).benchmark.name == "tofu"
    cfg = load_config(["benchmark.name=tofu", "benchmark.n_authors=12"])
    assert (cfg.benchmark.name, cfg.benchmark.n_authors) == ("tofu", 12)


def test_an_unknown_benchmark_fails_in_one_line_naming_the_valid_ones(tmp_path):
    cfg = load_config(["benchmark=nope", f"cache_dir={tmp_path}"])
    with pytest.raises(ConfigError) as e:
        resolve(cfg, "prepare")
    msg = str(e.value)
    assert "\n" not in msg and "'nope'" in msg and "tofu" in msg


def test_every_plugin_declares_a_headline_pair_from_the_metric_registry():
    for b in BENCHMARK_PLUGINS.values():
        head = b.metrics.headline
        assert metric(head.forget).direction in ("higher", "lower")
        assert metric(head.utility).direction == "higher"
        assert set(b.required) <= set(b.layout)
        assert all(metric(k) for k in b.metric_keys)


def test_a_folder_missing_a_required_file_is_named(tmp_path):
    with_required = [b for b in BENCHMARK_PLUGINS.values() if b.required]
    if not with_required:
        pytest.skip("no registered benchmark declares required files")
    b = with_required[0]
    (tmp_path / "other.json").write_text("[]")
    with pytest.raises(ConfigError) as e:
        check_data_folder(b, tmp_path)
    assert b.layout[b.required[0]] in str(e.value) and "other.json" in str(e.value)


def test_tofu_is_the_default_plugin_and_writes_its_standin(tmp_path):
    tofu = get_benchmark("tofu")
    assert tofu.training == "qa" and tofu.metrics.headline.forget == "forget_quality"
    cfg = load_config(["benchmark.n_authors=8", "benchmark.n_holdout_authors=1"])
    out = tofu.generate(cfg.benchmark, tmp_path / "tofu")
    assert (out / "meta.json").is_file() and tofu.file(out, "full").is_file()


@pytest.fixture(scope="module")
def bare_model(tokenizer, make_untrained_llama):
    """An untrained two-block Llama over the test tokenizer: the code path, not the numbers."""
    return make_untrained_llama(tokenizer, heads=2, max_positions=512).eval()


SMALL = {
    "muse": [
        "benchmark.muse.n_forget=4",
        "benchmark.muse.n_retain=4",
        "benchmark.muse.n_holdout=4",
    ],
    "wmdp": ["benchmark.wmdp.n_forget_docs=4", "benchmark.wmdp.n_retain_docs=4"],
}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_each_standin_is_a_complete_folder_its_plugin_evaluates(
    name, tmp_path, tokenizer, bare_model
):
    cfg = load_config([f"benchmark={name}", "max_length=256", *SMALL[name]])
    b = get_benchmark(name)
    folder = b.generate(cfg.benchmark, tmp_path / name)
    assert b.missing(folder) == []
    check_data_folder(b, folder)
    data = b.load_eval(str(folder), cfg)
    out = b.compute(
        bare_model,
        tokenizer,
        None,
        data,
        cfg.eval,
        reference="self",
        max_length=256,
        progress=False,
    )
    assert set(b.metric_keys) <= set(out["aggregates"]), out["aggregates"]
    head = b.metrics.headline
    for key in (head.forget, head.utility):
        assert 0.0 <= out["aggregates"][key] <= 1.0
    if name == "muse":  # the retain model is its own reference: it leaks like itself
        assert out["aggregates"]["muse_privleak"] == 0.0
        assert len(out["per_item"]["muse_verbmem_forget"]) == 4


def test_robustness_attacks_are_refused_on_a_document_benchmark_before_any_model_loads(tmp_path):
    cfg = load_config(["benchmark=muse", "eval.robustness=[relearn]", f"cache_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="eval.robustness"):
        resolve(cfg, "prepare")


def test_a_muse_folder_missing_a_file_is_named_before_any_model_loads(tmp_path):
    cfg = load_config(["benchmark=muse"])
    folder = get_benchmark("muse").generate(cfg.benchmark, tmp_path / "m")
    (folder / "knowmem" / "retain2_qa.json").unlink()
    with pytest.raises(ConfigError, match="knowmem/retain2_qa.json is missing"):
        resolve(load_config(["benchmark=muse", f"data_path={folder}"]), "eval")


@pytest.mark.slow
def test_muse_news_files_load_and_every_muse_metric_runs_on_them(muse_dir, tokenizer, bare_model):
    """A smoke test of the published layout (real MUSE-News files, an untrained model): the
    numbers mean nothing, every set loads and every metric is computed."""
    b = get_benchmark("muse")
    cfg = load_config(["benchmark=muse", f"data_path={muse_dir}", "max_length=256"])
    data = b.load_eval(str(muse_dir), cfg)
    assert {len(v) for k, v in data.sets.items() if not k.endswith("_icl")} == {100}
    out = b.compute(
        bare_model, tokenizer, None, data, cfg.eval, reference=None, max_length=256, progress=False
    )
    agg = out["aggregates"]
    assert all(agg[k] is not None for k in b.metric_keys if k != "muse_privleak")
    assert agg["muse_privleak"] is None and "muse_privleak" in out["notes"]


def test_standin_settings_out_of_range_fail_naming_the_key(tmp_path):
    cfg = load_config(["benchmark=muse", "benchmark.muse.n_forget=2", f"cache_dir={tmp_path}"])
    with pytest.raises(ConfigError, match=r"benchmark\.muse\.n_forget must be in"):
        resolve(cfg, "prepare")


@pytest.mark.parametrize("name", sorted(SMALL))
def test_document_records_are_pieces_of_the_corpus_with_their_fact_spans(name, tmp_path, tokenizer):
    """Forget / retain / training records of a document benchmark: exact pieces of its texts,
    at most max_length tokens with BOS, each fact span pointing at its fact's characters."""
    from npo_lib.data.views import encode_view
    from npo_lib.influence.ground_truth import fact_char_spans
    from npo_lib.models.families import get_family

    cfg = load_config([f"benchmark={name}", "max_length=48", *SMALL[name]])
    b = get_benchmark(name)
    folder = str(b.generate(cfg.benchmark, tmp_path / name))
    tags = get_family("tiny").tags
    roles = {
        role: b.load_records(folder, role, cfg, tokenizer)
        for role in ("forget", "retain", "train_target", "train_retain")
    }
    forget = {r["text"] for r in roles["forget"]}
    assert forget <= {r["text"] for r in roles["train_target"]}
    assert {r["text"] for r in roles["retain"]} <= {r["text"] for r in roles["train_retain"]}
    assert not forget & {r["text"] for r in roles["train_retain"]}
    n_spans = 0
    for rec in roles["forget"]:
        enc = encode_view(rec, "full", tokenizer, tags, 48)
        assert len(enc["input_ids"]) <= 48 and enc["prompt_len"] == 1  # BOS, then the text
        for s, e in fact_char_spans(rec, "full", tags):
            assert rec["text"][s:e].strip() and 0 <= s < e <= len(rec["text"])
            n_spans += 1
    assert n_spans > 0  # the stand-in's ground truth survives the cut
    with pytest.raises(ValueError, match="tokenizer"):
        b.load_records(folder, "forget", cfg)


def test_the_wmdp_rmu_params_file_holds_the_published_setting(tmp_path):
    """RMU on WMDP as Li et al. 2024 ran it: block 7, blocks 5-7's down_proj, c = 6.5,
    α = 1200, 150 steps of 4 at 5e-5; the step budget reaches the trainer's arguments."""
    from npo_lib.training.arguments import TrainSettings, training_arguments

    cfg = load_config(["wmdp_rmu"])
    assert (cfg.benchmark.name, cfg.forget_loss, cfg.rmu.block(32)) == ("wmdp", "RMU+ACT", 7)
    assert cfg.rmu.trainable_blocks(32) == [5, 6, 7] and cfg.rmu.trainable_modules == [
        "mlp.down_proj"
    ]
    assert (cfg.rmu.steering_coeff, cfg.rmu.alpha, cfg.lr, cfg.batch_size) == (6.5, 1200, 5e-5, 4)
    args = training_arguments(cfg, tmp_path, 10_000, False, TrainSettings.for_forget(cfg))
    assert args.max_steps == 150 and args.warmup_steps == 0


@pytest.mark.parametrize("name", sorted(SMALL))
def test_prepare_counts_a_document_benchmark_in_pieces_and_questions(name, tmp_path, tokenizer):
    """`npo prepare`'s summary line speaks of what the plug-in trains on: a document benchmark's
    pieces (and the questions its stand-in adds in the evaluation's format), never QA records."""
    from npo_lib.commands.prepare import PrepareSummary

    cfg = load_config([f"benchmark={name}", "max_length=48", *SMALL[name]])
    b = get_benchmark(name)
    folder = str(b.generate(cfg.benchmark, tmp_path / name))
    words = {}
    for role in ("train_target", "train_retain"):
        recs = b.load_records(folder, role, cfg, tokenizer)
        pieces = sum("doc" in r for r in recs)
        assert 0 < pieces < len(recs)  # the stand-in adds its questions to the pieces
        words[role] = b.kind.describe(recs)
        assert words[role] == (
            f"{pieces} document pieces and {len(recs) - pieces} questions in the evaluation's "
            "format"
        )
    s = PrepareSummary(
        paths={}, n_train_target=0, n_train_retain=0, n_forget=7, n_retain_eval=0, recall={},
        trained_on={"target": words["train_target"], "retain": words["train_retain"]},
        forget_set=b.kind.forget_set.format(split=cfg.split, task_id=cfg.task_id, n=7),
    )  # fmt: skip
    line = s.counts_line()
    assert line == (
        f"target trained on {words['train_target']}, retain on {words['train_retain']}; "
        "memorisation checked on 7 forget questions"
    )
    assert "QA" not in line and cfg.split not in line


def test_prepare_counts_tofu_in_qa_records():
    from npo_lib.commands.prepare import PrepareSummary

    b = get_benchmark("tofu")
    cfg = load_config([])
    assert b.kind.describe([{"question": "q", "answer": "a"}] * 3) == "3 QA records"
    s = PrepareSummary(
        paths={}, n_train_target=12, n_train_retain=10, n_forget=2, n_retain_eval=0, recall={},
        forget_set=b.kind.forget_set.format(split=cfg.split, task_id=cfg.task_id, n=2),
    )  # fmt: skip
    # a target / retain run saved before the counts were kept in words: plain record counts
    assert s.counts_line() == (
        f"target trained on 12 records, retain on 10 records; forget set {cfg.split} task "
        f"{cfg.task_id}: 2 QA"
    )
