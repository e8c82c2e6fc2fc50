"""Evaluation while a forget run trains (``eval.during.*``): the trajectory of unlearning.

At step 0 (the model before unlearning, the target) and every ``eval.during.every_steps``
optimizer steps and / or every epoch, :class:`TrajectoryCallback` measures the model in memory
with the benchmark plug-in's ``compute``, the code `npo eval` runs, on the same sets with the
same options and the same retain reference (its metrics.json, computed once and shared with
`npo eval`'s cache), sharded over the ranks as `npo eval` is. Rank 0 appends one JSON line per
point to ``<run>/trajectory.jsonl`` (step, epoch, metrics, seconds, checkpoint) and the
numbers go to the trainer's ``report_to`` loggers as ``eval_<metric>``. Each trained point
keeps a checkpoint (``<run>/trajectory/step-<k>``: full weights, or the LoRA adapter), the
``eval.during.keep`` most recent plus the selected one; ``eval.during.select`` chooses the point
that becomes the run's model and ``eval.during.patience`` stops training early
(:mod:`npo_lib.eval.selection`).

The cheap set (``eval.during.metrics=[]``) skips what its metrics do not read: for TOFU the
holdout set (MIA, privleak) and the ZeroThink / LessThink generations; every set it keeps is
measured exactly as `npo eval` measures it, so a point's numbers equal `npo eval` on its
checkpoint (in the same dtype: a GPU run trains fp32 weights that `npo eval` loads as bf16).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from npo_lib.commands.evaluation import eval_run, retain_metrics
from npo_lib.commands.resolve import Resolved
from npo_lib.errors import ConfigError
from npo_lib.eval.compute import EvalData
from npo_lib.eval.registry import (
    FORGET_FACT_RECALL,
    FORGET_QUALITY,
    METRICS,
    MODEL_UTILITY,
    RETAIN_FACT_RECALL,
)
from npo_lib.eval.selection import SelectionRule, parse_rule, select_point, stop_reason
from npo_lib.utils import dist

TRAJECTORY_FILE = "trajectory.jsonl"  # relative to a run folder
POINTS_DIR = "trajectory"  # <run>/trajectory/step-<k>: the checkpoints of evaluation points
CHEAP_METRICS = {  # benchmark -> the default metrics while training (others: the headline pair)
    "tofu": (FORGET_FACT_RECALL.key, RETAIN_FACT_RECALL.key, FORGET_QUALITY.key, MODEL_UTILITY.key)
}
REASONING_PARTS = ("zerothink", "lessthink", "trace_", "cot_")  # keys of the reasoning decodings
HOLDOUT_PARTS = ("mia_", "privleak")  # keys that read the holdout set


def during_metrics(res: Resolved) -> tuple[str, ...] | None:
    """The aggregates measured while training (None: every one the benchmark computes)."""
    keys = list(res.cfg.eval.during.metrics)
    if keys == ["all"]:
        return None
    if keys:
        return tuple(keys)
    head = res.benchmark.metrics.headline
    return CHEAP_METRICS.get(res.benchmark.name, (head.forget, head.utility))


def check_during(res: Resolved) -> SelectionRule | None:
    """``eval.during.*`` checked before any model loads: registered metric names, the rule's
    grammar and metrics, no ZeRO-3 (whose partitioned weights no rank can score alone)."""
    during = res.cfg.eval.during
    rule = parse_rule(during.select)
    if not during.enabled:
        return rule
    keys = during_metrics(res)
    if unknown := [k for k in keys or () if k not in METRICS]:
        raise ConfigError(
            f"eval.during.metrics: unknown metric(s) {', '.join(unknown)} ([] = the cheap set, "
            f"[all] = every one; registered aggregates: docs/reference/metrics.md)"
        )
    if rule and keys is not None and (missing := [k for k in rule.metrics if k not in keys]):
        raise ConfigError(
            f"eval.during.select reads {', '.join(missing)}, which eval.during.metrics does not "
            f"measure ({', '.join(keys)})"
        )
    if _zero3(res.cfg.ds_config):
        raise ConfigError("eval.during needs whole weights on every rank: not under ZeRO-3")
    return rule


def _zero3(ds_config: Any) -> bool:
    if not ds_config:
        return False
    conf = ds_config if isinstance(ds_config, dict) else json.loads(Path(ds_config).read_text())
    return conf.get("zero_optimization", {}).get("stage") == 3


def measurement_inputs(res: Resolved, keys: tuple[str, ...] | None) -> tuple[EvalData, Any, Any]:
    """(the sets, the options, the retain reference) of the points: `npo eval`'s, less what the
    measured ``keys`` do not read (TOFU: holdout, the reasoning decodings). The reference is
    the retain model's metrics.json on the full sets (computed once, cached as `npo eval`
    caches it), or why there is none."""
    cfg = res.cfg
    ev = eval_run(cfg)
    full = res.benchmark.load_eval(res.require_data(), cfg)
    options = dataclasses.replace(cfg.eval, robustness=[])
    reference: Any = ev.no_retain or "no retain model to compare with"
    if ev.retain_model_path is not None:
        reference = retain_metrics(ev, ev.retain_model_path, full, cfg.eval, progress=False)
    if keys is None or res.benchmark.name != "tofu":
        return full, options, reference
    sets, skipped = dict(full.sets), dict(full.skipped)
    if not any(p in k for k in keys for p in HOLDOUT_PARTS) and sets.pop("holdout", None):
        skipped["holdout"] = "not measured during training (eval.during.metrics)"
    if not any(p in k for k in keys for p in REASONING_PARTS):
        options = dataclasses.replace(options, reasoning=False)
    return EvalData(full.data_path, sets, skipped), options, reference


def during_seconds(summary: dict[str, Any] | None) -> float:
    """Seconds a run spent evaluating and saving its points (0 without ``eval.during``)."""
    return summary["eval_seconds"] + summary["checkpoint_seconds"] if summary else 0.0


def read_trajectory(path: str | Path) -> list[dict[str, Any]]:
    """The points of a ``trajectory.jsonl`` (empty when there is none)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def load_point(trainer: Any, folder: Path, lora: bool) -> None:
    """Load a point's checkpoint (its safetensors: full weights, or the LoRA adapter) into the
    trainer's model in memory: the weights the run saves as its model."""
    from safetensors.torch import load_file

    model = trainer.accelerator.unwrap_model(trainer.model)
    device = str(next(model.parameters()).device)
    state: dict[str, Any] = {}
    for file in sorted(folder.glob("*.safetensors")):
        state.update(load_file(str(file), device=device))
    if not state:
        raise FileNotFoundError(f"{folder} holds no safetensors weights")
    if lora:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, state)
        return
    unexpected = model.load_state_dict(state, strict=False).unexpected_keys
    if unexpected:
        raise RuntimeError(f"{folder} does not fit the model: {unexpected[:3]}")


