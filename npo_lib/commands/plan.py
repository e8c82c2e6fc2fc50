"""`npo plan`: a run's peak GPU memory per device, estimated from its resolved config before any
model loads, and whether it fits (:mod:`npo_lib.models.memory` holds the equations).

The config decides each input of the estimate:

- the model's sizes: ``plan.model_config``, else the model folder's ``config.json``, else the
  one shipped for the family's hub id (``npo_lib/models/configs/``);
- dtype: ``auto`` is bf16 (a GPU run), ``float32`` 4 bytes, ``bfloat16`` / ``float16`` 2;
- ZeRO: ``ds_config``'s ``zero_optimization.stage`` (no ``ds_config``: torch AdamW, no
  DeepSpeed); devices: ``plan.gpus``, else ``$WORLD_SIZE``, else 1;
- the reference: NPO / TNPO / INFLUENCE cache log p_ref once (no second model); KL / UNDIAL /
  ACT keep a frozen copy without LoRA and use the base with the adapter off under LoRA
  (:mod:`npo_lib.training.inputs`); ``plan.reference=live`` plans a frozen copy for any
  objective that reads p_ref (as implementations without a cache do);
- activations: ``batch_size`` × ``max_length`` (every view padded to the full length: an upper
  bound), once per view the objective trains on, with the family's or the configured gradient
  checkpointing; ``npo finetune`` uses ``finetune.batch_size``, ``npo influence``
  ``influence.batch_size`` and adds its preconditioner's factors and θ_S's gradients.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from npo_lib.config import Config
from npo_lib.errors import ConfigError
from npo_lib.models.families import ModelFamily
from npo_lib.models.memory import (
    GIB,
    Estimate,
    Setup,
    Shape,
    estimate,
    family_config,
    format_table,
    kfac_factors,
    tracked_linears,
)
from npo_lib.objectives.registry import LossSpec

PLAN_COMMANDS = ("forget", "finetune", "influence")
CACHED_INPUTS = {"ref_seq_logp", "ref_token_logp"}  # p_ref read from the cache
FROZEN_INPUTS = {"ref_logits": "retain", "ref_hidden": "retain", "ref_forget_logits": None}
LORA_SUGGESTION = 8  # the rank a refusal proposes


@dataclass
class Plan:
    """One planned run: its estimate, the budget it is compared with, and what it assumed."""

    command: str
    model: str  # where the sizes were read
    setup: Setup
    estimate: Estimate
    budget_gb: float

    @property
    def total_gb(self) -> float:
        return self.estimate.total / GIB

    @property
    def fits(self) -> bool:
        return self.total_gb <= self.budget_gb

    def table(self) -> str:
        """The parts, the total and the verdict, with the assumptions under them."""
        s = self.setup
        zero = "no DeepSpeed" if s.zero_stage is None else f"ZeRO-{s.zero_stage}"
        head = (
            f"npo {self.command}: {self.estimate.params / 1e9:.3f} B parameters "
            f"({self.estimate.trainable / 1e6:.2f} M trainable) from {self.model}; "
            f"{zero} over {s.gpus} GPU(s), batch {s.batch} x {s.length} tokens, "
            f"{s.weight_bytes}-byte weights, checkpointing {'on' if s.checkpointing else 'off'}"
        )
        notes = [f"  {n}" for n in self.estimate.notes]
        return "\n".join([head, format_table(self.estimate, self.budget_gb), *notes])

    def to_json(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "model_config": self.model,
            "setup": asdict(self.setup),
            "params": self.estimate.params,
            "trainable": self.estimate.trainable,
            "parts_gib": self.estimate.gib(),
            "total_gib": self.total_gb,
            "gpu_memory_gb": self.budget_gb,
            "fits": self.fits,
            "notes": self.estimate.notes,
        }


def model_shape(cfg: Config, family: ModelFamily, model_path: str | None) -> Shape:
    """The model's sizes, read from a ``config.json`` (see the module's list)."""
    if cfg.plan.model_config:
        return Shape.read(cfg.plan.model_config)
    if model_path and (Path(model_path) / "config.json").is_file():
        return Shape.read(model_path)
    hub = model_path if model_path and not Path(model_path).exists() else family.hub_id
    shipped = family_config(hub) if hub else None
    if shipped is None:
        raise ConfigError(
            f"no config.json for {model_path or family.name}: pass plan.model_config=PATH (a "
            "model's config.json)"
        )
    return Shape.read(shipped)


def zero_stage(cfg: Config) -> int | None:
    """``ds_config``'s ZeRO stage (0 when it sets none); None without DeepSpeed."""
    if not cfg.ds_config:
        return None
    ds = json.loads(Path(cfg.ds_config).read_text(encoding="utf-8"))
    return int(ds.get("zero_optimization", {}).get("stage", 0))


def plan_gpus(cfg: Config) -> int:
    """``plan.gpus``, else the launcher's ``$WORLD_SIZE``, else 1."""
    return cfg.plan.gpus or int(os.environ.get("WORLD_SIZE") or 1)


def reference_mode(cfg: Config, spec: LossSpec) -> tuple[str, int]:
    """How the objective holds p_ref, and its reference forwards per step (see the module)."""
    frozen = {FROZEN_INPUTS[n] or spec.forget.view for n in spec.needs if n in FROZEN_INPUTS}
    cached = bool(spec.needs & CACHED_INPUTS)
    if cfg.plan.reference == "live" and (frozen or cached):
        return "live", max(1, len(frozen))
    if cfg.plan.reference == "cached" and (frozen or cached):
        return "cached", 0
    if frozen:
        return ("adapter_off" if cfg.LoRA.r > 0 else "live"), len(frozen)
    return ("cached", 0) if cached else ("none", 0)


