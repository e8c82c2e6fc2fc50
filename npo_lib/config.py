"""One typed configuration schema for every entry point.

Sources merge in order: schema defaults < params YAML file(s) < ``key=value`` overrides
(dotted keys such as ``LoRA.r=8``), the command-line form the seed scripts used::

    python -m npo_lib.forget model_family=tiny forget_loss=NPO+GD lr=1e-5 num_epochs=5

Every default lives here once; YAML files and notebook parameters only override. Unknown keys,
wrong types and missing files fail here, before any model loads, with a message that names the
key, value or path.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from npo_lib.benchmark import BenchmarkConfig
from npo_lib.selection import SelectionConfig


class ConfigError(ValueError):
    """A configuration source is invalid (unknown key, wrong type, missing file)."""


@dataclass
class LoRAConfig:
    """peft LoRA on every linear layer except ``lm_head``; ``r=0`` means full fine-tuning."""

    r: int = 0  # adapter rank; 0 disables LoRA
    alpha: int = 32  # scaling numerator (scale = alpha / r)
    dropout: float = 0.05  # dropout on the adapter input


@dataclass
class TinyModelConfig:
    """Architecture and fine-tuning of the embedded Llama-architecture models (`npo prepare`)."""

    vocab_size: int = 1024  # byte-level BPE vocabulary trained on the benchmark text
    hidden_size: int = 128
    intermediate_size: int = 384
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 4
    max_position_embeddings: int = 256
    max_epochs: int = 40  # epoch budget: the learning rate decays linearly to 0 over it; training stops earlier once the recall bars hold
    check_every: int = 2  # epochs between greedy fact-recall checks of the stop criterion
    patience: int = 1  # consecutive checks at which every recall bar must hold before training stops
    zerothink_fraction: float = 0.5  # share of training QA also trained with an empty trace (prepare.zerothink_copies)
    lr: float = 6e-3  # peak learning rate (AdamW, linear decay over max_epochs, 5 % warmup)
    batch_size: int = 32
    seed: int = 0  # initialisation and data-order seed


INFLUENCE_SCORERS = ("differential", "gradient_dot", "contrast", "kronfluence")
INFLUENCE_PRECONDITIONERS = ("identity", "diagonal", "kfac", "ekfac")
INFLUENCE_METHODS = ("jvp", "fd")
INFLUENCE_MODULES = ("all_linear", "mlp", "last_n", "lora")
INFLUENCE_DTYPES = ("float64", "float32")


@dataclass
class InfluenceConfig:
    """Per-token influence scores for INFLUENCE (`npo influence`; reference.md section 4).

    s_it = vᵀ ∇θ_S ℓ_it with v = P⁻¹ (ḡ_forget − λ ḡ_retain) over the tracked parameters θ_S.
    """

    scorer: str = "differential"  # differential, gradient_dot (ḡ_forget, P = I), contrast (log p_target - log p_retain), kronfluence (optional package)
    preconditioner: str = "ekfac"  # P: identity, diagonal (empirical Fisher), kfac, ekfac (eigenvalue-corrected K-FAC)
    lam: float = 1.0  # λ, weight of the retain gradient in the direction
    modules: str = "all_linear"  # θ_S: all_linear (every Linear but lm_head), mlp, last_n, lora (LoRA.r > 0)
    last_n_layers: int = 1  # modules=last_n: how many of the last decoder blocks
    method: str = "jvp"  # row scores: jvp (forward-mode, exact) or fd (symmetric finite difference, two forwards)
    dtype: str = "float32"  # scoring precision: float32, or float64 (exactness checks)
    damping: float = 1e-4  # P + damping · mean eigenvalue of P, per layer (diagonal, kfac, ekfac); kronfluence's 0.1 localises facts worse (README)
    fd_eps: float | None = None  # fd step h: the largest token-loss change of a step, in nats; None = 3e-3 (float32), 1e-4 (float64)
    retain_samples: int = 0  # retain examples for ḡ_retain (and P); 0 = as many as the forget set
    batch_size: int = 8  # sequences per forward / backward
    retain_model_path: str | None = None  # contrast: the retain model; None = the embedded one

    def __post_init__(self) -> None:
        for key, valid in (("scorer", INFLUENCE_SCORERS), ("preconditioner", INFLUENCE_PRECONDITIONERS),
                           ("method", INFLUENCE_METHODS), ("modules", INFLUENCE_MODULES), ("dtype", INFLUENCE_DTYPES)):
            if getattr(self, key) not in valid:
                raise ValueError(f"influence.{key} '{getattr(self, key)}' is unknown; valid: {', '.join(valid)}")
        for key in ("damping", "fd_eps"):
            if getattr(self, key) is not None and not getattr(self, key) > 0:
                raise ValueError(f"influence.{key} must be > 0, got {getattr(self, key)}")
        if self.lam < 0 or self.retain_samples < 0 or self.last_n_layers < 1 or self.batch_size < 1:
            raise ValueError(
                "influence: need lam >= 0, retain_samples >= 0, last_n_layers >= 1, batch_size >= 1; "
                f"got lam={self.lam}, retain_samples={self.retain_samples}, last_n_layers={self.last_n_layers}, "
                f"batch_size={self.batch_size}"
            )


@dataclass
class Config:
    """Everything a run needs. Names follow the seed scripts and the NPO / TOFU papers."""

    # --- model ---
    model_family: str = "tiny"  # key of npo_lib.families.FAMILIES
    model_path: str | None = None  # local folder overriding the family's hub id / embedded target
    trust_remote_code: bool = False  # passed to from_pretrained; off unless asked
    dtype: str = "auto"  # auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16
    # --- data ---
    data_path: str | None = None  # folder or hub dataset id of TOFU / R-TOFU files; None = embedded
    split: str = "forget10"  # forget01 / forget05 / forget10
    task_id: int | None = 1  # R-TOFU task inside the split; None = every task of the split
    max_length: int = 512  # tokens per view (prompt + target); the target is cut on the right
    # --- objective (section 2 of the reference sheet) ---
    forget_loss: str = "NPO+GD"  # forget term, then regularizers, joined by '+'
    beta: float = 0.1  # NPO / TNPO temperature β
    simnpo_beta: float = 2.5  # SimNPO's β (its own default, reference-free, length-normalised)
    gamma: float = 0.0  # SimNPO reward margin γ
    w_selected: float = 1.0  # INFLUENCE: weight of tokens the influence selection picked
    w_other: float = 0.0  # INFLUENCE: weight of every other target token
    forget_coeff: float = 1.0  # weight of the forget term
    regularization_coeff: float = 1.0  # weight of each regularizer (GD, KL)
    # --- optimisation ---
    lr: float = 1e-5
    num_epochs: int = 5
    batch_size: int = 4  # per device
    gradient_accumulation_steps: int = 1
    weight_decay: float = 0.01
    seed: int = 42
    warmup_epochs: float = 1.0  # linear warm-up length in epochs (the TOFU / NPO scripts use 1)
    gradient_checkpointing: bool | None = None  # None = the family's default
    LoRA: LoRAConfig = field(default_factory=LoRAConfig)
    save_merged: bool = False  # with LoRA: also save the adapter merged into the base weights
    ds_config: str | None = None  # DeepSpeed JSON config, e.g. params/ds/zero2.json
    report_to: str = "none"  # HF Trainer loggers: none, tensorboard, wandb, ...
    logging_steps: int = 1
    save_steps: int = 0  # checkpoint every N optimizer steps; 0 = every epoch
    # --- token influence (INFLUENCE loss) ---
    influence_dir: str | None = None  # folder with scores.safetensors / tokens.jsonl / meta.json
    selection: SelectionConfig = field(default_factory=SelectionConfig)  # which tokens INFLUENCE unlearns
    influence: InfluenceConfig = field(default_factory=InfluenceConfig)  # how `npo influence` scores tokens
    # --- files ---
    save_dir: str | None = None  # run folder; None = runs/<derived name>
    resume: bool = False  # continue an interrupted run from its last checkpoint
    overwrite: bool = False  # allow replacing a finished run folder
    cache_dir: str = "~/.cache/tnpo"  # embedded benchmark, tiny models, cached evaluations
    # --- embedded default ---
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)

    @property
    def cache_path(self) -> Path:
        """``cache_dir`` with ``~`` and ``$TNPO_CACHE`` resolved (the variable wins when set)."""
        return Path(os.environ.get("TNPO_CACHE") or self.cache_dir).expanduser()


# ----------------------------------------------------------------------------- key checks


def _dataclass_type(tp: Any) -> type | None:
    """The dataclass inside an annotation like ``LoRAConfig`` or ``LoRAConfig | None``."""
    if dataclasses.is_dataclass(tp):
        return tp
    for arg in get_args(tp):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def _schema_fields(schema: type) -> dict[str, Any]:
    """Dotted key -> annotation, for every leaf and every nested dataclass of the schema."""
    out: dict[str, Any] = {}
    hints = get_type_hints(schema)
    for f in dataclasses.fields(schema):
        tp = hints[f.name]
        out[f.name] = tp
        sub = _dataclass_type(tp)
        if sub is not None:
            out.update({f"{f.name}.{k}": v for k, v in _schema_fields(sub).items()})
    return out


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out[key] = v
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _type_name(tp: Any) -> str:
    if get_origin(tp) is not None or get_args(tp):
        return " | ".join("None" if a is type(None) else getattr(a, "__name__", str(a)) for a in get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _check_keys(values: Mapping[str, Any], schema: type, source: str) -> None:
    """Fail on a key the schema does not know, naming the closest valid keys."""
    valid = _schema_fields(schema)
    for key, value in _flatten(values).items():
        if key in valid:
            if _dataclass_type(valid[key]) is not None and not isinstance(value, Mapping | None):
                raise ConfigError(
                    f"{source}: key '{key}' is a group ({_type_name(valid[key])}); "
                    f"set its fields instead, e.g. {key}.{next(iter(_schema_fields(_dataclass_type(valid[key]))))}=..."
                )
            continue
        parent = key.rsplit(".", 1)[0] if "." in key else None
        if parent is not None and parent in valid and _dataclass_type(valid[parent]) is None:
            raise ConfigError(f"{source}: key '{parent}' is a {_type_name(valid[parent])}, not a group")
        close = difflib.get_close_matches(key, list(valid), n=3, cutoff=0.5)
        if not close:  # a typo in the last part of a dotted key
            leaf = key.rsplit(".", 1)[-1]
            close = [k for k in valid if k.rsplit(".", 1)[-1] in difflib.get_close_matches(leaf, [k.rsplit(".", 1)[-1] for k in valid], n=3, cutoff=0.6)]
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ConfigError(f"{source}: unknown key '{key}'{hint} (valid top-level keys: {', '.join(f.name for f in dataclasses.fields(schema))})")


# ----------------------------------------------------------------------------- sources


def read_params_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read one params YAML file; missing file, bad YAML or a non-mapping fail naming the path."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"params file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"params file {p} is not valid YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"params file {p} must hold a mapping of keys to values, got {type(data).__name__}")
    return dict(data)


def parse_overrides(overrides: Iterable[str]) -> dict[str, Any]:
    """``['lr=1e-5', 'LoRA.r=8']`` -> nested dict; values parsed as YAML scalars (``null``, ``1e-5``)."""
    out: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override '{item}' has an empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        if isinstance(value, str) and _looks_like_float(value):
            value = float(value)  # YAML 1.1 reads '1e-5' as a string
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}' conflicts with an earlier override of '{part}'")
        node[parts[-1]] = value
    return out


def _nest(values: Mapping[str, Any]) -> dict[str, Any]:
    """``{'LoRA.r': 8}`` or ``{'LoRA': {'r': 8}}`` -> ``{'LoRA': {'r': 8}}``."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = _nest(value) if isinstance(value, Mapping) else value
    return out


