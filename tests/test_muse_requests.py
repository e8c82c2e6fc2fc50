"""MUSE's scalability and sustainability (Shi et al. 2024, arXiv:2407.06460, §5): the forget set
a run unlearns (``benchmark.muse.forget_set``), a pipeline method starting from another's
unlearned model (``init_from``) and the table of metrics per request k. No training here."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from npo_lib.benchmarks import get_benchmark
from npo_lib.commands.checks import check_config
from npo_lib.config import MuseStandinConfig, load_config
from npo_lib.data.muse import MUSE_FORGET_SETS, load_muse
from npo_lib.embedded.muse import generate_muse_standin
from npo_lib.embedded.paths import embedded_paths
from npo_lib.errors import ConfigError
from npo_lib.viz.report import request_report
from npo_lib.workflow.pipeline import PipelineSpec, pipeline_steps
from npo_lib.workflow.steps import read_spec


@pytest.fixture(scope="module")
def standin(tmp_path_factory) -> Path:
    """The default stand-in (8 forget articles: quarters of 2), written once for the module."""
    return generate_muse_standin(MuseStandinConfig(), tmp_path_factory.mktemp("muse"))


# ----------------------------------------------------------------------------- forget set


def test_an_unknown_forget_set_fails_in_one_line_naming_the_key_and_the_valid_ones():
    cfg = load_config(["benchmark=muse", "benchmark.muse.forget_set=sust_5"])
    valid = r"valid: forget, scal_1, scal_2, scal_3, scal_4, sust_1, .*sust_4$"
    with pytest.raises(
        ConfigError, match=rf"^benchmark\.muse\.forget_set 'sust_5' is unknown; {valid}"
    ):
        check_config(cfg)
    assert list(MUSE_FORGET_SETS) == [
        "forget",
        *(f"scal_{k}" for k in range(1, 5)),
        *(f"sust_{k}" for k in range(1, 5)),
    ]
    check_config(load_config(["benchmark=muse", "benchmark.muse.forget_set=scal_3"]))


def test_every_forget_set_shares_the_stand_in_and_its_models(tmp_path):
    """The forget set is no generator setting: the stand-in's folder, its meta.json settings and
    the tiny models' folder are those of the default."""
    keys = [f"cache_dir={tmp_path}", "benchmark=muse"]
    default = embedded_paths(load_config(keys))
    for name in MUSE_FORGET_SETS:
        paths = embedded_paths(load_config([*keys, f"benchmark.muse.forget_set={name}"]))
        assert (paths.benchmark, paths.target, paths.retain) == (
            default.benchmark,
            default.target,
            default.retain,
        )
    other = embedded_paths(load_config([*keys, "benchmark.muse.n_forget=12"]))
    assert other.benchmark != default.benchmark
    folder = generate_muse_standin(MuseStandinConfig(forget_set="sust_2"), tmp_path / "m")
    meta = json.loads((folder / "meta.json").read_text())
    assert "forget_set" not in meta["config"]


def _texts(folder: Path, forget_set: str, tokenizer) -> tuple[list[str], set[str]]:
    """The documents behind the forget records of ``forget_set``, and the records' sources."""
    keys = ["benchmark=muse", "max_length=64", f"benchmark.muse.forget_set={forget_set}"]
    cfg = load_config(keys)
    recs = get_benchmark("muse").load_records(str(folder), "forget", cfg, tokenizer)
    subset, split = MUSE_FORGET_SETS[forget_set]
    docs = load_muse(folder, subset, split)
    joined = ["".join(r["text"] for r in recs if r["doc"] == d) for d in range(len(docs))]
    assert joined == docs  # the pieces give back each article of the chosen set
    return joined, {r["source"] for r in recs}