def run_setup(cfg: Config, family: ModelFamily, spec: LossSpec, command: str) -> Setup:
    """What the ``command`` run of ``cfg`` does with the model (see the module's list)."""
    if command not in PLAN_COMMANDS:
        raise ConfigError(f"npo plan --command {command}: valid: {', '.join(PLAN_COMMANDS)}")
    gc = family.gradient_checkpointing
    base = Setup(
        batch=cfg.batch_size,
        length=cfg.max_length,
        weight_bytes=4 if cfg.dtype == "float32" else 2,
        lora_r=cfg.LoRA.r,
        lora_dropout=cfg.LoRA.dropout > 0,
        zero_stage=zero_stage(cfg),
        gpus=plan_gpus(cfg),
        checkpointing=gc if cfg.gradient_checkpointing is None else cfg.gradient_checkpointing,
    )
    if command == "finetune":
        return replace(base, batch=cfg.finetune.batch_size)
    if command == "influence":
        return replace(
            base, batch=cfg.influence.batch_size, train=False, zero_stage=None, checkpointing=False
        )
    reference, n_ref = reference_mode(cfg, spec)
    return replace(base, forwards=len(spec.views), reference=reference, reference_forwards=n_ref)


def influence_parts(cfg: Config, shape: Shape) -> dict[str, float]:
    """`npo influence`: the preconditioner's factors over θ_S and its fp32 gradients (the
    forget and retain gradients and the direction v: 3 · 4 bytes per parameter of θ_S)."""
    ic = cfg.influence
    modules = tracked_linears(shape, ic.modules, ic.last_n_layers, cfg.LoRA.r)
    n_params = sum(i * o + (o if b else 0) for i, o, b in modules)
    return {
        f"{ic.preconditioner} factors (float64)": kfac_factors(modules, ic.preconditioner),
        "θ_S gradients and direction (fp32)": 3 * 4 * n_params,
    }


def plan_run(
    cfg: Config, family: ModelFamily, spec: LossSpec, model_path: str | None, command: str
) -> Plan:
    """The plan of the ``command`` run of ``cfg`` (``forget``, ``finetune``, ``influence``)."""
    shape = model_shape(cfg, family, model_path)
    setup = run_setup(cfg, family, spec, command)
    est = estimate(shape, setup)
    if command == "influence":
        est.parts.update(influence_parts(cfg, shape))
        est.notes.append(f"tracked modules: influence.modules={cfg.influence.modules}")
    if setup.weight_bytes == 2 and cfg.dtype == "auto":
        est.notes.append("dtype auto: bf16 weights and activations (a GPU run)")
    return Plan(command, shape.source, setup, est, cfg.plan.budget_gb)


def alternatives(plan: Plan, shape: Shape) -> list[tuple[str, Setup]]:
    """Settings that lower the peak, in the order a refusal proposes them."""
    s = plan.setup
    out: list[tuple[str, Setup]] = []
    if s.lora_r == 0:
        out.append((f"LoRA.r={LORA_SUGGESTION}", replace(s, lora_r=LORA_SUGGESTION)))
    if not s.checkpointing:
        out.append(("gradient_checkpointing=true", replace(s, checkpointing=True)))
    for n in (2, 4, 8):
        if n > s.gpus or s.zero_stage != 3:
            setting = f"ds_config=params/ds/zero3.json over {n} GPUs (plan.gpus={n})"
            out.append((setting, replace(s, zero_stage=3, gpus=n)))
    batch = s.batch // 2
    while batch >= 1:
        out.append((f"batch_size={batch}", replace(s, batch=batch)))
        batch //= 2
    return out


def suggestion(plan: Plan, shape: Shape) -> str | None:
    """The first alternative setting that fits, with its estimate."""
    for setting, setup in alternatives(plan, shape):
        total = estimate(shape, setup).total / GIB
        if total <= plan.budget_gb:
            return f"{setting} (~{total:.1f} GiB)"
    return None


def check_fits(cfg: Config, family: ModelFamily, spec: LossSpec, model_path: str | None) -> None:
    """Refuse (one line) a forget run whose planned peak exceeds the budget: only with a GPU
    present or ``plan.gpu_memory_gb`` set, never with ``plan.force``; a model whose sizes are
    unknown is not checked."""
    if cfg.plan.force:
        return
    if cfg.plan.gpu_memory_gb is None:
        import torch

        if not torch.cuda.is_available():
            return
    try:
        shape = model_shape(cfg, family, model_path)
    except ConfigError:
        return
    plan = plan_run(cfg, family, spec, model_path, "forget")
    if plan.fits:
        return
    largest = plan.estimate.largest
    fix = suggestion(plan, shape)
    raise ConfigError(
        f"the run needs ~{plan.total_gb:.1f} GiB per GPU, more than {plan.budget_gb:g} "
        f"(plan.gpu_memory_gb); largest part: {largest} "
        f"{plan.estimate.parts[largest] / GIB:.1f} GiB; "
        + (f"try {fix}" if fix else "no single setting fits")
        + "; `npo plan` shows every part, plan.force=true runs it anyway"
    )
