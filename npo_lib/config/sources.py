"""Where a configuration comes from: schema defaults < params YAML file(s) < ``key=value``.

Overrides use dotted keys for groups (``LoRA.r=8``), the command-line form that TOFU-style scripts
used::

    python -m npo_lib.forget model_family=tiny forget_loss=NPO+GD lr=1e-5 num_epochs=5

Every default lives in :mod:`npo_lib.config.schema`; YAML files and notebook parameters only
override. Unknown keys, wrong types, bad values and missing files fail here, before any model
loads, with a message that names the key, value or path.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from npo_lib.config.groups import config_aliases, resolve_aliases
from npo_lib.config.schema import Config
from npo_lib.errors import ConfigError
from npo_lib.utils.io import atomic_write_text
from npo_lib.utils.params import describe_bounds

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
        return " | ".join(
            "None" if a is type(None) else getattr(a, "__name__", str(a)) for a in get_args(tp)
        )
    return getattr(tp, "__name__", str(tp))


def check_keys(values: Mapping[str, Any], schema: type, source: str) -> None:
    """Fail on a key the schema does not know, naming the closest valid keys (a flat alias such
    as ``beta`` or ``rmu_layer`` is a key: :mod:`npo_lib.config.groups`)."""
    valid = _schema_fields(schema)
    values = resolve_aliases(values, schema, source)
    for key, value in _flatten(values).items():
        if key in valid:
            if _dataclass_type(valid[key]) is not None and not isinstance(value, Mapping | None):
                raise ConfigError(
                    f"{source}: key '{key}' is a group ({_type_name(valid[key])}); "
                    f"set its fields instead, e.g. "
                    f"{key}.{next(iter(_schema_fields(_dataclass_type(valid[key]))))}=..."
                )
            continue
        parent = key.rsplit(".", 1)[0] if "." in key else None
        if parent is not None and parent in valid and _dataclass_type(valid[parent]) is None:
            raise ConfigError(
                f"{source}: key '{parent}' is a {_type_name(valid[parent])}, not a group"
            )
        close = difflib.get_close_matches(key, [*valid, *config_aliases(schema)], n=3, cutoff=0.5)
        if not close:  # a typo in the last part of a dotted key
            leaf = key.rsplit(".", 1)[-1]
            close = [
                k
                for k in valid
                if k.rsplit(".", 1)[-1]
                in difflib.get_close_matches(
                    leaf, [k.rsplit(".", 1)[-1] for k in valid], n=3, cutoff=0.6
                )
            ]
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ConfigError(
            f"{source}: unknown key '{key}'{hint} (valid top-level keys: "
            f"{', '.join(f.name for f in dataclasses.fields(schema))})"
        )


# ----------------------------------------------------------------------------- sources


# the params files shipped inside the package (`npo forget npo_gd`, `npo run demo`)
PARAMS_DIR = Path(__file__).resolve().parents[1] / "params"


def params_path(name: str | os.PathLike) -> Path:
    """A params file: ``name`` itself when that file exists, else a bare name of a file shipped
    with the package (``npo_gd`` or ``npo_gd.yaml`` -> ``npo_lib/params/npo_gd.yaml``), which
    works outside a checkout too; else ``name`` as given."""
    p = Path(name)
    if p.is_file() or p.parent != Path("."):
        return p
    packaged = PARAMS_DIR / (p.name if p.suffix in (".yaml", ".yml") else f"{p.name}.yaml")
    return packaged if packaged.is_file() else p


def read_params_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read one params YAML file (a path, or the name of a packaged one: :func:`params_path`);
    missing file, bad YAML or a non-mapping fail naming the path."""
    p = params_path(path)
    if not p.is_file():
        shipped = ", ".join(sorted(f.stem for f in PARAMS_DIR.glob("*.yaml")))
        raise ConfigError(f"params file not found: {p} (or a packaged one by name: {shipped})")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"params file {p} is not valid YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"params file {p} must hold a mapping of keys to values, got {type(data).__name__}"
        )
    return dict(data)


