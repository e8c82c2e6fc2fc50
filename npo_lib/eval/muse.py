"""MUSE's metrics (Shi et al. 2024, "MUSE: Machine Unlearning Six-Way Evaluation for Language
Models", arXiv:2407.06460) as pure functions of strings and numbers; no model here.

VerbMem (C1), KnowMem (C2 on the forget QA, C4 utility on the retain QA) and PrivLeak (C3). The
scores stay in [0, 1] (PrivLeak in percent, as in MUSE); MUSE's tables print VerbMem and KnowMem
×100. Results have the shape of :mod:`npo_lib.eval.metrics`: ``{"agg_value", "value_by_index"}``.

What the caller does with a model, following MUSE's published code: VerbMem greedy-decodes
``max_new_tokens`` (128 on MUSE-News) after each ``prompt`` and compares the continuation
(without the prompt) to ``gt`` cut to its first ``max_new_tokens`` tokens; KnowMem greedy-decodes
32 tokens after :func:`knowmem_prompt`; PrivLeak takes Min-K% (k = 0.4, MUSE's ``Min-40%``)
statistics of the ``privleak`` forget and holdout texts (:func:`npo_lib.eval.metrics.mia_min_k`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from npo_lib.eval.metrics import PRIVLEAK_EPS, by_index, rouge_l_one

# Where MUSE cuts a KnowMem answer: the model goes on with the next few-shot block.
KNOWMEM_STOPS = ("\n\n", "\nQuestion", "Question:")


def _check(name: str, generations: Sequence[str], references: Sequence[str]) -> None:
    if len(generations) != len(references):
        raise ValueError(f"{name}: {len(generations)} generations but {len(references)} references")


def _result(values: list[float]) -> dict[str, Any]:
    return {
        "agg_value": float(np.mean(values)) if values else None,
        "value_by_index": by_index(values),
    }


def verbmem_rouge(generations: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
    """VerbMem (MUSE C1): mean ROUGE-L F1 between each continuation and its ground truth.

    F1 = 2·P·R / (P + R), P = LCS / |generation|, R = LCS / |gt| over rouge_score's words, no
    stemmer (MUSE: ``RougeScorer(["rougeL"], use_stemmer=False)``, ``fmeasure``). Lower after
    unlearning is better; the retain model's value is the goal.
    """
    _check("verbmem_rouge", generations, references)
    vals = [rouge_l_one(g, r, use_stemmer=False)["f1"] for g, r in zip(generations, references)]
    return _result(vals)


def knowmem_prompt(icl_records: Sequence[Mapping[str, str]], question: str) -> str:
    """MUSE's few-shot KnowMem prompt: one ``"Question: q\\nAnswer: a\\n\\n"`` block per ICL
    record, then ``"Question: {question}\\nAnswer: "`` (the model writes the answer)."""
    shots = "".join(f"Question: {r['question']}\nAnswer: {r['answer']}\n\n" for r in icl_records)
    return f"{shots}Question: {question}\nAnswer: "


def knowmem_answer(generation: str) -> str:
    """The answer part of a KnowMem generation: the text before the first of
    :data:`KNOWMEM_STOPS` (MUSE drops the next few-shot block a model starts to write)."""
    for stop in KNOWMEM_STOPS:
        generation = generation.split(stop)[0]
    return generation


def knowmem_rouge(answers: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
    """KnowMem (MUSE C2 on forget QA, C4 on retain QA): mean ROUGE-L recall of each answer.

    R = LCS(answer, reference) / |reference| over rouge_score's words, no stemmer (MUSE), after
    :func:`knowmem_answer` cuts the generation. Lower on forget QA after unlearning is better;
    on retain QA it is utility, higher is better. (TOFU's
    :func:`~npo_lib.eval.metrics.rouge_l_recall` stems words, so it differs on inflections.)
    """
    _check("knowmem_rouge", answers, references)
    vals = [
        rouge_l_one(knowmem_answer(a), r, use_stemmer=False)["recall"]
        for a, r in zip(answers, references)
    ]
    return _result(vals)


def privleak_muse(auc: float, auc_retain: float, eps: float = PRIVLEAK_EPS) -> dict[str, float]:
    """PrivLeak as MUSE writes it: (AUC − AUC_retain) / AUC_retain · 100, in percent.

    Conventions differ between the two codes, and the numbers agree:

    * MUSE's AUC labels the forget texts 0 and the holdout texts 1 and ranks them by −stat
      (stat loss-like: Min-K%, lower = more likely a member), so AUC = P(stat_holdout <
      stat_forget): near 0 when the model recognises the forget set, ½ when it cannot tell.
    * open-unlearning (and :func:`~npo_lib.eval.metrics.mia_auc`) takes AUC = P(stat_forget <
      stat_holdout), near 1 when the forget set is recognisable: AUC_MUSE = 1 − AUC_ou. Its
      privleak, :func:`~npo_lib.eval.metrics.privleak`, is ((1 − auc) − (1 − auc_r)) / (1 −
      auc_r) · 100, the same PrivLeak written in its own AUC.

    So ``privleak_muse(1 - a, 1 - a_r) == privleak(a, a_r)``. Direction (both): 0 leaks like the
    retain model; about −100 is the under-unlearned target (the forget set stands out); > 0 is
    over-unlearning (the forget set looks less familiar than unseen text). ``eps`` is added to
    the denominator, as in open-unlearning, so an AUC_retain of 0 gives a large finite value.
    """
    a, r = float(auc), float(auc_retain)
    return {"agg_value": (a - r) / (r + eps) * 100.0}
