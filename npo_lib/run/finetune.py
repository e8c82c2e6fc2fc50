"""Supervised fine-tuning (FINETUNE = CE of view 1) through HF ``Trainer``, with a stop criterion.

This is how ``npo prepare`` makes the embedded target and retain models: the same code path a
researcher would use to fine-tune a hub model on TOFU before unlearning it.

Memorisation is not left to a fixed epoch count: the learning rate decays linearly over an epoch
*budget*, and every ``check_every`` epochs :class:`RecallStop` decodes the check sets greedily and
stops training once every set's fact recall has reached its bar (for ``patience`` checks in a
row). Other CPUs round differently and so memorise at a different epoch; the criterion, not the
epoch, is what stays the same. The run is deterministic for a given machine, thread count and
seed: the checks only decode (no dropout, no random draws), so they do not change training.
"""

from __future__ import annotations

import inspect
import math
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, Trainer, TrainerCallback, TrainingArguments

from npo_lib.data.dataset import ViewCollator
from npo_lib.eval.generation import greedy_fact_recall


def group_by_length_kwargs() -> dict:
    """Batches of similar length pad less (seeded, still shuffled); the argument's name changed
    in transformers 5 (``train_sampling_strategy``) from 4.x (``group_by_length``)."""
    if "train_sampling_strategy" in inspect.signature(TrainingArguments.__init__).parameters:
        return {"train_sampling_strategy": "group_by_length"}
    return {"group_by_length": True}


@dataclass(frozen=True)
class RecallBar:
    """Greedy fact recall of ``records`` must reach ``minimum`` (records carry ``fact``)."""

    name: str  # e.g. "forget" or "retain"
    records: Sequence[Mapping[str, Any]]
    minimum: float


@dataclass
class RecallCheck:
    epoch: int
    loss: float | None
    recall: dict[str, float]
    passed: bool


class RecallStop(TrainerCallback):
    """Every ``check_every`` epochs: greedy fact recall of each bar's records; stop training once
    all bars hold at ``patience`` consecutive checks. ``history`` keeps every check."""

    def __init__(self, bars: Sequence[RecallBar], tokenizer: Any, tags: Any, *, check_every: int = 2,
                 patience: int = 1, max_new_tokens: int = 96, progress: bool = True) -> None:
        if check_every < 1 or patience < 1:
            raise ValueError(f"check_every and patience must be >= 1, got {check_every}, {patience}")
        self.bars, self.tokenizer, self.tags = list(bars), tokenizer, tags
        self.check_every, self.patience, self.max_new_tokens = check_every, patience, max_new_tokens
        self.progress = progress
        self.history: list[RecallCheck] = []
        self.stopped_epoch: int | None = None

    def measure(self, model: PreTrainedModel) -> tuple[dict[str, float], bool]:
        """Recall of each bar's records in order, up to the first bar that fails (the rest
        cannot change the verdict, and decoding is most of a check's cost)."""
        recall: dict[str, float] = {}
        for b in self.bars:
            recall[b.name] = greedy_fact_recall(model, self.tokenizer, b.records, self.tags, max_new_tokens=self.max_new_tokens)
            if recall[b.name] < b.minimum:
                return recall, False
        return recall, True

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        epoch = round(state.epoch or 0)
        if epoch % self.check_every:
            return
        recall, passed = self.measure(model)
        losses = [r["loss"] for r in state.log_history if "loss" in r]
        self.history.append(RecallCheck(epoch, losses[-1] if losses else None, recall, passed))
        if self.progress:
            shown = ", ".join(f"{b.name} {recall[b.name]:.1%} (bar {b.minimum:.1%})" for b in self.bars if b.name in recall)
            print(f"  epoch {epoch}: fact recall {shown}{' -> bars met' if passed else ''}", flush=True)
        streak = 0
        for check in reversed(self.history):
            if not check.passed:
                break
            streak += 1
        if streak >= self.patience:
            self.stopped_epoch = epoch
            control.should_training_stop = True


@dataclass
class FinetuneResult:
    steps: int
    epochs: int  # epochs trained (the budget, or fewer when the stop criterion was met)
    train_loss: float  # mean training loss over the run
    seconds: float
    tokens_per_second: float
    stopped_early: bool = False  # the stop criterion was met within the budget
    checks: list[dict[str, Any]] = field(default_factory=list)  # RecallStop history


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
    stop: RecallStop | None = None,
    output_dir: str | Path | None = None,
    desc: str = "finetune",
    progress: bool = True,
) -> FinetuneResult:
    """Minimise the mean target-token NLL of ``examples`` (encoded views: input_ids, labels).

    AdamW with linear decay to 0 over ``epochs`` (the budget) after ``warmup_fraction`` of its
    steps; with ``stop`` training ends at the first epoch where its criterion holds. No
    checkpoints are written (the caller saves the model).
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
            disable_tqdm=not progress,
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=list(examples),
            data_collator=ViewCollator(pad_token_id=pad_token_id),
            callbacks=[stop] if stop is not None else None,
        )
        out = trainer.train()
    secs = out.metrics["train_runtime"]
    trained = round(trainer.state.epoch or epochs)
    n_tokens = sum(len(e["input_ids"]) for e in examples) * trained
    return FinetuneResult(
        steps=out.global_step,
        epochs=trained,
        train_loss=float(out.training_loss),
        seconds=secs,
        tokens_per_second=n_tokens / max(secs, 1e-9),
        stopped_early=stop is not None and stop.stopped_epoch is not None,
        checks=[vars(c) for c in stop.history] if stop is not None else [],
    )
