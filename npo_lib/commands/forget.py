"""Unlearning runs: ``npo forget ...`` and the seed's ``python -m npo_lib.forget key=value ...``.

A run folder holds the resolved ``config.yaml``, the cached reference log-probs
(``ref_logprobs.safetensors``), ``checkpoints/``, the per-step ``log.jsonl``, the final model
(``model/``, or ``adapter/`` and optionally ``model/`` merged under LoRA) and ``result.json``
once finished. A finished folder is never overwritten without ``overwrite=true``;
``resume=true`` continues an interrupted one from its last checkpoint.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from npo_lib.commands.checks import check_activation_layers, check_config
from npo_lib.commands.folders import (
    NOTEBOOKS_DIR,
    RESULT_FILE,
    check_run_folder,
    influence_files,
    run_dir,
)
from npo_lib.config import Config, save_config
from npo_lib.data.dataset import UnlearningDataset, ViewCollator
from npo_lib.data.sources import load_eval_set, load_forget
from npo_lib.embedded.paths import resolve_data_path, resolve_model_path
from npo_lib.eval.generation import greedy_fact_recall
from npo_lib.models.families import get_family
from npo_lib.models.loading import load_model, load_tokenizer
from npo_lib.models.lora import apply_lora
from npo_lib.objectives.registry import LossHyper, LossSpec
from npo_lib.training.arguments import TrainSettings, save_trained, training_arguments
from npo_lib.training.inputs import InputContext, check_inputs, prepare_inputs
from npo_lib.utils import dist
from npo_lib.utils.io import atomic_write_json


def check_forget_config(cfg: Config) -> tuple[Path, LossSpec]:
    """Every check that needs no model: the config's names and values, INFLUENCE's inputs, the
    run folder's state. Returns the run folder and the parsed objective."""
    spec = check_config(cfg)
    check_inputs(InputContext(cfg, spec, influence_dir=influence_files(cfg)))
    out = run_dir(cfg)
    check_run_folder(out, cfg)
    return out, spec


def reference_model(cfg: Config, path: str, trainer: Any):
    """A frozen copy for KL, UNDIAL and ACT; under ZeRO-3 wrapped in its own inference engine (sharded)."""
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


def build_trainer(
    cfg: Config,
    spec: LossSpec,
    out: Path,
    model_path: str,
    data_path: str,
    callbacks: Sequence[Any] = (),
):
    """(trainer, tokenizer, dataset) of a forget run: data, model (LoRA), cached reference,
    INFLUENCE's token weights, for KL / UNDIAL / ACT without LoRA a frozen reference model and,
    for RMU / ACT, only the chosen blocks trainable."""
    from npo_lib.training.trainer import UnlearningTrainer

    check_activation_layers(cfg, spec, model_path)
    family = get_family(cfg.model_family)
    tokenizer = load_tokenizer(cfg, model_path)
    view = spec.forget.view
    dataset = UnlearningDataset.from_files(
        data_path,
        cfg.split,
        cfg.task_id,
        tokenizer,
        family.tags,
        views=(view,),
        with_retain=bool(spec.regularizers),
        max_length=cfg.max_length,
        seed=cfg.seed,
    )
    args = training_arguments(
        cfg, out, len(dataset), family.gradient_checkpointing, TrainSettings.for_forget(cfg)
    )  # before the model: ZeRO-3 init
    model = load_model(cfg, model_path, device=args.device.type)
    if cfg.LoRA.r > 0:
        model = apply_lora(model, cfg.LoRA)
    if args.gradient_checkpointing:
        model.config.use_cache = False
    trainer = UnlearningTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=ViewCollator(pad_token_id=tokenizer.pad_token_id),
        processing_class=tokenizer,
        callbacks=list(callbacks),
        loss_spec=spec,
        hyper=LossHyper.from_config(cfg),
        log_file=out / "log.jsonl",
    )
    prepare_inputs(  # each input the terms need: the reference cache, token weights, RMU's block
        trainer,
        InputContext(
            cfg,
            spec,
            out,
            model_path,
            dataset,
            influence_files(cfg),
            lambda: reference_model(cfg, model_path, trainer),
        ),
    )
    return trainer, tokenizer, dataset


def run_forget(
    cfg: Config, *, callbacks: Sequence[Any] = (), progress: bool = True
) -> dict[str, Any]:
    """Unlearn ``cfg.split`` / ``cfg.task_id`` from the model with ``cfg.forget_loss``."""
    from transformers.trainer_utils import get_last_checkpoint

    out, spec = check_forget_config(cfg)
    t0 = time.perf_counter()
    model_path, data_path = resolve_model_path(cfg), resolve_data_path(cfg)
    if cfg.overwrite and out.exists() and dist.is_rank0():
        for item in (
            out.iterdir()
        ):  # notebooks/: the step runner's executed notebooks (this one being written)
            if item.name != NOTEBOOKS_DIR:
                shutil.rmtree(item) if item.is_dir() else item.unlink()
    out.mkdir(parents=True, exist_ok=True)
    if dist.is_rank0():
        save_config(cfg, out / "config.yaml")
    trainer, tokenizer, dataset = build_trainer(cfg, spec, out, model_path, data_path, callbacks)
    ckpt_dir = Path(trainer.args.output_dir)
    resume_from = get_last_checkpoint(str(ckpt_dir)) if cfg.resume and ckpt_dir.is_dir() else None
    train_out = trainer.train(resume_from_checkpoint=resume_from)
    save_trained(cfg, trainer, tokenizer, out)
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
        "world_size": dist.world_size(),
        "rank": dist.rank(),
    }
    if trainer.is_world_process_zero():
        if "fact" in dataset.forget[0] and not trainer.is_deepspeed_enabled:
            result["fact_recall"] = quick_fact_recall(
                cfg, trainer.accelerator.unwrap_model(trainer.model), tokenizer, data_path
            )
        atomic_write_json(out / RESULT_FILE, result)
        if progress:
            print(json.dumps(result, indent=2))
    return result


def quick_fact_recall(cfg: Config, model: Any, tokenizer: Any, data_path: str) -> dict[str, float]:
    """Greedy-answer fact recall on the forget set and the retain-eval set (embedded data)."""
    tags = get_family(cfg.model_family).tags
    sets = {
        "forget": load_forget(data_path, cfg.split, cfg.task_id),
        "retain": load_eval_set(data_path, "retain_perturbed"),
    }
    return {
        name: greedy_fact_recall(model, tokenizer, records, tags) for name, records in sets.items()
    }
