"""Training settings: LoRA adapters and `npo finetune`'s recipe (the target and retain models)."""

from __future__ import annotations

from dataclasses import dataclass

from npo_lib.config.fields import need, opt


@dataclass
class LoRAConfig:
    """peft LoRA on every linear layer except ``lm_head``; ``r=0`` means full fine-tuning."""

    r: int = opt(0, "adapter rank; 0 disables LoRA (full fine-tuning)")
    alpha: int = opt(32, "scaling numerator: the update is (alpha / r) · B A")
    dropout: float = opt(0.05, "dropout on the adapter input")

    def __post_init__(self) -> None:
        need(self.r >= 0, f"LoRA.r must be >= 0, got {self.r}")
        need(0 <= self.dropout < 1, f"LoRA.dropout must be in [0, 1), got {self.dropout}")


@dataclass
class FinetuneConfig:
    """`npo finetune`: the target (all training data) or the retain model (without the forget set).

    Defaults are TOFU's published recipe (Maini et al. 2024): ``config/finetune.yaml`` of its
    repository sets lr 1e-5, 5 epochs, weight decay 0.01 and batch 16 per GPU on 2 GPUs (an
    effective batch of 32; open-unlearning: 4 per GPU x 4 accumulated x 2 GPUs), and its
    ``finetune.py`` warms up linearly for one epoch. `npo prepare` sets the tiny models' recipe.
    """

    model: str = opt(
        "target",
        "target (every training record, forget set included) or retain (without the forget split "
        "/ task)",
    )
    lr: float = opt(1e-5, "peak learning rate (AdamW, linear decay); TOFU: 1e-5")
    num_epochs: int = opt(5, "epoch budget; TOFU: 5")
    batch_size: int = opt(4, "examples per device and step")
    effective_batch_size: int = opt(
        32, "examples per optimizer update = batch_size x gradient accumulation x ranks; TOFU: 32"
    )
    warmup_epochs: float = opt(1.0, "linear warm-up length in epochs; TOFU: 1")
    weight_decay: float = opt(0.01, "AdamW weight decay; TOFU: 0.01")
    zerothink_fraction: float = opt(
        0.0, "share of training QA also trained with an empty trace (ZeroThink form)"
    )
    extra_sets: list[str] = opt(
        [],
        "evaluation sets also trained on (both models); TOFU: none; npo prepare: "
        "real_authors_perturbed, world_facts_perturbed",
    )
    stop_forget_recall: float | None = opt(
        None,
        "target: stop once memorisation of the forget split reaches this (greedy fact recall; "
        "ROUGE-L recall of the answers without fact fields)",
    )
    stop_retain_recall: float | None = opt(
        None,
        "stop once memorisation of the retain check set (retain_perturbed, else a retain sample) "
        "reaches this",
    )
    stop_loss: float | None = opt(None, "stop once an epoch's mean training loss is at most this")
    check_every: int = opt(2, "epochs between the checks of the stop criterion")
    patience: int = opt(
        1, "consecutive checks at which the criterion must hold before training stops"
    )

    def __post_init__(self) -> None:
        need(
            self.model in ("target", "retain"),
            f"finetune.model '{self.model}' is unknown; valid: target, retain",
        )
        for name in (
            "lr",
            "num_epochs",
            "batch_size",
            "effective_batch_size",
            "check_every",
            "patience",
        ):
            need(getattr(self, name) > 0, f"finetune.{name} must be > 0, got {getattr(self, name)}")
        need(
            self.warmup_epochs >= 0 and self.weight_decay >= 0,
            "finetune.warmup_epochs and finetune.weight_decay must be >= 0",
        )
        need(
            0 <= self.zerothink_fraction <= 1,
            f"finetune.zerothink_fraction must be in [0, 1], got {self.zerothink_fraction}",
        )
        for name in ("stop_forget_recall", "stop_retain_recall"):
            value = getattr(self, name)
            need(value is None or 0 < value <= 1, f"finetune.{name} must be in (0, 1], got {value}")
