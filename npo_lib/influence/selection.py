"""Token selection: per-token influence scores -> the mask and weights of the INFLUENCE loss.

Pure functions of a padded score matrix (N examples x T target tokens, ``lengths`` valid per
row), testable without a model. Deterministic: ties break by position, random draws are
seeded. Each method of ``selection.method`` is one entry of :data:`SELECTIONS`.

Score-based methods: ``top_k`` (per example), ``top_p`` (one global ranking of the split),
``threshold``, ``zscore``. Under the global ``top_p`` the share differs between examples: at the
default 10 % an example whose tokens all score low gets no selected token at all, while others
get several (:func:`per_example_counts` shows it); ``top_k`` gives every example the same count.

Controls, which test whether the *scores* choose the right tokens: the same number of tokens,
the same loss and weights, only the choice changes. Their count is the one of the score-based
selection named by ``selection.budget``: ``top_p`` (the same global count, round(p % of all
target tokens), ranked over the whole split) or ``top_k`` (the same k per example).

* ``random``: uniformly random target tokens (``selection.seed``; None = the run's seed);
* ``oracle``: the ground-truth fact tokens (``fact_spans`` of the embedded benchmark, see
  :mod:`npo_lib.influence.ground_truth`), in random order; when the budget exceeds the fact
  tokens, random other tokens fill it, when it is smaller a random subset of them is kept;
* ``inverse``: the lowest-scoring tokens.

Counts match before the ``window`` / ``whole_words`` expansion, which adds the tokens around
the chosen ones for every method alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from npo_lib.config import SelectionConfig
from npo_lib.errors import ConfigError
from npo_lib.objectives.primitives import check_shape


def valid_mask(lengths: Tensor, width: int) -> Tensor:
    """(N, T) bool: position t < lengths[i]."""
    return torch.arange(width)[None, :] < lengths[:, None]


def top_k(
    scores: Tensor, valid: Tensor, cfg: SelectionConfig, facts: Tensor | None = None
) -> Tensor:
    """The ``k`` highest-scoring tokens of every example."""
    s = scores.masked_fill(~valid, float("-inf"))  # (N, T)
    order = torch.argsort(-s, dim=1, stable=True)[
        :, : min(cfg.k, s.shape[1])
    ]  # ties: the earlier token
    mask = torch.zeros_like(valid)
    mask.scatter_(1, order, True)
    return mask & valid


def top_p(
    scores: Tensor, valid: Tensor, cfg: SelectionConfig, facts: Tensor | None = None
) -> Tensor:
    """The highest-scoring ``p`` % of all target tokens of the split (one global ranking)."""
    flat = scores.masked_fill(~valid, float("-inf")).flatten()
    n = max(1, round(cfg.p / 100 * int(valid.sum())))
    mask = torch.zeros(flat.shape, dtype=torch.bool)
    mask[torch.argsort(-flat, stable=True)[:n]] = True
    return mask.view_as(valid) & valid


def threshold(
    scores: Tensor, valid: Tensor, cfg: SelectionConfig, facts: Tensor | None = None
) -> Tensor:
    """Every token scoring above ``threshold``."""
    return (scores > cfg.threshold) & valid


def zscore(
    scores: Tensor, valid: Tensor, cfg: SelectionConfig, facts: Tensor | None = None
) -> Tensor:
    """Tokens more than ``z`` standard deviations above their own example's mean score."""
    x = scores.masked_fill(~valid, 0.0)
    n = valid.sum(1, keepdim=True).clamp(min=1).double()
    mean = x.sum(1, keepdim=True) / n
    std = (((x - mean) ** 2).masked_fill(~valid, 0.0).sum(1, keepdim=True) / n).sqrt()
    return (x > mean + cfg.z * std) & valid


BUDGETS: dict[str, Callable[[Tensor, Tensor, SelectionConfig], Tensor]] = {
    "top_p": top_p,
    "top_k": top_k,
}


def _uniform(shape: torch.Size, cfg: SelectionConfig) -> Tensor:
    """Seeded uniform [0, 1) draws, one per position (the same seed gives the same tokens)."""
    gen = torch.Generator().manual_seed(0 if cfg.seed is None else int(cfg.seed))
    return torch.rand(shape, generator=gen, dtype=torch.float64)


def random_tokens(
    scores: Tensor, valid: Tensor, cfg: SelectionConfig, facts: Tensor | None = None
) -> Tensor:
    """Control: as many uniformly random target tokens as ``selection.budget`` selects."""
    return BUDGETS[cfg.budget](_uniform(scores.shape, cfg), valid, cfg)


