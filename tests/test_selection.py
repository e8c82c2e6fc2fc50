"""Token selection and the INFLUENCE weights on hand-made scores."""

from __future__ import annotations

import pytest
import torch

from npo_lib.config import SelectionConfig
from npo_lib.influence.selection import expand_window, select, token_weights, word_ids

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
    # row 0: mean 0.44, std 0.39 -> z=1 selects > 0.83; row 1 (3 tokens): mean 0.5, std 1.22 -> > 1.72
    assert _sel(method="zscore", z=1.0) == [[1, 3], [0]]


def test_window_and_whole_word_expansion():
    m = torch.tensor([[False, False, True, False, False]])
    assert expand_window(m, torch.tensor([4]), 1).tolist() == [[False, True, True, True, False]]
    text = "born in Lisbon, Portugal"
    offsets = [(0, 4), (4, 7), (7, 11), (11, 14), (14, 15), (15, 24)]  # born| in| Lis|bon|,| Portugal
    assert word_ids(offsets, text) == [0, 1, 2, 2, 2, 3]
    scores = torch.tensor([[0.0, 0.0, 1.0, 0.0, 0.0, 0.0]])
    cfg = SelectionConfig(method="threshold", threshold=0.5, whole_words=True)
    mask, w = token_weights(scores, torch.tensor([6]), cfg, w_selected=1.0, w_other=0.1, words=[word_ids(offsets, text)])
    assert mask.tolist() == [[False, False, True, True, True, False]]
    assert w.tolist() == [pytest.approx([0.1, 0.1, 1.0, 1.0, 1.0, 0.1])]


def test_soft_weights_scale_with_score_and_padding_is_zero():
    cfg = SelectionConfig(method="threshold", threshold=0.2, soft=True, whole_words=False)
    _, w = token_weights(S, L, cfg, w_selected=1.0, w_other=0.0)
    assert w[0].tolist() == pytest.approx([0.0, 1.0, 1 / 3, 1.0, 0.0])
    assert w[1].tolist() == pytest.approx([1.0, 0.0, 0.25, 0.0, 0.0])


def test_bad_method_names_valid_ones():
    with pytest.raises(ValueError, match="selection.method 'best' is unknown; valid: top_k, top_p, threshold, zscore"):
        select(torch.zeros(1, 3), torch.tensor([3]), SelectionConfig(method="best"))
