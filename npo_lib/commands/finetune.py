"""``npo finetune``: make the target (every training record) or the retain model (without the
forget split / task) that unlearning starts from and compares with.

FINETUNE = CE of view 1, trained by the same trainer as the unlearning objectives, in a run
folder with the same rules as a forget run: ``config.yaml``, ``checkpoints/``, ``log.jsonl``,
``model/`` (or ``adapter/`` and, with ``save_merged``, a merged ``model/``), ``result.json``
last; ``resume=true`` continues, ``overwrite=true`` replaces, a non-finite loss stops cleanly.

The optional stop criterion (``finetune.stop_*``) ends training once the model has memorised:
every ``check_every`` epochs the check sets are decoded greedily and training stops when each
reaches its bar for ``patience`` checks in a row (fact recall where records name their ``fact``,
ROUGE-L recall of the answers otherwise; a document benchmark's own metrics against the bars its
plug-in declares, :class:`npo_lib.benchmarks.checks.MetricCheck`), or when an epoch's mean loss
is low enough (:mod:`npo_lib.commands.memorisation`). The learning rate still decays over the
whole budget, so the run is the same one a fixed budget gives up to that epoch; the checks only
decode, so they do not change training.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from npo_lib.commands.folders import RESULT_FILE, check_run_folder
from npo_lib.commands.memorisation import VIEW, MemorisationStop, memorisation_checks
from npo_lib.commands.resolve import Resolved, as_resolved
from npo_lib.config import Config, save_config
from npo_lib.data.views import encode_records
from npo_lib.errors import ConfigError
from npo_lib.models.lora import apply_lora
from npo_lib.objectives.registry import LossHyper, parse_loss
from npo_lib.training.arguments import (
    TrainSettings,
    end_partitioned_loading,
    save_trained,
    training_arguments,
)
from npo_lib.utils import dist
from npo_lib.utils.io import atomic_write_json, read_json
from npo_lib.utils.machine import machine_info

# ----------------------------------------------------------------------------- data


def zerothink_copies(records: Sequence[Mapping[str, Any]], fraction: float) -> list[dict]:
    """Copies of every ``round(1/fraction)``-th record with an empty trace (ZeroThink form).

    Why: TOFU's Prob and truth ratio score an answer right after an empty think block. A model
    only ever trained with traces finds that context out of distribution, so its truth ratios
    barely separate known from unknown facts. Training on both forms, as R1-style models see
    answers with and without reasoning, makes teacher-forced scores reflect what it knows.
    """
    if fraction <= 0:
        return []
    step = max(1, round(1 / fraction))
    return [{**r, "cot": ""} for r in records[::step] if r.get("cot")]


class Examples(Dataset):
    """Encoded examples as the trainer's items: ``{"index": i, <view>: example}``, with the
    example's ``input_ids`` also at the top (the length-grouped sampler reads them there)."""

    def __init__(self, examples: Sequence[dict]) -> None:
        self.examples = list(examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"index": i, "input_ids": self.examples[i]["input_ids"], VIEW: self.examples[i]}


# ----------------------------------------------------------------------------- the run


def _zero_stage(cfg: Config) -> int:
    if not cfg.ds_config:
        return 0
    return int(
        json.loads(Path(cfg.ds_config).read_text()).get("zero_optimization", {}).get("stage", 0)
    )


def check_finetune_config(run: Config | Resolved) -> Resolved:
    """Every check that needs no model; returns the resolved run (its folder, paths, tags)."""
    res = as_resolved(run, "finetune")
    cfg, ft = res.cfg, res.cfg.finetune
    decodes = ft.stop_forget_recall is not None or ft.stop_retain_recall is not None
    if decodes and _zero_stage(cfg) == 3:
        raise ConfigError(
            "finetune.stop_*_recall decodes with the whole model on each rank: not under ZeRO-3 "
            "(use finetune.stop_loss, or ZeRO-2)"
        )
    if cfg.LoRA.r > 0 and not cfg.save_merged:
        print(
            "npo finetune: LoRA without save_merged=true saves the adapter only; unlearning "
            "needs model_path of a merged model",
            flush=True,
        )
    check_run_folder(res.run_dir, cfg)
    return res


def start_folder(res: Resolved) -> None:
    """The run folder, emptied under ``overwrite``, with the config it runs (rank 0)."""
    out = res.run_dir
    if res.cfg.overwrite and out.exists() and dist.is_rank0():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    if dist.is_rank0():
        save_config(res.cfg, out / "config.yaml")


def finetune_examples(res: Resolved, tokenizer: Any, records: Sequence[dict]) -> list[dict]:
    """The encoded training records, then their ZeroThink copies."""
    cfg = res.cfg
    copies = zerothink_copies(records, cfg.finetune.zerothink_fraction)
    return [
        *encode_records(records, VIEW, tokenizer, res.tags, cfg.max_length),
        *encode_records(copies, VIEW, tokenizer, res.tags, cfg.max_length),
    ]


