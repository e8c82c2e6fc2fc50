"""Declared hyperparameters: a dataclass field that carries its default, help text, valid range
and the flat key researchers type for it, and the registry of named groups the config schema
composes (``npo``, ``satimp``, ``rmu``, ...).

A method declares its group once, beside its loss function::

    @param_group("satimp", "SatImp (Yang et al. 2025): token weights p^β1 (1 − p)^β2")
    @dataclass
    class SatImpParams(Params):  # npo_lib.objectives.catalog.Params: checks the bounds
        beta1: float = hp(5.0, "saturation exponent β1", alias="satimp_beta1", ge=0)

The schema (:mod:`npo_lib.config.schema`) makes each registered group a field of the config
(``satimp.beta1=3``), its aliases flat keys (``satimp_beta1=3``); :func:`out_of_bounds` names a
value outside its declared range. Registration happens when the declaring module
is imported, which the package does before the schema is built (``npo_lib/__init__.py``); a
group registered after that fails at once instead of being silently missing from the schema.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T", bound=type)

_BOUNDS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
_HOLDS: dict[str, Callable[[Any, Any], bool]] = {
    "ge": lambda v, b: v >= b,
    "gt": lambda v, b: v > b,
    "le": lambda v, b: v <= b,
    "lt": lambda v, b: v < b,
}


def hp(
    default: Any,
    help: str,
    *,
    alias: str | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
) -> Any:
    """A field with its help text, an optional flat alias and optional bounds (None is always
    allowed for an optional field); a list default is copied per instance."""
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    metadata = {"help": help, "alias": alias, "bounds": bounds}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def describe_bounds(f: dataclasses.Field) -> str:
    """``'>= 0'``, ``'> 0, <= 1'`` or ``''``: a field's declared range, for help texts."""
    bounds = f.metadata.get("bounds") or {}
    return ", ".join(f"{_BOUNDS[k]} {v:g}" for k, v in bounds.items())


def field_key(obj: Any, f: dataclasses.Field) -> str:
    """The key a user types for field ``f``: its alias if it has one, else ``group.name``."""
    group = getattr(type(obj), "config_key", type(obj).__name__)
    return f.metadata.get("alias") or f"{group}.{f.name}"


def out_of_bounds(obj: Any) -> str | None:
    """The message for the first value of dataclass ``obj`` outside its declared bounds, naming
    the key a user types (``satimp_beta1 must be >= 0, got -1``); None when all hold."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if value is None or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        for kind, bound in (f.metadata.get("bounds") or {}).items():
            if not _HOLDS[kind](value, bound):
                return f"{field_key(obj, f)} must be {_BOUNDS[kind]} {bound:g}, got {value}"
    return None


@dataclass(frozen=True)
class ParamGroup:
    """A registered group: its config key, its dataclass and the help of the config field."""

    key: str
    cls: type
    help: str

    def aliases(self) -> dict[str, str]:
        """Flat alias -> field name."""
        return {
            f.metadata["alias"]: f.name
            for f in dataclasses.fields(self.cls)
            if f.metadata.get("alias")
        }


_GROUPS: dict[str, ParamGroup] = {}
_CLOSED: list[str] = []  # set once the schema has read the registry


def param_group(key: str, help: str) -> Callable[[T], T]:
    """Register a ``Params`` dataclass as the config group ``key`` (class decorator, above
    ``@dataclass``)."""

    def register(cls: T) -> T:
        if not (dataclasses.is_dataclass(cls) and callable(getattr(cls, "arguments", None))):
            raise TypeError(f"{cls.__name__}: a group is a @dataclass with arguments() (Params)")
        if _CLOSED:
            raise RuntimeError(
                f"group '{key}' ({cls.__module__}) registered after {_CLOSED[0]} read the "
                "registry: declare it in a module of npo_lib.objectives.losses"
            )
        old = _GROUPS.get(key)
        if old is not None and old.cls is not cls:
            raise ValueError(f"config group '{key}' is declared twice: {old.cls} and {cls}")
        cls.config_key = key
        _GROUPS[key] = ParamGroup(key, cls, help)
        return cls

    return register


def registered_groups(reader: str | None = None) -> Mapping[str, ParamGroup]:
    """Every registered group by key; ``reader`` (the schema) closes the registry."""
    if reader is not None and not _CLOSED:
        _CLOSED.append(reader)
    return dict(_GROUPS)
