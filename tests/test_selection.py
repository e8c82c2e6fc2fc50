"""Token selection and the INFLUENCE weights on hand-made scores."""

from __future__ import annotations

import pytest
import torch

from npo_lib.config import SelectionConfig
from npo_lib.influence.selection import (
    expand_window,
    per_example_counts,
    select,
    token_weights,
    word_ids,
)
from npo_lib.objectives.terms import influence_loss, tnpo_loss

S = torch.tensor([[0.1, 0.9, 0.3, 0.9, 0.0], [2.0, -1.0, 0.5, 0.0, 0.0]])  # (2, 5)
L = torch.tensor([5, 3])  # row 1 has 3 valid tokens


def _sel(**kw) -> list[list[int]]:
    m = select(S, L, SelectionConfig(**kw))
    return [torch.nonzero(row).flatten().tolist() for row in m]


def test_top_k_per_example_ties_to_earlier_token_and_never_padding():
    assert _sel(method="top_k", k=1) == [[1], [0]]
    assert _sel(method="top_k", k=4) == [[0, 1, 2, 3], [0, 1, 2]]


def test_global_top_p_threshold_and_zscore():
    # 8 valid tokens, 25 % -> 2 tokens: the two highest are 2.0 and 0.9 (first of the tied pair)
    assert _sel(method="top_p", p=25.0) == [[1], [0]]
    assert _sel(method="threshold", threshold=0.4) == [[1, 3], [0, 2]]
    # row 0: mean 0.44, std 0.39 -> z=1 selects > 0.83;
    # row 1 (3 tokens): mean 0.5, std 1.22 -> > 1.72
    assert _sel(method="zscore", z=1.0) == [[1, 3], [0]]


def test_window_and_whole_word_expansion():
    m = torch.tensor([[False, False, True, False, False]])
    assert expand_window(m, torch.tensor([4]), 1).tolist() == [[False, True, True, True, False]]
    text = "born in Lisbon, Portugal"
    offsets = [
        (0, 4),
        (4, 7),
        (7, 11),
        (11, 14),
        (14, 15),
        (15, 24),
    ]  # born| in| Lis|bon|,| Portugal
    assert word_ids(offsets, text) == [0, 1, 2, 2, 2, 3]
    scores = torch.tensor([[0.0, 0.0, 1.0, 0.0, 0.0, 0.0]])
    cfg = SelectionConfig(method="threshold", threshold=0.5, whole_words=True)
    mask, w = token_weights(
        scores, torch.tensor([6]), cfg, w_selected=1.0, w_other=0.1, words=[word_ids(offsets, text)]
    )
    assert mask.tolist() == [[False, False, True, True, True, False]]
    assert w.tolist() == [pytest.approx([0.1, 0.1, 1.0, 1.0, 1.0, 0.1])]


def test_soft_weights_scale_with_score_and_padding_is_zero():
    cfg = SelectionConfig(method="threshold", threshold=0.2, soft=True, whole_words=False)
    _, w = token_weights(S, L, cfg, w_selected=1.0, w_other=0.0)
    assert w[0].tolist() == pytest.approx([0.0, 1.0, 1 / 3, 1.0, 0.0])
    assert w[1].tolist() == pytest.approx([1.0, 0.0, 0.25, 0.0, 0.0])


def test_bad_method_names_valid_ones():
    with pytest.raises(
        ValueError,
        match="selection.method 'best' is unknown; valid: "
        "top_k, top_p, threshold, zscore, random, oracle, inverse",
    ):
        select(torch.zeros(1, 3), torch.tensor([3]), SelectionConfig(method="best"))


def _count(**kw) -> list[int]:
    return per_example_counts(select(S, L, SelectionConfig(**kw)))


