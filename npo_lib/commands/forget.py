"""Unlearning runs: ``npo forget ...`` and ``python -m npo_lib.forget key=value ...``.

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

from npo_lib.commands.checks import check_activation_layers
from npo_lib.commands.folders import NOTEBOOKS_DIR, RESULT_FILE, check_run_folder
from npo_lib.commands.resolve import Resolved, as_resolved
from npo_lib.config import Config, save_config
from npo_lib.data.dataset import UnlearningDataset, ViewCollator
from npo_lib.data.sources import load_eval_set, load_forget
from npo_lib.errors import ConfigError
from npo_lib.eval.generation import greedy_fact_recall
from npo_lib.influence.selection import needs_facts
from npo_lib.models.lora import apply_lora
from npo_lib.objectives.registry import LossHyper, LossSpec
from npo_lib.training.arguments import (
    TrainSettings,
    rmu_trainable_blocks,
    save_trained,
    train_only_blocks,
    training_arguments,
)
from npo_lib.utils import dist
from npo_lib.utils.hashing import fingerprint
from npo_lib.utils.io import atomic_write_json

REF_FILE = "ref_logprobs.safetensors"


def check_forget_config(run: Config | Resolved) -> Resolved:
    """Every check that needs no model: the config's names and values, INFLUENCE's inputs, the
    run folder's state. Returns the resolved run (its folder, objective, paths)."""
    res = as_resolved(run, "forget")
    check_loss_inputs(res.cfg, res.spec, res.require_data(), res.influence_dir)
    check_run_folder(res.run_dir, res.cfg)
    return res


def check_loss_inputs(cfg: Config, spec: LossSpec, data_path: str, influence_dir: Path) -> None:
    """The inputs the objective reads besides the model and data exist (INFLUENCE's scores; the
    fact spans an oracle selection reads)."""
    if "token_weights" in spec.needs and needs_facts(cfg.selection):
        forget = load_forget(data_path, cfg.split, cfg.task_id)
        missing = next((i for i, r in enumerate(forget) if not r.get("fact_spans")), None)
        if missing is not None:
            raise ConfigError(
                f"selection.method=oracle needs fact_spans, which forget record {missing} of "
                f"{data_path} lacks (the embedded benchmark marks its fact tokens; "
                "public benchmarks do not): choose another selection.method"
            )
    if "token_weights" in spec.needs:
        scores = influence_dir / "scores.safetensors"
        if not scores.is_file():
            raise ConfigError(
                f"forget_loss={cfg.forget_loss} needs token influence scores: expected {scores}. "
                "Make them with `npo influence` (same model, data_path, split, task_id) "
                "or point influence_dir=... at a folder holding scores.safetensors"
            )


def reference_model(res: Resolved, path: str, trainer: Any):
    """A frozen copy for KL, UNDIAL and ACT; under ZeRO-3 wrapped in its own inference engine
    (sharded)."""
    device = "cuda" if trainer.args.device.type == "cuda" else "cpu"
    ref = res.loader.model(path, device=device)
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


def forget_dataset(res: Resolved, tokenizer: Any) -> UnlearningDataset:
    """The forget split / task in the objective's view, with retain examples when a
    regularizer reads them."""
    cfg = res.cfg
    return UnlearningDataset.from_files(
        res.require_data(),
        cfg.split,
        cfg.task_id,
        tokenizer,
        res.tags,
        views=(res.spec.forget.view,),
        with_retain=bool(res.spec.regularizers),
        max_length=cfg.max_length,
        seed=cfg.seed,
    )


def trained_model(res: Resolved, device: str, gradient_checkpointing: bool) -> Any:
    """The model that trains: LoRA adapters when asked, for RMU / ACT only the chosen blocks."""
    cfg = res.cfg
    model = res.loader.model(res.require_model(), device=device)
    if cfg.LoRA.r > 0:
        model = apply_lora(model, cfg.LoRA)
    if res.spec.reads_hidden:  # RMU: only some blocks train (GD / KL then train the same ones)
        train_only_blocks(model, rmu_trainable_blocks(cfg), cfg.rmu_trainable_modules)
    if gradient_checkpointing:
        model.config.use_cache = False
    return model