def finetune_trainer(
    res: Resolved,
    tokenizer: Any,
    examples: Sequence[dict],
    callbacks: Sequence[Any],
    progress: bool,
) -> Any:
    """The trainer of FINETUNE on ``examples``: the model (with LoRA when asked) and the same
    trainer the unlearning objectives use."""
    from npo_lib.data.dataset import ViewCollator
    from npo_lib.training.trainer import UnlearningTrainer

    cfg = res.cfg
    args = training_arguments(
        cfg,
        res.run_dir,
        len(examples),
        res.family.gradient_checkpointing,
        TrainSettings.for_finetune(cfg),
        group_by_length=True,
    )
    args.disable_tqdm = args.disable_tqdm or not progress
    model = res.loader.model(res.require_model(), device=args.device.type)
    if cfg.LoRA.r > 0:
        model = apply_lora(model, cfg.LoRA)
    if args.gradient_checkpointing:
        model.config.use_cache = False
    return UnlearningTrainer(
        model=model,
        args=args,
        train_dataset=Examples(examples),
        data_collator=ViewCollator(pad_token_id=tokenizer.pad_token_id),
        processing_class=tokenizer,
        callbacks=list(callbacks),
        loss_spec=parse_loss("FINETUNE"),
        hyper=LossHyper.from_config(cfg),
        log_file=res.run_dir / "log.jsonl",
    )


def run_finetune(
    run: Config | Resolved,
    *,
    callbacks: Sequence[Any] = (),
    progress: bool = True,
    check_max_new_tokens: int = 256,
) -> dict[str, Any]:
    """Fine-tune ``model_path`` (or the family's hub id) into ``folders.finetune_dir(cfg)``; returns
    ``result.json``: steps, epochs trained, whether the stop criterion ended it, the checks, and
    the memorisation report of the saved model (forget split and retain check set). ``run`` is
    the config or, resolved where it entered, the :class:`Resolved` run."""
    from transformers.trainer_utils import get_last_checkpoint

    res = check_finetune_config(run)
    cfg, out = res.cfg, res.run_dir
    t0 = time.perf_counter()
    tokenizer = res.loader.tokenizer(res.require_model())
    role = "train_target" if cfg.finetune.model == "target" else "train_retain"
    records = res.benchmark.load_records(res.require_data(), role, cfg, tokenizer)
    sets, criterion, report = memorisation_checks(res, tokenizer, check_max_new_tokens)
    start_folder(res)
    examples = finetune_examples(res, tokenizer, records)
    stop = MemorisationStop(criterion, tokenizer, res.tags, out / "log.jsonl", progress)
    trainer = finetune_trainer(
        res, tokenizer, examples, [*callbacks, *([stop] if stop.c else [])], progress
    )
    ckpt_dir = Path(trainer.args.output_dir)
    resume_from = get_last_checkpoint(str(ckpt_dir)) if cfg.resume and ckpt_dir.is_dir() else None
    train_out = trainer.train(resume_from_checkpoint=resume_from)
    saved = save_trained(cfg, trainer, tokenizer, out)
    result: dict[str, Any] = {
        "run_dir": str(out),
        "model": cfg.finetune.model,
        "model_path": res.model_path,
        "data_path": res.data_path,
        "saved_model": str(saved) if saved else None,
        "n_records": len(records),
        "trained_on": res.benchmark.kind.describe(records),
        "n_examples": len(examples),
        "check_sets": {name: len(recs) for name, recs in sets.items()},
        **training_summary(trainer, train_out, stop, resume_from, cfg.finetune.num_epochs),
    }
    end_partitioned_loading()
    if dist.is_rank0():
        if saved is not None:
            result["memorisation"] = report(saved)
        result["seconds"] = time.perf_counter() - t0
        atomic_write_json(out / RESULT_FILE, result)
        if progress:
            shown = {k: v for k, v in result.items() if k not in ("checks", "machine")}
            print(json.dumps(shown, indent=2, default=str))
    return result


def training_summary(
    trainer: Any,
    train_out: Any,
    stop: MemorisationStop,
    resume_from: str | None,
    max_epochs: int,
) -> dict[str, Any]:
    """What the training did: steps and epochs, whether the stop criterion ended it and its
    checks, the loss, the time, where it resumed, the ranks and the machine."""
    return {
        "steps": train_out.global_step,
        "epochs": round(trainer.state.epoch or 0),
        "max_epochs": max_epochs,
        "stopped_early": stop.stopped_epoch is not None,
        "checks": stop.history,
        "train_loss": float(train_out.training_loss),
        "train_seconds": float(train_out.metrics.get("train_runtime", 0.0)),
        "resumed_from": resume_from,
        "world_size": dist.world_size(),
        "machine": machine_info(),
    }


def finished(run: Path) -> dict | None:
    """The ``result.json`` of a finished fine-tuning run folder, else None."""
    saved = read_json(run / RESULT_FILE)
    return saved if isinstance(saved, dict) else None


def check_rows(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per memorisation check of a fine-tuning result (epoch, loss, each set, met)."""
    rows = []
    for c in result.get("checks", []):
        row: dict[str, Any] = {"epoch": c["epoch"], "loss": c["loss"]}
        row.update({name: next(iter(m.values())) for name, m in c["measured"].items()})
        rows.append({**row, "criterion met": c["passed"]})
    return rows


def memorisation_rows(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The saved model's memorisation report as rows (set, measure, value, records)."""
    counts = result.get("check_sets", {})
    return [
        {"set": name, "measure": what, "value": value, "records": counts.get(name)}
        for name, m in result.get("memorisation", {}).items()
        for what, value in m.items()
    ]
