"""Unlearning runs: ``npo forget ...`` and ``python -m npo_lib.forget key=value ...``.

A run folder holds the resolved ``config.yaml``, the cached reference log-probs
(``ref_logprobs.safetensors``), ``checkpoints/``, the per-step ``log.jsonl``, the final model
(``model/``, or ``adapter/`` and optionally ``model/`` merged under LoRA) and ``result.json``
once finished; with ``eval.during.*`` also ``trajectory.jsonl`` and the checkpoints of its
points under ``trajectory/`` (:mod:`npo_lib.commands.trajectory`). A finished folder is never
overwritten without ``overwrite=true``; ``resume=true`` continues an interrupted one from its
last checkpoint.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from npo_lib.commands.checks import check_activation_layers
from npo_lib.commands.folders import NOTEBOOKS_DIR, RESULT_FILE, check_run_folder
from npo_lib.commands.resolve import Resolved, as_resolved
from npo_lib.commands.trajectory import TrajectoryCallback, check_during, during_seconds
from npo_lib.config import Config, save_config
from npo_lib.data.dataset import UnlearningDataset, ViewCollator
from npo_lib.data.sources import load_eval_set
from npo_lib.eval.generation import greedy_fact_recall
from npo_lib.models.lora import apply_lora
from npo_lib.objectives.registry import LossHyper
from npo_lib.training.arguments import TrainSettings, save_trained, training_arguments
from npo_lib.training.inputs import InputContext, check_inputs, prepare_inputs
from npo_lib.utils import dist
from npo_lib.utils.io import atomic_write_json


def check_forget_config(run: Config | Resolved) -> Resolved:
    """Every check that needs no model: the config's names and values, INFLUENCE's inputs, the
    run folder's state. Returns the resolved run (its folder, objective, paths)."""
    res = as_resolved(run, "forget")
    check_inputs(
        InputContext(res.cfg, res.spec, influence_dir=res.influence_dir, records=res.records)
    )
    check_run_folder(res.run_dir, res.cfg)
    check_during(res)
    return res


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
    """The benchmark's forget records in the objective's view, with its retain pool when a
    regularizer reads it (QA records, or document pieces of ``max_length`` tokens)."""
    cfg = res.cfg
    with_retain = bool(res.spec.regularizers)
    return UnlearningDataset.from_records(
        res.records("forget", tokenizer),
        tokenizer,
        res.tags,
        retain=res.records("retain", tokenizer) if with_retain else None,
        data_path=res.require_data(),
        views=(res.spec.forget.view,),
        with_retain=with_retain,
        max_length=cfg.max_length,
        seed=cfg.seed,
    )


def trained_model(res: Resolved, device: str, gradient_checkpointing: bool) -> Any:
    """The model that trains, with LoRA adapters when asked (RMU / ACT's trainable blocks are
    chosen by its input provider)."""
    cfg = res.cfg
    model = res.loader.model(res.require_model(), device=device)
    if cfg.LoRA.r > 0:
        model = apply_lora(model, cfg.LoRA)
    if gradient_checkpointing:
        model.config.use_cache = False
    return model


def build_trainer(res: Resolved, callbacks: Sequence[Any] = ()):
    """(trainer, tokenizer, dataset) of a forget run: data, model (LoRA), cached reference,
    INFLUENCE's token weights, for KL / UNDIAL / ACT without LoRA a frozen reference model and,
    for RMU / ACT, only the chosen blocks trainable."""
    from npo_lib.training.trainer import UnlearningTrainer

    cfg, spec, out, model_path = res.cfg, res.spec, res.run_dir, res.require_model()
    check_activation_layers(cfg, spec, model_path)
    tokenizer = res.loader.tokenizer(model_path)
    dataset = forget_dataset(res, tokenizer)
    args = training_arguments(
        cfg, out, len(dataset), res.family.gradient_checkpointing, TrainSettings.for_forget(cfg)
    )  # before the model: ZeRO-3 init
    model = trained_model(res, args.device.type, args.gradient_checkpointing)
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
            res.influence_dir,
            lambda: reference_model(res, model_path, trainer),
        ),
    )
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
    run: Config | Resolved,
    *,
    callbacks: Sequence[Any] = (),
    on_point: Sequence[Callable[[dict[str, Any]], None]] = (),
    progress: bool = True,
) -> dict[str, Any]:
    """Unlearn ``cfg.split`` / ``cfg.task_id`` from the model with ``cfg.forget_loss``; ``run``
    is the config or, resolved where it entered, the :class:`Resolved` run. ``on_point``: called
    on rank 0 with each evaluation point's record under ``eval.during`` (the notebook's live
    trajectory figure, :class:`npo_lib.viz.trajectory.LiveTrajectory`)."""
    from transformers.trainer_utils import get_last_checkpoint

    res = check_forget_config(run)
    cfg, out = res.cfg, res.run_dir
    t0 = time.perf_counter()
    start_run_folder(res)
    during = [TrajectoryCallback(res, on_point)] if cfg.eval.during.enabled else []
    trainer, tokenizer, dataset = build_trainer(res, [*callbacks, *during])
    for callback in during:
        callback.bind(trainer)
    ckpt_dir = Path(trainer.args.output_dir)
    resume_from = get_last_checkpoint(str(ckpt_dir)) if cfg.resume and ckpt_dir.is_dir() else None
    t_train = time.perf_counter()
    train_out = trainer.train(resume_from_checkpoint=resume_from)
    train_seconds = time.perf_counter() - t_train
    trajectory = during[0].finish() if during else None  # the selected point's weights loaded
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
        "train_seconds": train_seconds - during_seconds(trajectory),
        "resumed_from": resume_from,
        "world_size": dist.world_size(),
        "rank": dist.rank(),
    }
    if trajectory is not None:  # what evaluation during training cost, and which point is model/
        result["trajectory"] = trajectory
    if trainer.is_world_process_zero():
        if "fact" in dataset.forget[0] and not trainer.is_deepspeed_enabled:
            model = trainer.accelerator.unwrap_model(trainer.model)
            result["fact_recall"] = quick_fact_recall(res, model, tokenizer, dataset.forget)
        atomic_write_json(out / RESULT_FILE, result)
        if progress:
            print(json.dumps(result, indent=2))
    return result


def quick_fact_recall(
    res: Resolved, model: Any, tokenizer: Any, forget: Sequence[dict[str, Any]]
) -> dict[str, float]:
    """Greedy-answer fact recall on the forget records and the retain-eval set (embedded data)."""
    sets = {"forget": list(forget), "retain": load_eval_set(res.require_data(), "retain_perturbed")}
    return {
        name: greedy_fact_recall(model, tokenizer, records, res.tags)
        for name, records in sets.items()
    }
