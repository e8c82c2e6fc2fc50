"""Every aggregate of ``metrics.json`` named once: its key, title, number format, which way it is
better and which views read it; and each benchmark's headline pairs.

The report table, the dashboard, the eval summary, the study's tables and the frontier readings
read keys, titles and directions from here (:func:`metrics_for`, :data:`BENCHMARKS`), so a metric
added here shows up in every view that declares it. The keys are those ``metrics.json`` has always
held: earlier evaluations stay readable.

Directions (:data:`DIRECTIONS`): ``higher`` / ``lower`` is better, ``zero`` (closer to 0 is
better: privleak, Shi et al. 2024, arXiv:2407.06460), ``reference`` (closer to the retain model's
value, with no better side on its own: the MIA AUCs, which privleak normalises).

A benchmark's headline pairs (:class:`MetricPair`) are what a method comparison reads at matched
utility: for TOFU (Maini et al. 2024, arXiv:2401.06121) forget quality vs model utility, and forget
fact recall vs retain fact recall. Another benchmark registers its metrics and pairs the same way
(:mod:`npo_lib.eval.benchmark_metrics`: MUSE's KnowMem and VerbMem, WMDP's accuracy vs MMLU).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Direction:
    """Which way a metric is better: ``goodness`` maps a value to a number where larger is better
    (None: no side is better on its own)."""

    arrow: str
    text: str
    goodness: Callable[[float], float] | None


DIRECTIONS: dict[str, Direction] = {
    "higher": Direction("↑", "higher is better", lambda v: v),
    "lower": Direction("↓", "lower is better", lambda v: -v),
    "zero": Direction("→0", "closer to 0 is better", lambda v: -abs(v)),
    "reference": Direction("≈", "closer to the retain model's value is better", None),
}

# The views a metric can appear in; what each shows of it.
VIEWS: dict[str, str] = {
    "report": "`npo report`'s table and CSV, the summary `npo eval` prints",
    "dashboard": "the run dashboard's sortable table (`npo report --html`, dashboard notebook)",
    "study": "`npo study`'s settings table (study_settings.csv: mean and std over seeds)",
    "frontier": "a headline pair the study reads on Pareto frontiers at matched utility",
}


@dataclass(frozen=True)
class Metric:
    """One aggregate of ``metrics.json``.

    ``fmt``: how a value prints; ``abbrev``: the short name of the study's tables (the title when
    empty); ``log``: the values span orders of magnitude (log axes, geometric means over seeds);
    ``step_key``: the registered statistic on a grid of steps that the value is a function of
    (forget quality, a KS p-value: the KS statistic D, a multiple of 1/n for n items), so a
    reading at matched utility carries it and an interval resting on one step says so.
    """

    key: str
    title: str
    fmt: str
    direction: str
    doc: str
    views: frozenset[str] = frozenset()
    abbrev: str = ""
    log: bool = False
    step_key: str = ""

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ValueError(f"metric {self.key}: unknown direction '{self.direction}'")
        if unknown := sorted(self.views - set(VIEWS)):
            raise ValueError(f"metric {self.key}: unknown view(s) {', '.join(unknown)}")

    def format(self, value: float | None) -> str:
        """The value as its views print it; an en dash for None."""
        return "–" if value is None else self.fmt.format(value)

    @property
    def label(self) -> str:
        """The title with its direction's arrow (``forget quality ↑``)."""
        return f"{self.title} {DIRECTIONS[self.direction].arrow}"

    @property
    def short(self) -> str:
        return self.abbrev or self.title

    def goodness(self, value: float) -> float:
        """``value`` on a scale where larger is better (a metric of ``reference`` direction has
        none: a bug to ask)."""
        better = DIRECTIONS[self.direction].goodness
        if better is None:
            raise ValueError(f"metric {self.key} has no better side on its own")
        return better(value)


METRICS: dict[str, Metric] = {}  # key -> metric, in the order the views show them


def register(metric: Metric) -> Metric:
    """Add ``metric`` to :data:`METRICS` (a key registered twice is a bug)."""
    if metric.key in METRICS:
        raise ValueError(f"metric {metric.key} is registered twice")
    METRICS[metric.key] = metric
    return metric


