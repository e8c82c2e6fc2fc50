"""Benchmarks as plug-ins: one registry entry declares everything the rest of the suite reads.

A :class:`Benchmark` names

- its published data: where it lives (a hub id) and its layout, the file names of each role
  (``forget``, ``retain``, ``verbmem``, ...), read from a folder given as ``data_path``;
- what it trains on: ``qa`` (question-answer records through the chat views of
  :mod:`npo_lib.data.views`) or ``documents`` (raw text cut into pieces of ``max_length``
  tokens);
- its metrics (keys of :mod:`npo_lib.eval.registry`) and its headline pair, a forget metric and
  a utility metric each with its better direction, which the report, dashboard, study and
  frontier read;
- its offline stand-in: a generator writing the same layout, with ground-truth fact spans, for
  the embedded default.

``benchmark=tofu|muse|wmdp`` (``benchmark.name``) selects one; TOFU is the default.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from npo_lib.benchmarks.checks import MetricCheck
from npo_lib.errors import ConfigError
from npo_lib.eval.compute import EvalData
from npo_lib.eval.registry import BENCHMARKS, DIRECTIONS, BenchmarkMetrics, metric


@dataclass(frozen=True)
class TrainingKind:
    """What a benchmark's models are fine-tuned on, in the words the commands print.

    ``unit``: what one training record is; ``is_unit(record)``: whether a record is one (the
    rest are questions a stand-in adds in the evaluation's format); ``forget_set``: the forget
    set the memorisation checks read, formatted with ``split``, ``task_id`` and ``n``."""

    description: str
    unit: str
    is_unit: Callable[[Mapping[str, Any]], bool]
    forget_set: str

    def describe(self, records: Sequence[Mapping[str, Any]]) -> str:
        """A count of ``records`` in words, e.g. ``"40 document pieces and 16 questions in the
        evaluation's format"``."""
        units = sum(1 for r in records if self.is_unit(r))
        rest = len(records) - units
        return f"{units} {self.unit}" + (
            f" and {rest} questions in the evaluation's format" if rest else ""
        )


TRAINING_KINDS = {
    "qa": TrainingKind(
        "question-answer records through the chat views (full, answer, cot, idk, retain)",
        "QA records",
        lambda r: True,
        "forget set {split} task {task_id}: {n} QA",
    ),
    "documents": TrainingKind(
        "raw documents cut into pieces of at most max_length tokens (causal LM)",
        "document pieces",
        lambda r: "doc" in r,  # a piece knows its document (chunk_documents)
        "memorisation checked on {n} forget questions",
    ),
}


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: published layout, training kind, metrics, headline pair, stand-in.

    ``layout`` maps a role to the file of the published layout, relative to the data folder;
    ``required`` lists the roles without which the benchmark cannot be evaluated.
    ``generate(settings, out_dir)`` writes the offline stand-in in that layout from
    ``benchmark.*`` (``check_settings(settings)`` checks them before any model loads);
    ``records(data_path, role, cfg, tokenizer)`` gives the records a command trains or scores
    on, by role (:data:`RECORD_ROLES`): question-answer records, or documents cut into pieces
    of ``max_length`` tokens (``{"text", "doc", "start", "fact_spans"}``, the tokenizer cuts);
    ``load_eval(data_path, cfg)`` reads its evaluation sets and ``compute(model, tokenizer, tags,
    data, options, *, reference, max_length, progress)`` measures a model on them, returning
    metrics.json's ``{"aggregates", "per_item", "generations", "notes", "counts", "seconds"}``
    (``reference``: the retain model's metrics.json, ``"self"``, or why there is none).
    ``texts(data_path)`` lists the texts a stand-in's tokenizer is trained on; ``check``, for a
    document benchmark, the bars ``npo prepare`` holds its tiny models to on the plug-in's own
    metrics (None: TOFU's fact-recall bars of the QA answers).
    """

    name: str
    title: str
    citation: str
    hub_id: str
    layout: Mapping[str, str]
    required: tuple[str, ...]
    training: str
    metric_keys: tuple[str, ...]
    generate: Callable[[Any, Path], Path]
    check_settings: Callable[[Any], None]
    records: Callable[[str, str, Any, Any], list[dict[str, Any]]]
    load_eval: Callable[[str, Any], EvalData]
    compute: Callable[..., dict[str, Any]]
    standin: str
    texts: Callable[[str], list[str]]
    check: MetricCheck | None = None
    notes: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.training not in TRAINING_KINDS:
            raise ValueError(f"benchmark {self.name}: unknown training kind '{self.training}'")
        if missing := [r for r in self.required if r not in self.layout]:
            raise ValueError(f"benchmark {self.name}: required roles {missing} not in layout")
        for key in self.metric_keys:
            metric(key)  # a key the metric registry does not know is a bug
        if self.name not in BENCHMARKS:
            raise ValueError(f"benchmark {self.name}: no metric pairs in eval.registry")

    @property
    def metrics(self) -> BenchmarkMetrics:
        """Its pairs in the metric registry, the headline pair first."""
        return BENCHMARKS[self.name]

    def file(self, data_path: str | Path, role: str) -> Path:
        """The file of ``role`` in the folder ``data_path``."""
        if role not in self.layout:
            raise ConfigError(
                f"benchmark {self.name} has no file role '{role}'; roles: {', '.join(self.layout)}"
            )
        return Path(data_path).expanduser() / self.layout[role]

    def load_records(
        self, data_path: str, role: str, cfg: Any, tokenizer: Any = None
    ) -> list[dict[str, Any]]:
        """:attr:`records` of ``role``, the role checked first."""
        if role not in RECORD_ROLES:
            raise ValueError(f"unknown record role '{role}'; valid: {', '.join(RECORD_ROLES)}")
        if self.training == "documents" and tokenizer is None:
            raise ValueError(f"benchmark {self.name} cuts documents by tokens: pass tokenizer")
        return self.records(data_path, role, cfg, tokenizer)

    @property
    def kind(self) -> TrainingKind:
        """The :class:`TrainingKind` that :attr:`training` names."""
        return TRAINING_KINDS[self.training]

    def missing(self, data_path: str | Path) -> list[str]:
        """The required files the folder lacks (relative names; empty when complete)."""
        return [self.layout[r] for r in self.required if not self.file(data_path, r).is_file()]


# what each role of Benchmark.records is
RECORD_ROLES = {
    "forget": "the forget set a run unlearns (and influence scores)",
    "retain": "the retain pool GD / KL regularise on",
    "train_target": "what the target model is fine-tuned on (npo prepare, npo finetune)",
    "train_retain": "what the retain model is fine-tuned on: the target's data less the forget set",
}

BENCHMARK_PLUGINS: dict[str, Benchmark] = {}


def register_benchmark(benchmark: Benchmark) -> Benchmark:
    """Add ``benchmark`` to :data:`BENCHMARK_PLUGINS` (a name registered twice is a bug)."""
    if benchmark.name in BENCHMARK_PLUGINS:
        raise ValueError(f"benchmark {benchmark.name} is registered twice")
    BENCHMARK_PLUGINS[benchmark.name] = benchmark
    return benchmark


def get_benchmark(name: str) -> Benchmark:
    """The registered benchmark ``name``; an unknown one fails in one line naming the valid."""
    if name not in BENCHMARK_PLUGINS:
        raise ConfigError(
            f"benchmark.name '{name}' is unknown; valid: {', '.join(BENCHMARK_PLUGINS)}"
        )
    return BENCHMARK_PLUGINS[name]


def check_data_folder(benchmark: Benchmark, data_path: str | Path) -> None:
    """A local folder given for ``benchmark`` holds its required files; else one line naming the
    first missing file and what the folder holds."""
    folder = Path(data_path).expanduser()
    if not folder.is_dir():
        return  # a hub id: the loader names what it cannot find
    if missing := benchmark.missing(folder):
        held = sorted(str(p.relative_to(folder)) for p in folder.rglob("*.json*"))[:8]
        raise ConfigError(
            f"data_path {folder} is not a {benchmark.title} folder: {missing[0]} is missing "
            f"(it holds {', '.join(held) or 'no .json files'})"
        )


def benchmark_record(b: Benchmark) -> dict[str, Any]:
    """One benchmark as plain data (the reference page, ``npo benchmarks``)."""
    head = b.metrics.headline
    return {
        "name": b.name,
        "title": b.title,
        "citation": b.citation,
        "hub_id": b.hub_id,
        "training": b.training,
        "layout": dict(b.layout),
        "required": list(b.required),
        "metrics": list(b.metric_keys),
        "headline": {
            "forget": head.forget,
            "forget_better": DIRECTIONS[head.forget_metric.direction].text,
            "utility": head.utility,
            "utility_better": DIRECTIONS[head.utility_metric.direction].text,
        },
        "standin": b.standin,
        "notes": list(b.notes),
    }


def list_benchmark_plugins() -> list[dict[str, Any]]:
    """Every registered benchmark as plain data, in registration order."""
    return [benchmark_record(b) for b in BENCHMARK_PLUGINS.values()]