def _looks_like_float(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return s.strip().lower() not in {"nan", "inf", "-inf", "+inf", "infinity"}


def split_args(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """Separate params files (``*.yaml``/``*.yml`` or no '=') from ``key=value`` overrides."""
    files, overrides = [], []
    for a in args:
        (overrides if "=" in a and not a.endswith((".yaml", ".yml")) else files).append(a)
    return files, overrides


def load_config(
    args: Sequence[str] = (),
    *,
    files: Sequence[str | os.PathLike] = (),
    overrides: Mapping[str, Any] | None = None,
    schema: type = Config,
) -> Any:
    """Merge schema defaults < params files < overrides and return a validated ``schema`` instance.

    ``args`` is the command-line form (files and ``key=value`` mixed); ``files`` and
    ``overrides`` (a nested or dotted mapping, e.g. notebook parameters) are the API form.
    """
    arg_files, arg_overrides = split_args(args)
    sources: list[tuple[str, dict[str, Any]]] = []
    for f in [*files, *arg_files]:
        sources.append((f"params file {f}", read_params_file(f)))
    if overrides:
        sources.append(("overrides", _nest(overrides)))
    if arg_overrides:
        sources.append(("command line", parse_overrides(arg_overrides)))
    merged = OmegaConf.structured(schema)
    types = _schema_fields(schema)
    for source, values in sources:
        _check_keys(values, schema, source)
        try:
            merged = OmegaConf.merge(merged, values)
        except OmegaConfBaseException as e:
            key = getattr(e, "full_key", None) or "?"
            flat = _flatten(values)
            value = flat.get(key, getattr(e, "msg", ""))
            expected = _type_name(types[key]) if key in types else "?"
            raise ConfigError(f"{source}: key '{key}' got {value!r} ({type(value).__name__}), expected {expected}") from e
    try:
        cfg = OmegaConf.to_object(merged)
    except ValueError as e:  # a group's __post_init__ range / name check (selection, influence)
        raise ConfigError(str(e)) from None
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Value checks the types cannot express (ranges, registry names). Runs before any model loads."""
    from npo_lib.families import FAMILIES  # local import: families imports this module

    if isinstance(cfg, Config):
        if cfg.model_family not in FAMILIES:
            close = difflib.get_close_matches(cfg.model_family, list(FAMILIES), n=3)
            raise ConfigError(
                f"model_family '{cfg.model_family}' is unknown; valid: {', '.join(FAMILIES)}"
                + (f" (closest: {', '.join(close)})" if close else "")
            )
        for name in ("lr", "num_epochs", "batch_size", "gradient_accumulation_steps", "max_length", "beta"):
            if getattr(cfg, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(cfg, name)}")
        if cfg.LoRA.r < 0:
            raise ConfigError(f"LoRA.r must be >= 0, got {cfg.LoRA.r}")
        for name in ("max_epochs", "check_every", "patience"):
            if getattr(cfg.tiny, name) < 1:
                raise ConfigError(f"tiny.{name} must be >= 1, got {getattr(cfg.tiny, name)}")
        if not 0 <= cfg.tiny.zerothink_fraction <= 1:
            raise ConfigError(f"tiny.zerothink_fraction must be in [0, 1], got {cfg.tiny.zerothink_fraction}")
        if cfg.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ConfigError(f"dtype '{cfg.dtype}' is unknown; valid: auto, float32, bfloat16, float16")
        from npo_lib.losses import parse_loss

        try:
            parse_loss(cfg.forget_loss)
        except ValueError as e:
            raise ConfigError(f"forget_loss: {e}") from None
        if cfg.ds_config is not None and not Path(cfg.ds_config).is_file():
            raise ConfigError(f"ds_config file not found: {cfg.ds_config}")


def to_yaml(cfg: Any) -> str:
    """The resolved config as YAML (what every run folder keeps as ``config.yaml``)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def save_config(cfg: Any, path: str | os.PathLike) -> Path:
    """Write the resolved config; ``load_config(files=[path])`` reproduces it."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(to_yaml(cfg))
    return p