class TrajectoryCallback(TrainerCallback):
    """Measures the model at each evaluation point (see the module text); :meth:`bind` gives it
    the trainer (to save checkpoints and log), :meth:`finish` selects after training."""

    def __init__(self, res: Resolved, on_point: Sequence[Callable[[dict], None]] = ()) -> None:
        self.res = res
        self.on_point = tuple(on_point)  # called on rank 0 with each new point's record
        self.during = res.cfg.eval.during
        self.rule = check_during(res)
        self.keys = during_metrics(res)
        self.file = res.run_dir / TRAJECTORY_FILE
        self.points_dir = res.run_dir / POINTS_DIR
        self.points: list[dict[str, Any]] = []
        self.trainer: Any = None
        self.inputs: tuple[EvalData, Any, Any] | None = None
        self.seconds = {"eval": 0.0, "checkpoint": 0.0}
        self.stopped: dict[str, Any] | None = None

    def bind(self, trainer: Any) -> None:
        """The trainer whose model the points measure and save."""
        self.trainer = trainer

    @property
    def target(self) -> dict[str, Any] | None:
        """The metrics of step 0 (the model before unlearning), when measured."""
        first = self.points[0] if self.points else None
        return first["metrics"] if first and first["step"] == 0 else None

    def on_train_begin(self, args, state, control, **kwargs):
        self.inputs = measurement_inputs(self.res, self.keys)
        step = state.global_step  # a resumed run keeps the points up to its checkpoint
        self.points = [p for p in read_trajectory(self.file) if 0 < step and p["step"] <= step]
        if dist.is_rank0():
            self.file.write_text("".join(json.dumps(p) + "\n" for p in self.points))
        if not self.points:
            self.point(state, control)

    def on_step_end(self, args, state, control, **kwargs):
        every = self.during.every_steps
        if every and state.global_step % every == 0:
            self.point(state, control)

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.during.every_epoch and self.points[-1]["step"] != state.global_step:
            self.point(state, control)

    def on_train_end(self, args, state, control, **kwargs):
        if self.points[-1]["step"] != state.global_step:  # the final model is a point too
            self.point(state, control)

    def measure(self) -> dict[str, float | None]:
        """The measured aggregates of the model in memory (eval mode, sharded over the ranks)."""
        import torch

        data, options, reference = self.inputs
        trainer, cfg = self.trainer, self.res.cfg
        model = trainer.accelerator.unwrap_model(trainer.model)
        training = model.training
        model.eval()
        try:
            with torch.no_grad(), dist.sharded():
                out = self.res.benchmark.compute(
                    model,
                    trainer.processing_class,
                    self.res.tags,
                    data,
                    options,
                    reference=reference,
                    max_length=cfg.max_length,
                    progress=False,
                )
        finally:
            model.train(training)
        agg = out["aggregates"]
        return dict(agg) if self.keys is None else {k: agg.get(k) for k in self.keys}

    def point(self, state: Any, control: Any) -> None:
        """Measure, keep a checkpoint, write the line, log, prune, maybe stop."""
        t0 = time.perf_counter()
        metrics = self.measure()
        t1 = time.perf_counter()
        step = state.global_step
        ckpt = self.save(step) if step > 0 and self.during.keep > 0 else None
        seconds = {"eval": t1 - t0, "checkpoint": time.perf_counter() - t1}
        for k, v in seconds.items():
            self.seconds[k] += v
        record = {"step": step, "epoch": state.epoch or 0.0, "metrics": metrics}
        record |= {"seconds": seconds, "checkpoint": ckpt}
        self.points.append(record)
        if dist.is_rank0():
            with self.file.open("a") as f:
                f.write(json.dumps(record) + "\n")
            for hook in self.on_point:
                hook(record)
        logs = {f"eval_{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}
        should_log = control.should_log  # Trainer.log clears it: the step's own loss still logs
        self.trainer.log({**logs, "eval_seconds": seconds["eval"]})
        control.should_log = should_log
        self.prune()
        why = stop_reason(self.points, self.rule, self.during.patience, self.target)
        if why and step > 0:
            control.should_training_stop = True
            self.stopped = {"step": step, "why": why}

    def save(self, step: int) -> str:
        """The checkpoint of a point (every rank takes part; rank 0 writes)."""
        folder = self.points_dir / f"step-{step}"
        self.trainer.save_model(str(folder))
        dist.barrier()
        return str(folder)

    def prune(self) -> None:
        """Delete the checkpoints beyond the ``keep`` most recent, but the selected one."""
        held = [p for p in self.points if p.get("checkpoint")]
        keep = {p["checkpoint"] for p in held[-self.during.keep :]} if self.during.keep else set()
        if self.rule is not None and held:
            chosen = select_point(self.points, self.rule, self.target)
            if chosen.met:
                keep.add(self.points[chosen.index].get("checkpoint"))
        for p in held:
            if p["checkpoint"] not in keep:
                if dist.is_rank0():
                    shutil.rmtree(p["checkpoint"], ignore_errors=True)
                p["checkpoint"] = None

    def finish(self) -> dict[str, Any]:
        """After training: load the selected point's weights into the model when the rule chose
        one before the last step; what result.json records of the trajectory."""
        last = self.trainer.state.global_step
        sel = select_point(self.points, self.rule, self.target)
        chosen = self.points[sel.index]
        selected = {"step": last, "why": sel.why, "rule": sel.rule, "checkpoint": None}
        if sel.met:
            selected |= {"step": sel.step, "values": sel.values, "checkpoint": chosen["checkpoint"]}
            if sel.step != last:
                load_point(self.trainer, Path(chosen["checkpoint"]), self.res.cfg.LoRA.r > 0)
        return {
            "file": str(self.file),
            "points": len(self.points),
            "metrics": list(self.keys) if self.keys is not None else "all",
            "eval_seconds": self.seconds["eval"],
            "checkpoint_seconds": self.seconds["checkpoint"],
            "selected": selected,
            "stopped_early": self.stopped,
        }
