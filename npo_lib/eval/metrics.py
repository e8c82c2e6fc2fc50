"""Evaluation metrics of TOFU (Maini et al. 2024, arXiv:2401.06121), R-TOFU and MUSE's privleak
(Shi et al. 2024, arXiv:2407.06460), as pure functions of numbers and strings.

Each returns ``{"agg_value": float, "value_by_index": {...}}`` so the aggregate and the per-item
values travel together (open-unlearning's convention); metrics of a whole set with no per-item
meaning (forget quality, model utility, AUC, privleak) return ``{"agg_value": ...}`` only.
Dependencies are plain calls: ``forget_quality(truth_ratio(...), ...)``.

Token statistics come in as NumPy-compatible sequences: ``nll`` is a per-item mean token negative
log-likelihood L̄ (natural log), ``logprobs`` the per-token log p(y_t) of one target.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

import numpy as np
from scipy import stats

from npo_lib.eval.registry import set_key
from npo_lib.utils.stats import auc

MIN_K = 0.4  # share of lowest-scoring tokens that Min-K% and Min-K%++ average
PRIVLEAK_EPS = 1e-10  # keeps privleak finite when the retain model's AUC is exactly 1
LESS_THINK = "Okay, the user asked this, I can answer it without thinking much."
# The 9 inputs of model utility: {Prob, ROUGE, TR} x {retain, real authors, world facts}.
MODEL_UTILITY_KEYS = tuple(
    set_key(s, m)
    for s in ("retain", "real_authors", "world_facts")
    for m in ("prob", "rouge", "truth_ratio")
)


def _norm(s: str) -> str:
    return re.sub(r"\s+", " ", s).strip().casefold()


def by_index(values: Sequence[float]) -> dict[int, float]:
    """``{0: v0, 1: v1, ...}``: a ``value_by_index`` from per-item values in record order."""
    return {i: float(v) for i, v in enumerate(values)}


def _mean(values: Mapping[Any, float] | Sequence[float]) -> float | None:
    vals = list(values.values()) if isinstance(values, Mapping) else list(values)
    return float(np.mean(vals)) if vals else None


def _values(x: Mapping[str, Any] | Mapping[Any, float] | Sequence[float]) -> np.ndarray:
    """Per-item values of a metric result, a ``value_by_index`` mapping or a plain sequence."""
    if isinstance(x, Mapping) and "value_by_index" in x:
        x = x["value_by_index"]
    if isinstance(x, Mapping):
        x = list(x.values())
    return np.asarray(x, dtype=np.float64)


def _check_len(name: str, a: Sequence, b: Sequence) -> None:
    if len(a) != len(b):
        raise ValueError(f"{name}: {len(a)} items but {len(b)} references")


# ----------------------------------------------------------------------------- fact recall


def fact_recall(texts: Sequence[str], facts: Sequence[str]) -> dict:
    """Share of ``texts`` that contain their ground-truth ``fact`` (case- and space-insensitive).

    On the embedded benchmark this is the clearest signal of what a tiny model knows: a greedy
    answer either states the fact value or it does not. Used for answers and for traces.
    """
    if len(texts) != len(facts):
        raise ValueError(f"fact_recall: {len(texts)} texts but {len(facts)} facts")
    hits = {
        i: float(_norm(f) in _norm(t)) for i, (t, f) in enumerate(zip(texts, facts, strict=True))
    }
    return {"agg_value": sum(hits.values()) / max(len(hits), 1), "value_by_index": hits}


# ----------------------------------------------------------------------------- probabilities


def answer_prob(nll: Sequence[float]) -> dict:
    """Prob: mean of P(a|q) = exp(−L̄), L̄ the mean token NLL of the answer (TOFU's Q_A_Prob)."""
    p = np.exp(-np.asarray(nll, dtype=np.float64))
    return {"agg_value": _mean(p), "value_by_index": by_index(p)}


def normalised_prob(nll_correct: Sequence[float], nll_wrong: Sequence[Sequence[float]]) -> dict:
    """P(a) / (P(a) + Σ_j P(pert_j)) per item, P = exp(−L̄) (real authors, world facts)."""
    _check_len("normalised_prob", nll_correct, nll_wrong)
    out = []
    for c, w in zip(nll_correct, nll_wrong):
        pc = np.exp(-float(c))
        out.append(pc / (pc + float(np.exp(-np.asarray(w, dtype=np.float64)).sum())))
    return {"agg_value": _mean(out), "value_by_index": by_index(out)}


# ----------------------------------------------------------------------------- truth ratio


def truth_ratio(
    nll_correct: Sequence[float],
    nll_wrong: Sequence[Sequence[float]],
    *,
    aggregate: str = "true_better",
) -> dict:
    """TR = exp(L̄_correct − mean_j L̄_pert_j) per item (= P_pert / P_correct, geometric).

    ``value_by_index`` holds the raw TR (what forget quality compares). The aggregate is
    ``"closer_to_1"``: mean(min(TR, 1/TR)) (forget set), or ``"true_better"``:
    mean(max(0, 1 − TR)) (retain, real authors, world facts). open-unlearning adds 1e-10 to
    denominators; here min(TR, 1/TR) is computed as exp(−|log TR|), which needs none.
    """
    _check_len("truth_ratio", nll_correct, nll_wrong)
    log_tr = np.array(
        [
            float(c) - float(np.mean(np.asarray(w, dtype=np.float64)))
            for c, w in zip(nll_correct, nll_wrong)
        ]
    )
    tr = np.exp(log_tr)
    if aggregate == "closer_to_1":
        agg = _mean(np.exp(-np.abs(log_tr)))
    elif aggregate == "true_better":
        agg = _mean(np.maximum(0.0, 1.0 - tr))
    else:
        raise ValueError(
            f"truth_ratio aggregate '{aggregate}' is unknown; valid: closer_to_1, true_better"
        )
    return {"agg_value": agg, "value_by_index": by_index(tr)}


def forget_quality(model_forget_tr: Any, retain_forget_tr: Any) -> dict:
    """p-value of the two-sample KS test between the per-item forget truth ratios of the model
    and of the retain model (``truth_ratio`` results, ``value_by_index`` maps or sequences).

    Beside it (``agg_value``): the KS statistic D (``ks_statistic``) and its step
    (``ks_step``): D is a difference of two empirical CDFs, a multiple of 1 / lcm(n, m) for n
    and m items (1 / n on the same forget set), so with few items the p-value takes few values.
    """
    a, b = _values(model_forget_tr), _values(retain_forget_tr)
    if a.size == 0 or b.size == 0:
        raise ValueError(
            f"forget_quality needs truth ratios on both sides, got {a.size} and {b.size}"
        )
    res = stats.ks_2samp(a, b)
    return {
        "agg_value": float(res.pvalue),
        "ks_statistic": float(res.statistic),
        "ks_step": 1.0 / math.lcm(int(a.size), int(b.size)),
    }


def model_utility(values: Mapping[str, float | None]) -> dict:
    """Harmonic mean of the 9 numbers of ``MODEL_UTILITY_KEYS``; 0 when any of them is 0.

    ``values`` maps those keys (``retain_prob``, ..., ``world_facts_truth_ratio``) to aggregates;
    a missing or None input raises (utility over fewer sets is not comparable).
    """
    missing = [k for k in MODEL_UTILITY_KEYS if values.get(k) is None]
    if missing:
        raise ValueError(f"model_utility needs {', '.join(missing)}")
    x = np.array([float(values[k]) for k in MODEL_UTILITY_KEYS])
    if np.any(x < 0):
        raise ValueError(
            f"model_utility inputs must be >= 0, got {dict(zip(MODEL_UTILITY_KEYS, x))}"
        )
    return {"agg_value": 0.0 if np.any(x == 0) else float(stats.hmean(x))}


# ----------------------------------------------------------------------------- ROUGE


@lru_cache(maxsize=2)
def _scorer(use_stemmer: bool = True):
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer)


