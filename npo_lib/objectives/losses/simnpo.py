"""SimNPO (Fan et al. 2024, arXiv:2410.07163): NPO without a reference, on length-normalised
sequence log-probs, with a reward margin γ."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from npo_lib.errors import ConfigError
from npo_lib.objectives.catalog import Params, forget_term, hp, param_group

if TYPE_CHECKING:
    from torch import Tensor


@param_group("simnpo", "SimNPO (Fan et al. 2024): reference-free, length-normalised NPO")
@dataclass
class SimNPOParams(Params):
    beta: float = hp(
        2.5,
        "SimNPO's β (its own default, reference-free, length-normalised)",
        alias="simnpo_beta",
        gt=0,
    )
    gamma: float | None = hp(
        None,
        "SimNPO reward margin γ of the paper's equation (None: simnpo_beta·delta, or 0)",
        alias="gamma",
    )
    delta: float | None = hp(
        None,
        "SimNPO margin δ as its authors' code and open-unlearning write it "
        "(γ = simnpo_beta·δ); set gamma or delta",
        alias="delta",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.gamma is not None and self.delta is not None:
            raise ConfigError(
                "set SimNPO's gamma or delta (γ = simnpo_beta·δ), not both: "
                f"gamma={self.gamma}, delta={self.delta}"
            )

    def arguments(self) -> dict[str, Any]:
        """β, and γ from ``gamma``, else β·``delta`` (the authors' parametrisation), else 0."""
        if self.gamma is not None:
            gamma = float(self.gamma)
        else:
            gamma = 0.0 if self.delta is None else float(self.beta) * float(self.delta)
        return {"beta": float(self.beta), "gamma": gamma}


@forget_term(
    "SimNPO",
    params=SimNPOParams,
    doc="-(2/β) mean_i log σ(-(β/|y_i|) Σ_t log p_θ(y_it) - γ), β = simnpo_beta",
    paper="Fan et al. 2024, arXiv:2410.07163",
)
def simnpo_loss(logits: Tensor, labels: Tensor, beta: float, gamma: float) -> Tensor:
    """SimNPO: NPO without a reference, on length-normalised sequence log-probs.

    γ is the paper's margin (its eq. 6). The authors' code and open-unlearning write the margin
    as δ with γ = β·δ: the config takes either (``gamma`` or ``delta``), so that published
    configs such as δ = 1, β = 3.5 reproduce as written.
    """
    import torch.nn.functional as F

    from npo_lib.objectives.primitives import token_logprobs

    logp, mask = token_logprobs(logits, labels)  # (B, T-1)
    avg = logp.sum(-1) / mask.sum(-1).clamp_min(1)  # (B,)  (1/|y_i|) Σ_t log p_θ(y_it)
    # SimNPO = -(2/β) · mean_i log σ(-(β/|y_i|) Σ_t log p_θ(y_it) - γ)
    return -(2.0 / beta) * F.logsigmoid(-beta * avg - gamma).mean()