def metric(key: str) -> Metric:
    """The registered metric ``key``."""
    if key not in METRICS:
        raise KeyError(f"unknown metric '{key}'; registered: {', '.join(METRICS)}")
    return METRICS[key]


def metrics_for(view: str, held: Iterable[Mapping[str, Any]] | None = None) -> tuple[Metric, ...]:
    """The metrics ``view`` shows, in registration order; with ``held`` (the aggregates of the
    runs a table shows), only those some run holds, so a table of TOFU runs has no MUSE
    columns and one of MUSE runs no TOFU columns."""
    if view not in VIEWS:
        raise KeyError(f"unknown view '{view}'; valid: {', '.join(VIEWS)}")
    chosen = tuple(m for m in METRICS.values() if view in m.views)
    if held is None:
        return chosen
    keys = {k for agg in held for k in agg}
    return tuple(m for m in chosen if m.key in keys)


TABLE_VIEWS = frozenset({"report", "dashboard", "study"})  # the headline numbers' views
QA_SETS = ("forget", "retain", "real_authors", "world_facts")  # the question-answer sets
MIA_ATTACKS = ("loss", "zlib", "min_k", "min_k_plus_plus")  # membership-inference statistics
PRIVLEAK_ATTACK = "min_k"  # the attack headline privleak reads (open-unlearning's TOFU setting)

# The headline numbers, in the order the tables show them.
FORGET_QUALITY = register(
    Metric(
        "forget_quality",
        "forget quality",
        "{:.3g}",
        "higher",
        "KS-test p-value of the forget set's truth ratios against the retain model's (TOFU)",
        TABLE_VIEWS | {"frontier"},
        abbrev="FQ",
        log=True,
        step_key="forget_ks_stat",
    )
)
FORGET_KS_STAT = register(
    Metric(
        "forget_ks_stat",
        "forget KS statistic",
        "{:.3f}",
        "lower",
        "the KS statistic D behind forget quality: a multiple of 1/n for n forget items, so "
        "the p-value moves only when D moves by 1/n",
        frozenset({"study", "frontier"}),
        abbrev="D",
    )
)
MODEL_UTILITY = register(
    Metric(
        "model_utility",
        "model utility",
        "{:.3f}",
        "higher",
        "harmonic mean of Prob, ROUGE and truth ratio on retain, real authors, world facts (TOFU)",
        TABLE_VIEWS | {"frontier"},
        abbrev="MU",
    )
)
FORGET_FACT_RECALL = register(
    Metric(
        "forget_fact_recall",
        "forget fact recall",
        "{:.1%}",
        "lower",
        "share of forget questions whose greedy answer states the record's fact",
        TABLE_VIEWS | {"frontier"},
        abbrev="forget recall",
    )
)
RETAIN_FACT_RECALL = register(
    Metric(
        "retain_fact_recall",
        "retain fact recall",
        "{:.1%}",
        "higher",
        "share of retain questions whose greedy answer states the record's fact",
        TABLE_VIEWS | {"frontier"},
        abbrev="RR",
    )
)
FORGET_ROUGE = register(
    Metric(
        "forget_rouge",
        "forget ROUGE",
        "{:.3f}",
        "lower",
        "ROUGE-L recall of the greedy answers against the forget answers",
        TABLE_VIEWS,
    )
)
PRIVLEAK = register(
    Metric(
        "privleak",
        "privleak",
        "{:.1f}",
        "zero",
        f"MUSE's PrivLeak of the {PRIVLEAK_ATTACK} attack, forget vs holdout: 0 leaks like the "
        "retain model, -100 like the target",
        TABLE_VIEWS,
    )
)

# ----------------------------------------------------------------------------- per-set families


@dataclass(frozen=True)
class Family:
    """A quantity computed on several sets: key ``<set>_<quantity>``, on the forget set better
    ``forget_direction``, elsewhere ``other_direction`` (remembering is utility there)."""

    quantity: str
    title: str
    fmt: str
    sets: tuple[str, ...]
    doc: str
    forget_direction: str = "lower"
    other_direction: str = "higher"


