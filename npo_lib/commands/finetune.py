"""``npo finetune``: make the target (every training record) or the retain model (without the
forget split / task) that unlearning starts from and compares with.

FINETUNE = CE of view 1, trained by the same trainer as the unlearning objectives, in a run
folder with the same rules as a forget run: ``config.yaml``, ``checkpoints/``, ``log.jsonl``,
``model/`` (or ``adapter/`` and, with ``save_merged``, a merged ``model/``), ``result.json``
last; ``resume=true`` continues, ``overwrite=true`` replaces, a non-finite loss stops cleanly.

The optional stop criterion (``finetune.stop_*``) ends training once the model has memorised:
every ``check_every`` epochs the check sets are decoded greedily and training stops when each
reaches its bar for ``patience`` checks in a row (fact recall where records name their ``fact``,
ROUGE-L recall of the answers otherwise), or when an epoch's mean loss is low enough. The
learning rate still decays over the whole budget, so the run is the same one a fixed budget
gives up to that epoch; the checks only decode, so they do not change training.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset
from transformers import TrainerCallback

from npo_lib.commands.folders import RESULT_FILE, check_run_folder
from npo_lib.commands.resolve import Resolved, as_resolved
from npo_lib.config import Config, save_config
from npo_lib.data.sources import load_eval_set, load_forget, load_retain
from npo_lib.data.views import encode_records
from npo_lib.errors import ConfigError, DataError
from npo_lib.eval.generation import greedy_generate
from npo_lib.eval.metrics import fact_recall, rouge_l_recall
from npo_lib.models.families import ChatTags
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

VIEW = parse_loss("FINETUNE").forget.view


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


def check_sets(cfg: Config, data_path: str) -> dict[str, list[dict]]:
    """The records memorisation is measured on: the forget split / task, and ``retain_perturbed``
    (else a seeded sample of retain records as large as the forget set)."""
    forget = load_forget(data_path, cfg.split, cfg.task_id)
    try:
        retain = load_eval_set(data_path, "retain_perturbed")
    except DataError:  # no such set: sample the retain records instead
        pool = load_retain(data_path, cfg.split, cfg.task_id)
        retain = random.Random(f"finetune-check:{cfg.seed}").sample(
            pool, min(len(forget), len(pool))
        )
    return {"forget": forget, "retain": retain}


class Examples(Dataset):
    """Encoded examples as the trainer's items: ``{"index": i, <view>: example}``, with the
    example's ``input_ids`` also at the top (the length-grouped sampler reads them there)."""

    def __init__(self, examples: Sequence[dict]) -> None:
        self.examples = list(examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"index": i, "input_ids": self.examples[i]["input_ids"], VIEW: self.examples[i]}


# ----------------------------------------------------------------------------- memorisation


def memorisation(
    model: Any,
    tokenizer: Any,
    tags: ChatTags,
    records: Sequence[Mapping[str, Any]],
    *,
    max_new_tokens: int,
    batch_size: int = 64,
) -> tuple[str, float]:
    """(what, value): greedy fact recall of the answers where every record names its ``fact``,
    else the mean ROUGE-L recall of the greedy answers against the records' answers."""
    from npo_lib.data.views import view_text

    prompts = [view_text(r, VIEW, tags, tokenizer=tokenizer)[0] for r in records]
    answers = [
        tags.split_trace(g)[1]
        for g in greedy_generate(
            model,
            tokenizer,
            prompts,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            add_special_tokens=not tags.use_tokenizer_template,
            progress=False,
        )
    ]
    if records and all(isinstance(r.get("fact"), str) for r in records):
        return "fact_recall", fact_recall(answers, [r["fact"] for r in records])["agg_value"]
    return "rouge_l_recall", rouge_l_recall(answers, [r["answer"] for r in records])["agg_value"]


@dataclass(frozen=True)
class Bar:
    """Memorisation of ``records`` must reach ``minimum``."""

    name: str
    records: Sequence[Mapping[str, Any]]
    minimum: float


@dataclass
class StopCriterion:
    bars: list[Bar] = field(default_factory=list)
    max_loss: float | None = None
    check_every: int = 2
    patience: int = 1
    max_new_tokens: int = 96

    def __bool__(self) -> bool:
        return bool(self.bars) or self.max_loss is not None


