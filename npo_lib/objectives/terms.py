"""The loss terms: pure functions of logits, labels and cached reference values, each with its
equation in one comment. They return a 0-dim tensor; no model is called here.

Papers: GA (Jang et al. 2023, arXiv:2210.01504), NPO (Zhang et al. 2024, arXiv:2404.05868),
SimNPO (Fan et al. 2024, arXiv:2410.07163), IDK (Maini et al. 2024, TOFU, arXiv:2401.06121;
R-TOFU's reasoned refusal views), GD / KL regularizers (TOFU).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from npo_lib.data.views import IGNORE_INDEX
from npo_lib.objectives.primitives import ce, check_shape, sequence_logprob, token_logprobs, upcast


def ga_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Gradient ascent: minimising it raises the NLL of the forget targets."""
    # GA = -CE
    return -ce(logits, labels)


def npo_loss(logits: Tensor, labels: Tensor, ref_seq_logp: Tensor, beta: float) -> Tensor:
    """NPO on sequence log-ratios against cached reference sequence log-probs ``(B,)``."""
    seq = sequence_logprob(logits, labels)  # (B,)
    check_shape("ref_seq_logp", ref_seq_logp, tuple(seq.shape))
    delta = seq - ref_seq_logp.detach().to(seq)  # (B,)  Δ_i = log p_θ(y_i) - log p_ref(y_i)
    # NPO = -(2/β) · mean_i log σ(-β Δ_i) = (2/β) · mean_i log(1 + (p_θ/p_ref)^β)
    return -(2.0 / beta) * F.logsigmoid(-beta * delta).mean()


def simnpo_loss(logits: Tensor, labels: Tensor, beta: float, gamma: float) -> Tensor:
    """SimNPO: NPO without a reference, on length-normalised sequence log-probs."""
    logp, mask = token_logprobs(logits, labels)  # (B, T-1)
    avg = logp.sum(-1) / mask.sum(-1).clamp_min(1)  # (B,)  (1/|y_i|) Σ_t log p_θ(y_it)
    # SimNPO = -(2/β) · mean_i log σ(-(β/|y_i|) Σ_t log p_θ(y_it) - γ)
    return -(2.0 / beta) * F.logsigmoid(-beta * avg - gamma).mean()


def _weighted_token_npo(
    logits: Tensor, labels: Tensor, ref_token_logp: Tensor, weights: Tensor | None, beta: float
) -> Tensor:
    """Token-level NPO with weights w (None: w = target mask); Σw = 0 gives exactly 0."""
    logp, mask = token_logprobs(logits, labels)  # (B, T-1)
    check_shape("ref_token_logp", ref_token_logp, tuple(logp.shape))
    delta = (logp - ref_token_logp.detach().to(logp)) * mask  # (B, T-1)  δ_it
    if weights is None:
        w = mask  # (B, T-1)
    else:
        check_shape("token_weights", weights, tuple(logp.shape))
        w = weights.detach().to(logp) * mask  # (B, T-1), 0 on prompt and padding
    total = w.sum()
    # A zero total would give 0/0: divide by 1 instead, the numerator is then exactly 0 and
    # still connected to the logits (no data-dependent branch, no NaN in the gradient).
    total = torch.where(total > 0, total, torch.ones_like(total))
    # TNPO = -(2/β) · Σ_it w_it log σ(-β δ_it) / Σ_it w_it
    return -(2.0 / beta) * (w * F.logsigmoid(-beta * delta)).sum() / total


def tnpo_loss(logits: Tensor, labels: Tensor, ref_token_logp: Tensor, beta: float) -> Tensor:
    """Token-level NPO, w = 1 on target tokens; at δ = 0 its gradient is GA's token mean."""
    return _weighted_token_npo(logits, labels, ref_token_logp, None, beta)


def influence_loss(
    logits: Tensor, labels: Tensor, ref_token_logp: Tensor, token_weights: Tensor, beta: float
) -> Tensor:
    """TNPO weighted by token influence ``(B, T-1)`` (aligned with the shifted labels)."""
    return _weighted_token_npo(logits, labels, ref_token_logp, token_weights, beta)


def finetune_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Plain fine-tuning NLL (FINETUNE, IDKk, and GD on the retain view)."""
    # FINETUNE = IDKk = GD = CE
    return ce(logits, labels)


# ----------------------------------------------------------------------------- regularizers


def kl_loss(logits: Tensor, labels: Tensor, ref_logits: Tensor) -> Tensor:
    """KL(p_ref ‖ p_θ) per position, averaged over the target tokens of the shifted labels.

    open-unlearning and R-TOFU average over every position (prompt and padding included,
    ``kl_div(..., reduction="batchmean")`` on flattened tokens), so their values are smaller.
    """
    check_shape("ref_logits", ref_logits, tuple(logits.shape))
    logq = upcast(logits[:, :-1]).log_softmax(-1)  # (B, T-1, V)  log p_θ
    logp = upcast(ref_logits[:, :-1].detach()).to(logq).log_softmax(-1)  # (B, T-1, V)  log p_ref
    mask = (labels[:, 1:] != IGNORE_INDEX).to(logq.dtype)  # (B, T-1)
    kl = F.kl_div(logq, logp, reduction="none", log_target=True).sum(-1)  # (B, T-1)
    # KL = Σ_it m_it Σ_v p_ref(v) (log p_ref(v) - log p_θ(v)) / Σ_it m_it
    return (kl * mask).sum() / mask.sum().clamp_min(1)
