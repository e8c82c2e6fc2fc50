"""RMU (Li et al. 2024, WMDP, arXiv:2403.03218) and its retain term ACT: both read the residual
stream after decoder block ℓ instead of logits.

Differs from open-unlearning's RMU trainer in two places: its retain term is a separate
regularizer (ACT), so RMU+GD (open-unlearning's default, NLL on retain) and the paper's RMU+ACT
are both spelled out; and u comes from its own seeded generator rather than the global RNG, so
every rank and a resumed run use the same u. open-unlearning's α is GradDiff's retain
coefficient, whichever retain loss it weighs; here α (``rmu.alpha``) belongs to ACT, so
RMU+GD+ACT weighs GD and ACT apart (regularization_coeff still multiplies every regularizer:
RMU+ACT with it at 1 is the paper's RMU + α·ACT).

Depth-relative blocks: WMDP reads block 7 of Zephyr-7B's 32 and trains blocks 5, 6, 7. ℓ and
the trainable blocks may be written as fractions of the model's ``num_hidden_layers`` (a number
strictly between 0 and 1), resolved when the model's depth is known; a whole number is a block
index, as before. The default ℓ = 7/32 is block 7 of 32 and block 1 of the embedded 4.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from npo_lib.errors import ConfigError
from npo_lib.objectives.catalog import Params, forget_term, hp, param_group, regularizer

if TYPE_CHECKING:
    from torch import Tensor

PAPER = "Li et al. 2024 (WMDP), arXiv:2403.03218"


def resolve_block(value: float, n_layers: int) -> int:
    """A whole number is a block index; a fraction f in (0, 1) is block round(f · n_layers)."""
    if float(value).is_integer():
        return int(value)
    return math.floor(value * n_layers + 0.5)


def _check_block(key: str, value: float) -> None:
    if value < 0:
        raise ConfigError(f"{key}: block {value:g} is negative; blocks count from 0")
    if not float(value).is_integer() and value > 1:
        raise ConfigError(
            f"{key}: {value:g} is neither a block index (a whole number) nor a fraction of "
            "num_hidden_layers (strictly between 0 and 1)"
        )


@param_group("rmu", "RMU and its retain term ACT (Li et al. 2024, WMDP): activations of block ℓ")
@dataclass
class RMUParams(Params):
    layer: float = hp(
        7 / 32,
        "RMU / ACT: decoder block ℓ (0-based, below the last) whose output activations they "
        "read; a fraction of num_hidden_layers when strictly between 0 and 1 (WMDP, "
        "open-unlearning: block 7 of 32 = 0.21875), else a block index",
        alias="rmu_layer",
    )
    steering_coeff: float = hp(
        20.0,
        "RMU steering coefficient c: forget activations are pushed towards c·u, u a fixed "
        "seeded random unit vector (open-unlearning: 20; WMDP: 6.5 for Zephyr-7B)",
        alias="rmu_steering_coeff",
        ge=0,
    )
    alpha: float = hp(
        1.0,
        "ACT weight α: α·(1/d)‖h_ℓ − h_ℓ^ref‖² on retain targets (WMDP: 1200 for Zephyr-7B)",
        alias="rmu_alpha",
        ge=0,
    )
    trainable_layers: list[float] = hp(
        [],
        "with RMU / ACT, only these decoder blocks train (block indices, or fractions of "
        "num_hidden_layers); [] = ℓ−2..ℓ (WMDP's 5, 6, 7 at ℓ = 7; open-unlearning)",
        alias="rmu_trainable_layers",
    )
    trainable_modules: list[str] = hp(
        ["mlp.down_proj"],
        "with RMU / ACT, only parameters under these submodules of the trainable blocks train "
        "([] = the whole blocks; WMDP, open-unlearning: mlp.down_proj)",
        alias="rmu_trainable_modules",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_block("rmu_layer", self.layer)
        for value in self.trainable_layers:
            _check_block("rmu_trainable_layers", value)

    def block(self, n_layers: int) -> int:
        """ℓ in a model of ``n_layers`` decoder blocks."""
        return resolve_block(self.layer, n_layers)

    def trainable_blocks(self, n_layers: int) -> list[int]:
        """The blocks that train: ``trainable_layers`` resolved, else ℓ−2..ℓ (WMDP's layer_ids
        5, 6, 7 for layer_id 7; open-unlearning's default the same)."""
        if self.trainable_layers:
            return sorted({resolve_block(v, n_layers) for v in self.trainable_layers})
        ell = self.block(n_layers)
        return list(range(max(0, ell - 2), ell + 1))


@forget_term(
    "RMU",
    needs=("control_vec",),
    params=RMUParams,
    reads="hidden",
    doc="mean_i (1/|T_i|) Σ_t (1/d) ‖h_ℓ,it − c·u‖², h_ℓ after block rmu_layer, "
    "c = rmu_steering_coeff",
    paper=PAPER,
)
def rmu_loss(hidden: Tensor, labels: Tensor, control_vec: Tensor, steering_coeff: float) -> Tensor:
    """RMU's forget term: push the layer-ℓ activations of the forget targets towards c·u.

    ``hidden`` is ``(B, T, d)``, the residual stream after decoder block ℓ; ``control_vec`` the
    fixed unit vector u ``(d,)``; c = ``steering_coeff``. Positions: each example's target tokens
    (open-unlearning); WMDP's own code averages over every position of plain-text documents,
    which for question-answer data would also scramble the prompt's activations.
    """
    from npo_lib.objectives.primitives import check_shape, masked_activation_mse

    check_shape("control_vec", control_vec, (hidden.shape[-1],))
    # RMU = mean_i (1/|T_i|) Σ_{t∈T_i} (1/d) ‖h_ℓ,it − c·u‖²
    return masked_activation_mse(hidden, steering_coeff * control_vec, labels)


@regularizer(
    "ACT",
    needs=("ref_hidden",),
    params=RMUParams,
    reads="hidden",
    doc="α mean_i (1/|T_i|) Σ_t (1/d) ‖h_ℓ,it − h^ref_ℓ,it‖² (RMU's retain term), α = rmu_alpha",
    paper=PAPER,
)
def act_loss(hidden: Tensor, labels: Tensor, ref_hidden: Tensor, alpha: float) -> Tensor:
    """ACT, RMU's retain term: keep the layer-ℓ activations of retain targets at the frozen model's.

    ``hidden`` and ``ref_hidden`` are ``(B, T, d)`` on the retain batch; α weighs it against
    RMU's forget term as in the paper (open-unlearning's ``retain_loss_type: EMBED_DIFF``).
    """
    from npo_lib.objectives.primitives import check_shape, masked_activation_mse

    check_shape("ref_hidden", ref_hidden, tuple(hidden.shape))
    # ACT = α · mean_i (1/|T_i|) Σ_{t∈T_i} (1/d) ‖h_ℓ,it − h^ref_ℓ,it‖²
    return alpha * masked_activation_mse(hidden, ref_hidden, labels)
