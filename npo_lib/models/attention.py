"""Attention and RMSNorm computed in the model's own dtype, for exact derivatives.

HF's eager softmax and its Llama / Qwen / Mistral RMSNorm round through float32, which caps a
float64 model at ~1e-7 relative error, and PyTorch's fused SDPA kernel has no forward-mode
derivative. Token influence (a JVP per row, float64 exactness checks) loads models with
:func:`register_precise_attention` and :func:`precise_norms`.
"""

from __future__ import annotations

import types
from typing import Any

import torch
from torch import Tensor, nn

PRECISE_ATTENTION = "npo_eager"  # attn_implementation name of :func:`precise_eager_attention`


def precise_eager_attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[Tensor, Tensor]:
    """HF's eager attention with the softmax in the input dtype.

    Why: HF's eager softmax runs in float32, which caps a float64 model at ~1e-7 relative error
    (and a float64 finite difference at ~1e-3); the fused SDPA kernel has no forward-mode
    derivative at all. Plain matmuls and softmax give exact float64 and a JVP. Query
    ``(B, H, T, d)``, key / value ``(B, H_kv, S, d)`` (grouped heads repeated).
    """
    n_rep = query.shape[1] // key.shape[1]
    if n_rep > 1:
        key, value = (
            key.repeat_interleave(n_rep, dim=1),
            value.repeat_interleave(n_rep, dim=1),
        )  # (B, H, S, d)
    weights = _scale(query @ key.transpose(2, 3), scaling)  # (B, H, T, S)
    if attention_mask is not None:
        weights = weights + attention_mask[..., : key.shape[-2]]
    weights = weights.softmax(-1)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    return (weights @ value).transpose(1, 2).contiguous(), weights  # (B, T, H, d)


def _scale(x: Tensor, c: float) -> Tensor:
    """x · c through ``aten.mul.Scalar``. Why: ``x * c`` wraps c as a tensor without tangent, and
    forward AD then adds a zero tangent through a slow Python path (~1 ms per op on CPU)."""
    return torch.ops.aten.mul.Scalar(x, c)


def _rms_norm(self: nn.Module, hidden: Tensor) -> Tensor:
    # x / sqrt(mean(x²) + ε) · w, in the input dtype (HF: in float32, then cast back); + ε as a
    # Scalar op for forward AD's sake (see _scale)
    var = torch.ops.aten.add.Scalar(hidden.pow(2).mean(-1, keepdim=True), self.variance_epsilon)
    return self.weight * (hidden * torch.rsqrt(var))


def precise_norms(model: nn.Module) -> int:
    """Compute this model's RMSNorm layers in their input dtype; returns how many were changed.

    Why: HF's Llama / Qwen / Mistral RMSNorm casts to float32 and back, which rounds a float64
    forward at ~1e-7 (a float64 finite difference then errs ~1e-3). Same maths otherwise; a
    float32 model is unchanged. Only this instance is changed (nothing is patched globally).
    """
    changed = 0
    for m in model.modules():
        if (
            type(m).__name__.endswith("RMSNorm")
            and hasattr(m, "variance_epsilon")
            and isinstance(getattr(m, "weight", None), Tensor)
        ):
            m.forward = types.MethodType(_rms_norm, m)
            changed += 1
    return changed


def register_precise_attention() -> str:
    """Make ``attn_implementation="npo_eager"`` loadable (attention and its additive mask)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(PRECISE_ATTENTION, precise_eager_attention)
    AttentionMaskInterface.register(PRECISE_ATTENTION, eager_mask)
    return PRECISE_ATTENTION
