"""The one dataclass tree that holds every default of the project, each with its help text.

``Config`` is what a run reads; its groups nest as dotted keys (``LoRA.r=8``). The groups live
by concept: :mod:`.training` (``LoRA``, ``finetune``), :mod:`.embedded` (``benchmark``,
``tiny``), :mod:`.influence` (``selection``, ``influence``), :mod:`.evaluation` (``eval``,
``viz``), :mod:`.study` (``study``, the sweep's ``executor``); each objective's hyperparameters
(``npo``, ``simnpo``, ``wga``, ``satimp``, ``undial``, ``rmu``, ...) are the groups its module
under :mod:`npo_lib.objectives.losses` registers, placed after ``regularization_coeff``, their
flat aliases (``beta``, ``satimp_beta1``, ``rmu_layer``, ...) kept as keys (:mod:`.groups`).
Help texts use the papers' symbols; ``npo <command> --print-config`` shows them beside the
resolved values. The checks here need nothing but the values (types, ranges); names that a
registry owns (families, losses, scorers, selection methods) are checked by
:func:`npo_lib.commands.checks.check_config`, also before any model loads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from npo_lib.config.embedded import (
    BenchmarkConfig,
    MuseStandinConfig,
    TinyModelConfig,
    WmdpStandinConfig,
)
from npo_lib.config.evaluation import EvalConfig, VizConfig
from npo_lib.config.fields import group, need, opt
from npo_lib.config.groups import add_aliases, add_param_groups
from npo_lib.config.influence import InfluenceConfig, SelectionConfig
from npo_lib.config.plan import PlanConfig
from npo_lib.config.study import SWEEP_EXECUTORS, StudyConfig, SweepExecutorConfig
from npo_lib.config.training import FinetuneConfig, LoRAConfig

__all__ = [
    "SWEEP_EXECUTORS",
    "BenchmarkConfig",
    "Config",
    "EvalConfig",
    "FinetuneConfig",
    "InfluenceConfig",
    "LoRAConfig",
    "MuseStandinConfig",
    "PlanConfig",
    "SelectionConfig",
    "StudyConfig",
    "SweepExecutorConfig",
    "TinyModelConfig",
    "VizConfig",
    "WmdpStandinConfig",
]


@add_aliases
@dataclass
@add_param_groups(after="regularization_coeff")
class Config:
    """Everything a run needs. Names follow the NPO / TOFU papers and their code."""

    # --- model ---
    model_family: str = opt(
        "tiny", "model family: hub id, chat and think tags (npo_lib.models.families)"
    )
    model_path: str | None = opt(
        None, "local folder overriding the family's hub id / the embedded target"
    )
    retain_model_path: str | None = opt(
        None,
        "retain model (fine-tuned without the forget set) for forget quality, privleak and the "
        "contrast scorer; None = the embedded one (tiny family)",
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
    w_selected: float = opt(1.0, "INFLUENCE: weight of tokens the influence selection picked")
    w_other: float = opt(0.0, "INFLUENCE: weight of every other target token")
    forget_coeff: float = opt(1.0, "weight of the forget term")
    regularization_coeff: float = opt(1.0, "weight of each regularizer (GD, KL)")
    # --- optimisation ---
    lr: float = opt(1e-5, "peak learning rate (AdamW, linear decay)")
    num_epochs: int = opt(5, "epochs over the forget set")
    max_steps: int = opt(
        0, "> 0: stop after this many optimizer steps, whatever num_epochs says (WMDP's RMU: 150)"
    )
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
    plan: PlanConfig = group(PlanConfig, "`npo plan`: peak GPU memory estimated before a run")
    report_to: str = opt("none", "HF Trainer loggers: none, tensorboard, wandb, ...")
    logging_steps: int = opt(1, "optimizer steps between log lines")
    save_steps: int = opt(0, "checkpoint every N optimizer steps; 0 = every epoch")
    # --- token influence (INFLUENCE loss) ---
    influence_dir: str | None = opt(
        None,
        "folder with scores.safetensors / tokens.jsonl / meta.json; None = runs/influence beside "
        "the run",
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
    benchmark: BenchmarkConfig = group(
        BenchmarkConfig, "which benchmark plug-in (benchmark=NAME) and its stand-ins' generators"
    )
    tiny: TinyModelConfig = group(TinyModelConfig, "the embedded models and their recipe")

    def __post_init__(self) -> None:
        for name in (
            "lr",
            "num_epochs",
            "batch_size",
            "gradient_accumulation_steps",
            "max_length",
            "logging_steps",
        ):
            need(getattr(self, name) > 0, f"{name} must be > 0, got {getattr(self, name)}")
        need(self.max_steps >= 0, f"max_steps must be >= 0, got {self.max_steps}")
        need(
            self.save_steps >= 0 and self.warmup_epochs >= 0,
            f"save_steps and warmup_epochs must be >= 0, got {self.save_steps}, "
            f"{self.warmup_epochs}",
        )
        need(
            self.dtype in ("auto", "float32", "bfloat16", "float16"),
            f"dtype '{self.dtype}' is unknown; valid: auto, float32, bfloat16, float16",
        )
        need(
            self.ds_config is None or Path(self.ds_config).is_file(),
            f"ds_config file not found: {self.ds_config}",
        )

    @property
    def cache_path(self) -> Path:
        """``cache_dir`` with ``~`` and ``$TNPO_CACHE`` resolved (the variable wins when set)."""
        return Path(os.environ.get("TNPO_CACHE") or self.cache_dir).expanduser()
