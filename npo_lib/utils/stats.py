"""Rank statistics shared by the evaluation (membership inference) and token influence."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats


def auc(positive: Sequence[float] | np.ndarray, negative: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve of a score that should be higher on ``positive`` items:
    P(s_pos > s_neg) + ½ P(tie), the Mann-Whitney U statistic over n_pos · n_neg (average ranks
    for ties). NaN when either side is empty."""
    p = np.asarray(positive, dtype=np.float64).ravel()
    n = np.asarray(negative, dtype=np.float64).ravel()
    if p.size == 0 or n.size == 0:
        return float("nan")
    ranks = stats.rankdata(np.concatenate([p, n]))
    u = ranks[: p.size].sum() - p.size * (p.size + 1) / 2
    return float(u / (p.size * n.size))
