"""Supervised fine-tuning (FINETUNE = CE of view 1) through HF ``Trainer``.

This is how ``npo prepare`` makes the embedded target and retain models: the same code path a
researcher would use to fine-tune a hub model on TOFU before unlearning it.
"""

from __future__ import annotations

import inspect
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel, Trainer, TrainingArguments

from npo_lib.data import ViewCollator


def group_by_length_kwargs() -> dict:
    """Batches of similar length pad less (seeded, still shuffled); the argument's name changed
    in transformers 5 (``train_sampling_strategy``) from 4.x (``group_by_length``)."""
    if "train_sampling_strategy" in inspect.signature(TrainingArguments.__init__).parameters:
        return {"train_sampling_strategy": "group_by_length"}
    return {"group_by_length": True}


@dataclass
class FinetuneResult:
    steps: int
    final_loss: float
    seconds: float
    tokens_per_second: float


def finetune(
    model: PreTrainedModel,
    examples: Sequence[dict],
    *,
    pad_token_id: int,
    lr: float,
    epochs: int,
    batch_size: int,
    seed: int,
    weight_decay: float = 0.0,
    warmup_fraction: float = 0.05,
    output_dir: str | Path | None = None,
    desc: str = "finetune",
) -> FinetuneResult:
    """Minimise the mean target-token NLL of ``examples`` (encoded views: input_ids, labels).

    AdamW with linear decay after ``warmup_fraction`` of the steps; no checkpoints are written
    (the caller saves the model), progress is shown by the Trainer's bar.
    """
    steps = epochs * math.ceil(len(examples) / batch_size)
    with tempfile.TemporaryDirectory(prefix=f"tnpo-{desc}-") as tmp:
        args = TrainingArguments(
            output_dir=str(output_dir or tmp),
            per_device_train_batch_size=batch_size,
            num_train_epochs=epochs,
            learning_rate=lr,
            weight_decay=weight_decay,
            warmup_steps=max(1, int(warmup_fraction * steps)),
            lr_scheduler_type="linear",
            save_strategy="no",
            logging_strategy="epoch",
            report_to=[],
            seed=seed,
            data_seed=seed,
            use_cpu=not torch.cuda.is_available(),
            bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
            remove_unused_columns=False,
            **group_by_length_kwargs(),
            dataloader_num_workers=0,
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=list(examples),
            data_collator=ViewCollator(pad_token_id=pad_token_id),
        )
        out = trainer.train()
    secs = out.metrics["train_runtime"]
    n_tokens = sum(len(e["input_ids"]) for e in examples) * epochs
    return FinetuneResult(steps=out.global_step, final_loss=float(out.training_loss), seconds=secs, tokens_per_second=n_tokens / max(secs, 1e-9))