def test_controls_select_as_many_tokens_as_the_selection_they_control():
    for budget, kw in (("top_p", {"p": 25.0}), ("top_p", {"p": 50.0}), ("top_k", {"k": 2})):
        scored = sum(_count(method=budget, **kw))
        for method in ("random", "inverse"):
            assert sum(_count(method=method, budget=budget, seed=3, **kw)) == scored, (
                method,
                budget,
                kw,
            )
    # per-example budget: the same count in every example, not only in total
    assert (
        _count(method="random", budget="top_k", k=2, seed=1)
        == _count(method="top_k", k=2)
        == [2, 2]
    )


def test_inverse_takes_the_lowest_scores_and_random_is_seeded():
    assert _sel(method="inverse", budget="top_k", k=1) == [
        [4],
        [1],
    ]  # row 0: 0.0 at t=4; row 1: -1.0
    assert _sel(method="inverse", budget="top_p", p=25.0) == [
        [4],
        [1],
    ]  # the two lowest of the split
    a, b = (
        _sel(method="random", k=2, budget="top_k", seed=7),
        _sel(method="random", k=2, budget="top_k", seed=7),
    )
    assert a == b
    draws = {str(_sel(method="random", budget="top_k", k=2, seed=s)) for s in range(10)}
    assert len(draws) > 1  # other seeds pick other tokens
    # uniform: over many seeds every valid token of row 0 is picked about k / length = 40 % of the
    # time
    hits = torch.zeros(5)
    for s in range(400):
        hits += select(S, L, SelectionConfig(method="random", budget="top_k", k=2, seed=s))[
            0
        ].double()
    assert torch.all((hits / 400 - 0.4).abs() < 0.08), hits / 400


def test_oracle_prefers_fact_tokens_and_fills_the_budget():
    facts = torch.tensor([[False, False, True, True, False], [False, False, True, False, False]])
    m = select(S, L, SelectionConfig(method="oracle", budget="top_k", k=1, seed=0), facts)
    assert (
        m[0, 2:4].sum() == 1
        and m[0].sum() == 1
        and m[1].tolist() == [False, False, True, False, False]
    )
    m = select(S, L, SelectionConfig(method="oracle", budget="top_k", k=2, seed=0), facts)
    assert (
        m[0].tolist() == [False, False, True, True, False] and m[1, 2] and m[1].sum() == 2
    )  # one filler
    with pytest.raises(ValueError, match="oracle needs the records' fact_spans"):
        select(S, L, SelectionConfig(method="oracle"))
    with pytest.raises(
        ValueError, match="selection.budget 'zscore' is unknown; valid: top_p, top_k"
    ):
        select(S, L, SelectionConfig(method="random", budget="zscore"))


def test_global_top_p_can_leave_an_example_without_tokens():
    scores = torch.tensor([[5.0, 4.0, 3.0, 2.0], [0.1, 0.2, 0.0, 0.3]])
    lengths = torch.tensor([4, 4])
    cfg = SelectionConfig(method="top_p", p=25.0)
    assert per_example_counts(select(scores, lengths, cfg)) == [2, 0]
    assert per_example_counts(select(scores, lengths, SelectionConfig(method="top_k", k=1))) == [
        1,
        1,
    ]


def test_influence_at_100_percent_is_tnpo():
    """p = 100 %, hard weights 1 / 0: INFLUENCE's loss equals TNPO's on the same batch."""
    torch.manual_seed(0)
    b, t, v = 3, 7, 11
    logits = torch.randn(b, t, v)
    labels = torch.randint(0, v, (b, t))
    prompt = torch.tensor([2, 3, 1])
    lengths = torch.tensor([5, 2, 6])  # target tokens after the prompt; the rest is padding
    for i in range(b):
        labels[i, : prompt[i]] = -100
        labels[i, prompt[i] + lengths[i] :] = -100
    ref = torch.randn(b, t - 1)
    scores = torch.randn(b, int(lengths.max()))
    cfg = SelectionConfig(method="top_p", p=100.0)
    _, w = token_weights(scores, lengths, cfg, w_selected=1.0, w_other=0.0)
    full = torch.zeros(b, t)  # unshifted label frame, as the trainer holds them
    for i in range(b):
        full[i, prompt[i] : prompt[i] + lengths[i]] = w[i, : lengths[i]]
    weights = full[:, 1:]  # aligned with the shifted next-token labels
    got = influence_loss(logits, labels, ref, weights, beta=1.0)
    assert got.item() == pytest.approx(tnpo_loss(logits, labels, ref, beta=1.0).item(), rel=1e-6)
    _, w10 = token_weights(
        scores, lengths, SelectionConfig(method="top_p", p=10.0), w_selected=1.0, w_other=0.0
    )
    full[:] = 0
    for i in range(b):
        full[i, prompt[i] : prompt[i] + lengths[i]] = w10[i, : lengths[i]]
    assert influence_loss(logits, labels, ref, full[:, 1:], beta=1.0).item() != pytest.approx(
        got.item(), rel=1e-3
    )


