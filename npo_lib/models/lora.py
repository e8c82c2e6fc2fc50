"""LoRA adapters (Hu et al. 2021, arXiv:2106.09685) through peft, on every Linear but the output."""

from __future__ import annotations

from typing import Any

from npo_lib.config import LoRAConfig


def apply_lora(model: Any, lora: LoRAConfig) -> Any:
    """``model`` wrapped with adapters of rank ``lora.r``: W x + (alpha / r) · B A x."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules="all-linear",  # every nn.Linear except the output layer (peft's rule)
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)