FAMILIES: tuple[Family, ...] = (
    Family(
        "prob",
        "Prob",
        "{:.3f}",
        QA_SETS,
        "exp(−L̄) of the answer; real authors and world "
        "facts: normalised over the perturbed answers (TOFU)",
    ),
    Family(
        "truth_ratio",
        "truth ratio",
        "{:.3f}",
        QA_SETS,
        "forget: mean min(TR, 1/TR); other "
        "sets: mean max(0, 1 − TR), TR = P_perturbed / P_paraphrased (TOFU)",
        forget_direction="higher",
    ),
    Family("rouge", "ROUGE", "{:.3f}", QA_SETS, "ROUGE-L recall of the greedy answers"),
    Family(
        "fact_recall",
        "fact recall",
        "{:.1%}",
        QA_SETS,
        "share of greedy answers that state the record's fact (records with a fact)",
    ),
    Family(
        "trace_fact_recall",
        "trace fact recall",
        "{:.1%}",
        QA_SETS,
        "share of greedy reasoning traces that state the fact (think families)",
    ),
    Family(
        "cot_rouge",
        "CoT ROUGE",
        "{:.3f}",
        ("forget", "retain"),
        "ROUGE-L recall of the greedy trace against the record's CoT (R-TOFU)",
    ),
    Family(
        "cot_stepwise",
        "step-wise CoT",
        "{:.3f}",
        ("forget", "retain"),
        "best ROUGE-L recall of any generated step per reference step, mean (R-TOFU)",
    ),
    Family(
        "zerothink_rouge",
        "ZeroThink ROUGE",
        "{:.3f}",
        ("forget",),
        "ROUGE-L recall of the answer after an empty think block (R-TOFU)",
    ),
    Family(
        "lessthink_rouge",
        "LessThink ROUGE",
        "{:.3f}",
        ("forget",),
        "ROUGE-L recall of the answer after the LessThink sentence (R-TOFU)",
    ),
    Family(
        "extraction_strength",
        "extraction strength",
        "{:.3f}",
        ("forget",),
        "1 − k/|y|, k the shortest teacher-forced prefix after which every argmax is right",
    ),
    Family(
        "exact_memorisation",
        "exact memorisation",
        "{:.3f}",
        ("forget",),
        "share of answer tokens whose teacher-forced argmax is the label",
    ),
)

SET_TITLES = {"real_authors": "real authors", "world_facts": "world facts"}


def set_key(set_name: str, quantity: str) -> str:
    """The key of ``quantity`` on ``set_name`` (``forget_prob``); an unregistered one is a bug."""
    return metric(f"{set_name}_{quantity}").key


def mia_auc_key(attack: str) -> str:
    """The key of a membership-inference attack's AUC (``mia_min_k_auc``)."""
    return metric(f"mia_{attack}_auc").key


def privleak_key(attack: str) -> str:
    """The key of privleak under one attack (``privleak_min_k``)."""
    return metric(f"privleak_{attack}").key


def _register_families() -> None:
    for fam in FAMILIES:
        for s in fam.sets:
            if f"{s}_{fam.quantity}" in METRICS:  # a headline number, registered with its views
                continue
            way = fam.forget_direction if s == "forget" else fam.other_direction
            title = f"{SET_TITLES.get(s, s)} {fam.title}"
            register(Metric(f"{s}_{fam.quantity}", title, fam.fmt, way, fam.doc))
    for a in MIA_ATTACKS:
        register(
            Metric(
                f"mia_{a}_auc",
                f"MIA {a} AUC",
                "{:.3f}",
                "reference",
                f"AUC of telling forget (members) from holdout by the {a} statistic",
            )
        )
        register(
            Metric(
                f"privleak_{a}",
                f"privleak ({a})",
                "{:.1f}",
                "zero",
                f"privleak of the {a} attack against the retain model's AUC (MUSE)",
            )
        )


_register_families()


# ----------------------------------------------------------------------------- headline pairs


