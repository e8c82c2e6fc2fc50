"""What a forget run and a fine-tuning run share: the HF ``TrainingArguments`` of their numbers,
the DeepSpeed process group, and how the trained weights are saved (model, adapter, merged)."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from npo_lib.config import Config
from npo_lib.errors import ConfigError
from npo_lib.utils import dist


@dataclass(frozen=True)
class TrainSettings:
    """The optimisation numbers of one run (from the config's top level or its ``finetune``
    group)."""

    lr: float
    num_epochs: int
    batch_size: int
    gradient_accumulation_steps: int
    warmup_epochs: float
    weight_decay: float
    seed: int
    max_steps: int = 0  # > 0: stop after this many optimizer steps (decay over them)

    @classmethod
    def for_forget(cls, cfg: Config) -> TrainSettings:
        return cls(
            cfg.lr,
            cfg.num_epochs,
            cfg.batch_size,
            cfg.gradient_accumulation_steps,
            cfg.warmup_epochs,
            cfg.weight_decay,
            cfg.seed,
            cfg.max_steps,
        )

    @classmethod
    def for_finetune(cls, cfg: Config) -> TrainSettings:
        """``finetune.*``; the accumulation makes ``effective_batch_size`` over every rank."""
        ft = cfg.finetune
        accumulate = max(
            1, math.ceil(ft.effective_batch_size / (ft.batch_size * dist.world_size()))
        )
        return cls(
            ft.lr,
            ft.num_epochs,
            ft.batch_size,
            accumulate,
            ft.warmup_epochs,
            ft.weight_decay,
            cfg.seed,
        )


def training_arguments(
    cfg: Config,
    out: Path,
    n_examples: int,
    family_gc: bool,
    s: TrainSettings,
    *,
    group_by_length: bool = False,
):
    """HF ``TrainingArguments``: AdamW, linear warm-up then decay, a checkpoint every epoch (or
    every ``save_steps``), bf16 on a GPU that has it, gloo between CPU ranks. Under ZeRO-3 the
    DeepSpeed process group is started first: ``from_pretrained`` partitions the weights.
    ``group_by_length`` (plain examples only): batches of similar length."""
    import torch
    from transformers import TrainingArguments

    cuda = torch.cuda.is_available()
    if dist.world_size() > 1 and cfg.ds_config:
        import deepspeed

        deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
    steps_per_epoch = max(
        1,
        math.ceil(n_examples / (s.batch_size * s.gradient_accumulation_steps * dist.world_size())),
    )
    return TrainingArguments(
        output_dir=str(out / "checkpoints"),
        per_device_train_batch_size=s.batch_size,
        gradient_accumulation_steps=s.gradient_accumulation_steps,
        num_train_epochs=s.num_epochs,
        max_steps=s.max_steps or -1,
        learning_rate=s.lr,
        weight_decay=s.weight_decay,
        warmup_steps=int(s.warmup_epochs * steps_per_epoch),
        lr_scheduler_type="linear",
        logging_steps=cfg.logging_steps,
        save_strategy="steps" if cfg.save_steps else "epoch",
        save_steps=cfg.save_steps or 500,
        save_total_limit=2,
        report_to=[] if cfg.report_to == "none" else [cfg.report_to],
        seed=s.seed,
        data_seed=s.seed,
        use_cpu=not cuda,
        bf16=cuda and torch.cuda.is_bf16_supported(),
        gradient_checkpointing=family_gc
        if cfg.gradient_checkpointing is None
        else cfg.gradient_checkpointing,
        deepspeed=cfg.ds_config,
        ddp_backend="gloo" if not cuda and dist.world_size() > 1 else None,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=not dist.is_rank0(),
        **(group_by_length_kwargs() if group_by_length else {}),
    )


_BLOCK_PARAM = re.compile(
    r"(?:^|\.)layers\.(\d+)\.(.+)$"
)  # "...layers.<i>.<path inside the block>"


def train_only_blocks(model: Any, blocks: Sequence[int], modules: Sequence[str]) -> list[str]:
    """Freeze every parameter outside decoder ``blocks`` and, when ``modules`` is not empty,
    outside those submodules of them (``mlp.down_proj``); returns the names that still train.

    Names are matched as ``...layers.<i>.<module>...``, so the HF decoder stack is found under
    peft too (LoRA's ``lora_A`` / ``lora_B`` of the chosen modules keep training, the base
    weights stay frozen). WMDP trains only ``mlp.down_proj`` of blocks ℓ−2..ℓ (its ``param_ids``
    6); open-unlearning matches the same parameters by regular expression.
    """
    kept: list[str] = []
    for name, p in model.named_parameters():
        m = _BLOCK_PARAM.search(name)
        inside = (
            m is not None
            and int(m.group(1)) in blocks
            and (
                not modules
                or any(m.group(2) == mod or m.group(2).startswith(mod + ".") for mod in modules)
            )
        )
        if not inside:
            p.requires_grad_(False)
        elif p.requires_grad:
            kept.append(name)
    if not kept:
        raise ConfigError(
            f"rmu_trainable_layers={list(blocks)} / rmu_trainable_modules={list(modules)} leave "
            f"no parameter to train"
        )
    return kept


def group_by_length_kwargs() -> dict:
    """Batches of similar length pad less (seeded, still shuffled); the argument's name changed
    in transformers 5 (``train_sampling_strategy``) from 4.x (``group_by_length``)."""
    import inspect

    from transformers import TrainingArguments

    if "train_sampling_strategy" in inspect.signature(TrainingArguments.__init__).parameters:
        return {"train_sampling_strategy": "group_by_length"}
    return {"group_by_length": True}


def save_trained(cfg: Config, trainer: Any, tokenizer: Any, out: Path) -> Path | None:
    """``model/`` (full fine-tuning; ZeRO-3 shards gathered), or ``adapter/`` plus, with
    ``save_merged``, the merged ``model/`` under LoRA. Returns the model folder (None: adapter
    only)."""
    if cfg.LoRA.r == 0:
        trainer.save_model(str(out / "model"))
        return out / "model"
    if trainer.is_world_process_zero():
        trainer.model.save_pretrained(str(out / "adapter"))
        tokenizer.save_pretrained(str(out / "adapter"))
        if cfg.save_merged:
            merged = trainer.accelerator.unwrap_model(trainer.model).merge_and_unload()
            merged.save_pretrained(str(out / "model"))
            tokenizer.save_pretrained(str(out / "model"))
    return out / "model" if cfg.save_merged else None


def end_partitioned_loading() -> None:
    """After training: later ``from_pretrained`` calls on this rank load a whole model.

    Under ZeRO-3, ``TrainingArguments`` registers its DeepSpeed config with transformers, and
    every later ``from_pretrained`` partitions the weights across ranks (``zero.Init``); a
    model that only rank 0 then runs (the memorisation report) would wait for the other ranks
    forever. Unregistering it makes the saved model load whole.
    """
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