def inverse(
    scores: Tensor, valid: Tensor, cfg: SelectionConfig, facts: Tensor | None = None
) -> Tensor:
    """Control: as many of the *lowest*-scoring tokens as ``selection.budget`` selects."""
    return BUDGETS[cfg.budget](-scores, valid, cfg)


def oracle(
    scores: Tensor, valid: Tensor, cfg: SelectionConfig, facts: Tensor | None = None
) -> Tensor:
    """Control, the upper bound: the fact tokens first (random order), as many as the budget."""
    if facts is None:
        raise ConfigError(
            "selection.method=oracle needs the records' fact_spans "
            "(the embedded benchmark's ground truth)"
        )
    check_shape("fact token mask", facts, tuple(scores.shape))
    rank = facts.to(torch.float64) + 0.5 * _uniform(
        scores.shape, cfg
    )  # facts in [1, 1.5), others in [0, 0.5)
    return BUDGETS[cfg.budget](rank, valid, cfg)


# (scores, valid, cfg, facts) -> mask, all (N, T); facts: the ground-truth fact-token mask or None
Selection = Callable[..., Tensor]
SELECTIONS: dict[str, Selection] = {
    "top_k": top_k,
    "top_p": top_p,
    "threshold": threshold,
    "zscore": zscore,
    "random": random_tokens,
    "oracle": oracle,
    "inverse": inverse,
}
CONTROLS = ("random", "oracle", "inverse")  # the methods whose count follows ``selection.budget``


def get_selection(name: str) -> Selection:
    try:
        return SELECTIONS[name]
    except KeyError:
        raise ConfigError(
            f"selection.method '{name}' is unknown; valid: {', '.join(SELECTIONS)}"
        ) from None


def check_selection(cfg: SelectionConfig) -> None:
    """The method and, for a control, its budget are known names (ConfigError, one line)."""
    get_selection(cfg.method)
    if cfg.budget not in BUDGETS:
        raise ConfigError(
            f"selection.budget '{cfg.budget}' is unknown; valid: {', '.join(BUDGETS)}"
        )


def needs_facts(cfg: SelectionConfig) -> bool:
    """Whether the selection reads the ground-truth fact tokens (``oracle``)."""
    return cfg.method == "oracle"


def select(
    scores: Tensor, lengths: Tensor, cfg: SelectionConfig, facts: Tensor | None = None
) -> Tensor:
    """(N, T) bool mask of the selected tokens, before window / word expansion.

    ``facts``: (N, T) bool, the ground-truth fact tokens; read by ``oracle`` only.
    """
    check_selection(cfg)
    valid = valid_mask(lengths, scores.shape[1])
    return get_selection(cfg.method)(scores.double(), valid, cfg, facts)


def per_example_counts(mask: Tensor) -> list[int]:
    """Selected tokens of each example (a global ``top_p`` can leave an example with none)."""
    return [int(n) for n in mask.sum(1)]


def expand_window(mask: Tensor, lengths: Tensor, window: int) -> Tensor:
    """Also select ``window`` tokens either side of every selected token (within the example)."""
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
        starts_word = (
            prev_end is None
            or start != prev_end
            or not piece
            or piece[0].isspace()
            or not piece.strip()
        )
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
    facts: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """(mask, weights), both (N, T): the INFLUENCE loss's per-token weights.

    Hard: ``w_selected`` on selected tokens, ``w_other`` elsewhere. Soft: selected tokens get
    ``w_other + (w_selected - w_other) * s+ / max s+`` (the example's positive scores normalised
    to [0, 1]), so the most influential token of each example gets ``w_selected``.
    ``facts`` (N, T): the ground-truth fact tokens, for ``oracle``.
    """
    mask = select(scores, lengths, cfg, facts)
    mask = expand_window(mask, lengths, cfg.window)
    if cfg.whole_words and words is not None:
        mask = expand_words(mask, words)
    valid = valid_mask(lengths, scores.shape[1])
    weights = torch.where(mask, torch.tensor(w_selected), torch.tensor(w_other)).float()
    if cfg.soft:
        pos = scores.clamp(min=0).masked_fill(~valid, 0.0).float()
        top = pos.amax(1, keepdim=True).clamp(min=1e-12)
        weights = torch.where(
            mask, w_other + (w_selected - w_other) * pos / top, torch.tensor(w_other)
        )
    return mask, weights * valid
