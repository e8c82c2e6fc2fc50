"""UNDIAL (Dong et al. 2024, arXiv:2402.10052): self-distillation towards the frozen model with
the target token's logit lowered by β (open-unlearning's ``compute_undial_loss``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from npo_lib.objectives.catalog import Params, forget_term, hp, param_group

if TYPE_CHECKING:
    from torch import Tensor


@param_group("undial", "UNDIAL (Dong et al. 2024): distillation from an adjusted teacher")
@dataclass
class UNDIALParams(Params):
    beta: float = hp(
        10.0,
        "UNDIAL logit reduction β (Dong et al. 2024 search 3, 10, 30)",
        alias="undial_beta",
        ge=0,
    )


@forget_term(
    "UNDIAL",
    needs=("ref_forget_logits",),
    params=UNDIALParams,
    doc="mean_it CE(softmax(z_ref - β e_y), p_θ), the frozen model's logits, β = undial_beta",
    paper="Dong et al. 2024, arXiv:2402.10052",
)
def undial_loss(logits: Tensor, labels: Tensor, ref_forget_logits: Tensor, beta: float) -> Tensor:
    """UNDIAL: self-distillation towards the frozen model, the target token's logit lowered by β.

    The teacher is the reference distribution with the label's logit reduced by β, so the
    student keeps everything the reference knows except the confidence in the forget token.
    """
    import torch
    import torch.nn.functional as F

    from npo_lib.data.views import IGNORE_INDEX
    from npo_lib.objectives.primitives import check_shape, upcast

    check_shape("ref_forget_logits", ref_forget_logits, tuple(logits.shape))
    V = logits.shape[-1]
    target = labels[:, 1:]  # (B, T-1)
    mask = (target != IGNORE_INDEX).to(torch.promote_types(logits.dtype, torch.float32))
    one_hot = F.one_hot(target.clamp_min(0), V).to(mask)  # (B, T-1, V), masked rows ignored
    ref = upcast(ref_forget_logits[:, :-1].detach()).to(mask)  # (B, T-1, V)  z_ref
    teacher = (ref - beta * one_hot).softmax(-1)  # (B, T-1, V)
    logq = upcast(logits[:, :-1]).log_softmax(-1)  # (B, T-1, V)
    ce_t = -(teacher * logq).sum(-1)  # (B, T-1)
    # UNDIAL = mean_it CE(softmax(z_ref,it − β·e_{y_it}), p_θ,it) over the target tokens
    return (ce_t * mask).sum() / mask.sum().clamp_min(1)
