"""NPO (Zhang et al. 2024, arXiv:2404.05868) on sequence log-ratios, and its token-level forms:
TNPO (every target token) and INFLUENCE (tokens weighted by their influence scores). All three
read p_ref only through cached log-probs of the not-yet-updated model (no second model).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from npo_lib.objectives.catalog import (
    VARIANT_VIEWS,
    Params,
    Term,
    forget_term,
    hp,
    param_group,
    register_term,
)

if TYPE_CHECKING:
    from torch import Tensor

PAPER = "Zhang et al. 2024, arXiv:2404.05868"


@param_group("npo", "NPO, TNPO and INFLUENCE (Zhang et al. 2024)")
@dataclass
class NPOParams(Params):
    beta: float = hp(0.1, "NPO / TNPO / INFLUENCE temperature β", alias="beta", gt=0)


def npo_loss(logits: Tensor, labels: Tensor, ref_seq_logp: Tensor, beta: float) -> Tensor:
    """NPO on sequence log-ratios against cached reference sequence log-probs ``(B,)``."""
    import torch.nn.functional as F

    from npo_lib.objectives.primitives import check_shape, sequence_logprob

    seq = sequence_logprob(logits, labels)  # (B,)
    check_shape("ref_seq_logp", ref_seq_logp, tuple(seq.shape))
    delta = seq - ref_seq_logp.detach().to(seq)  # (B,)  Δ_i = log p_θ(y_i) - log p_ref(y_i)
    # NPO = -(2/β) · mean_i log σ(-β Δ_i) = (2/β) · mean_i log(1 + (p_θ/p_ref)^β)
    return -(2.0 / beta) * F.logsigmoid(-beta * delta).mean()


for suffix, view in VARIANT_VIEWS.items():
    register_term(
        Term(
            f"NPO{suffix}",
            npo_loss,
            view,
            needs=("ref_seq_logp",),
            doc=f"-(2/β) mean_i log σ(-β Δ_i) on the {view} view, Δ_i = Σ_t log p_θ - log p_ref",
            params=NPOParams,
            paper=PAPER,
        )
    )


def weighted_token_npo(
    logits: Tensor, labels: Tensor, ref_token_logp: Tensor, weights: Tensor | None, beta: float
) -> Tensor:
    """Token-level NPO with weights w (None: w = target mask); Σw = 0 gives exactly 0."""
    import torch
    import torch.nn.functional as F

    from npo_lib.objectives.primitives import check_shape, token_logprobs

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


@forget_term(
    "TNPO",
    needs=("ref_token_logp",),
    params=NPOParams,
    doc="-(2/β) mean_it log σ(-β δ_it), δ_it = log p_θ(y_it) - log p_ref(y_it)",
    paper=PAPER,
)
def tnpo_loss(logits: Tensor, labels: Tensor, ref_token_logp: Tensor, beta: float) -> Tensor:
    """Token-level NPO, w = 1 on target tokens; at δ = 0 its gradient is GA's token mean."""
    return weighted_token_npo(logits, labels, ref_token_logp, None, beta)


@forget_term(
    "INFLUENCE",
    needs=("ref_token_logp", "token_weights"),
    params=NPOParams,
    doc="-(2/β) Σ_it w_it log σ(-β δ_it) / Σ_it w_it, w from token influence; Σw = 0 gives 0",
)
def influence_loss(
    logits: Tensor, labels: Tensor, ref_token_logp: Tensor, token_weights: Tensor, beta: float
) -> Tensor:
    """TNPO weighted by token influence ``(B, T-1)`` (aligned with the shifted labels)."""
    return weighted_token_npo(logits, labels, ref_token_logp, token_weights, beta)
