"""The evaluation metrics on hand-made inputs with known values."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest

from npo_lib.eval import metrics as M


def test_fact_recall_counts_case_and_space_insensitive_hits():
    res = M.fact_recall(["Born in  LISBON.", "Born in Oslo.", ""], ["lisbon", "Kyoto", "x"])
    assert res["value_by_index"] == {0: 1.0, 1: 0.0, 2: 0.0}
    assert res["agg_value"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="2 texts but 1 facts"):
        M.fact_recall(["a", "b"], ["a"])


def test_answer_prob_and_normalised_prob():
    res = M.answer_prob([0.0, math.log(2)])
    assert res["value_by_index"] == {0: 1.0, 1: pytest.approx(0.5)}
    assert res["agg_value"] == pytest.approx(0.75)
    # P(a) = 1/2, perturbed 1/4 and 1/4 -> 0.5 / (0.5 + 0.5)
    norm = M.normalised_prob([math.log(2)], [[math.log(4), math.log(4)]])
    assert norm["agg_value"] == pytest.approx(0.5)


def test_truth_ratio_per_item_and_both_aggregates():
    correct = [1.0, 3.0]
    wrong = [[2.0, 4.0], [1.0]]  # item 0: L̄_pert = 3 -> TR = e^-2; item 1: TR = e^2
    res = M.truth_ratio(correct, wrong, aggregate="closer_to_1")
    assert res["value_by_index"][0] == pytest.approx(math.exp(-2))
    assert res["value_by_index"][1] == pytest.approx(math.exp(2))
    assert res["agg_value"] == pytest.approx(math.exp(-2))  # min(TR, 1/TR) is e^-2 for both
    res = M.truth_ratio(correct, wrong)  # true_better: mean(max(0, 1 - TR))
    assert res["agg_value"] == pytest.approx((1 - math.exp(-2) + 0.0) / 2)
    with pytest.raises(ValueError, match="aggregate 'median' is unknown"):
        M.truth_ratio(correct, wrong, aggregate="median")


def test_forget_quality_is_the_ks_p_value():
    x = np.linspace(0.1, 2.0, 20)
    assert M.forget_quality(x, x)["agg_value"] == pytest.approx(1.0)
    same = M.truth_ratio([1.0] * 3, [[2.0]] * 3)
    assert M.forget_quality(same, same)["agg_value"] == pytest.approx(1.0)  # metric results too
    disjoint = M.forget_quality(np.arange(20) / 100, 1 + np.arange(20) / 100)["agg_value"]
    assert disjoint < 1e-8


def test_forget_quality_returns_the_ks_statistic_and_its_step_beside_the_p_value():
    a, b = np.arange(36) / 36, np.arange(36) / 36 + 0.1
    res = M.forget_quality(a, b)
    assert res["ks_statistic"] == pytest.approx(4 / 36)  # 4 of 36 items lie below b's first
    assert res["ks_step"] == pytest.approx(1 / 36) and 0 < res["agg_value"] < 1


def test_model_utility_harmonic_mean_and_zero():
    vals = dict.fromkeys(M.MODEL_UTILITY_KEYS, 0.5)
    assert M.model_utility(vals)["agg_value"] == pytest.approx(0.5)
    vals["world_facts_rouge"] = 0.25  # 9 / (8 / 0.5 + 1 / 0.25) = 9 / 20
    assert M.model_utility(vals)["agg_value"] == pytest.approx(9 / 20)
    vals["retain_prob"] = 0.0
    assert M.model_utility(vals)["agg_value"] == 0.0
    del vals["retain_rouge"]
    with pytest.raises(ValueError, match="retain_rouge"):
        M.model_utility(vals)


def test_rouge_l_recall_on_strings():
    res = M.rouge_l_recall(
        ["cat on mat", "the cats were running", ""],
        ["the cat sat on the mat", "the cat was run", "something"],
    )
    assert res["value_by_index"][0] == pytest.approx(0.5)  # LCS 3 of 6 reference tokens
    assert res["value_by_index"][1] == pytest.approx(0.75)  # stemmer: cats~cat, running~run
    assert res["value_by_index"][2] == 0.0


def test_stepwise_cot_score_best_match_per_reference_step():
    ref = "Alpha beta gamma. Delta epsilon zeta."
    res = M.stepwise_cot_score(["Delta epsilon zeta. Something else!", "", "x"], [ref, ref, ""])
    assert res["value_by_index"] == {0: pytest.approx(0.5), 1: 0.0}  # item 2 has no reference
    assert M.split_steps("One. Two?\nThree") == ["One.", "Two?", "Three"]


def test_extraction_strength_and_exact_memorisation():
    flags = [[1, 1, 1, 1], [0, 1, 1, 1], [1, 0, 1, 1], [1, 1, 1, 0]]
    es = M.extraction_strength(flags)
    assert es["value_by_index"] == {0: 1.0, 1: 0.75, 2: 0.5, 3: 0.0}
    em = M.exact_memorisation(flags)
    assert em["value_by_index"] == {0: 1.0, 1: 0.75, 2: 0.75, 3: 0.75}
    assert em["agg_value"] == pytest.approx(0.8125)


def test_mia_statistics_by_hand():
    lp = [-0.1, -2.0, -0.5, -3.0, -1.0]
    assert M.mia_loss(lp) == pytest.approx(1.32)
    assert M.mia_min_k(lp) == pytest.approx(2.5)  # lowest int(5 * 0.4) = 2: -3, -2
    # Carlini et al.: the mean NLL (1.32, the log-perplexity), not the sum 6.6, over the zlib length
    assert M.mia_zlib(lp, "some text") == pytest.approx(1.32 / len(zlib.compress(b"some text")))
    mu, sigma = [-1.0] * 5, [2.0] * 5  # z = (lp + 1) / 2; lowest two: -1, -0.5
    assert M.mia_min_k_plus_plus(lp, mu, sigma) == pytest.approx(0.75)


def test_min_k_auc_is_one_on_separable_data():
    rng = np.random.default_rng(0)
    members = [M.mia_min_k(rng.uniform(-0.5, 0.0, 12)) for _ in range(10)]  # high log-probs
    others = [M.mia_min_k(rng.uniform(-6.0, -3.0, 12)) for _ in range(10)]
    assert M.mia_auc(members, others)["agg_value"] == 1.0
    assert M.mia_auc(others, members)["agg_value"] == 0.0
    assert M.mia_auc([1.0, 1.0], [1.0, 1.0, 1.0])["agg_value"] == 0.5  # ties count half
    assert M.mia_auc({0: 1.0, 1: 3.0}, [2.0])["agg_value"] == 0.5  # value_by_index maps work


def test_privleak():
    assert M.privleak(0.5, 0.5)["agg_value"] == pytest.approx(0.0)
    assert M.privleak(1.0, 0.5)["agg_value"] == pytest.approx(-100.0)  # fully recognisable
    assert M.privleak(0.25, 0.5)["agg_value"] == pytest.approx(50.0)  # over-unlearned
    big = M.privleak(0.9, 1.0)["agg_value"]  # retain AUC 1: eps keeps it finite
    assert math.isfinite(big) and big == pytest.approx(0.1 / M.PRIVLEAK_EPS * 100)


def test_min_k_and_extraction_metrics_leave_the_appended_eos_out():
    """open-unlearning drops EOS from Min-K% / Min-K%++ / ES / EM; Prob, TR, LOSS, zlib keep it."""
    import numpy as np

    from npo_lib.eval.scoring import TargetScores

    lp = np.array([-0.1, -2.0, -0.5, -3.0, -0.01])  # the last token is EOS
    ok = np.array([True, False, True, True, False])
    s = TargetScores(lp, ok, np.full(5, -1.0), np.full(5, 2.0), eos=True)
    bare = s.without_eos()
    assert bare.logprobs.tolist() == [-0.1, -2.0, -0.5, -3.0] and bare.argmax_ok.tolist() == [
        True,
        False,
        True,
        True,
    ]
    assert M.mia_min_k(bare.logprobs) == pytest.approx(3.0)  # lowest int(4 * 0.4) = 1 token: -3
    assert M.mia_min_k(s.logprobs) == pytest.approx(2.5)  # with EOS: int(5 * 0.4) = 2 tokens
    assert M.extraction_strength_one(bare.argmax_ok) == pytest.approx(0.5)  # with EOS: 0.0
    assert M.extraction_strength_one(s.argmax_ok) == 0.0
    assert M.exact_memorisation([bare.argmax_ok])["agg_value"] == pytest.approx(0.75)
    assert s.nll == pytest.approx(5.61 / 5)  # Prob keeps EOS
    assert (
        TargetScores(lp, ok, lp, lp, eos=False).without_eos().logprobs.size == 5
    )  # cut by max_length: nothing to drop


def test_eos_convention_is_an_option_pinned_both_ways():
    """Min-K%, Min-K%++, ES and EM by hand on one target whose last token is the appended EOS:
    the default leaves EOS out (open-unlearning), ``eval.mia_keep_eos`` keeps it."""
    import numpy as np

    from npo_lib.config import load_config
    from npo_lib.eval.compute import eval_identity
    from npo_lib.eval.scoring import TargetScores

    lp = np.array([-0.1, -2.0, -0.5, -3.0, -0.01])  # log p(y_t); the last token is EOS
    ok = np.array([True, False, True, True, False])  # argmax == label
    mu = np.array([-1.0, -1.5, -0.2, -2.0, -0.5])  # E_v log p_v
    sigma = np.array([1.0, 0.5, 2.0, 2.0, 0.5])
    # z = (lp − μ)/σ = [0.9, −1.0, −0.15, −0.5, 0.98]
    s = TargetScores(lp, ok, mu, sigma, eos=True)
    expected = {
        # keep_eos: (Min-K%, Min-K%++, ES, EM); k = 0.4 of 4 tokens -> 1, of 5 -> 2
        False: (
            3.0,
            1.0,
            1 - 2 / 4,
            3 / 4,
        ),  # lowest lp −3; lowest z −1; last wrong token at 2 of 4
        True: ((3.0 + 2.0) / 2, (1.0 + 0.5) / 2, 1 - 5 / 5, 3 / 5),  # EOS is wrong: ES 0
    }
    for keep, (min_k, min_kpp, es, em) in expected.items():
        t = M.token_stats_for(s, keep)
        assert M.mia_min_k(t.logprobs) == pytest.approx(min_k, abs=1e-12)
        assert M.mia_min_k_plus_plus(t.logprobs, t.mu, t.sigma) == pytest.approx(min_kpp, abs=1e-12)
        assert M.extraction_strength([t.argmax_ok])["agg_value"] == pytest.approx(es, abs=1e-12)
        assert M.exact_memorisation([t.argmax_ok])["agg_value"] == pytest.approx(em, abs=1e-12)
    assert M.token_stats_for(s).logprobs.size == 4  # the default: open-unlearning's
    default, kept = load_config([]).eval, load_config(["eval.mia_keep_eos=true"]).eval
    assert not default.mia_keep_eos and kept.mia_keep_eos
    # the option changes the numbers, so it enters the reuse identity; the default keeps the old one
    assert (
        "mia_keep_eos" not in eval_identity(default) and eval_identity(kept)["mia_keep_eos"] is True
    )