def rouge_l_one(generation: str, reference: str, *, use_stemmer: bool = True) -> dict[str, float]:
    """ROUGE-L of one generation: ``precision`` (LCS / generation length), ``recall`` (LCS /
    reference length) and ``f1``, over rouge_score's tokens (lower-cased alphanumeric words).

    TOFU scores with the Porter stemmer; MUSE (Shi et al. 2024, arXiv:2407.06460) without.
    """
    s = _scorer(use_stemmer).score(reference, generation)["rougeL"]
    return {"precision": float(s.precision), "recall": float(s.recall), "f1": float(s.fmeasure)}


def rouge_l_recall_one(generation: str, reference: str) -> float:
    """ROUGE-L recall (LCS / reference length, Porter stemmer) of one generation."""
    return rouge_l_one(generation, reference)["recall"]


def rouge_l_recall(generations: Sequence[str], references: Sequence[str]) -> dict:
    """ROUGE-L recall of each generation against its reference (TOFU's ROUGE; also CoT ROUGE)."""
    _check_len("rouge_l_recall", generations, references)
    vals = [rouge_l_recall_one(g, r) for g, r in zip(generations, references)]
    return {"agg_value": _mean(vals), "value_by_index": by_index(vals)}


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


def split_steps(text: str) -> list[str]:
    """Reasoning steps of a trace: sentences (split after . ! ? and at line breaks)."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


def stepwise_cot_score(generated: Sequence[str], references: Sequence[str]) -> dict:
    """Step-wise CoT score: for each reference step, the best ROUGE-L recall against any
    generated step; mean over reference steps. Items whose reference has no step are left out
    of ``value_by_index`` (agg None when none has one); an empty generated trace scores 0."""
    _check_len("stepwise_cot_score", generated, references)
    out: dict[int, float] = {}
    for i, (g, r) in enumerate(zip(generated, references)):
        ref_steps, gen_steps = split_steps(r), split_steps(g)
        if not ref_steps:
            continue
        best = [
            max((rouge_l_recall_one(s, step) for s in gen_steps), default=0.0) for step in ref_steps
        ]
        out[i] = float(np.mean(best))
    return {"agg_value": _mean(out), "value_by_index": out}


# ----------------------------------------------------------------------------- memorisation


def token_stats_for(scores: Any, keep_eos: bool = False) -> Any:
    """The token statistics Min-K%, Min-K%++, extraction strength and exact memorisation read.

    Min-K% (Shi et al. 2024, arXiv:2310.16789), Min-K%++ (Zhang et al. 2024, arXiv:2404.02936)
    and ES / EM as open-unlearning defines them score a text's own tokens; the papers say
    nothing about an appended EOS. open-unlearning, whose numbers researchers
    compare against, leaves it out, and so does the default here. ``keep_eos`` (the option
    ``eval.mia_keep_eos``) keeps it, the convention of this project's earlier results.
    ``scores`` is a :class:`~npo_lib.eval.scoring.TargetScores` (anything with ``without_eos``).
    """
    return scores if keep_eos else scores.without_eos()


def extraction_strength_one(argmax_ok: Sequence[bool]) -> float:
    """1 − k/|y|, k the shortest teacher-forced prefix after which every argmax is right.

    k = |y| (strength 0) when even the last token is wrong. open-unlearning's loop stops at
    k = |y| − 1 then, giving 1/|y|; ours is 0 (the empty suffix is reproduced trivially).
    """
    ok = np.asarray(argmax_ok, dtype=bool)
    n = ok.size
    if n == 0:
        return 0.0
    wrong = np.flatnonzero(~ok)
    k = 0 if wrong.size == 0 else int(wrong[-1]) + 1
    return 1.0 - k / n


def extraction_strength(argmax_ok: Sequence[Sequence[bool]]) -> dict:
    """Extraction strength per item from its per-token "argmax equals label" flags."""
    vals = [extraction_strength_one(a) for a in argmax_ok]
    return {"agg_value": _mean(vals), "value_by_index": by_index(vals)}


def exact_memorisation(argmax_ok: Sequence[Sequence[bool]]) -> dict:
    """Share of target tokens whose teacher-forced argmax equals the label, per item."""
    vals = [float(np.mean(np.asarray(a, dtype=bool))) if len(a) else 0.0 for a in argmax_ok]
    return {"agg_value": _mean(vals), "value_by_index": by_index(vals)}


# ----------------------------------------------------------------------------- MIA


def mia_loss(logprobs: Sequence[float]) -> float:
    """LOSS attack statistic: mean token NLL (lower = more likely a member)."""
    lp = np.asarray(logprobs, dtype=np.float64)
    return float(-lp.mean()) if lp.size else 0.0


def mia_zlib(logprobs: Sequence[float], text: str) -> float:
    """zlib attack statistic (Carlini et al. 2021, arXiv:2012.07805): log-perplexity over zlib
    entropy.

    zlib = mean_t(−log p(y_t)) / |zlib(text)|, the *mean* token NLL of the target divided by the
    compressed byte length of ``text``, the target's text (open-unlearning compresses the
    decoded target the same way).
    """
    lp = np.asarray(logprobs, dtype=np.float64)
    return (float(-lp.mean()) if lp.size else 0.0) / len(zlib.compress(text.encode("utf-8")))


def _lowest_k_mean(x: np.ndarray, k: float) -> float:
    if x.size == 0:
        return 0.0
    n = max(1, int(x.size * k))
    return float(np.sort(x)[:n].mean())


def mia_min_k(logprobs: Sequence[float], k: float = MIN_K) -> float:
    """Min-K% statistic: −mean of the lowest k share of token log-probs."""
    return -_lowest_k_mean(np.asarray(logprobs, dtype=np.float64), k)


def mia_min_k_plus_plus(
    logprobs: Sequence[float], mu: Sequence[float], sigma: Sequence[float], k: float = MIN_K
) -> float:
    """Min-K%++ statistic: −mean of the lowest k share of (log p(x_t) − μ_t)/σ_t, where μ_t and
    σ_t² are the mean and variance of log p under the model's next-token distribution at t
    (σ² clamped at 1e-6, as in open-unlearning)."""
    lp, m = np.asarray(logprobs, dtype=np.float64), np.asarray(mu, dtype=np.float64)
    s = np.sqrt(np.maximum(np.asarray(sigma, dtype=np.float64) ** 2, 1e-6))
    return -_lowest_k_mean((lp - m) / s, k)


def mia_auc(member_stats: Any, nonmember_stats: Any) -> dict:
    """AUC of telling members (forget) from non-members (holdout) by a loss-like statistic.

    Members should have the *lower* statistic (lower loss = higher membership score), so
    AUC = P(stat_member < stat_nonmember) + ½ P(tie), from ranks (ties get average ranks).
    1.0: the model separates them perfectly; 0.5: it cannot tell (the retain model, ideally).
    """
    m, h = _values(member_stats), _values(nonmember_stats)
    if m.size == 0 or h.size == 0:
        raise ValueError(f"mia_auc needs members and non-members, got {m.size} and {h.size}")
    return {"agg_value": auc(-m, -h)}  # membership score: −stat


def privleak(auc: float, auc_retain: float, eps: float = PRIVLEAK_EPS) -> dict:
    """((1 − auc) − (1 − auc_retain)) / (1 − auc_retain) · 100 (MUSE's PrivLeak).

    0: leaks like the retain model; −100: the forget set is fully recognisable (the target);
    > 0: over-unlearned. When ``auc_retain`` is 1 the denominator would be 0: ``eps`` (1e-10,
    as open-unlearning adds to its denominator) is added to it, so the value is large but finite.
    """
    a, r = 1.0 - float(auc), 1.0 - float(auc_retain)
    return {"agg_value": (a - r) / (r + eps) * 100.0}
