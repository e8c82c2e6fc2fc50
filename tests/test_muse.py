"""MUSE (Shi et al. 2024, arXiv:2407.06460): layout loader, chunking, metrics and the stand-in."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from npo_lib.benchmarks.muse import PRIVLEAK_K, privleak_stats
from npo_lib.config import EvalConfig, MuseStandinConfig
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
from npo_lib.eval.metrics import (
    mia_auc,
    mia_min_k,
    mia_min_k_plus_plus,
    privleak,
    rouge_l_one,
)
from npo_lib.eval.muse import (
    knowmem_answer,
    knowmem_prompt,
    knowmem_rouge,
    privleak_muse,
    verbmem_rouge,
)
from npo_lib.eval.scoring import score_targets

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


# ----------------------------------------------------------------------------- published code
# Equality with the published code on identical inputs. The literals below are the outputs of
# MUSE's metric code, swj0419/muse_bench at fcd6651da8bcf34744fb9a1cc69bb856ab3eb277
# (metrics/verbmem.py, metrics/knowmem.py and metrics/logger.py's RougeEvalLogger;
# metrics/privleak.py's compute_ppl / inference / sweep; the first release, jaechan-repo/muse_bench
# at 54719c51f07221dcfbfbe8ae76bb091df77433b2, has the same code in verbmem/get_rouge.py,
# knowmem/get_rouge_qa.py and privleak/get_ppl_utils.py), and of open-unlearning's Min-K% and
# Min-K%++, locuslab/open-unlearning at d3d7cf9e6b3c125d16687d4232680d8d83548f1a
# (src/evals/metrics/mia/min_k.py, min_k_plus_plus.py, src/evals/metrics/utils.py's
# tokenwise_logprobs / tokenwise_vocab_logprobs). They were produced by running those functions
# themselves on these inputs: their eval() with a model whose generate() returns the canned
# continuations below (bytes as token ids, so the texts pass through unchanged), and their
# compute_ppl / tokenwise_* with a model returning _fixed_logits and a tokenizer returning the
# ids of _PRIVLEAK_IDS after BOS (open-unlearning's labels: BOS ignored, EOS appended and dropped).

_VERBMEM_PAIRS = [  # (greedy continuation, ground truth)
    ("The cat sat on the mat.", "the cat sat on a mat"),
    ("In 2023, the BBC reported 1,250 cases!", "The BBC reported 1250 cases in 2023."),
    ("HELLO, World -- it's me.", "hello world its me"),
    ("", "Some reference text"),
    ("running runners ran", "run runner runs"),
    ("Prime Minister Rishi Sunak said on Tuesday that inflation had fallen to 4.6%.",
     "Rishi Sunak, the Prime Minister, said inflation fell to 4.6% on Tuesday."),
    ("Café São Paulo naïve co-operate", "cafe sao paulo naive cooperate"),
]  # fmt: skip
# RougeEvalLogger.history[i]["rougeL"] and report()[0]["mean_rougeL"] of metrics.verbmem.eval
_MUSE_VERBMEM_F1 = [0.8333333333333334, 0.5333333333333333, 0.6666666666666665, 0, 0.0,
                    0.5185185185185186, 0.15384615384615385]  # fmt: skip
_MUSE_VERBMEM_MEAN = 0.3865282865282865

_KNOWMEM_ICL = [
    {"question": "Who leads the UK?", "answer": "Rishi Sunak"},
    {"question": "What fell?", "answer": "Inflation"},
]
_KNOWMEM_PAIRS = [  # (raw greedy continuation, answer)
    ("Rishi Sunak\n\nQuestion: Who is the king?\nAnswer: Charles", "Rishi Sunak"),
    ("4.6 percent\nQuestion: next", "4.6%"),
    ("The answer is Paris. Question: What about Rome?", "Paris"),
    ("London, England\nAnswer: again", "London"),
    ("  the BANK of England, in 2023", "Bank of England"),
    ("Question: nothing", "anything"),
    ("Mr. Smith's 3 dogs", "Smith 3 dogs and 2 cats"),
]
# metrics.knowmem.eval: history[i]["prompt"] (i = 0), ["response"] (the cut answer),
# ["rougeL_recall"], and report()[0]["mean_rougeL_recall"]
_MUSE_KNOWMEM_PROMPT0 = (
    "Question: Who leads the UK?\nAnswer: Rishi Sunak\n\nQuestion: What fell?\nAnswer: "
    "Inflation\n\nQuestion: question 0?\nAnswer: "
)
_MUSE_KNOWMEM_CUT = ["Rishi Sunak", "4.6 percent", "The answer is Paris. ",
                     "London, England\nAnswer: again", "  the BANK of England, in 2023", "",
                     "Mr. Smith's 3 dogs"]  # fmt: skip
_MUSE_KNOWMEM_RECALL = [1.0, 1.0, 1.0, 1.0, 1.0, 0, 0.5]
_MUSE_KNOWMEM_MEAN = 0.7857142857142857

_BOS, _EOS, _PAD, _VOCAB = 2, 1, 0, 11
_PRIVLEAK_IDS = {  # text -> its token ids after BOS
    "f0": [3, 7, 1, 9, 4, 4, 10, 5, 6, 8], "f1": [5, 5, 2, 7, 9, 3, 1],
    "f2": [10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 4, 6], "f3": [6, 1, 6],
    "h0": [4, 8, 2, 2, 9, 1, 7, 3], "h1": [9, 0, 3, 6, 5, 10, 2, 8, 1, 4, 7],
    "h2": [1, 2, 3, 4, 5], "h3": [8, 8, 8, 3, 0, 9, 6, 2, 5],
}  # fmt: skip
_FORGET, _HOLDOUT = ["f0", "f1", "f2", "f3"], ["h0", "h1", "h2", "h3"]
# privleak.inference(text)[f"Min-{k}%"]: MUSE takes the lowest int(n·k) tokens, NaN when none
_MUSE_MIN_K = {
    0.05: dict.fromkeys(_PRIVLEAK_IDS, math.nan),
    0.2: {"f0": 7.413293361663818, "f1": 8.507367134094238, "f2": 7.48608922958374,
          "f3": math.nan, "h0": 8.537954330444336, "h1": 7.349175930023193,
          "h2": 9.456296920776367, "h3": 9.18790054321289},
    0.4: {"f0": 6.781373381614685, "f1": 7.863528251647949, "f2": 7.140608119964599,
          "f3": 5.475094795227051, "h0": 7.316616058349609, "h1": 6.8710960149765015,
          "h2": 8.554338216781616, "h3": 7.893035729726155},
    0.6: {"f0": 6.283928632736206, "f1": 5.725183457136154, "f2": 6.19613436290196,
          "f3": 5.475094795227051, "h0": 6.60638689994812, "h1": 6.1067750453948975,
          "h2": 6.632986783981323, "h3": 6.719218826293945},
}  # fmt: skip
# sweep(Min-40% of forget (label 0) + holdout (label 1))[2] for the model of shift 0 and 1, and
# eval_model's PrivLeak (AUC - AUC_retain) / AUC_retain · 100 with shift 1 as the retain model
_MUSE_AUC = {0: 0.1875, 1: 0.75}
_MUSE_PRIVLEAK = -75.0
# MinKPlusPlusAttack(k).compute_score (float32, as open-unlearning casts); max(1, int(n·k)) tokens
_OU_MIN_K_PP = {
    0.05: {"f0": 9.061446189880371, "f1": 8.323260307312012, "f2": 9.336660385131836,
           "f3": 4.299376964569092, "h0": 7.829707622528076, "h1": 7.904017448425293,
           "h2": 12.062209129333496, "h3": 12.029306411743164},
    0.2: {"f0": 7.830513954162598, "f1": 8.323260307312012, "f2": 8.129369735717773,
          "f3": 4.299376964569092, "h0": 7.829707622528076, "h1": 6.964181900024414,
          "h2": 12.062209129333496, "h3": 12.029306411743164},
    0.4: {"f0": 6.952430725097656, "f1": 6.848060607910156, "f2": 6.4110565185546875,
          "f3": 4.299376964569092, "h0": 6.361747741699219, "h1": 5.89906644821167,
          "h2": 9.24937915802002, "h3": 8.411418914794922},
    1.0: {"f0": 4.3872389793396, "f1": 2.5088202953338623, "f2": 2.946913242340088,
          "f3": 3.6965091228485107, "h0": 3.6541547775268555, "h1": 3.2805168628692627,
          "h2": 4.070619106292725, "h3": 3.8634965419769287},
}  # fmt: skip
# MinKProbAttack(k).compute_score where MUSE gives NaN: open-unlearning's max(1, int(n·k)) guard
_OU_MIN_K_GUARD = {
    0.05: {"f0": 7.522715091705322, "f1": 8.507367134094238, "f2": 7.80705451965332,
           "f3": 5.475094795227051, "h0": 8.537954330444336, "h1": 7.909878253936768,
           "h2": 9.456296920776367, "h3": 9.18790054321289},
    0.2: {"f3": 5.475094795227051},
}  # fmt: skip
_F32 = 1e-5  # both codes reduce in float32 (values ~5-12); run in float64 they agree to 1e-14


def _fixed_logits(ids: list[int]) -> torch.Tensor:
    """(T, V) float32 logits, causal in ``ids`` (row t reads ids[:t+1] only), so right padding
    leaves them as the unpadded row has them; every third row has one peaked token."""
    out, s = np.zeros((len(ids), _VOCAB)), 0
    v = np.arange(_VOCAB)
    for t, i in enumerate(ids):
        s += (t + 1) * i
        out[t] = 3 * np.sin(1.3 * (t + 1) + 0.7 * v + 0.11 * s) + np.cos(0.5 * v * s)
        out[t, (s * 7) % _VOCAB] += 4.0 if t % 3 == 0 else 0.0
    return torch.tensor(out, dtype=torch.float32)


class _FixedLM(torch.nn.Module):
    """A causal LM whose logits are :func:`_fixed_logits` of the ids (each shifted by
    ``shift``: a second model for the retain side)."""

    def __init__(self, shift: int = 0) -> None:
        super().__init__()
        self.shift = shift

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def forward(self, input_ids: torch.Tensor, attention_mask=None, use_cache=None, **kw):
        rows = [_fixed_logits([i + self.shift for i in r.tolist()]) for r in input_ids]
        return SimpleNamespace(logits=torch.stack(rows))


class _IdTokenizer:
    """Each text of :data:`_PRIVLEAK_IDS` to its ids; BOS with special tokens, as Llama's."""

    pad_token_id, eos_token_id = _PAD, _EOS

    def __call__(self, texts: list[str], add_special_tokens: bool = True) -> dict:
        bos = [_BOS] if add_special_tokens else []
        return {"input_ids": [bos + _PRIVLEAK_IDS.get(t, []) for t in texts]}


