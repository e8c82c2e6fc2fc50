"""MUSE (Shi et al. 2024, arXiv:2407.06460): layout loader, chunking, metrics and the stand-in."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from npo_lib.config import MuseStandinConfig
from npo_lib.data.muse import (
    MUSE_LAYOUT,
    chunk_documents,
    load_muse,
    muse_layout_problems,
    muse_path,
)
from npo_lib.embedded.muse import (
    FACT_KINDS,
    article_problems,
    check_muse_standin_config,
    generate_muse_standin,
)
from npo_lib.errors import ConfigError, DataError
from npo_lib.eval.metrics import privleak, rouge_l_one
from npo_lib.eval.muse import (
    knowmem_answer,
    knowmem_prompt,
    knowmem_rouge,
    privleak_muse,
    verbmem_rouge,
)

SMALL = MuseStandinConfig(n_forget=8, n_retain=6, n_holdout=4)


@pytest.fixture(scope="module")
def standin(tmp_path_factory) -> Path:
    """The default stand-in, written once for the module."""
    return generate_muse_standin(MuseStandinConfig(), tmp_path_factory.mktemp("muse"))


# ----------------------------------------------------------------------------- layout


def test_standin_has_the_full_layout(standin: Path) -> None:
    assert muse_layout_problems(standin) == []
    for subset, splits in MUSE_LAYOUT.items():
        for split, spec in splits.items():
            items = load_muse(standin, subset, split)
            assert items, f"{subset}/{split}"
            first = items[0]
            if spec.kind == "text":
                assert isinstance(first, str)
            elif spec.kind == "spans":
                assert all(len(s) == 2 for s in first)
            else:
                assert isinstance(first, dict)
    defaults = MuseStandinConfig()
    assert len(load_muse(standin, "raw", "forget")) == defaults.n_forget
    assert len(load_muse(standin, "raw", "retain1")) == len(load_muse(standin, "raw", "retain2"))
    assert len(load_muse(standin, "raw", "retain1")) == defaults.n_retain // 2
    assert len(load_muse(standin, "raw", "holdout")) == defaults.n_holdout


def test_real_muse_news_loads(muse_dir: Path) -> None:
    assert muse_layout_problems(muse_dir) == []
    verbmem = load_muse(muse_dir, "verbmem", "forget")
    assert len(verbmem) == 100 and set(verbmem[0]) >= {"prompt", "gt"}
    for split in ("forget_qa", "retain2_qa", "forget_qa_icl", "retain2_qa_icl"):
        assert all(r["question"] and r["answer"] for r in load_muse(muse_dir, "knowmem", split))
    assert all(isinstance(t, str) for t in load_muse(muse_dir, "privleak", "holdout"))
    assert len(load_muse(muse_dir, "raw", "forget")) > 100


def test_loader_errors_are_one_line_and_name_the_file(tmp_path: Path, standin: Path) -> None:
    with pytest.raises(DataError) as e:
        load_muse(standin, "raw", "retain3")
    assert "valid: forget, retain1" in str(e.value)
    with pytest.raises(DataError, match="no subset 'train'"):
        muse_path(standin, "train", "forget")
    (tmp_path / "knowmem").mkdir()
    (tmp_path / "knowmem" / "forget_qa.json").write_text('[{"question": "q"}]', encoding="utf-8")
    with pytest.raises(DataError) as e:
        load_muse(tmp_path, "verbmem", "forget")
    msg = str(e.value)
    assert "\n" not in msg and "verbmem/forget.json" in msg and "knowmem/forget_qa.json" in msg
    with pytest.raises(DataError, match=r"record 1: expected an object with string fields"):
        load_muse(tmp_path, "knowmem", "forget_qa")
    (tmp_path / "knowmem" / "forget_qa.json").write_text('{"a": 1}', encoding="utf-8")
    with pytest.raises(DataError, match="expected one JSON list, got dict"):
        load_muse(tmp_path, "knowmem", "forget_qa")
    (tmp_path / "knowmem" / "forget_qa.json").write_text("[1,", encoding="utf-8")
    with pytest.raises(DataError, match="not a JSON file"):
        load_muse(tmp_path, "knowmem", "forget_qa")
    problems = muse_layout_problems(tmp_path)
    assert "missing verbmem/forget.json" in problems and "missing raw/forget.json" in problems
    assert "missing knowmem/forget_qa.json" not in problems
    assert "does not exist" in str(pytest.raises(DataError, load_muse, tmp_path / "x", "raw",
                                                 "forget").value)  # fmt: skip


# ----------------------------------------------------------------------------- chunking


def test_chunks_are_exact_substrings_within_max_length(tokenizer, standin: Path) -> None:
    texts = load_muse(standin, "raw", "forget")[:5] + ["", "Short one."]
    spans = load_muse(standin, "raw", "forget_facts")[:5] + [[], [[0, 5]]]
    max_length = 16
    chunks = chunk_documents(texts, tokenizer, max_length, spans=spans)
    assert {c["doc"] for c in chunks} == {0, 1, 2, 3, 4, 6}  # the empty document has no chunk
    for doc, text in enumerate(texts):
        mine = [c for c in chunks if c["doc"] == doc]
        assert "".join(c["text"] for c in mine) == text
        kept = []
        for c in mine:
            assert text[c["start"] : c["start"] + len(c["text"])] == c["text"]
            n = len(tokenizer(c["text"], add_special_tokens=False)["input_ids"])
            assert 1 <= n <= max_length
            for s, e in c["fact_spans"]:
                kept.append([s + c["start"], e + c["start"]])
                assert c["text"][s:e] == text[s + c["start"] : e + c["start"]]
        # exactly the spans no chunk boundary cuts survive, shifted
        bounds = [(c["start"], c["start"] + len(c["text"])) for c in mine]
        whole = [sp for sp in spans[doc] if any(lo <= sp[0] and sp[1] <= hi for lo, hi in bounds)]
        assert kept == whole
    assert any(len(c["fact_spans"]) for c in chunks)
    assert chunks[-1] == {"text": "Short one.", "doc": 6, "start": 0, "fact_spans": [[0, 5]]}


def test_chunking_without_spans_and_bad_arguments(tokenizer) -> None:
    chunks = chunk_documents(["one two three four five six"], tokenizer, 2)
    assert all(set(c) == {"text", "doc", "start"} for c in chunks)
    assert "".join(c["text"] for c in chunks) == "one two three four five six"
    with pytest.raises(ValueError, match="max_length must be >= 1"):
        chunk_documents(["x"], tokenizer, 0)
    with pytest.raises(ValueError, match="2 documents but 1 span lists"):
        chunk_documents(["x", "y"], tokenizer, 4, spans=[[]])


# ----------------------------------------------------------------------------- metrics


def test_verbmem_rouge_is_rouge_l_f1_without_stemmer() -> None:
    # gt "the cat sat on the mat" (6 words), generation "the cat lay on a mat" (6 words):
    # LCS = the, cat, on, mat = 4 -> P = R = 4/6 -> F1 = 2/3
    # gt "a b c d" vs generation "a b": LCS 2, P = 1, R = 1/2 -> F1 = 2 * 0.5 / 1.5 = 2/3
    res = verbmem_rouge(["the cat lay on a mat", "a b", ""], ["the cat sat on the mat", "a b c d",
                                                            "x"])  # fmt: skip
    assert res["value_by_index"] == {0: pytest.approx(2 / 3), 1: pytest.approx(2 / 3), 2: 0.0}
    assert res["agg_value"] == pytest.approx(4 / 9)
    # no stemmer: "runs" and "running" are different words for MUSE, the same for TOFU's ROUGE
    assert verbmem_rouge(["running"], ["runs"])["agg_value"] == 0.0
    assert rouge_l_one("running", "runs")["recall"] == 1.0
    with pytest.raises(ValueError, match="1 generations but 2 references"):
        verbmem_rouge(["a"], ["a", "b"])


def test_knowmem_prompt_is_muse_few_shot_format() -> None:
    icl = [{"question": "Q1?", "answer": "A1"}, {"question": "Q2?", "answer": "A2"}]
    assert knowmem_prompt(icl, "Q3?") == (
        "Question: Q1?\nAnswer: A1\n\nQuestion: Q2?\nAnswer: A2\n\nQuestion: Q3?\nAnswer: "
    )
    assert knowmem_prompt([], "Q?") == "Question: Q?\nAnswer: "


def test_knowmem_rouge_is_recall_of_the_cut_answer() -> None:
    assert knowmem_answer("12 March 2031\n\nQuestion: next") == "12 March 2031"
    assert knowmem_answer("Oslo\nQuestion: x") == "Oslo"
    assert knowmem_answer("Oslo Question: x") == "Oslo "
    # reference "12 March 2031" (3 words); answer "on 12 March" after the cut: LCS 2 -> R = 2/3;
    # the words of the next block are cut away and would not count against precision anyway
    res = knowmem_rouge(["on 12 March\n\nQuestion: 12 March 2031", "1,472 people"],
                        ["12 March 2031", "1,472"])  # fmt: skip
    assert res["value_by_index"] == {0: pytest.approx(2 / 3), 1: 1.0}
    assert res["agg_value"] == pytest.approx(5 / 6)
    assert knowmem_rouge([], [])["agg_value"] is None


def test_privleak_muse_sign_and_agreement_with_open_unlearning_form() -> None:
    # MUSE AUC: forget labelled 0, ranked by -stat; the retain model's AUC is about 0.5
    assert privleak_muse(0.5, 0.5)["agg_value"] == 0.0
    assert privleak_muse(0.0, 0.5)["agg_value"] == pytest.approx(-100.0)  # under-unlearned
    assert privleak_muse(0.6, 0.5)["agg_value"] == pytest.approx(20.0)  # over-unlearned
    assert privleak_muse(0.3, 0.4772)["agg_value"] == pytest.approx((0.3 - 0.4772) / 0.4772 * 100)
    for a, r in [(0.9, 0.5), (0.2, 0.55), (0.5, 0.5)]:
        # npo_lib's mia_auc / open-unlearning's AUC is 1 - MUSE's
        mine = privleak_muse(1 - a, 1 - r)["agg_value"]
        assert mine == pytest.approx(privleak(a, r)["agg_value"])
    assert abs(privleak_muse(0.5, 0.0)["agg_value"]) > 1e9  # finite with eps


# ----------------------------------------------------------------------------- stand-in


def test_standin_is_byte_identical_for_the_same_settings(tmp_path: Path) -> None:
    a, b = (
        generate_muse_standin(SMALL, tmp_path / "a"),
        generate_muse_standin(SMALL, tmp_path / "b"),
    )
    files = sorted(p.relative_to(a) for p in a.rglob("*.json"))
    assert files == sorted(p.relative_to(b) for p in b.rglob("*.json"))
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    c = generate_muse_standin(dataclasses.replace(SMALL, seed=1), tmp_path / "c")
    assert (c / "raw/forget.json").read_bytes() != (a / "raw/forget.json").read_bytes()


def test_standin_fact_spans_are_exact(standin: Path) -> None:
    meta = json.loads((standin / "meta.json").read_text(encoding="utf-8"))
    for split in ("forget", "retain1", "retain2", "holdout"):
        texts = load_muse(standin, "raw", split)
        spans = load_muse(standin, "raw", f"{split}_facts")
        assert len(texts) == len(spans) == len(meta["facts"][split])
        for text, doc_spans, facts in zip(texts, spans, meta["facts"][split], strict=True):
            assert 60 <= len(text.split()) <= 150
            assert {text[s:e] for s, e in doc_spans} == {facts[k] for k in FACT_KINDS}
            for (s, e), kind in zip(doc_spans, facts["kinds"], strict=True):
                assert text[s:e] == facts[kind]


def test_article_problems_catch_a_wrong_span() -> None:
    article = {
        "text": "In Ashford, Ana Lee met the Oak Trust on 1 May 2031 with 1,234 people."
        + " w" * 60,
        "facts": {
            "town": "Ashford",
            "person": "Ana Lee",
            "org": "Oak Trust",
            "date": "1 May 2031",
            "count": "1,234",
        },  # fmt: skip
        "spans": [[3, 10], [12, 19], [28, 37], [41, 51], [57, 62]],
        "span_kinds": list(FACT_KINDS),
    }
    assert article_problems(article) == []
    bad = {**article, "spans": [[3, 9], *article["spans"][1:]], "text": article["text"][:80]}
    problems = article_problems(bad)
    assert any("not the town" in p for p in problems) and any("words" in p for p in problems)
    glued = {**article, "text": "X" + article["text"][1:].replace(" Ashford", "xAshford")}
    assert any("glued" in p for p in article_problems(glued))
    missing = {**article, "spans": article["spans"][:4], "span_kinds": list(FACT_KINDS[:4])}
    assert any("count" in p and "not in the text" in p for p in article_problems(missing))


def test_standin_verbmem_knowmem_and_privleak(standin: Path) -> None:
    forget = load_muse(standin, "raw", "forget")
    verbmem = load_muse(standin, "verbmem", "forget")
    assert [v["prompt"] + v["gt"] for v in verbmem] == forget
    assert all(v["prompt"].endswith(".") and v["gt"].startswith(" ") for v in verbmem)
    for split, raw in (("forget", forget), ("retain2", load_muse(standin, "raw", "retain2"))):
        qa = load_muse(standin, "knowmem", f"{split}_qa")
        assert len(qa) == 2 * len(raw)
        for rec in qa:
            assert rec["answer"] in raw[rec["doc"]] and rec["answer"] not in rec["question"]
        icl = load_muse(standin, "knowmem", f"{split}_qa_icl")
        corpus = " ".join(raw)
        assert icl and all(r["answer"] not in corpus for r in icl)  # from articles in no split
    assert load_muse(standin, "privleak", "forget") == forget
    assert load_muse(standin, "privleak", "holdout") == load_muse(standin, "raw", "holdout")


def test_standin_sust_disjoint_and_scal_nested(standin: Path) -> None:
    forget = load_muse(standin, "raw", "forget")
    sust = [load_muse(standin, "sust", f"forget_{k}") for k in range(1, 5)]
    scal = [load_muse(standin, "scal", f"forget_{k}") for k in range(1, 5)]
    for i in range(4):
        for j in range(i + 1, 4):
            assert not set(sust[i]) & set(sust[j])
        if i:
            assert set(scal[i - 1]) < set(scal[i])
    assert sum(sust, []) == forget == scal[-1]
    facts = load_muse(standin, "raw", "forget_facts")
    q = len(facts) // 4  # the default's forget articles divide into 4 equal quarters
    assert load_muse(standin, "sust", "forget_2_facts") == facts[q : 2 * q]
    assert load_muse(standin, "scal", "forget_2_facts") == facts[: 2 * q]


def test_standin_config_bounds() -> None:
    check_muse_standin_config(MuseStandinConfig())
    with pytest.raises(ConfigError, match=r"muse.n_forget must be in \[4, 100\], got 3"):
        check_muse_standin_config(MuseStandinConfig(n_forget=3))
    with pytest.raises(ConfigError, match="qa_per_article"):
        generate_muse_standin(MuseStandinConfig(qa_per_article=6), "/nonexistent/never")
