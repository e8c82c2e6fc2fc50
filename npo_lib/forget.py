"""Unlearning runs: ``npo forget ...`` and the seed's ``python -m npo_lib.forget key=value ...``.

A run folder holds the resolved ``config.yaml``, the cached reference log-probs
(``ref_logprobs.safetensors``), ``checkpoints/``, the per-step ``log.jsonl``, the final model
(``model/``, or ``adapter/`` and optionally ``model/`` merged under LoRA) and ``result.json``
once finished. A finished folder is never overwritten without ``overwrite=true``;
``resume=true`` continues an interrupted one from its last checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from npo_lib.config import Config, ConfigError, save_config, validate

if TYPE_CHECKING:
    from npo_lib.losses import LossSpec

RESULT_FILE = "result.json"
REF_FILE = "ref_logprobs.safetensors"


def run_name(cfg: Config) -> str:
    """Folder name from the parameters a sweep varies."""
    task = "all" if cfg.task_id is None else cfg.task_id
    lora = f"-lora{cfg.LoRA.r}" if cfg.LoRA.r else ""
    return f"{cfg.model_family}-{cfg.forget_loss}-{cfg.split}-task{task}-lr{cfg.lr:g}-ep{cfg.num_epochs}{lora}-seed{cfg.seed}"


def run_dir(cfg: Config) -> Path:
    return Path(cfg.save_dir) if cfg.save_dir else Path("runs") / run_name(cfg)


def influence_files(cfg: Config) -> Path:
    """Where INFLUENCE reads its token scores (``influence_dir`` or the run's sibling folder)."""
    return Path(cfg.influence_dir) if cfg.influence_dir else run_dir(cfg).parent / "influence"


def check_forget_config(cfg: Config) -> tuple[Path, LossSpec]:
    """Every check that needs no model: the config's values (loss name included, also for a
    ``Config`` built in code), INFLUENCE inputs, the run folder's state. Returns the run folder
    and the parsed loss."""
    from npo_lib.losses import parse_loss

    validate(cfg)
    spec = parse_loss(cfg.forget_loss)
    if "token_weights" in spec.needs:
        scores = influence_files(cfg) / "scores.safetensors"
        if not scores.is_file():
            raise ConfigError(
                f"forget_loss={cfg.forget_loss} needs token influence scores: expected {scores}. "
                "Make them with `npo influence` (same model, data_path, split, task_id) "
                "or point influence_dir=... at a folder holding scores.safetensors"
            )
    out = run_dir(cfg)
    if (out / RESULT_FILE).is_file() and not cfg.overwrite:
        raise ConfigError(f"run folder {out} holds a finished run: pass overwrite=true to replace it, or another save_dir")
    if out.is_dir() and any(out.iterdir()) and not (cfg.resume or cfg.overwrite):
        raise ConfigError(f"run folder {out} holds an unfinished run: pass resume=true to continue it or overwrite=true to start again")
    return out, spec


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _is_rank0() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _data_fingerprint(dataset: Any, view: str) -> str:
    h = hashlib.sha256()
    for i in range(len(dataset)):
        h.update(json.dumps(dataset[i][view]["input_ids"]).encode())
        h.update(json.dumps(dataset[i][view]["labels"]).encode())
    return h.hexdigest()[:16]


def _training_arguments(cfg: Config, out: Path, n_examples: int, family_gc: bool):
    import torch
    from transformers import TrainingArguments

    cuda = torch.cuda.is_available()
    if _world_size() > 1 and cfg.ds_config:
        import deepspeed

        # ZeRO-3 partitions weights inside from_pretrained: DeepSpeed's process group must exist
        deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
    per_step = cfg.batch_size * cfg.gradient_accumulation_steps * _world_size()
    steps_per_epoch = max(1, math.ceil(n_examples / per_step))
    return TrainingArguments(
        output_dir=str(out / "checkpoints"),
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        num_train_epochs=cfg.num_epochs,
        learning_rate=cfg.lr,
        weight_decay=cfg.weight_decay,
        warmup_steps=int(cfg.warmup_epochs * steps_per_epoch),
        lr_scheduler_type="linear",
        logging_steps=cfg.logging_steps,
        save_strategy="steps" if cfg.save_steps else "epoch",
        save_steps=cfg.save_steps or 500,
        save_total_limit=2,
        report_to=[] if cfg.report_to == "none" else [cfg.report_to],
        seed=cfg.seed,
        data_seed=cfg.seed,
        use_cpu=not cuda,
        bf16=cuda and torch.cuda.is_bf16_supported(),
        gradient_checkpointing=family_gc if cfg.gradient_checkpointing is None else cfg.gradient_checkpointing,
        deepspeed=cfg.ds_config,
        ddp_backend="gloo" if not cuda and _world_size() > 1 else None,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=not _is_rank0(),
    )


def _apply_lora(cfg: Config, model):
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=cfg.LoRA.r,
        lora_alpha=cfg.LoRA.alpha,
        lora_dropout=cfg.LoRA.dropout,
        target_modules="all-linear",  # every nn.Linear except the output layer (peft's rule)
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def _reference_model(cfg: Config, path: str, trainer):
    """A frozen copy for KL; under ZeRO-3 wrapped in its own inference engine (sharded)."""
    from npo_lib.families import load_model

    ref = load_model(cfg, path, device="cuda" if trainer.args.device.type == "cuda" else "cpu")
    ref.eval().requires_grad_(False)
    if trainer.is_deepspeed_enabled:
        import deepspeed

        ds = json.loads(json.dumps(trainer.accelerator.state.deepspeed_plugin.deepspeed_config))
        if ds.get("zero_optimization", {}).get("stage") == 3:
            ds.pop("optimizer", None)
            ds.pop("scheduler", None)
            ref, *_ = deepspeed.initialize(model=ref, config=ds)
            ref.eval()
    return ref


def run_forget(cfg: Config, *, callbacks: Sequence[Any] = (), progress: bool = True) -> dict[str, Any]:
    """Unlearn ``cfg.split`` / ``cfg.task_id`` from the model with ``cfg.forget_loss``."""
    out, spec = check_forget_config(cfg)
    from npo_lib.data import UnlearningDataset, ViewCollator
    from npo_lib.embedded import resolve_data_path
    from npo_lib.families import get_family, load_model, load_tokenizer, resolve_model_path
    from npo_lib.losses import LossHyper
    from npo_lib.trainer import ReferenceLogprobs, UnlearningTrainer

    t0 = time.perf_counter()
    family = get_family(cfg.model_family)
    model_path = resolve_model_path(cfg)
    data_path = resolve_data_path(cfg)
    if cfg.overwrite and out.exists() and _is_rank0():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    if _is_rank0():
        save_config(cfg, out / "config.yaml")

    tokenizer = load_tokenizer(cfg, model_path)
    dataset = UnlearningDataset.from_files(
        data_path,
        cfg.split,
        cfg.task_id,
        tokenizer,
        family.tags,
        views=(spec.forget.view,),
        with_retain=bool(spec.regularizers),
        max_length=cfg.max_length,
        seed=cfg.seed,
    )
    args = _training_arguments(cfg, out, len(dataset), family.gradient_checkpointing)  # before the model: ZeRO-3 init
    model = load_model(cfg, model_path, device=args.device.type)
    if cfg.LoRA.r > 0:
        model = _apply_lora(cfg, model)
    if args.gradient_checkpointing:
        model.config.use_cache = False

    view = spec.forget.view
    fingerprint = hashlib.sha256(f"{model_path}|{_data_fingerprint(dataset, view)}|{view}|{cfg.LoRA.r}".encode()).hexdigest()[:16]
    reference = ReferenceLogprobs.load(out / REF_FILE, fingerprint)
    token_weights = None
    if "token_weights" in spec.needs:
        from npo_lib.influence import load_token_weights  # written by `npo influence`

        token_weights = load_token_weights(cfg, influence_files(cfg), dataset, view)

    trainer = UnlearningTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=ViewCollator(pad_token_id=tokenizer.pad_token_id),
        processing_class=tokenizer,
        callbacks=list(callbacks),
        loss_spec=spec,
        hyper=LossHyper.from_config(cfg),
        reference=reference,
        reference_fingerprint=fingerprint,
        reference_path=out / REF_FILE,
        token_weights=token_weights,
        log_file=out / "log.jsonl",
    )
    if "ref_logits" in spec.needs and cfg.LoRA.r == 0:
        trainer.ref_model = _reference_model(cfg, model_path, trainer)

    from transformers.trainer_utils import get_last_checkpoint

    ckpt_dir = Path(args.output_dir)
    resume_from = get_last_checkpoint(str(ckpt_dir)) if cfg.resume and ckpt_dir.is_dir() else None
    train_out = trainer.train(resume_from_checkpoint=resume_from)

    if cfg.LoRA.r > 0:
        if trainer.is_world_process_zero():
            trainer.model.save_pretrained(str(out / "adapter"))
            if cfg.save_merged:
                merged = trainer.accelerator.unwrap_model(trainer.model).merge_and_unload()
                merged.save_pretrained(str(out / "model"))
                tokenizer.save_pretrained(str(out / "model"))
    else:
        trainer.save_model(str(out / "model"))  # gathers ZeRO-3 shards
    result: dict[str, Any] = {
        "run_dir": str(out),
        "model_path": model_path,
        "data_path": data_path,
        "forget_loss": spec.name,
        "n_forget": len(dataset),
        "steps": train_out.global_step,
        "train_loss": float(train_out.training_loss),
        "seconds": time.perf_counter() - t0,
        "resumed_from": resume_from,
        "world_size": _world_size(),
        "rank": int(os.environ.get("RANK", 0)),
    }
    if trainer.is_world_process_zero():
        if "fact" in dataset.forget[0] and not trainer.is_deepspeed_enabled:
            result["fact_recall"] = quick_fact_recall(cfg, trainer.accelerator.unwrap_model(trainer.model), tokenizer, data_path)
        (out / RESULT_FILE).write_text(json.dumps(result, indent=2))
        if progress:
            print(json.dumps(result, indent=2))
    return result


def quick_fact_recall(cfg: Config, model, tokenizer, data_path: str) -> dict[str, float]:
    """Greedy-answer fact recall on the forget set and the retain-eval set (embedded data)."""
    from npo_lib.data import load_eval_set, load_forget
    from npo_lib.families import get_family
    from npo_lib.generation import greedy_fact_recall

    tags = get_family(cfg.model_family).tags
    sets = {"forget": load_forget(data_path, cfg.split, cfg.task_id), "retain": load_eval_set(data_path, "retain_perturbed")}
    return {name: greedy_fact_recall(model, tokenizer, records, tags) for name, records in sets.items()}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m npo_lib.forget [params.yaml ...] [key=value ...]`` (the seed scripts' form)."""
    from npo_lib.cli import main as cli_main

    return cli_main(["forget", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
