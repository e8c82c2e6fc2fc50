"""The loss terms: pure functions of logits, labels and cached reference values, each with its
equation in one comment. They return a 0-dim tensor; no model is called here.

Papers: GA (Jang et al. 2023, arXiv:2210.01504), NPO (Zhang et al. 2024, arXiv:2404.05868),
SimNPO (Fan et al. 2024, arXiv:2410.07163), IDK (Maini et al. 2024, TOFU, arXiv:2401.06121;
R-TOFU's reasoned refusal views), GD / KL regularizers (TOFU), WGA (Wang et al. 2025,
"Rethinking LLM unlearning objectives", arXiv:2502.19301), SatImp (Yang et al. 2025, "Exploring
criteria of loss reweighting to enhance LLM unlearning", arXiv:2505.11953), UNDIAL (Dong et al.
2024, arXiv:2402.10052), RMU (Li et al. 2024, WMDP, arXiv:2403.03218). Token reweightings follow
open-unlearning's ``compute_wga_loss`` / ``compute_satimp_loss`` / ``compute_undial_loss``: a mean
over every target token of the batch. RMU and its retain term ACT read activations (the residual
stream after one decoder block) instead of logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from npo_lib.data.views import IGNORE_INDEX
from npo_lib.objectives.primitives import (
    ce,
    check_shape,
    masked_activation_mse,
    sequence_logprob,
    token_logprobs,
    upcast,
)


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
    """SimNPO: NPO without a reference, on length-normalised sequence log-probs.

    γ is the paper's margin (its eq. 6). The authors' code and open-unlearning write the margin
    as δ with γ = β·δ: the config takes either (``gamma`` or ``delta``), so that published
    configs such as δ = 1, β = 3.5 reproduce as written.
    """
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


def _token_reweighted_ga(logits: Tensor, labels: Tensor, weight_fn) -> Tensor:
    """−mean_it w_it · CE_it over the target tokens, the weights detached (not differentiated)."""
    logp, mask = token_logprobs(logits, labels)  # (B, T-1), log p_t (0 where masked)
    p = logp.detach().exp()  # (B, T-1)  p_t = exp(−CE_t), a constant of the gradient
    w = weight_fn(p) * mask  # (B, T-1)
    return (w * logp).sum() / mask.sum().clamp_min(1)  # = −Σ w·CE / Σ m


def wga_loss(logits: Tensor, labels: Tensor, beta: float) -> Tensor:
    """Weighted gradient ascent: GA whose tokens count by how likely the model still finds them."""
    # WGA = −mean_it(p_itᵝ · CE_it), p_it = exp(−CE_it) detached
    return _token_reweighted_ga(logits, labels, lambda p: p.pow(beta))


def satimp_loss(logits: Tensor, labels: Tensor, beta1: float, beta2: float) -> Tensor:
    """SatImp: GA weighted towards tokens that are likely (saturation) yet not certain (importance)."""
    # SatImp = −mean_it(p_itᵝ¹ (1 − p_it)ᵝ² · CE_it), p_it = exp(−CE_it) detached
    return _token_reweighted_ga(logits, labels, lambda p: p.pow(beta1) * (1 - p).pow(beta2))


def undial_loss(logits: Tensor, labels: Tensor, ref_forget_logits: Tensor, beta: float) -> Tensor:
    """UNDIAL: self-distillation towards the frozen model with the target token's logit lowered by β.

    The teacher is the reference distribution with the label's logit reduced by β, so the
    student keeps everything the reference knows except the confidence in the forget token.
    """
    check_shape("ref_forget_logits", ref_forget_logits, tuple(logits.shape))
    B, T, V = logits.shape
    target = labels[:, 1:]  # (B, T-1)
    mask = (target != IGNORE_INDEX).to(torch.promote_types(logits.dtype, torch.float32))  # (B, T-1)
    one_hot = F.one_hot(target.clamp_min(0), V).to(
        mask
    )  # (B, T-1, V), rows of masked positions ignored below
    teacher = (upcast(ref_forget_logits[:, :-1].detach()).to(mask) - beta * one_hot).softmax(
        -1
    )  # (B, T-1, V)
    logq = upcast(logits[:, :-1]).log_softmax(-1)  # (B, T-1, V)
    ce_t = -(teacher * logq).sum(-1)  # (B, T-1)
    # UNDIAL = mean_it CE(softmax(z_ref,it − β·e_{y_it}), p_θ,it) over the target tokens
    return (ce_t * mask).sum() / mask.sum().clamp_min(1)


def rmu_loss(hidden: Tensor, labels: Tensor, control_vec: Tensor, steering_coeff: float) -> Tensor:
    """RMU's forget term: push the layer-ℓ activations of the forget targets towards c·u.

    ``hidden`` is ``(B, T, d)``, the residual stream after decoder block ℓ; ``control_vec`` the
    fixed unit vector u ``(d,)``; c = ``steering_coeff``. Positions: each example's target tokens
    (open-unlearning); WMDP's own code averages over every position of plain-text documents,
    which for question-answer data would also scramble the prompt's activations.
    """
    check_shape("control_vec", control_vec, (hidden.shape[-1],))
    # RMU = mean_i (1/|T_i|) Σ_{t∈T_i} (1/d) ‖h_ℓ,it − c·u‖²
    return masked_activation_mse(hidden, steering_coeff * control_vec, labels)


def finetune_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Plain fine-tuning NLL (FINETUNE, IDKk, and GD on the retain view)."""
    # FINETUNE = IDKk = GD = CE
    return ce(logits, labels)


# ----------------------------------------------------------------------------- regularizers


def act_loss(hidden: Tensor, labels: Tensor, ref_hidden: Tensor, alpha: float) -> Tensor:
    """ACT, RMU's retain term: keep the layer-ℓ activations of retain targets at the frozen model's.

    ``hidden`` and ``ref_hidden`` are ``(B, T, d)`` on the retain batch; α weighs it against
    RMU's forget term as in the paper (open-unlearning's ``retain_loss_type: EMBED_DIFF``).
    """
    check_shape("ref_hidden", ref_hidden, tuple(hidden.shape))
    # ACT = α · mean_i (1/|T_i|) Σ_{t∈T_i} (1/d) ‖h_ℓ,it − h^ref_ℓ,it‖²
    return alpha * masked_activation_mse(hidden, ref_hidden, labels)


def kl_loss(logits: Tensor, labels: Tensor, ref_logits: Tensor) -> Tensor:
    """KL(p_ref ‖ p_θ) per position, averaged over the target tokens of the shifted labels.

    open-unlearning and R-TOFU average over every position (prompt and padding included,
    ``kl_div(..., reduction="batchmean")`` on flattened tokens), so their values differ: on a
    padded batch of the embedded benchmark theirs were 5x larger (padding positions enter).
    """
    check_shape("ref_logits", ref_logits, tuple(logits.shape))
    logq = upcast(logits[:, :-1]).log_softmax(-1)  # (B, T-1, V)  log p_θ
    logp = upcast(ref_logits[:, :-1].detach()).to(logq).log_softmax(-1)  # (B, T-1, V)  log p_ref
    mask = (labels[:, 1:] != IGNORE_INDEX).to(logq.dtype)  # (B, T-1)
    kl = F.kl_div(logq, logp, reduction="none", log_target=True).sum(-1)  # (B, T-1)
    # KL = Σ_it m_it Σ_v p_ref(v) (log p_ref(v) - log p_θ(v)) / Σ_it m_it
    return (kl * mask).sum() / mask.sum().clamp_min(1)
