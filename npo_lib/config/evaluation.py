"""How `npo eval` runs and how the token heatmaps colour scores."""

from __future__ import annotations

from dataclasses import dataclass

from npo_lib.config.fields import group, need, opt


@dataclass
class DuringConfig:
    """Evaluation while a forget run trains: the same sets, options and retain reference as
    `npo eval`, on the model in memory, one line per point in ``<run>/trajectory.jsonl``; a
    checkpoint per point, a selection rule choosing the run's model, early stopping."""

    every_steps: int = opt(0, "evaluate every N optimizer steps (0 = off)")
    every_epoch: bool = opt(False, "evaluate at the end of every epoch")
    metrics: list[str] = opt(
        [],
        "aggregates to compute and log: [] = the cheap set (TOFU: forget / retain fact recall, "
        "forget quality, model utility; other benchmarks: the headline pair), [all] = every one",
    )
    keep: int = opt(
        2, "checkpoints kept at evaluation points: the most recent N plus the selected (0 = none)"
    )
    select: str = opt(
        "",
        "rule choosing the run's model among the points: 'max|min <metric> [s.t. <metric> >= "
        "<number> [x target]]'; '' = the last step",
    )
    patience: int = opt(
        0,
        "stop after this many points without improving the rule (or once its constraint failed "
        "and only fell over as many points); 0 = never stop early",
    )

    @property
    def enabled(self) -> bool:
        """Whether the run evaluates while it trains."""
        return self.every_steps > 0 or self.every_epoch

    def __post_init__(self) -> None:
        for name in ("every_steps", "keep", "patience"):
            value = getattr(self, name)
            need(value >= 0, f"eval.during.{name} must be >= 0, got {value}")
        need(
            not self.select or self.enabled,
            "eval.during.select needs eval.during.every_steps > 0 or eval.during.every_epoch",
        )
        need(
            not self.select or self.keep >= 1,
            "eval.during.select needs eval.during.keep >= 1 (the chosen point's checkpoint)",
        )
        need(
            not self.patience or bool(self.select), "eval.during.patience needs eval.during.select"
        )


@dataclass
class EvalConfig:
    """How `npo eval` runs. max_new_tokens, reasoning and the attacks' settings change the numbers
    (and the reuse key); batch sizes and flattening only the speed."""

    batch_size: int = opt(
        8, "items per teacher-forced forward (all their candidate answers together)"
    )
    gen_batch_size: int = opt(32, "prompts per greedy-generation batch")
    max_new_tokens: int = opt(200, "greedy generation budget (TOFU / open-unlearning: 200)")
    flatten: bool = opt(
        True, "one forward per batch of items with all their candidates; False: one forward per row"
    )
    reasoning: bool = opt(
        True, "also ZeroThink / LessThink answers on the forget set (think families)"
    )
    robustness: list[str] = opt(
        [],
        "attacks to run on a copy of the model: relearn, quant8, quant4, leak_at_k, format_shift "
        "(npo_lib.eval.robustness)",
    )
    relearn_steps: int = opt(20, "relearning attack: optimizer steps on the held forget questions")
    relearn_fraction: float = opt(
        0.2, "relearning attack: share of forget questions relearned on (the rest are measured)"
    )
    relearn_lr: float = opt(
        1e-5, "relearning attack: AdamW learning rate (hub models; the tiny models need ~1e-3)"
    )
    relearn_batch_size: int = opt(4, "relearning attack: examples per step")
    quant_group_size: int = opt(
        64, "quantization attacks: input columns per scale (round-to-nearest, symmetric)"
    )
    leak_k: int = opt(8, "leak@k: samples per forget question")
    leak_temperature: float = opt(1.0, "leak@k: sampling temperature")
    attack_seed: int = opt(0, "seed of the relearning split and steps and of the samples")
    generator: str = opt(
        "hf",
        "greedy / sampled generation engine: hf (transformers generate) or vllm (GPU, extra vllm; "
        "LLM.generate)",
    )
    mia_keep_eos: bool = opt(
        False,
        "Min-K%, Min-K%++, extraction strength and exact memorisation also score the appended EOS "
        "token; False = open-unlearning's convention (the papers are silent)",
    )
    during: DuringConfig = group(
        DuringConfig, "evaluation while `npo forget` trains (trajectory, selection, stopping)"
    )

    def __post_init__(self) -> None:
        for name in (
            "batch_size",
            "gen_batch_size",
            "max_new_tokens",
            "relearn_steps",
            "relearn_batch_size",
            "quant_group_size",
            "leak_k",
        ):
            need(getattr(self, name) >= 1, f"eval.{name} must be >= 1, got {getattr(self, name)}")
        need(
            0 < self.relearn_fraction < 1,
            f"eval.relearn_fraction must be in (0, 1), got {self.relearn_fraction}",
        )
        need(
            self.relearn_lr > 0 and self.leak_temperature > 0,
            "eval.relearn_lr and eval.leak_temperature must be > 0",
        )
        need(
            self.generator in ("hf", "vllm"),
            f"eval.generator must be hf or vllm, got {self.generator!r}",
        )


@dataclass
class VizConfig:
    """How the token heatmaps colour scores (the static page, the explorer, the dashboard)."""

    clip_percentile: float = opt(
        99.0,
        "colour range c: this percentile of the non-zero |score| over all examples; beyond ±c "
        "saturates (raw value on hover)",
    )
    gamma: float = opt(
        0.5,
        "colour position sign(s)·min(|s|/c, 1)^gamma: below 1 lifts small scores off white (0 "
        "stays white)",
    )
    scale: str = opt(
        "clip",
        "first shown scale: clip (shared c), example (c per example), rank (signed rank inside "
        "the example)",
    )
    compact: bool = opt(False, "the explorer starts in the one-line-per-example mode")

    def __post_init__(self) -> None:
        need(
            0 < self.clip_percentile <= 100,
            f"viz.clip_percentile must be in (0, 100], got {self.clip_percentile}",
        )
        need(0 < self.gamma <= 1, f"viz.gamma must be in (0, 1], got {self.gamma}")
        need(
            self.scale in ("clip", "example", "rank"),
            f"viz.scale must be clip, example or rank, got {self.scale!r}",
        )