@dataclass(frozen=True)
class MetricPair:
    """A (utility, forgetting) pair a method comparison reads at matched utility: ``utility`` is
    better higher; ``forget`` better higher or lower. Both metrics declare the frontier view."""

    name: str
    forget: str
    utility: str

    def __post_init__(self) -> None:
        u, f = metric(self.utility), metric(self.forget)
        if u.direction != "higher" or f.direction not in ("higher", "lower"):
            raise ValueError(f"pair {self.name}: utility must be higher-better, forget one-sided")
        if "frontier" not in u.views or "frontier" not in f.views:
            raise ValueError(f"pair {self.name}: both metrics must declare the frontier view")

    @property
    def forget_metric(self) -> Metric:
        return metric(self.forget)

    @property
    def utility_metric(self) -> Metric:
        return metric(self.utility)

    @property
    def higher_forget(self) -> bool:
        return self.forget_metric.direction == "higher"

    @property
    def log(self) -> bool:
        """Interpolate and average the forgetting in log10 (a p-value spanning decades)."""
        return self.forget_metric.log

    @property
    def label(self) -> str:
        return f"{self.forget_metric.title} at matched {self.utility_metric.title}"

    def goodness(self, value: float) -> float:
        return self.forget_metric.goodness(value)

    @property
    def step_pair(self) -> MetricPair | None:
        """The forgetting's step statistic (:attr:`Metric.step_key`) against the same utility,
        read on its own frontier at the same levels (forget quality: the KS statistic D, which
        falls as the p-value rises, so the frontier holds the same runs); None when the
        forgetting has no such statistic (a recall, MUSE's KnowMem)."""
        key = self.forget_metric.step_key
        return MetricPair(f"{self.name}_step", key, self.utility) if key else None


@dataclass(frozen=True)
class BenchmarkMetrics:
    """What a benchmark's comparison reads: its pairs, the headline pair first."""

    name: str
    title: str
    pairs: tuple[MetricPair, ...]

    @property
    def headline(self) -> MetricPair:
        return self.pairs[0]


BENCHMARKS: dict[str, BenchmarkMetrics] = {
    "tofu": BenchmarkMetrics(
        "tofu",
        "TOFU",
        (
            MetricPair("fq_mu", FORGET_QUALITY.key, MODEL_UTILITY.key),
            MetricPair("recall", FORGET_FACT_RECALL.key, RETAIN_FACT_RECALL.key),
        ),
    ),
}
TOFU = BENCHMARKS["tofu"]


def register_pairs(pairs: BenchmarkMetrics) -> BenchmarkMetrics:
    """Add a benchmark's pairs to :data:`BENCHMARKS` (a name registered twice is a bug)."""
    if pairs.name in BENCHMARKS:
        raise ValueError(f"benchmark {pairs.name} has its pairs registered twice")
    BENCHMARKS[pairs.name] = pairs
    return pairs


# ----------------------------------------------------------------------------- listings


def metric_record(m: Metric) -> dict[str, Any]:
    """One metric as plain data (a docs page, a help string)."""
    return {
        "key": m.key,
        "title": m.title,
        "format": m.fmt,
        "direction": m.direction,
        "better": DIRECTIONS[m.direction].text,
        "views": [v for v in VIEWS if v in m.views],
        "log": m.log,
        "doc": m.doc,
    }


def list_metrics(view: str | None = None) -> list[dict[str, Any]]:
    """Every registered metric (or those ``view`` shows) as plain data, in registration order."""
    chosen: Iterable[Metric] = METRICS.values() if view is None else metrics_for(view)
    return [metric_record(m) for m in chosen]


def list_benchmarks() -> list[dict[str, Any]]:
    """Every benchmark's pairs as plain data: name, forget and utility keys, which way each is
    better, the scale the forgetting is read in."""
    return [
        {
            "name": b.name,
            "title": b.title,
            "headline": b.headline.name,
            "pairs": [
                {
                    "name": p.name,
                    "label": p.label,
                    "forget": p.forget,
                    "forget_better": DIRECTIONS[p.forget_metric.direction].text,
                    "utility": p.utility,
                    "utility_better": DIRECTIONS[p.utility_metric.direction].text,
                    "log": p.log,
                }
                for p in b.pairs
            ],
        }
        for b in BENCHMARKS.values()
    ]