def _tnpo_scores(shift: int = 0) -> dict[str, Any]:
    """npo's teacher-forced statistics of each privleak text, as MUSE's plug-in scores them."""
    texts = list(_PRIVLEAK_IDS)
    scores = score_targets(_FixedLM(shift), _IdTokenizer(), [""] * len(texts),
                           [[t] for t in texts], append_eos=False, progress=False)  # fmt: skip
    return {t: s for t, (s,) in zip(texts, scores)}


def test_verbmem_equals_muse_published_code() -> None:
    gens, truths = zip(*_VERBMEM_PAIRS)
    res = verbmem_rouge(gens, truths)
    assert list(res["value_by_index"].values()) == pytest.approx(_MUSE_VERBMEM_F1, abs=1e-12)
    assert res["agg_value"] == pytest.approx(_MUSE_VERBMEM_MEAN, abs=1e-12)


def test_knowmem_equals_muse_published_code() -> None:
    assert knowmem_prompt(_KNOWMEM_ICL, "question 0?") == _MUSE_KNOWMEM_PROMPT0
    gens, answers = zip(*_KNOWMEM_PAIRS)
    assert [knowmem_answer(g) for g in gens] == _MUSE_KNOWMEM_CUT
    res = knowmem_rouge(gens, answers)
    assert list(res["value_by_index"].values()) == pytest.approx(_MUSE_KNOWMEM_RECALL, abs=1e-12)
    assert res["agg_value"] == pytest.approx(_MUSE_KNOWMEM_MEAN, abs=1e-12)


