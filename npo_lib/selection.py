"""Token selection: per-token influence scores -> the mask and weights of the INFLUENCE loss.

Pure functions of a padded score matrix (N examples x T target tokens, ``lengths`` valid per
row) so they are testable without a model. Deterministic: ties break by position. The config
dataclass is importable without torch (the config schema nests it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch loads with the functions, not with the config schema
    from torch import Tensor

METHODS = ("top_k", "top_p", "threshold", "zscore")


@dataclass
class SelectionConfig:
    """Which target tokens INFLUENCE unlearns (nested in the project config as ``selection``)."""

    method: str = "top_p"  # top_k (per example), top_p (global % of tokens), threshold, zscore
    k: int = 5  # top_k: tokens per example
    p: float = 10.0  # top_p: percent of all target tokens of the split, highest scores first
    threshold: float = 0.0  # threshold: select tokens scoring above it
    z: float = 1.0  # zscore: select tokens more than z standard deviations above their example's mean
    window: int = 0  # also select this many tokens either side of a selected one
    whole_words: bool = True  # extend a selection to every token of the words it touches
    soft: bool = False  # weights grow with the score instead of a hard w_selected / w_other

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"selection.method '{self.method}' is unknown; valid: {', '.join(METHODS)}")
        if self.k < 1 or not 0 < self.p <= 100 or self.window < 0 or self.z < 0:
            raise ValueError(f"selection: need k >= 1, 0 < p <= 100, window >= 0, z >= 0; got {self}")


def valid_mask(lengths: Tensor, width: int) -> Tensor:
    """(N, T) bool: position t < lengths[i]."""
    import torch

    return torch.arange(width)[None, :] < lengths[:, None]


def select(scores: Tensor, lengths: Tensor, cfg: SelectionConfig) -> Tensor:
    """(N, T) bool mask of the selected tokens, before window / word expansion."""
    import torch

    valid = valid_mask(lengths, scores.shape[1])
    s = scores.double().masked_fill(~valid, float("-inf"))  # (N, T)
    if cfg.method == "top_k":
        k = min(cfg.k, s.shape[1])
        # stable: argsort of (-score, position) so ties go to the earlier token
        order = torch.argsort(-s, dim=1, stable=True)[:, :k]
        mask = torch.zeros_like(valid)
        mask.scatter_(1, order, True)
        return mask & valid
    if cfg.method == "top_p":
        flat = s.flatten()
        n = max(1, round(cfg.p / 100 * int(valid.sum())))
        order = torch.argsort(-flat, stable=True)[:n]
        mask = torch.zeros(flat.shape, dtype=torch.bool)
        mask[order] = True
        return mask.view_as(valid) & valid
    if cfg.method == "threshold":
        return (s > cfg.threshold) & valid
    # zscore: relative to the example's own scores
    x = scores.double().masked_fill(~valid, 0.0)
    n = lengths.clamp(min=1).double()[:, None]
    mean = x.sum(1, keepdim=True) / n
    std = (((x - mean) ** 2).masked_fill(~valid, 0.0).sum(1, keepdim=True) / n).sqrt()
    return (x > mean + cfg.z * std) & valid


def expand_window(mask: Tensor, lengths: Tensor, window: int) -> Tensor:
    """Also select ``window`` tokens either side of every selected token (within the example)."""
    import torch

    if window == 0:
        return mask
    m = mask.float()[:, None, :]  # (N, 1, T)
    kernel = torch.ones(1, 1, 2 * window + 1)
    grown = torch.nn.functional.conv1d(m, kernel, padding=window)[:, 0] > 0
    return grown & valid_mask(lengths, mask.shape[1])


def word_ids(offsets: Sequence[Sequence[int]], text: str) -> list[int]:
    """Word index of each token from its character span in ``text``: a token whose span starts
    where the previous one ended, without white space at its start, continues that word."""
    ids, word, prev_end = [], -1, None
    for start, end in offsets:
        piece = text[start:end]
        starts_word = prev_end is None or start != prev_end or not piece or piece[0].isspace() or not piece.strip()
        if starts_word:
            word += 1
        ids.append(word)
        prev_end = end
    return ids


def expand_words(mask: Tensor, words: Sequence[Sequence[int]]) -> Tensor:
    """Extend the selection to every token of each word it touches."""

    out = mask.clone()
    for i, ids in enumerate(words):
        chosen = {w for t, w in enumerate(ids) if mask[i, t]}
        for t, w in enumerate(ids):
            if w in chosen:
                out[i, t] = True
    return out


def token_weights(
    scores: Tensor,
    lengths: Tensor,
    cfg: SelectionConfig,
    *,
    w_selected: float,
    w_other: float,
    words: Sequence[Sequence[int]] | None = None,
) -> tuple[Tensor, Tensor]:
    """(mask, weights), both (N, T): the INFLUENCE loss's per-token weights.

    Hard: ``w_selected`` on selected tokens, ``w_other`` elsewhere. Soft: selected tokens get
    ``w_other + (w_selected - w_other) * s+ / max s+`` (the example's positive scores normalised
    to [0, 1]), so the most influential token of each example gets ``w_selected``.
    """
    import torch

    mask = select(scores, lengths, cfg)
    mask = expand_window(mask, lengths, cfg.window)
    if cfg.whole_words and words is not None:
        mask = expand_words(mask, words)
    valid = valid_mask(lengths, scores.shape[1])
    weights = torch.where(mask, torch.tensor(w_selected), torch.tensor(w_other)).float()
    if cfg.soft:
        pos = scores.clamp(min=0).masked_fill(~valid, 0.0).float()
        top = pos.amax(1, keepdim=True).clamp(min=1e-12)
        weights = torch.where(mask, w_other + (w_selected - w_other) * pos / top, torch.tensor(w_other))
    return mask, weights * valid
