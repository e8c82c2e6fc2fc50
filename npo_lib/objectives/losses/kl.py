"""The KL regularizer (TOFU, Maini et al. 2024): stay close to the frozen model on retain data."""

from __future__ import annotations

from typing import TYPE_CHECKING

from npo_lib.objectives.catalog import regularizer

if TYPE_CHECKING:
    from torch import Tensor


@regularizer(
    "KL",
    needs=("ref_logits",),
    doc="Σ_v p_ref (log p_ref - log p_θ), mean over retain target tokens",
    paper="Maini et al. 2024 (TOFU), arXiv:2401.06121",
)
def kl_loss(logits: Tensor, labels: Tensor, ref_logits: Tensor) -> Tensor:
    """KL(p_ref ‖ p_θ) per position, averaged over the target tokens of the shifted labels.

    open-unlearning and R-TOFU average over every position (prompt and padding included,
    ``kl_div(..., reduction="batchmean")`` on flattened tokens), so their values differ: on a
    padded batch of the embedded benchmark theirs were 5x larger (padding positions enter).
    """
    import torch.nn.functional as F

    from npo_lib.data.views import IGNORE_INDEX
    from npo_lib.objectives.primitives import check_shape, upcast

    check_shape("ref_logits", ref_logits, tuple(logits.shape))
    logq = upcast(logits[:, :-1]).log_softmax(-1)  # (B, T-1, V)  log p_θ
    logp = upcast(ref_logits[:, :-1].detach()).to(logq).log_softmax(-1)  # (B, T-1, V)  log p_ref
    mask = (labels[:, 1:] != IGNORE_INDEX).to(logq.dtype)  # (B, T-1)
    kl = F.kl_div(logq, logp, reduction="none", log_target=True).sum(-1)  # (B, T-1)
    # KL = Σ_it m_it Σ_v p_ref(v) (log p_ref(v) - log p_θ(v)) / Σ_it m_it
    return (kl * mask).sum() / mask.sum().clamp_min(1)
