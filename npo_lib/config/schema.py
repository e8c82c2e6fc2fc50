"""The one dataclass tree that holds every default of the project, each with its help text.

``Config`` is what a run reads; its groups (``LoRA``, ``tiny``, ``benchmark``, ``selection``,
``influence``, ``eval``, ``study``) nest as dotted keys (``LoRA.r=8``). Help texts use the
papers' symbols; ``npo <command> --print-config`` shows them beside the resolved values. The
checks here need nothing but the values (types, ranges); names that a registry owns (families,
losses, scorers, selection methods) are checked by :func:`npo_lib.commands.checks.check_config`,
also before any model loads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from npo_lib.errors import ConfigError


def opt(default: Any, help: str) -> Any:
    """A leaf field with its help text (a list default is copied per instance)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


def group(cls: type, help: str) -> Any:
    """A nested group of fields (a dataclass of its own)."""
    return field(default_factory=cls, metadata={"help": help})


def _need(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


@dataclass
class LoRAConfig:
    """peft LoRA on every linear layer except ``lm_head``; ``r=0`` means full fine-tuning."""

    r: int = opt(0, "adapter rank; 0 disables LoRA (full fine-tuning)")
    alpha: int = opt(32, "scaling numerator: the update is (alpha / r) · B A")
    dropout: float = opt(0.05, "dropout on the adapter input")

    def __post_init__(self) -> None:
        _need(self.r >= 0, f"LoRA.r must be >= 0, got {self.r}")
        _need(0 <= self.dropout < 1, f"LoRA.dropout must be in [0, 1), got {self.dropout}")


@dataclass
class TinyModelConfig:
    """Architecture and fine-tuning recipe of the embedded Llama-architecture models (`npo prepare`)."""

    vocab_size: int = opt(1024, "byte-level BPE vocabulary trained on the benchmark text")
    hidden_size: int = opt(128, "model width")
    intermediate_size: int = opt(384, "MLP width")
    num_hidden_layers: int = opt(4, "decoder blocks")
    num_attention_heads: int = opt(4, "attention heads")
    num_key_value_heads: int = opt(4, "key/value heads (grouped-query attention when fewer)")
    max_position_embeddings: int = opt(256, "longest sequence the model takes")
    max_epochs: int = opt(
        40,
        "epoch budget: the learning rate decays linearly to 0 over it; training stops earlier once the recall bars hold",
    )
    zerothink_fraction: float = opt(
        0.5, "share of training QA also trained with an empty trace (ZeroThink form)"
    )
    lr: float = opt(6e-3, "peak learning rate (AdamW, linear decay over max_epochs, 5 % warm-up)")
    batch_size: int = opt(32, "fine-tuning batch size")
    seed: int = opt(0, "initialisation and data-order seed")

    def __post_init__(self) -> None:
        for name in ("max_epochs", "batch_size", "vocab_size"):
            _need(getattr(self, name) >= 1, f"tiny.{name} must be >= 1, got {getattr(self, name)}")
        _need(
            0 <= self.zerothink_fraction <= 1,
            f"tiny.zerothink_fraction must be in [0, 1], got {self.zerothink_fraction}",
        )
        _need(self.lr > 0, f"tiny.lr must be > 0, got {self.lr}")


@dataclass
class FinetuneConfig:
    """`npo finetune`: the target (all training data) or the retain model (without the forget set).

    Defaults are TOFU's published recipe (Maini et al. 2024): ``config/finetune.yaml`` of its
    repository sets lr 1e-5, 5 epochs, weight decay 0.01 and batch 16 per GPU on 2 GPUs (an
    effective batch of 32; open-unlearning: 4 per GPU x 4 accumulated x 2 GPUs), and its
    ``finetune.py`` warms up linearly for one epoch. `npo prepare` sets the tiny models' recipe.
    """

    model: str = opt(
        "target",
        "target (every training record, forget set included) or retain (without the forget split / task)",
    )
    lr: float = opt(1e-5, "peak learning rate (AdamW, linear decay); TOFU: 1e-5")
    num_epochs: int = opt(5, "epoch budget; TOFU: 5")
    batch_size: int = opt(4, "examples per device and step")
    effective_batch_size: int = opt(
        32, "examples per optimizer update = batch_size x gradient accumulation x ranks; TOFU: 32"
    )
    warmup_epochs: float = opt(1.0, "linear warm-up length in epochs; TOFU: 1")
    weight_decay: float = opt(0.01, "AdamW weight decay; TOFU: 0.01")
    zerothink_fraction: float = opt(
        0.0, "share of training QA also trained with an empty trace (ZeroThink form)"
    )
    extra_sets: list[str] = opt(
        [],
        "evaluation sets also trained on (both models); TOFU: none; npo prepare: real_authors_perturbed, world_facts_perturbed",
    )
    stop_forget_recall: float | None = opt(
        None,
        "target: stop once memorisation of the forget split reaches this (greedy fact recall; ROUGE-L recall of the answers without fact fields)",
    )
    stop_retain_recall: float | None = opt(
        None,
        "stop once memorisation of the retain check set (retain_perturbed, else a retain sample) reaches this",
    )
    stop_loss: float | None = opt(None, "stop once an epoch's mean training loss is at most this")
    check_every: int = opt(2, "epochs between the checks of the stop criterion")
    patience: int = opt(
        1, "consecutive checks at which the criterion must hold before training stops"
    )

    def __post_init__(self) -> None:
        _need(
            self.model in ("target", "retain"),
            f"finetune.model '{self.model}' is unknown; valid: target, retain",
        )
        for name in (
            "lr",
            "num_epochs",
            "batch_size",
            "effective_batch_size",
            "check_every",
            "patience",
        ):
            _need(
                getattr(self, name) > 0, f"finetune.{name} must be > 0, got {getattr(self, name)}"
            )
        _need(
            self.warmup_epochs >= 0 and self.weight_decay >= 0,
            "finetune.warmup_epochs and finetune.weight_decay must be >= 0",
        )
        _need(
            0 <= self.zerothink_fraction <= 1,
            f"finetune.zerothink_fraction must be in [0, 1], got {self.zerothink_fraction}",
        )
        for name in ("stop_forget_recall", "stop_retain_recall"):
            value = getattr(self, name)
            _need(
                value is None or 0 < value <= 1, f"finetune.{name} must be in (0, 1], got {value}"
            )


@dataclass
class BenchmarkConfig:
    """Settings of the embedded benchmark generator (fictitious authors, R-TOFU layout)."""

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
            _need(
                isinstance(value, int) and not isinstance(value, bool),
                f"benchmark.{name} must be an integer, got {value!r}",
            )
            _need(value >= lo, f"benchmark.{name} must be >= {lo}, got {value}")


@dataclass
class SelectionConfig:
    """Which target tokens INFLUENCE unlearns, from their influence scores."""

    method: str = opt(
        "top_p",
        "top_k (per example), top_p (global % of tokens), threshold, zscore; controls: random, oracle (fact_spans), inverse (lowest scores)",
    )
    budget: str = opt(
        "top_p",
        "random / oracle / inverse: select as many tokens as top_p (global p %) or top_k (k per example) would",
    )
    seed: int | None = opt(None, "random / oracle: seed of the random draw; None = the run's seed")
    k: int = opt(5, "top_k: tokens per example")
    p: float = opt(10.0, "top_p: percent of all target tokens of the split, highest scores first")
    threshold: float = opt(0.0, "threshold: select tokens scoring above it")
    z: float = opt(
        1.0, "zscore: select tokens more than z standard deviations above their example's mean"
    )
    window: int = opt(0, "also select this many tokens either side of a selected one")
    whole_words: bool = opt(True, "extend a selection to every token of the words it touches")
    soft: bool = opt(False, "weights grow with the score instead of a hard w_selected / w_other")

    def __post_init__(self) -> None:
        _need(
            self.k >= 1 and 0 < self.p <= 100 and self.window >= 0 and self.z >= 0,
            f"selection: need k >= 1, 0 < p <= 100, window >= 0, z >= 0; got k={self.k}, p={self.p}, "
            f"window={self.window}, z={self.z}",
        )


@dataclass
class InfluenceConfig:
    """Per-token influence scores for INFLUENCE (`npo influence`).

    s_it = vᵀ ∇θ_S ℓ_it with v = P⁻¹ (ḡ_forget − λ ḡ_retain) over the tracked parameters θ_S.
    """

    scorer: str = opt(
        "differential",
        "differential, gradient_dot (ḡ_forget, P = I), contrast (log p_target − log p_retain), kronfluence (optional package)",
    )
    preconditioner: str = opt(
        "ekfac",
        "P: identity, diagonal (empirical Fisher), kfac, ekfac (eigenvalue-corrected K-FAC)",
    )
    lam: float = opt(1.0, "λ, weight of the retain gradient in the direction")
    modules: str = opt(
        "all_linear", "θ_S: all_linear (every Linear but lm_head), mlp, last_n, lora (LoRA.r > 0)"
    )
    last_n_layers: int = opt(1, "modules=last_n: how many of the last decoder blocks")
    method: str = opt(
        "jvp",
        "row scores: jvp (forward-mode, exact) or fd (symmetric finite difference, two forwards)",
    )
    dtype: str = opt("float32", "scoring precision: float32, or float64 (exactness checks)")
    damping: float = opt(
        1e-4, "P + damping · mean eigenvalue of P, per layer (diagonal, kfac, ekfac)"
    )
    fd_eps: float | None = opt(
        None,
        "fd step h: the largest token-loss change of a step, in nats; None = 3e-3 (float32), 1e-4 (float64)",
    )
    retain_samples: int = opt(
        0, "retain examples for ḡ_retain (and P); 0 = as many as the forget set"
    )
    batch_size: int = opt(8, "sequences per forward / backward")

    def __post_init__(self) -> None:
        _need(
            self.dtype in ("float32", "float64"),
            f"influence.dtype '{self.dtype}' is unknown; valid: float32, float64",
        )
        _need(
            self.method in ("jvp", "fd"),
            f"influence.method '{self.method}' is unknown; valid: jvp, fd",
        )
        for key in ("damping", "fd_eps"):
            value = getattr(self, key)
            _need(value is None or value > 0, f"influence.{key} must be > 0, got {value}")
        _need(
            self.lam >= 0
            and self.retain_samples >= 0
            and self.last_n_layers >= 1
            and self.batch_size >= 1,
            "influence: need lam >= 0, retain_samples >= 0, last_n_layers >= 1, batch_size >= 1; "
            f"got lam={self.lam}, retain_samples={self.retain_samples}, last_n_layers={self.last_n_layers}, "
            f"batch_size={self.batch_size}",
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
        "attacks to run on a copy of the model: relearn, quant8, quant4, leak_at_k, format_shift (npo_lib.eval.robustness)",
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
        "greedy / sampled generation engine: hf (transformers generate) or vllm (GPU, extra vllm; LLM.generate)",
    )
    mia_keep_eos: bool = opt(
        False,
        "Min-K%, Min-K%++, extraction strength and exact memorisation also score the appended EOS token; False = open-unlearning's convention (the papers are silent)",
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
            _need(getattr(self, name) >= 1, f"eval.{name} must be >= 1, got {getattr(self, name)}")
        _need(
            0 < self.relearn_fraction < 1,
            f"eval.relearn_fraction must be in (0, 1), got {self.relearn_fraction}",
        )
        _need(
            self.relearn_lr > 0 and self.leak_temperature > 0,
            "eval.relearn_lr and eval.leak_temperature must be > 0",
        )
        _need(
            self.generator in ("hf", "vllm"),
            f"eval.generator must be hf or vllm, got {self.generator!r}",
        )


@dataclass
class StudyConfig:
    """How `npo study` compares the methods of a finished sweep."""

    group_by: list[str] = opt(
        ["forget_loss", "lr", "num_epochs"],
        "config keys of a setting; the seed varies inside a group",
    )
    mu_fraction: float = opt(0.95, "utility floor as a fraction of the target's model utility")
    strict_fraction: float = opt(
        0.98, "the second, stricter utility level, as a fraction of the target's"
    )
    method_keys: list[str] = opt(
        [
            "forget_loss",
            "selection.method",
            "selection.budget",
            "selection.p",
            "selection.k",
            "selection.seed",
            "influence.scorer",
            "influence.preconditioner",
        ],
        "config keys that name a method (selection.* / influence.* only for objectives reading token weights; keys at their default are left out)",
    )
    strength_keys: list[str] = opt(
        ["lr", "num_epochs", "forget_coeff"],
        "config keys a method's frontier is swept over (its strength)",
    )
    benchmark_keys: list[str] = opt(
        ["benchmark.n_authors", "benchmark.seed"], "config keys that tell benchmarks apart"
    )
    claim: str = opt("INFLUENCE+GD", "the method the verdict is about")
    rivals: list[str] = opt(
        ["NPO+GD", "TNPO+GD", "WGA+GD", "SatImp+GD"], "the methods it must beat at matched utility"
    )
    attacks: list[str] = opt(
        ["relearn", "quant4"],
        "robustness columns: forget fact recall after these attacks (eval.robustness) at the matched setting",
    )
    seeds: list[int] = opt(
        [0, 1, 2], "--extend: every seed for points near the floor (the first seed alone scouts)"
    )
    near: float = opt(
        0.01, "--extend: points within this model utility of the floor get every seed"
    )
    limits: list[float] = opt(
        [3.2e-3, 40, 8.0], "--extend: largest value of each strength key, in strength_keys' order"
    )
    factor: float = opt(2.0, "--extend: each step multiplies a strength key by this")

    def __post_init__(self) -> None:
        _need(
            bool(self.group_by),
            "study.group_by must name at least one config key, e.g. [forget_loss]",
        )
        _need(
            0 < self.mu_fraction <= 1,
            f"study.mu_fraction must be in (0, 1], got {self.mu_fraction}",
        )
        _need(
            0 < self.strict_fraction <= 1,
            f"study.strict_fraction must be in (0, 1], got {self.strict_fraction}",
        )
        _need(
            len(self.limits) == len(self.strength_keys),
            f"study.limits needs one value per strength key ({', '.join(self.strength_keys)})",
        )
        _need(
            bool(self.seeds) and self.near >= 0 and self.factor > 1,
            f"study: need seeds, near >= 0, factor > 1; got seeds={self.seeds}, near={self.near}, factor={self.factor}",
        )


@dataclass
class VizConfig:
    """How the token heatmaps colour scores (the static page, the explorer, the dashboard)."""

    clip_percentile: float = opt(
        99.0,
        "colour range c: this percentile of the non-zero |score| over all examples; beyond ±c saturates (raw value on hover)",
    )
    gamma: float = opt(
        0.5,
        "colour position sign(s)·min(|s|/c, 1)^gamma: below 1 lifts small scores off white (0 stays white)",
    )
    scale: str = opt(
        "clip",
        "first shown scale: clip (shared c), example (c per example), rank (signed rank inside the example)",
    )
    compact: bool = opt(False, "the explorer starts in the one-line-per-example mode")

    def __post_init__(self) -> None:
        _need(
            0 < self.clip_percentile <= 100,
            f"viz.clip_percentile must be in (0, 100], got {self.clip_percentile}",
        )
        _need(0 < self.gamma <= 1, f"viz.gamma must be in (0, 1], got {self.gamma}")
        _need(
            self.scale in ("clip", "example", "rank"),
            f"viz.scale must be clip, example or rank, got {self.scale!r}",
        )


SWEEP_EXECUTORS = ("thread", "local", "slurm")


@dataclass
class SweepExecutorConfig:
    """Where `npo sweep` runs its grid points (the sweep file's ``executor:`` block): threads of
    this process, submitit jobs on this machine (one process per point, its own GPUs), or a
    SLURM job array through submitit (one array task per point)."""

    kind: str = opt(
        "thread",
        "thread (today's pool), local (submitit processes) or slurm (submitit job array); --executor overrides",
    )
    gpus_per_run: int = opt(
        1, "GPUs each point gets (CUDA_VISIBLE_DEVICES locally, --gpus-per-node on SLURM); 0 = none"
    )
    partition: str | None = opt(
        None, "SLURM partition (sbatch --partition); None = the cluster's default"
    )
    account: str | None = opt(None, "SLURM account (sbatch --account)")
    qos: str | None = opt(None, "SLURM quality of service (sbatch --qos)")
    cpus_per_run: int = opt(8, "CPU cores per point (sbatch --cpus-per-task)")
    mem_gb: int = opt(64, "memory per point in GB (sbatch --mem)")
    timeout_min: int = opt(
        24 * 60,
        "wall-clock limit per point in minutes (sbatch --time); a timed-out point is requeued",
    )
    array_parallelism: int = opt(
        8, "points of the job array running at once (sbatch --array=...%N)"
    )
    max_requeues: int = opt(
        3, "times a pre-empted or timed-out point is requeued before it counts as failed"
    )
    setup: list[str] = opt(
        [],
        "shell lines run in the sbatch script before the job (module load ..., source .venv/bin/activate)",
    )
    extra_sbatch: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "further sbatch flags, e.g. {constraint: a100, exclusive: true}"},
    )
    folder: str | None = opt(None, "where submitit keeps job pickles and logs; None = <sweep>/jobs")

    def __post_init__(self) -> None:
        _need(
            self.kind in SWEEP_EXECUTORS,
            f"executor.kind must be one of {', '.join(SWEEP_EXECUTORS)}, got {self.kind!r}",
        )
        _need(
            self.gpus_per_run >= 0, f"executor.gpus_per_run must be >= 0, got {self.gpus_per_run}"
        )
        for name in ("cpus_per_run", "mem_gb", "timeout_min", "array_parallelism"):
            _need(
                getattr(self, name) >= 1, f"executor.{name} must be >= 1, got {getattr(self, name)}"
            )
        _need(
            self.max_requeues >= 0, f"executor.max_requeues must be >= 0, got {self.max_requeues}"
        )