def test_the_forget_role_reads_the_chosen_forget_set(standin, tokenizer):
    forget, sources = _texts(standin, "forget", tokenizer)
    assert sources == {"raw/forget"} and len(forget) == 8
    quarters = [_texts(standin, f"sust_{k}", tokenizer) for k in range(1, 5)]
    assert [s for _, s in quarters] == [{f"sust/forget_{k}"} for k in range(1, 5)]
    assert sum((t for t, _ in quarters), []) == forget  # disjoint, together the forget set
    for k in range(1, 5):
        texts, sources = _texts(standin, f"scal_{k}", tokenizer)
        assert texts == forget[: 2 * k] and sources == {f"scal/forget_{k}"}
    cfg = load_config(["benchmark=muse", "benchmark.muse.forget_set=sust_3"])
    recs = get_benchmark("muse").load_records(str(standin), "forget", cfg, tokenizer)
    assert any(r["fact_spans"] for r in recs)  # the stand-in's ground truth comes along
    # the target is still fine-tuned on, and GD still regularises on, the same texts
    target = get_benchmark("muse").load_records(str(standin), "train_target", cfg, tokenizer)
    assert {r["source"] for r in target} >= {"raw/forget", "raw/retain1", "raw/retain2"}


# ----------------------------------------------------------------------------- init_from


def _spec(tmp_path: Path, methods: dict) -> PipelineSpec:
    return PipelineSpec(
        name="seq",
        runs_dir=str(tmp_path),
        config={"benchmark": {"name": "muse"}, "forget_loss": "NPO+GD"},
        methods=methods,
        requests=True,
    )


def test_init_from_starts_a_method_from_the_unlearned_model_of_the_one_before(tmp_path):
    chain = {
        "a": {"benchmark": {"muse": {"forget_set": "sust_1"}}},
        "b": {"benchmark": {"muse": {"forget_set": "sust_2"}}, "init_from": "a"},
        "c": {"benchmark": {"muse": {"forget_set": "sust_3"}}, "init_from": "b"},
    }
    steps, folders = pipeline_steps(_spec(tmp_path, chain))
    by = {s.name: s for s in steps}
    root = tmp_path / "seq"
    assert "model_path" not in by["forget a"].params
    assert by["forget b"].params["model_path"] == str(root / "a" / "model")
    assert by["forget c"].params["model_path"] == str(root / "b" / "model")
    assert all("init_from" not in s.params for s in steps)
    assert by["forget a"] in by["forget b"].deps and by["forget b"] in by["forget c"].deps
    names = [s.name for s in steps]
    assert names.index("forget a") < names.index("forget b") < names.index("forget c")
    assert by["forget c"].params["benchmark"]["muse"] == {"forget_set": "sust_3"}
    assert list(folders) == ["target", "retain", "a", "b", "c"]
    # request c's key follows request a's inputs (through b)
    key = by["forget c"].key
    by["forget a"].params["lr"] = 1.0
    assert by["forget c"].key != key


@pytest.mark.parametrize(
    ("methods", "message"),
    [
        ({"a": {"init_from": "b"}, "b": {}}, r"method a: init_from=b is not a method declared "
                                             r"before it \(none\)"),
        ({"a": {}, "b": {"init_from": "x"}}, r"init_from=x is not a method declared before it "
                                             r"\(a\)"),
        ({"a": {}, "b": {"init_from": "a", "model_path": "m"}}, "init_from or model_path"),
        ({"a": {"benchmark": {"muse": {"forget_set": "sust9"}}}}, "forget_set 'sust9'"),
        (
            {"a": {"forget_loss": "INFLUENCE+GD", "benchmark": {"muse": {"forget_set": "sust_1"}}}},
            "method a reads token weights, but sets its own benchmark: the influence step",
        ),
    ],
)  # fmt: skip
def test_a_bad_chain_or_forget_set_fails_before_any_notebook_runs(tmp_path, methods, message):
    with pytest.raises(ConfigError, match=message):
        pipeline_steps(_spec(tmp_path, methods))


