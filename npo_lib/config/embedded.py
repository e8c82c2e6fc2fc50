"""The embedded default: the benchmark generator and the tiny Llama-architecture models."""

from __future__ import annotations

from dataclasses import dataclass

from npo_lib.config.fields import group, need, opt


@dataclass
class TinyModelConfig:
    """Architecture and fine-tuning recipe of the embedded Llama-architecture models
    (`npo prepare`)."""

    vocab_size: int = opt(1024, "byte-level BPE vocabulary trained on the benchmark text")
    hidden_size: int = opt(128, "model width")
    intermediate_size: int = opt(384, "MLP width")
    num_hidden_layers: int = opt(4, "decoder blocks")
    num_attention_heads: int = opt(4, "attention heads")
    num_key_value_heads: int = opt(4, "key/value heads (grouped-query attention when fewer)")
    max_position_embeddings: int = opt(256, "longest sequence the model takes")
    max_epochs: int = opt(
        40,
        "epoch budget: the learning rate decays linearly to 0 over it; training stops earlier "
        "once the recall bars hold",
    )
    zerothink_fraction: float = opt(
        0.5, "share of training QA also trained with an empty trace (ZeroThink form)"
    )
    lr: float = opt(6e-3, "peak learning rate (AdamW, linear decay over max_epochs, 5 % warm-up)")
    batch_size: int = opt(32, "fine-tuning batch size")
    seed: int = opt(0, "initialisation and data-order seed")

    def __post_init__(self) -> None:
        for name in ("max_epochs", "batch_size", "vocab_size"):
            need(getattr(self, name) >= 1, f"tiny.{name} must be >= 1, got {getattr(self, name)}")
        need(
            0 <= self.zerothink_fraction <= 1,
            f"tiny.zerothink_fraction must be in [0, 1], got {self.zerothink_fraction}",
        )
        need(self.lr > 0, f"tiny.lr must be > 0, got {self.lr}")


@dataclass
class MuseStandinConfig:
    """Size of the MUSE-like stand-in (``npo prepare benchmark=muse``): invented news articles
    in MUSE's layout, with ground-truth fact spans. Small by default: the tiny models read every
    article verbatim for tens of epochs on a CPU. ``forget_set`` is no generator setting: it
    picks the forget set a run unlearns, on the stand-in or on published MUSE data."""

    seed: int = opt(0, "generator seed: same settings give byte-identical files")
    n_forget: int = opt(8, "forget articles (raw/forget; verbmem, knowmem forget_qa, privleak)")
    n_retain: int = opt(
        16, "retain articles, halved into retain1 (calibration) and retain2 (evaluation)"
    )
    n_holdout: int = opt(8, "articles never trained on (privleak holdout)")
    qa_per_article: int = opt(2, "knowmem questions per article")
    n_icl: int = opt(3, "few-shot examples per knowmem file, from articles in no split")
    forget_set: str = opt(
        "forget",
        "the forget set a run unlearns: forget (raw/forget), scal_1..4 (scalability: the first "
        "k quarters of forget, nested) or sust_1..4 (sustainability: the k-th quarter)",
    )


@dataclass
class WmdpStandinConfig:
    """Size of the WMDP-like stand-in (``npo prepare benchmark=wmdp``): an invented, harmless
    "restricted" domain (the keeping of invented creatures) and a general one (invented islands),
    each a corpus with its multiple-choice questions. Small by default, so the tiny models'
    fine-tuning fits a CPU."""

    seed: int = opt(0, "generator seed: same settings give byte-identical files")
    n_forget_docs: int = opt(8, "forget-corpus documents (the restricted domain)")
    n_retain_docs: int = opt(8, "retain-corpus documents (the general domain, MMLU's stand-in)")
    forget_facts_per_doc: int = opt(4, "facts per forget document, one question each")
    retain_facts_per_doc: int = opt(4, "facts per retain document, one question each")


@dataclass
class BenchmarkConfig:
    """Which benchmark a run is on (``benchmark=muse`` is short for ``benchmark.name=muse``),
    and the settings of the embedded TOFU generator (fictitious authors, R-TOFU layout)."""

    name: str = opt(
        "tofu",
        "benchmark plug-in: its data layout, training views, metrics and headline pair "
        "(docs/reference/benchmarks.md lists them)",
    )
    muse: MuseStandinConfig = group(
        MuseStandinConfig, "the MUSE-like stand-in's size, and which MUSE forget set a run unlearns"
    )
    wmdp: WmdpStandinConfig = group(WmdpStandinConfig, "the WMDP-like stand-in's size")
    seed: int = opt(0, "generator seed: same settings give byte-identical files")
    n_authors: int = opt(40, "fictitious authors in the training data (full.json)")
    questions_per_author: int = opt(
        10, "QA pairs per author: the first N attributes of the generator"
    )
    n_holdout_authors: int = opt(4, "authors never trained on (membership-inference holdout)")
    n_retain_eval_authors: int = opt(
        4, "training authors in no forget task (retain_perturbed.json)"
    )
    n_perturbed: int = opt(5, "perturbed (wrong) answers per QA, for the truth ratio")
    n_tasks: int = opt(10, "max number of forget tasks per split (R-TOFU has 10)")

    def __post_init__(self) -> None:
        for name, lo in (
            ("seed", 0),
            ("n_authors", 1),
            ("questions_per_author", 1),
            ("n_holdout_authors", 0),
            ("n_retain_eval_authors", 0),
            ("n_perturbed", 1),
            ("n_tasks", 1),
        ):
            value = getattr(self, name)
            need(
                isinstance(value, int) and not isinstance(value, bool),
                f"benchmark.{name} must be an integer, got {value!r}",
            )
            need(value >= lo, f"benchmark.{name} must be >= {lo}, got {value}")
