"""Token statistics every objective is made of, computed in at least float32.

Labels follow the HF convention: ``labels[:, t]`` is the token at position t, -100
(``IGNORE_INDEX``) on prompt and padding, and ``logits[:, t]`` predicts ``labels[:, t + 1]``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from npo_lib.data.views import IGNORE_INDEX


def upcast(x: Tensor) -> Tensor:
    """At least float32: bf16 / fp16 become float32, float64 stays float64."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def check_shape(name: str, x: Tensor, shape: tuple[int, ...]) -> None:
    """A cached input must match exactly: broadcasting (B,) against (B, 1) would be silent."""
    if tuple(x.shape) != shape:
        raise ValueError(f"{name} has shape {tuple(x.shape)}, expected {shape}")


def token_logprobs(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Per-token log p(label) after the causal shift, and the target mask.

    Equivalent to ``torch.gather(logits[:, :-1].log_softmax(-1), -1, labels[:, 1:, None])``
    with masked positions set to 0, computed by ``cross_entropy`` in at least float32.
    Returns ``(logp, mask)``, both ``(B, T-1)`` in the compute dtype.
    """
    B, T, V = logits.shape
    check_shape("labels", labels, (B, T))
    pred = upcast(logits[:, :-1])  # (B, T-1, V)
    target = labels[:, 1:]  # (B, T-1)
    nll = F.cross_entropy(
        pred.reshape(-1, V), target.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none"
    )  # (B*(T-1),), 0 where ignored
    mask = (target != IGNORE_INDEX).to(pred.dtype)  # (B, T-1)
    return -nll.view(B, T - 1), mask


def sequence_logprob(logits: Tensor, labels: Tensor) -> Tensor:
    """Σ_t log p(y_t | x, y_<t) over each sequence's target tokens: ``(B,)``."""
    logp, _ = token_logprobs(logits, labels)  # (B, T-1)
    return logp.sum(-1)  # (B,)


def ce(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean token NLL over every target token of the batch (HF: token sum / token count).

    A batch without target tokens gives 0 (not NaN, as HF would).
    """
    logp, mask = token_logprobs(logits, labels)  # (B, T-1)
    # CE = -Σ_it m_it log p(y_it) / Σ_it m_it
    return -logp.sum() / mask.sum().clamp_min(1)


def masked_activation_mse(hidden: Tensor, target: Tensor, labels: Tensor) -> Tensor:
    """Per-element squared distance of activations to ``target``, averaged over the hidden size,
    over each example's target positions, then over the examples (open-unlearning's
    ``compute_activation_loss``, the mean squared error WMDP's RMU uses).

    ``hidden`` and ``target`` are ``(B, T, d)`` (``target`` may broadcast, e.g. ``(d,)``); the
    positions are those of the target tokens (``labels[:, t] != -100``, unshifted: the activation
    at a target token's own position). An example without target tokens contributes 0
    (open-unlearning divides by its zero token count: NaN).
    """
    B, T, d = hidden.shape
    check_shape("labels", labels, (B, T))
    h = upcast(hidden)
    sq = (h - target.detach().to(h)).pow(2).mean(-1)  # (B, T)  (1/d) ‖h_it − target_it‖²
    mask = (labels != IGNORE_INDEX).to(h.dtype)  # (B, T)
    per_example = (sq * mask).sum(-1) / mask.sum(-1).clamp_min(1)  # (B,)
    # MSE = mean_i (1/|T_i|) Σ_{t∈T_i} (1/d) ‖h_it − target_it‖²
    return per_example.mean()


def random_unit_vector(dim: int, seed: int) -> Tensor:
    """RMU's fixed direction u: ``torch.rand`` (uniform on [0, 1)ᵈ, as WMDP and open-unlearning
    draw it) scaled to unit norm, from its own seeded generator so every rank and every resumed
    run draws the same u (open-unlearning draws it from the global RNG at the first step)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(dim, generator=g, dtype=torch.float64)  # (d,)
    return (u / u.norm()).float()


def reweighted_ga(logits: Tensor, labels: Tensor, weight_fn: Callable[[Tensor], Tensor]) -> Tensor:
    """−mean_it w_it · CE_it over the target tokens, ``w = weight_fn(p)`` of the detached label
    probabilities ``p_it = exp(−CE_it)`` ``(B, T-1)`` (WGA, SatImp: open-unlearning's token mean
    over the batch)."""
    logp, mask = token_logprobs(logits, labels)  # (B, T-1), log p_t (0 where masked)
    p = logp.detach().exp()  # (B, T-1)  p_t = exp(−CE_t), a constant of the gradient
    w = weight_fn(p) * mask  # (B, T-1)
    return (w * logp).sum() / mask.sum().clamp_min(1)  # = −Σ w·CE / Σ m