def test_the_packaged_sustainability_and_scalability_pipelines(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sust, scal = read_spec("muse_sust", PipelineSpec), read_spec("muse_scal", PipelineSpec)
    assert sust.requests and scal.requests
    for spec, prefix in ((sust, "sust"), (scal, "scal")):
        steps, _ = pipeline_steps(spec)
        forgets = [s for s in steps if s.name.startswith("forget ")]
        assert [s.params["benchmark"]["muse"]["forget_set"] for s in forgets] == [
            f"{prefix}_{k}" for k in range(1, 5)
        ]
        starts = [s.params.get("model_path") for s in forgets]
        if prefix == "sust":  # each request from the one before
            assert starts == [None, *(f"runs/muse_sust/sust_{k}/model" for k in range(1, 4))]
        else:  # each nested set from the target
            assert starts == [None] * 4


# ----------------------------------------------------------------------------- request table


def _metrics(folder: Path, role: str, verb: float, know_f: float, know_r: float) -> Path:
    (folder / "eval").mkdir(parents=True)
    agg = {
        "muse_verbmem_forget": verb,
        "muse_knowmem_forget": know_f,
        "muse_knowmem_retain": know_r,
        "muse_privleak": None if role == "run" else -100.0,
    }
    doc = {"aggregates": agg, "identity": {"role": role}}
    (folder / "eval" / "metrics.json").write_text(json.dumps(doc))
    return folder


def test_the_request_table_has_one_row_per_request_and_files_another_tool_reads(tmp_path):
    target = _metrics(tmp_path / "target", "target", 0.7, 0.9, 0.8)
    retain = _metrics(tmp_path / "retain", "retain", 0.2, 0.1, 0.6)
    runs = [
        _metrics(tmp_path / f"sust_{k}", "run", 0.7 - 0.1 * k, 0.9 - 0.2 * k, 0.8 - 0.05 * k)
        for k in (1, 2)
    ]
    text, files = request_report(
        target, runs, tmp_path / "out", starts_from={"sust_2": "sust_1"}, reference=retain
    )
    lines = text.splitlines()
    assert lines[0] == (
        "| k | run | starts from | VerbMem forget ↓ | KnowMem forget ↓ | KnowMem retain ↑ "
        "| PrivLeak (MUSE) →0 |"
    )
    assert [ln.split(" | ")[:3] for ln in lines[2:]] == [
        ["| 0", "target", "–"],
        ["| 1", "sust_1", "target"],
        ["| 2", "sust_2", "sust_1"],
        ["| ", "retain", "–"],
    ]
    with files["csv"].open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["k"] for r in rows] == ["0", "1", "2", ""]
    assert float(rows[2]["muse_knowmem_forget"]) == pytest.approx(0.5)
    assert rows[1]["muse_privleak"] == ""  # null
    data = json.loads(files["json"].read_text())
    assert [r["k"] for r in data] == [0, 1, 2, None] and data[3]["muse_verbmem_forget"] == 0.2
    assert files["md"].read_text() == text + "\n"


@pytest.mark.slow
def test_a_chained_method_is_trained_from_the_model_the_one_before_saved(
    mini_world, tmp_path, monkeypatch
):
    """Two forget notebooks and their evaluations through `npo run` (random mini model): b runs
    after a, from a's saved model, and is evaluated on its own."""
    import yaml

    from npo_lib.utils.hashing import model_fingerprint
    from npo_lib.workflow.pipeline import run_pipeline

    monkeypatch.chdir(tmp_path)
    config = {
        "model_path": mini_world["model_path"],
        "data_path": mini_world["data_path"],
        "batch_size": 4,
        "num_epochs": 1,
        "lr": 1e-3,
        "warmup_epochs": 0,
        "forget_loss": "NPO+GD",
        "eval": {"max_new_tokens": 8},  # a random model never stops: keep its answers short
    }
    spec = tmp_path / "chain.yaml"
    body = {"name": "chain", "config": config, "runs_dir": str(tmp_path / "runs")}
    body["methods"] = {"a": {}, "b": {"init_from": "a"}}
    spec.write_text(yaml.safe_dump(body, sort_keys=False))
    res = run_pipeline(spec, stream=False)
    assert res["ok"], [s for s in res["steps"] if s["status"] == "failed"]
    names = [s["name"] for s in res["steps"]]
    assert names == ["forget a", "forget b", "evaluate a", "evaluate b"]
    root = tmp_path / "runs" / "chain"
    saved = yaml.safe_load((root / "b" / "config.yaml").read_text())
    assert saved["model_path"] == str(root / "a" / "model")  # runs_dir is absolute here
    prints = {m: model_fingerprint(root / m / "model") for m in ("a", "b")}
    assert len({*prints.values(), model_fingerprint(mini_world["model_path"])}) == 3
    evaluated = json.loads((root / "b" / "eval" / "metrics.json").read_text())
    assert evaluated["identity"]["model_fingerprint"] == prints["b"]
