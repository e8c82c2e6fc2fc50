"""WGA (Wang et al. 2025, "Rethinking LLM unlearning objectives", arXiv:2502.19301): gradient
ascent whose tokens count by how likely the model still finds them. As open-unlearning's
``compute_wga_loss``: a mean over every target token of the batch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from npo_lib.objectives.catalog import Params, forget_term, hp, param_group

if TYPE_CHECKING:
    from torch import Tensor


@param_group("wga", "WGA (Wang et al. 2025): GA with token weights p^β")
@dataclass
class WGAParams(Params):
    beta: float = hp(1.0, "WGA weight exponent β (Wang et al. 2025: 1)", alias="wga_beta", ge=0)


@forget_term(
    "WGA",
    params=WGAParams,
    doc="-mean_it(p_it^β · CE_it), p = exp(-CE) detached, β = wga_beta",
    paper="Wang et al. 2025, arXiv:2502.19301",
)
def wga_loss(logits: Tensor, labels: Tensor, beta: float) -> Tensor:
    """Weighted gradient ascent: GA whose tokens count by how likely the model still finds them."""
    from npo_lib.objectives.primitives import reweighted_ga

    # WGA = −mean_it(p_itᵝ · CE_it), p_it = exp(−CE_it) detached
    return reweighted_ga(logits, labels, lambda p: p.pow(beta))