@dataclass
class Config:
    """Everything a run needs. Names follow the seed scripts and the NPO / TOFU papers."""

    # --- model ---
    model_family: str = opt(
        "tiny", "model family: hub id, chat and think tags (npo_lib.models.families)"
    )
    model_path: str | None = opt(
        None, "local folder overriding the family's hub id / the embedded target"
    )
    retain_model_path: str | None = opt(
        None,
        "retain model (fine-tuned without the forget set) for forget quality, privleak and the contrast scorer; None = the embedded one (tiny family)",
    )
    trust_remote_code: bool = opt(False, "passed to from_pretrained; off unless asked")
    dtype: str = opt("auto", "auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16")
    # --- data ---
    data_path: str | None = opt(
        None, "folder or hub dataset id of TOFU / R-TOFU files; None = the embedded benchmark"
    )
    split: str = opt("forget10", "forget01 / forget05 / forget10")
    task_id: int | None = opt(1, "R-TOFU task inside the split; None = every task of the split")
    max_length: int = opt(512, "tokens per view (prompt + target); the target is cut on the right")
    # --- objective ---
    forget_loss: str = opt(
        "NPO+GD", "forget term, then regularizers, joined by '+' (npo losses lists them)"
    )
    beta: float = opt(0.1, "NPO / TNPO / INFLUENCE temperature β")
    simnpo_beta: float = opt(2.5, "SimNPO's β (its own default, reference-free, length-normalised)")
    gamma: float | None = opt(
        None, "SimNPO reward margin γ of the paper's equation (None: simnpo_beta·delta, or 0)"
    )
    delta: float | None = opt(
        None,
        "SimNPO margin δ as its authors' code and open-unlearning write it (γ = simnpo_beta·δ); set gamma or delta",
    )
    wga_beta: float = opt(1.0, "WGA weight exponent β (Wang et al. 2025: 1)")
    satimp_beta1: float = opt(5.0, "SatImp saturation exponent β1 (open-unlearning: 5)")
    satimp_beta2: float = opt(1.0, "SatImp importance exponent β2 (open-unlearning: 1)")
    undial_beta: float = opt(10.0, "UNDIAL logit reduction β (Dong et al. 2024 search 3, 10, 30)")
    rmu_layer: int = opt(
        7,
        "RMU / ACT: decoder block ℓ (0-based, below the last) whose output activations they read (WMDP, open-unlearning: 7)",
    )
    rmu_steering_coeff: float = opt(
        20.0,
        "RMU steering coefficient c: forget activations are pushed towards c·u, u a fixed seeded random unit vector (open-unlearning: 20; WMDP: 6.5 for Zephyr-7B)",
    )
    rmu_alpha: float = opt(
        1.0, "ACT weight α: α·(1/d)‖h_ℓ − h_ℓ^ref‖² on retain targets (WMDP: 1200 for Zephyr-7B)"
    )
    rmu_trainable_layers: list[int] = opt(
        [], "with RMU / ACT, only these decoder blocks train; [] = ℓ−2..ℓ (WMDP, open-unlearning)"
    )
    rmu_trainable_modules: list[str] = opt(
        ["mlp.down_proj"],
        "with RMU / ACT, only parameters under these submodules of the trainable blocks train ([] = the whole blocks; WMDP, open-unlearning: mlp.down_proj)",
    )
    w_selected: float = opt(1.0, "INFLUENCE: weight of tokens the influence selection picked")
    w_other: float = opt(0.0, "INFLUENCE: weight of every other target token")
    forget_coeff: float = opt(1.0, "weight of the forget term")
    regularization_coeff: float = opt(1.0, "weight of each regularizer (GD, KL)")
    # --- optimisation ---
    lr: float = opt(1e-5, "peak learning rate (AdamW, linear decay)")
    num_epochs: int = opt(5, "epochs over the forget set")
    batch_size: int = opt(4, "forget examples per device and step")
    gradient_accumulation_steps: int = opt(1, "steps accumulated per optimizer update")
    weight_decay: float = opt(0.01, "AdamW weight decay")
    seed: int = opt(42, "data order, retain pairing and IDK draws")
    warmup_epochs: float = opt(
        1.0, "linear warm-up length in epochs (the TOFU / NPO scripts use 1)"
    )
    gradient_checkpointing: bool | None = opt(None, "None = the family's default")
    LoRA: LoRAConfig = group(LoRAConfig, "LoRA adapters instead of full fine-tuning")
    save_merged: bool = opt(False, "with LoRA: also save the adapter merged into the base weights")
    ds_config: str | None = opt(None, "DeepSpeed JSON config, e.g. params/ds/zero2.json")
    report_to: str = opt("none", "HF Trainer loggers: none, tensorboard, wandb, ...")
    logging_steps: int = opt(1, "optimizer steps between log lines")
    save_steps: int = opt(0, "checkpoint every N optimizer steps; 0 = every epoch")
    # --- token influence (INFLUENCE loss) ---
    influence_dir: str | None = opt(
        None,
        "folder with scores.safetensors / tokens.jsonl / meta.json; None = runs/influence beside the run",
    )
    selection: SelectionConfig = group(SelectionConfig, "which tokens INFLUENCE unlearns")
    influence: InfluenceConfig = group(InfluenceConfig, "how `npo influence` scores tokens")
    # --- evaluation and comparison ---
    eval: EvalConfig = group(EvalConfig, "how `npo eval` runs")
    study: StudyConfig = group(StudyConfig, "how `npo study` compares methods")
    viz: VizConfig = group(VizConfig, "how the token heatmaps colour scores")
    finetune: FinetuneConfig = group(
        FinetuneConfig, "how `npo finetune` makes a target or retain model"
    )
    # --- files ---
    save_dir: str | None = opt(None, "run folder; None = runs/<derived name>")
    resume: bool = opt(False, "continue an interrupted run from its last checkpoint")
    overwrite: bool = opt(False, "allow replacing a finished run folder")
    cache_dir: str = opt(
        "~/.cache/tnpo", "embedded benchmark, tiny models, cached evaluations ($TNPO_CACHE wins)"
    )
    # --- embedded default ---
    benchmark: BenchmarkConfig = group(BenchmarkConfig, "the embedded benchmark generator")
    tiny: TinyModelConfig = group(TinyModelConfig, "the embedded models and their recipe")

    def __post_init__(self) -> None:
        for name in (
            "lr",
            "num_epochs",
            "batch_size",
            "gradient_accumulation_steps",
            "max_length",
            "beta",
            "simnpo_beta",
            "logging_steps",
        ):
            _need(getattr(self, name) > 0, f"{name} must be > 0, got {getattr(self, name)}")
        _need(
            self.save_steps >= 0 and self.warmup_epochs >= 0,
            f"save_steps and warmup_epochs must be >= 0, got {self.save_steps}, {self.warmup_epochs}",
        )
        _need(
            self.dtype in ("auto", "float32", "bfloat16", "float16"),
            f"dtype '{self.dtype}' is unknown; valid: auto, float32, bfloat16, float16",
        )
        _need(
            self.ds_config is None or Path(self.ds_config).is_file(),
            f"ds_config file not found: {self.ds_config}",
        )
        _need(
            self.gamma is None or self.delta is None,
            f"set SimNPO's gamma or delta (γ = simnpo_beta·δ), not both: gamma={self.gamma}, delta={self.delta}",
        )
        for name in (
            "wga_beta",
            "satimp_beta1",
            "satimp_beta2",
            "undial_beta",
            "rmu_steering_coeff",
            "rmu_alpha",
            "rmu_layer",
        ):
            _need(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")

    @property
    def cache_path(self) -> Path:
        """``cache_dir`` with ``~`` and ``$TNPO_CACHE`` resolved (the variable wins when set)."""
        return Path(os.environ.get("TNPO_CACHE") or self.cache_dir).expanduser()