def test_privleak_min_k_auc_and_privleak_equal_muse_published_code() -> None:
    """Min-K% from the same logits as MUSE's compute_ppl, through npo's scoring path."""
    scores = _tnpo_scores()
    for k, expected in _MUSE_MIN_K.items():
        for text, want in expected.items():
            got = mia_min_k(scores[text].logprobs, k)
            if math.isnan(want):  # fewer than 1/k tokens: MUSE averages none (NaN), npo the
                want = _OU_MIN_K_GUARD[k][text]  # lowest one, as open-unlearning does
                assert got == pytest.approx(want, abs=_F32), (k, text)
            else:
                assert got == pytest.approx(want, abs=1e-9), (k, text)
    # the plug-in's statistic is Min-40%, MUSE's privleak_auc_key
    stats = privleak_stats(_FixedLM(), _IdTokenizer(), list(_PRIVLEAK_IDS), EvalConfig(), 64)
    assert stats == pytest.approx([_MUSE_MIN_K[0.4][t] for t in _PRIVLEAK_IDS], abs=1e-9)
    # npo's AUC is 1 - MUSE's (forget labelled 1 there, 0 here); PrivLeak the same number
    aucs = {}
    for shift in (0, 1):
        sc = _tnpo_scores(shift)
        forget, holdout = ([mia_min_k(sc[t].logprobs, PRIVLEAK_K) for t in ts]
                           for ts in (_FORGET, _HOLDOUT))  # fmt: skip
        aucs[shift] = mia_auc(forget, holdout)["agg_value"]
        assert aucs[shift] == pytest.approx(1 - _MUSE_AUC[shift], abs=1e-12)
    assert privleak(aucs[0], aucs[1])["agg_value"] == pytest.approx(_MUSE_PRIVLEAK, abs=1e-6)
    assert privleak_muse(_MUSE_AUC[0], _MUSE_AUC[1])["agg_value"] == pytest.approx(
        _MUSE_PRIVLEAK, abs=1e-6
    )


def test_min_k_plus_plus_equals_open_unlearning_from_the_same_logits() -> None:
    """Min-K%++ (Zhang et al. 2024, arXiv:2404.02936): μ_t, σ_t from npo's logits conversion
    (score_targets), against open-unlearning's from tokenwise_vocab_logprobs."""
    scores = _tnpo_scores()
    for k, expected in _OU_MIN_K_PP.items():
        for text, want in expected.items():
            s = scores[text]
            got = mia_min_k_plus_plus(s.logprobs, s.mu, s.sigma, k)
            assert got == pytest.approx(want, abs=_F32), (k, text)
    for k, expected in _OU_MIN_K_GUARD.items():
        for text, want in expected.items():
            assert mia_min_k(scores[text].logprobs, k) == pytest.approx(want, abs=_F32)


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
