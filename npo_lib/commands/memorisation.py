"""Whether a model has memorised what it was fine-tuned on: the check sets, the measures and
the stop criterion of ``npo finetune`` (``finetune.stop_*``).

TOFU-style QA data is checked by greedy fact recall of the answers (ROUGE-L recall where records
name no ``fact``); a document benchmark by its own metrics against the bars its plug-in declares
(:class:`npo_lib.benchmarks.checks.MetricCheck`). The checks only decode, so they do not change
training.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from npo_lib.commands.resolve import Resolved
from npo_lib.config import Config
from npo_lib.data.sources import load_eval_set, load_forget, load_retain
from npo_lib.errors import DataError
from npo_lib.eval.generation import greedy_generate
from npo_lib.eval.metrics import fact_recall, rouge_l_recall
from npo_lib.models.families import ChatTags
from npo_lib.objectives.registry import parse_loss
from npo_lib.utils import dist

VIEW = parse_loss("FINETUNE").forget.view


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
    """Memorisation of ``records`` must reach ``minimum``; ``measure(model)``, when given, is
    ``(what, value)`` in its place (a benchmark metric)."""

    name: str
    records: Sequence[Mapping[str, Any]]
    minimum: float
    measure: Callable[[Any], tuple[str, float]] | None = None


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
            what, value = (
                bar.measure(model)
                if bar.measure
                else memorisation(
                    model,
                    self.tokenizer,
                    self.tags,
                    bar.records,
                    max_new_tokens=self.c.max_new_tokens,
                )
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


def metric_checks(
    res: Resolved, tokenizer: Any
) -> tuple[dict[str, list], StopCriterion, Callable[[Path], dict]]:
    """A document benchmark's checks: its plug-in's bars for this model
    (:class:`~npo_lib.benchmarks.checks.MetricCheck`), measured on the check's sets; loaded, and
    its metrics reported on the saved model, only when ``finetune.stop_*`` asks for a stop."""
    check, cfg, ft = res.benchmark.check, res.cfg, res.cfg.finetune
    if ft.stop_forget_recall is None and ft.stop_retain_recall is None:
        return {}, StopCriterion([], ft.stop_loss, ft.check_every, ft.patience), lambda _: {}
    data = check.load(res.require_data(), cfg)

    def bar(b: Any) -> Bar:
        measure = lambda m: (b.key, check.measure(m, tokenizer, data, b.key, cfg))  # noqa: E731
        return Bar(b.key, (), b.limit, measure)

    def report(saved: Path) -> dict:
        model = res.loader.model(str(saved)).eval()
        values = check.report(model, res.loader.tokenizer(str(saved)), data, cfg)
        return {key: {key: value} for key, value in values.items()}

    bars = [bar(b) for b in check.stop_bars(ft.model)]
    return data.sets, StopCriterion(bars, ft.stop_loss, ft.check_every, ft.patience), report


def memorisation_checks(
    res: Resolved, tokenizer: Any, max_new_tokens: int
) -> tuple[dict[str, list], StopCriterion, Callable[[Path], dict]]:
    """(check sets, stop criterion, the saved model's memorisation report): TOFU's fact recall
    of the QA answers, or the plug-in's :attr:`~npo_lib.benchmarks.Benchmark.check`."""
    if res.benchmark.check is not None:
        return metric_checks(res, tokenizer)
    cfg = res.cfg
    sets = check_sets(cfg, res.require_data())
    crit = stop_criterion(cfg, sets, max_new_tokens=max_new_tokens)
    return (
        sets,
        crit,
        lambda saved: memorisation_report(res, saved, sets, max_new_tokens=max_new_tokens),
    )


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
