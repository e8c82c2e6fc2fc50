"""Tests of the embedded synthetic benchmark generator (npo_lib.embedded.benchmark)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from npo_lib.config import BenchmarkConfig
from npo_lib.embedded.benchmark import (
    benchmark_fingerprint,
    check_benchmark_config,
    check_record,
    generate_benchmark,
)
from npo_lib.embedded.pools import ATTRIBUTES, FORGET_SPLITS, pool_problems

QA_FILES = (
    "full.json",
    "forget01.json",
    "forget05.json",
    "forget10.json",
    "forget01_perturbed.json",
    "forget05_perturbed.json",
    "forget10_perturbed.json",
    "retain_perturbed.json",
    "holdout.json",
    "holdout01.json",
    "holdout05.json",
    "holdout10.json",
    "retain99.json",
    "retain95.json",
    "retain90.json",
)
REAL_FILES = ("real_authors_perturbed.json", "world_facts_perturbed.json")
ALL_FILES = (*QA_FILES, *REAL_FILES, "idontknow.jsonl", "idkcot.jsonl", "meta.json")


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    """The default benchmark, generated once for the module."""
    return generate_benchmark(BenchmarkConfig(), tmp_path_factory.mktemp("bench"))


@pytest.fixture(scope="module")
def meta(bench: Path) -> dict:
    return json.loads((bench / "meta.json").read_text(encoding="utf-8"))


def test_writes_every_file(bench: Path, meta: dict) -> None:
    for name in ALL_FILES:
        assert (bench / name).is_file(), name
    for name, n in meta["counts"].items():
        assert len((bench / name).read_text(encoding="utf-8").splitlines()) == n, name
    cfg = BenchmarkConfig()
    assert meta["counts"]["full.json"] == cfg.n_authors * cfg.questions_per_author
    assert meta["fingerprint"] == benchmark_fingerprint(cfg)
    assert meta["config"] == dataclasses.asdict(cfg)


def test_tofu_names_complement_each_split_and_match_its_size(bench: Path) -> None:
    full = {r["question"] for r in _read(bench / "full.json")}
    for split, pct in (("forget01", 1), ("forget05", 5), ("forget10", 10)):
        forget = _read(bench / f"{split}.json")
        retain = {r["question"] for r in _read(bench / f"retain{100 - pct:02d}.json")}
        assert retain | {r["question"] for r in forget} == full and not retain & {
            r["question"] for r in forget
        }
        task1 = [r for r in forget if r["task_id"] == "1"]
        holdout = _read(bench / f"holdout{pct:02d}.json")
        assert len(holdout) == len(task1) and not {r["question"] for r in holdout} & full


def test_deterministic(tmp_path: Path) -> None:
    a = generate_benchmark(BenchmarkConfig(seed=7), tmp_path / "a")
    b = generate_benchmark(BenchmarkConfig(seed=7), tmp_path / "b")
    c = generate_benchmark(BenchmarkConfig(seed=8), tmp_path / "c")
    for name in ALL_FILES:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "full.json").read_bytes() != (c / "full.json").read_bytes()


def test_pools_are_unambiguous() -> None:
    assert pool_problems() == []


@pytest.mark.parametrize("name", QA_FILES + REAL_FILES)
def test_fact_spans_exact_and_complete(bench: Path, name: str) -> None:
    for rec in _read(bench / name):
        fact = rec["fact"]
        assert rec["fact_spans"], rec
        for field, spans in rec["fact_spans"].items():
            assert spans, (field, rec)
            assert all(rec[field][s:e] == fact for s, e in spans), (field, rec)
            assert rec[field].count(fact) == len(spans), (field, rec)
        for field in ("question", "paraphrased_question"):
            if field in rec and field not in rec["fact_spans"]:
                assert fact not in rec[field]
        assert check_record(rec) == []


@pytest.mark.parametrize("name", QA_FILES)
def test_qa_record_fields(bench: Path, name: str) -> None:
    n_perturbed = BenchmarkConfig().n_perturbed
    for rec in _read(bench / name):
        for field in ("answer", "cot", "paraphrased_answer"):
            assert field in rec["fact_spans"]
        assert rec["attribute"] in ATTRIBUTES
        assert isinstance(rec["author_id"], int)
        assert len(rec["perturbed_answer"]) == n_perturbed
        assert len(set(rec["perturbed_answer"])) == n_perturbed
        for p in rec["perturbed_answer"]:
            assert p != rec["answer"] and rec["fact"] not in p
        assert rec["fact"] not in rec["idk_cot"]
        assert ("task_id" in rec) == name.startswith("forget")


@pytest.mark.parametrize("name", REAL_FILES)
def test_real_record_fields(bench: Path, name: str) -> None:
    rows = _read(bench / name)
    assert len(rows) >= 20
    for rec in rows:
        assert rec["fact"] == rec["answer"]
        assert len(set(rec["perturbed_answer"])) == 3
        assert rec["answer"] not in rec["perturbed_answer"]
        assert set(rec["fact_spans"]) >= {"cot", "original_answer"}


def test_authors_unique(bench: Path, meta: dict) -> None:
    authors = meta["authors"]
    cfg = BenchmarkConfig()
    assert len(authors) == cfg.n_authors + cfg.n_holdout_authors
    assert len({a["name"] for a in authors}) == len(authors)
    assert len({(a["birthplace"], a["birth_year"]) for a in authors}) == len(authors)
    titles = [a[k] for a in authors for k in ("first_book", "second_book")]
    assert len(set(titles)) == len(titles)
    full = _read(bench / "full.json")
    assert len({r["question"] for r in full}) == len(full)  # retain = full minus forget questions


def test_split_structure(bench: Path, meta: dict) -> None:
    full = _read(bench / "full.json")
    full_lines = set((bench / "full.json").read_text(encoding="utf-8").splitlines())
    full_authors = {r["author"] for r in full}
    holdout = set(meta["holdout_authors"])
    retain_eval = set(meta["retain_eval_authors"])
    assert not holdout & full_authors
    assert {r["author"] for r in _read(bench / "holdout.json")} == holdout
    assert {r["author"] for r in _read(bench / "retain_perturbed.json")} == retain_eval
    assert retain_eval <= full_authors
    cfg = BenchmarkConfig()
    for split, frac in FORGET_SPLITS.items():
        info = meta["splits"][split]
        k = max(1, round(frac * cfg.n_authors))
        pool = cfg.n_authors - cfg.n_retain_eval_authors
        assert info["authors_per_task"] == k
        assert info["n_tasks"] == min(cfg.n_tasks, pool // k)
        groups = [set(names) for names in info["tasks"].values()]
        assert all(len(g) == k for g in groups)
        assert len(set().union(*groups)) == k * len(groups)  # tasks disjoint
        rows = _read(bench / f"{split}.json")
        assert rows == _read(bench / f"{split}_perturbed.json")
        for rec in rows:
            assert rec["author"] in info["tasks"][rec["task_id"]]
            assert rec["author"] not in retain_eval | holdout
            stripped = {k2: v for k2, v in rec.items() if k2 != "task_id"}
            assert json.dumps(stripped, ensure_ascii=False) in full_lines  # forget is in full
        ids = [r["task_id"] for r in rows]
        assert ids == sorted(ids, key=int)
        assert set(ids) == {str(j) for j in range(1, info["n_tasks"] + 1)}


def test_idk_files(bench: Path) -> None:
    forget01 = _read(bench / "forget01.json")
    traces = _read(bench / "idkcot.jsonl")
    assert len(traces) == len(forget01)
    assert all(isinstance(t, str) for t in traces)
    assert traces == [r["idk_cot"] for r in forget01]
    idk = (bench / "idontknow.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(idk) >= 20 and all(line and not line.startswith(("{", '"')) for line in idk)


def test_small_and_large_configs(tmp_path: Path) -> None:
    small = BenchmarkConfig(
        n_authors=3, questions_per_author=1, n_holdout_authors=0, n_retain_eval_authors=0,
        n_perturbed=1, n_tasks=2,
    )  # fmt: skip
    out = generate_benchmark(small, tmp_path / "small")
    meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    assert meta["splits"]["forget01"]["n_tasks"] == 2
    assert meta["counts"]["holdout.json"] == 0
    big = BenchmarkConfig(n_authors=120, questions_per_author=len(ATTRIBUTES), n_perturbed=19)
    out = generate_benchmark(big, tmp_path / "big")
    for rec in _read(out / "full.json"):
        assert check_record(rec) == []


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("questions_per_author", len(ATTRIBUTES) + 1),
        ("questions_per_author", 0),
        ("n_authors", -1),
        ("n_authors", 0),
        ("n_holdout_authors", -1),
        ("n_retain_eval_authors", 40),
        ("n_perturbed", 0),
        ("n_perturbed", 100),
        ("n_tasks", 0),
        ("seed", "zero"),
        ("n_authors", 2.5),
    ],
)
def test_bad_config_names_field(field: str, value: object) -> None:
    with pytest.raises(
        ValueError, match=field
    ):  # the type and range at construction, the pools' limits after
        check_benchmark_config(BenchmarkConfig(**{field: value}))


def test_fingerprint_changes_with_every_setting() -> None:
    """Every setting of the TOFU generator changes its cache key; the plug-in's name and the
    other stand-ins' settings (not the generator's) leave it as it is."""
    from npo_lib.config import MuseStandinConfig
    from npo_lib.embedded.benchmark import OTHER_BENCHMARK_KEYS

    base = BenchmarkConfig()
    prints = {benchmark_fingerprint(base)}
    assert benchmark_fingerprint(BenchmarkConfig()) == benchmark_fingerprint(base)
    own = [f for f in dataclasses.fields(BenchmarkConfig) if f.name not in OTHER_BENCHMARK_KEYS]
    for f in own:
        changed = dataclasses.replace(base, **{f.name: getattr(base, f.name) + 1})
        prints.add(benchmark_fingerprint(changed))
    assert len(prints) == 1 + len(own)
    assert all(len(p) == 12 for p in prints)
    others = dataclasses.replace(base, name="muse", muse=MuseStandinConfig(n_forget=9))
    assert benchmark_fingerprint(others) == benchmark_fingerprint(base)
