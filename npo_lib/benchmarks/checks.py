"""How ``npo prepare`` checks the tiny models of a document benchmark: bars on the plug-in's own
metrics, measured on its stand-in.

TOFU's models are checked by fact recall of their QA answers
(:class:`npo_lib.commands.prepare.MemorisationBars`). A document benchmark declares instead a
:class:`MetricCheck`: the metrics its evaluation reports (MUSE's KnowMem and VerbMem, WMDP's
multiple-choice accuracy), each with a bar the target or the retain model must reach, and how to
measure one metric on a model. The bars a model must reach (``>=``) are the stop criterion of its
fine-tuning; those it must stay under (``<=``: the retain model on the forget set) are checked
once, on the saved models.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from npo_lib.eval.compute import EvalData

MODELS = ("target", "retain")
OPS = {">=": lambda value, limit: value >= limit, "<=": lambda value, limit: value <= limit}


@dataclass(frozen=True)
class MetricBar:
    """Metric ``key`` of the ``model`` (target or retain) must be ``op`` ``limit``; ``fix`` says
    what to change when it is missed."""

    model: str
    key: str
    op: str
    limit: float
    fix: str

    def __post_init__(self) -> None:
        if self.model not in MODELS or self.op not in OPS:
            raise ValueError(f"bar {self.key}: model must be in {MODELS}, op in {tuple(OPS)}")

    @property
    def name(self) -> str:
        return f"{'retain-model' if self.model == 'retain' else 'target'} {self.key}"

    @property
    def stops(self) -> bool:
        """A bar to reach: fine-tuning stops once all of the model's hold."""
        return self.op == ">="

    def holds(self, value: float) -> bool:
        return OPS[self.op](value, self.limit)


@dataclass(frozen=True)
class MetricCheck:
    """A document benchmark's bars, the check data they are measured on
    (``load(data_path, cfg)``: its ``forget`` and ``retain`` sets counted in the summary) and
    ``measure(model, tokenizer, data, key, cfg)``: one metric of one model, a float."""

    bars: tuple[MetricBar, ...]
    load: Callable[[str, Any], EvalData]
    measure: Callable[[Any, Any, EvalData, str, Any], float]

    def keys(self) -> list[str]:
        """Every metric a bar names, in bar order, once each."""
        return list(dict.fromkeys(b.key for b in self.bars))

    def stop_bars(self, model: str) -> list[MetricBar]:
        """The bars ``model`` must reach: its fine-tuning's stop criterion."""
        return [b for b in self.bars if b.model == model and b.stops]

    def report(self, model: Any, tokenizer: Any, data: EvalData, cfg: Any) -> dict[str, float]:
        """Every barred metric of one model."""
        return {key: self.measure(model, tokenizer, data, key, cfg) for key in self.keys()}
