"""ETW, entropy-guided token weighting (Koh et al. 2026, "Forget what matters, keep the rest:
selective unlearning of informative tokens", ACL 2026, arXiv:2604.17785).

The paper weights each forget token's loss by the entropy of the model's predictive
distribution at that position: informative tokens (names, places, numbers) admit many plausible
alternatives and have high entropy, function words are predictable and have low entropy. Its
abstract and summaries say that much; the exact normalisation of the weights was not available
here, so the equation below is this project's reading, stated in full:

    H_it = −Σ_v p_θ(v | x_i, y_i,<t) log p_θ(v | x_i, y_i,<t)     (detached; nats)
    w_it = H_it^β / mean_{target tokens of the batch} H^β          (weights average 1)
    ETW  = −Σ_it m_it w_it CE_it / Σ_it m_it = −Σ_it m_it H_it^β CE_it / Σ_it m_it H_it^β

a gradient-ascent token loss (the base WGA and SatImp reweight too), so it is a pure function
of the logits, the labels and β: no reference, no extra input. β = 0 gives GA; at uniform
entropy it is GA as well. A batch whose target tokens all have zero entropy gives 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from npo_lib.objectives.catalog import Params, forget_term, hp, param_group

if TYPE_CHECKING:
    from torch import Tensor


@param_group("etw", "ETW (Koh et al. 2026): GA with token weights from predictive entropy")
@dataclass
class ETWParams(Params):
    beta: float = hp(
        1.0, "entropy exponent β of the weights w ∝ H^β (0: plain GA; 1: proportional)", ge=0
    )


def token_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """H_it = −Σ_v p_v log p_v of the prediction of each target token (the shifted frame of
    ``token_logprobs``), in nats, ``(B, T-1)``, 0 where masked; differentiable."""
    from npo_lib.data.views import IGNORE_INDEX
    from npo_lib.objectives.primitives import check_shape, upcast

    check_shape("labels", labels, tuple(logits.shape[:2]))
    logq = upcast(logits[:, :-1]).log_softmax(-1)  # (B, T-1, V)
    mask = (labels[:, 1:] != IGNORE_INDEX).to(logq.dtype)  # (B, T-1)
    return -(logq.exp() * logq).sum(-1) * mask


@forget_term(
    "ETW",
    params=ETWParams,
    doc="-Σ_it H_it^β CE_it / Σ_it H_it^β, H_it the detached entropy of p_θ(· | x, y_<t)",
    paper="Koh et al. 2026, arXiv:2604.17785",
)
def etw_loss(logits: Tensor, labels: Tensor, beta: float) -> Tensor:
    """Gradient ascent with each target token weighted by its predictive entropy to the β."""
    import torch

    from npo_lib.objectives.primitives import token_logprobs

    logp, mask = token_logprobs(logits, labels)  # (B, T-1), log p_θ(y_it), 0 where masked
    entropy = token_entropy(logits.detach(), labels)  # (B, T-1), 0 where masked
    w = entropy.to(logp).pow(beta) * mask  # (B, T-1)  H_it^β on target tokens
    total = w.sum()
    total = torch.where(total > 0, total, torch.ones_like(total))  # Σw = 0: exactly 0, no NaN
    # ETW = −Σ_it H_it^β CE_it / Σ_it H_it^β  (= Σ w·log p / Σ w)
    return (w * logp).sum() / total