def parse_overrides(overrides: Iterable[str]) -> dict[str, Any]:
    """``['lr=1e-5', 'LoRA.r=8']`` -> nested dict; values parsed as YAML scalars (``null``,
    ``1e-5``)."""
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
            if isinstance(node.get(part), str):  # 'benchmark=muse benchmark.muse.n_forget=4'
                node[part] = {"name": node[part]}
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(
                    f"override '{item}' conflicts with an earlier override of '{part}'"
                )
        node[parts[-1]] = value
    return out


def nest_keys(*layers: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted and nested keys as one nested mapping, later layers over earlier ones, key by key:
    ``{'LoRA': {'r': 8, 'alpha': 16}}, {'LoRA.r': 4}`` -> ``{'LoRA': {'r': 4, 'alpha': 16}}``."""
    out: dict[str, Any] = {}
    for values in layers:
        for key, value in values.items():
            node = out
            *parents, leaf = key.split(".")
            for part in parents:
                if not isinstance(node.get(part), dict):
                    node[part] = {}
                node = node[part]
            if isinstance(value, Mapping):
                node[leaf] = nest_keys(
                    node[leaf] if isinstance(node.get(leaf), dict) else {}, value
                )
            else:
                node[leaf] = value
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
        sources.append(("overrides", nest_keys(overrides)))
    if arg_overrides:
        sources.append(("command line", parse_overrides(arg_overrides)))
    merged = OmegaConf.structured(schema)
    types = _schema_fields(schema)
    for source, values in sources:
        check_keys(values, schema, source)
        values = resolve_aliases(values, schema, source)
        try:
            merged = OmegaConf.merge(merged, values)
        except OmegaConfBaseException as e:
            key = getattr(e, "full_key", None) or "?"
            flat = _flatten(values)
            value = flat.get(key, getattr(e, "msg", ""))
            expected = _type_name(types[key]) if key in types else "?"
            alias = {v: a for a, v in config_aliases(schema).items()}.get(key)
            named = f"'{alias}' ('{key}')" if alias else f"'{key}'"  # what the user may have typed
            raise ConfigError(
                f"{source}: key {named} got {value!r} ({type(value).__name__}), expected {expected}"
            ) from e
    try:
        return OmegaConf.to_object(merged)
    except ConfigError:  # a group's __post_init__ range check
        raise
    except (ValueError, OmegaConfBaseException) as e:
        raise ConfigError(str(e).splitlines()[0]) from None


def to_yaml(cfg: Any) -> str:
    """The resolved config as YAML (what every run folder keeps as ``config.yaml``)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def _comment(f: dataclasses.Field) -> str:
    """A field's help text, with its range and flat alias when it declares them."""
    notes = [n for n in (describe_bounds(f), f.metadata.get("alias")) if n]
    if f.metadata.get("alias"):
        notes[-1] = f"flat key {notes[-1]}"
    help_ = f.metadata.get("help", "")
    return f"{help_} [{'; '.join(notes)}]" if notes else help_


def annotated_yaml(cfg: Any, indent: int = 0) -> str:
    """The resolved config as YAML with each field's help text as a comment (``--print-config``),
    and its range and flat alias where it declares them.

    Loading it back gives the same config (comments are YAML comments)."""
    lines = []
    pad = "  " * indent
    for f in dataclasses.fields(cfg):
        value, help_ = getattr(cfg, f.name), _comment(f)
        if dataclasses.is_dataclass(value):
            lines.append(f"{pad}{f.name}:  # {help_}" if help_ else f"{pad}{f.name}:")
            lines.append(annotated_yaml(value, indent + 1))
            continue
        rendered = (
            yaml.safe_dump(value, default_flow_style=True, allow_unicode=True)
            .strip()
            .removesuffix("...")
            .strip()
        )
        lines.append(f"{pad}{f.name}: {rendered}" + (f"  # {help_}" if help_ else ""))
    return "\n".join(lines)


def save_config(cfg: Any, path: str | os.PathLike) -> Path:
    """Write the resolved config; ``load_config(files=[path])`` reproduces it."""
    return atomic_write_text(path, to_yaml(cfg))