def test_controls_through_the_influence_files_of_a_forget_set(mini_world, tmp_path):
    """The controls as a forget run reads them: oracle picks the fact tokens of ``fact_spans``
    even where the scores point elsewhere, random draws with the run's seed."""
    from transformers import AutoTokenizer

    from npo_lib.config import load_config
    from npo_lib.data.dataset import UnlearningDataset
    from npo_lib.influence.files import load_token_weights, token_manifest, write_influence_files
    from npo_lib.models.families import get_family

    tags = get_family("tiny").tags
    tok = AutoTokenizer.from_pretrained(mini_world["model_path"])
    ds = UnlearningDataset.from_files(mini_world["data_path"], "forget10", 1, tok, tags)
    rows = token_manifest(ds, "full", tok, tags)
    facts = []
    for row, rec in zip(rows, ds.forget):
        cot_len = len(rec["cot"]) + len(tags.think_end)  # target = cot + Te + answer
        spans = [
            *map(tuple, rec["fact_spans"]["cot"]),
            *((cot_len + s, cot_len + e) for s, e in rec["fact_spans"]["answer"]),
        ]
        facts.append([any(a < e and s < b for s, e in spans) for a, b in row["offsets"]])
    infl = tmp_path / "influence"
    write_influence_files(
        infl,
        [[0.0 if f else 1.0 for f in fs] for fs in facts],
        rows,
        {"scorer": "inverted facts (test)"},
    )

    def weights(*over: str) -> torch.Tensor:  # (N, T_max), the unshifted label frame
        cfg = load_config(
            [
                f"model_path={mini_world['model_path']}",
                f"data_path={mini_world['data_path']}",
                "split=forget10",
                "task_id=1",
                "selection.whole_words=false",
                *over,
            ]
        )
        return load_token_weights(cfg, infl, ds, "full")

    n_fact = [sum(f) for f in facts]
    assert all(n >= 2 for n in n_fact)
    w = weights("selection.method=oracle", "selection.budget=top_k", "selection.k=2")
    for i, f in enumerate(facts):
        p = ds[i]["full"]["prompt_len"]
        row = w[i, p : p + len(f)]
        assert row.sum() == 2 and all(
            f[t] for t in torch.nonzero(row).flatten().tolist()
        )  # fact tokens only
    scored = weights("selection.method=top_k", "selection.k=2")
    for i, f in enumerate(
        facts
    ):  # the (inverted) scores pick non-fact tokens: the oracle did not follow them
        p = ds[i]["full"]["prompt_len"]
        assert not any(f[t] for t in torch.nonzero(scored[i, p : p + len(f)]).flatten().tolist())
    r0 = weights("selection.method=random", "seed=0")
    r0b = weights("selection.method=random", "seed=0")
    r1 = weights("selection.method=random", "seed=1")
    r1s = weights("selection.method=random", "seed=0", "selection.seed=1")
    top = weights("selection.method=top_p")
    assert torch.equal(r0, r0b) and not torch.equal(r0, r1) and torch.equal(r1, r1s)
    assert r0.sum() == r1.sum() == top.sum()  # the same count as the global top 10 %