class MemorisationStop(TrainerCallback):
    """Every ``check_every`` epochs: the memorisation of each bar's records (in order, up to the
    first that fails: decoding is most of a check's cost) and the epoch's mean loss; stops
    training once all hold ``patience`` checks in a row. Checks go to ``log.jsonl`` (rank 0),
    and a resumed run reads back the ones before its checkpoint."""

    def __init__(
        self,
        criterion: StopCriterion,
        tokenizer: Any,
        tags: ChatTags,
        log_file: Path | None = None,
        progress: bool = True,
    ) -> None:
        self.c, self.tokenizer, self.tags, self.log_file, self.progress = (
            criterion,
            tokenizer,
            tags,
            log_file,
            progress,
        )
        self.history: list[dict[str, Any]] = []
        self.stopped_epoch: int | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        rows = (
            [json.loads(x) for x in self.log_file.read_text().splitlines() if x.strip()]
            if self.log_file and self.log_file.is_file()
            else []
        )
        self.history = [
            r["check"] for r in rows if "check" in r and r.get("step", 0) <= state.global_step
        ]

    def _mean_epoch_loss(self, state: Any, epoch: int) -> float | None:
        losses = [
            r["loss"]
            for r in state.log_history
            if "loss" in r and epoch - 1 < r.get("epoch", 0) <= epoch
        ]
        return sum(losses) / len(losses) if losses else None

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        epoch = round(state.epoch or 0)
        if epoch % self.c.check_every:
            return
        check: dict[str, Any] = {
            "epoch": epoch,
            "loss": self._mean_epoch_loss(state, epoch),
            "measured": {},
        }
        passed = self.c.max_loss is None or (
            check["loss"] is not None and check["loss"] <= self.c.max_loss
        )
        for bar in self.c.bars if passed else []:
            what, value = memorisation(
                model, self.tokenizer, self.tags, bar.records, max_new_tokens=self.c.max_new_tokens
            )
            check["measured"][bar.name] = {what: value}
            if value < bar.minimum:
                passed = False
                break
        check["passed"] = passed
        self.history.append(check)
        if dist.is_rank0():
            if self.log_file is not None:
                with self.log_file.open("a") as fh:
                    fh.write(
                        json.dumps({"step": state.global_step, "epoch": epoch, "check": check})
                        + "\n"
                    )
            if self.progress:
                shown = ", ".join(
                    f"{n} {next(iter(m.values())):.1%}" for n, m in check["measured"].items()
                )
                loss = check["loss"] or float("nan")
                print(
                    f"  epoch {epoch}: loss {loss:.4f}{', ' + shown if shown else ''}"
                    f"{' -> criterion met' if passed else ''}",
                    flush=True,
                )
        streak = 0
        for c in reversed(self.history):
            if not c["passed"]:
                break
            streak += 1
        if streak >= self.c.patience:
            self.stopped_epoch = epoch
            control.should_training_stop = True


def stop_criterion(
    cfg: Config, sets: Mapping[str, list[dict]], *, max_new_tokens: int = 256
) -> StopCriterion:
    """The criterion ``finetune.stop_*`` asks for (the forget bar only for the target)."""
    ft = cfg.finetune
    bars = []
    if ft.stop_forget_recall is not None and ft.model == "target":
        bars.append(Bar("forget", sets["forget"], ft.stop_forget_recall))
    if ft.stop_retain_recall is not None:
        bars.append(Bar("retain", sets["retain"], ft.stop_retain_recall))
    return StopCriterion(bars, ft.stop_loss, ft.check_every, ft.patience, max_new_tokens)


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
    sets = check_sets(cfg, res.require_data())
    start_folder(res)
    examples = finetune_examples(res, tokenizer, records)
    criterion = stop_criterion(cfg, sets, max_new_tokens=check_max_new_tokens)
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
        "n_examples": len(examples),
        "check_sets": {name: len(recs) for name, recs in sets.items()},
        **training_summary(trainer, train_out, stop, resume_from, cfg.finetune.num_epochs),
    }
    end_partitioned_loading()
    if dist.is_rank0():
        if saved is not None:
            result["memorisation"] = memorisation_report(
                res, saved, sets, max_new_tokens=check_max_new_tokens
            )
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


def memorisation_report(
    res: Resolved, model_dir: Path, sets: Mapping[str, list[dict]], *, max_new_tokens: int
) -> dict[str, dict[str, float]]:
    """Memorisation of the saved model on each check set, e.g.
    ``{"forget": {"fact_recall": 1.0}}``."""
    tokenizer = res.loader.tokenizer(str(model_dir))
    model = res.loader.model(str(model_dir)).eval()
    report = {}
    for name, records in sets.items():
        what, value = memorisation(
            model, tokenizer, res.tags, records, max_new_tokens=max_new_tokens
        )
        report[name] = {what: value}
    return report


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