def build_trainer(res: Resolved, callbacks: Sequence[Any] = ()):
    """(trainer, tokenizer, dataset) of a forget run: data, model (LoRA), cached reference,
    INFLUENCE's token weights, for KL / UNDIAL / ACT without LoRA a frozen reference model and,
    for RMU / ACT, only the chosen blocks trainable."""
    from npo_lib.influence.files import load_token_weights
    from npo_lib.objectives.reference import ReferenceLogprobs
    from npo_lib.training.trainer import UnlearningTrainer

    cfg, spec, out, model_path = res.cfg, res.spec, res.run_dir, res.require_model()
    check_activation_layers(cfg, spec, model_path)
    tokenizer = res.loader.tokenizer(model_path)
    view = spec.forget.view
    dataset = forget_dataset(res, tokenizer)
    args = training_arguments(
        cfg, out, len(dataset), res.family.gradient_checkpointing, TrainSettings.for_forget(cfg)
    )  # before the model: ZeRO-3 init
    model = trained_model(res, args.device.type, args.gradient_checkpointing)
    ref_key = fingerprint(model_path, dataset.fingerprint(view), view, cfg.LoRA.r)
    weights = (
        load_token_weights(cfg, res.influence_dir, dataset, view)
        if "token_weights" in spec.needs
        else None
    )
    trainer = UnlearningTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=ViewCollator(pad_token_id=tokenizer.pad_token_id),
        processing_class=tokenizer,
        callbacks=list(callbacks),
        loss_spec=spec,
        hyper=LossHyper.from_config(cfg),
        reference=ReferenceLogprobs.load(out / REF_FILE, ref_key),
        reference_fingerprint=ref_key,
        reference_path=out / REF_FILE,
        token_weights=weights,
        log_file=out / "log.jsonl",
        hidden_layer=cfg.rmu_layer if spec.reads_hidden else None,
        control_seed=cfg.seed,
    )
    if {"ref_logits", "ref_forget_logits", "ref_hidden"} & spec.needs and cfg.LoRA.r == 0:
        trainer.ref_model = reference_model(res, model_path, trainer)
    return trainer, tokenizer, dataset


def start_run_folder(res: Resolved) -> None:
    """The run folder, emptied under ``overwrite`` (but for the step runner's executed notebooks,
    one of which is being written), with the config it runs (rank 0)."""
    out = res.run_dir
    if res.cfg.overwrite and out.exists() and dist.is_rank0():
        for item in out.iterdir():
            if item.name != NOTEBOOKS_DIR:
                shutil.rmtree(item) if item.is_dir() else item.unlink()
    out.mkdir(parents=True, exist_ok=True)
    if dist.is_rank0():
        save_config(res.cfg, out / "config.yaml")


def run_forget(
    run: Config | Resolved, *, callbacks: Sequence[Any] = (), progress: bool = True
) -> dict[str, Any]:
    """Unlearn ``cfg.split`` / ``cfg.task_id`` from the model with ``cfg.forget_loss``; ``run``
    is the config or, resolved where it entered, the :class:`Resolved` run."""
    from transformers.trainer_utils import get_last_checkpoint

    res = check_forget_config(run)
    cfg, out = res.cfg, res.run_dir
    t0 = time.perf_counter()
    start_run_folder(res)
    trainer, tokenizer, dataset = build_trainer(res, callbacks)
    ckpt_dir = Path(trainer.args.output_dir)
    resume_from = get_last_checkpoint(str(ckpt_dir)) if cfg.resume and ckpt_dir.is_dir() else None
    train_out = trainer.train(resume_from_checkpoint=resume_from)
    save_trained(cfg, trainer, tokenizer, out)
    result: dict[str, Any] = {
        "run_dir": str(out),
        "model_path": res.model_path,
        "data_path": res.data_path,
        "forget_loss": res.spec.name,
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
            model = trainer.accelerator.unwrap_model(trainer.model)
            result["fact_recall"] = quick_fact_recall(res, model, tokenizer)
        atomic_write_json(out / RESULT_FILE, result)
        if progress:
            print(json.dumps(result, indent=2))
    return result


def quick_fact_recall(res: Resolved, model: Any, tokenizer: Any) -> dict[str, float]:
    """Greedy-answer fact recall on the forget set and the retain-eval set (embedded data)."""
    data_path = res.require_data()
    sets = {
        "forget": load_forget(data_path, res.cfg.split, res.cfg.task_id),
        "retain": load_eval_set(data_path, "retain_perturbed"),
    }
    return {
        name: greedy_fact_recall(model, tokenizer, records, res.tags)
        for name, records in sets.items()
    }
