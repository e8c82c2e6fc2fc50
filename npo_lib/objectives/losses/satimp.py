"""SatImp (Yang et al. 2025, "Exploring criteria of loss reweighting to enhance LLM
unlearning", arXiv:2505.11953): GA weighted towards tokens that are likely (saturation) yet not
certain (importance). As open-unlearning's ``compute_satimp_loss``: a mean over every target
token of the batch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from npo_lib.objectives.catalog import Params, forget_term, hp, param_group

if TYPE_CHECKING:
    from torch import Tensor


@param_group("satimp", "SatImp (Yang et al. 2025): GA with token weights p^β1 (1 − p)^β2")
@dataclass
class SatImpParams(Params):
    beta1: float = hp(
        5.0, "SatImp saturation exponent β1 (open-unlearning: 5)", alias="satimp_beta1", ge=0
    )
    beta2: float = hp(
        1.0, "SatImp importance exponent β2 (open-unlearning: 1)", alias="satimp_beta2", ge=0
    )


@forget_term(
    "SatImp",
    params=SatImpParams,
    doc="-mean_it(p_it^β1 (1 - p_it)^β2 · CE_it), p detached, β1, β2 = satimp_beta1, satimp_beta2",
    paper="Yang et al. 2025, arXiv:2505.11953",
)
def satimp_loss(logits: Tensor, labels: Tensor, beta1: float, beta2: float) -> Tensor:
    """SatImp: GA weighted towards tokens that are likely (saturation) yet not certain."""
    from npo_lib.objectives.primitives import reweighted_ga

    # SatImp = −mean_it(p_itᵝ¹ (1 − p_it)ᵝ² · CE_it), p_it = exp(−CE_it) detached
    return reweighted_ga(logits, labels, lambda p: p.pow(beta1) * (1 - p).pow(beta2))
