"""The objectives' hyperparameter groups in the config.

Each objective declares its group beside its loss function (:mod:`npo_lib.objectives.losses`,
with :func:`npo_lib.utils.params.param_group`); the schema takes every registered group as a
field of its own (:func:`add_param_groups`: ``npo.beta``, ``satimp.beta1``, ``rmu.layer``), and
each field's flat alias (``beta``, ``satimp_beta1``, ``rmu_layer``) works wherever a key does:
params files, ``key=value``, notebook parameters, sweep grids (:func:`resolve_aliases`), and as a
keyword and attribute of the config object (:func:`add_aliases`: ``Config(beta=0.2)``,
``cfg.beta``). Names, defaults and help texts are written once, in the group.
"""

from __future__ import annotations

import dataclasses
import functools
from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import Any, get_type_hints

from npo_lib.config.fields import group
from npo_lib.errors import ConfigError
from npo_lib.utils.params import ParamGroup, registered_groups

ALIASES_ATTR = "__config_aliases__"  # alias -> "group.field" on a schema class
GROUPS_ATTR = "__param_groups__"  # group key -> ParamGroup on a schema class


def add_param_groups(after: str) -> Callable[[type], type]:
    """Class decorator, under ``@dataclass``: one field per registered group (its defaults and
    help), placed after the field ``after``."""

    def add(cls: type) -> type:
        groups = registered_groups(reader=f"{cls.__module__}.{cls.__qualname__}")
        own = dict(cls.__dict__.get("__annotations__", {}))
        clash = [k for k in groups if k in own]
        if clash or after not in own:
            raise TypeError(f"{cls.__name__}: groups {clash} clash, or no field '{after}'")
        annotations: dict[str, Any] = {}
        for name, tp in own.items():
            annotations[name] = tp
            if name == after:
                for key, g in groups.items():
                    annotations[key] = g.cls
                    setattr(cls, key, group(g.cls, g.help))
        cls.__annotations__ = annotations
        setattr(cls, GROUPS_ATTR, dict(groups))
        return cls

    return add


def add_aliases(cls: type) -> type:
    """Class decorator, over ``@dataclass``: every group field's flat alias as a constructor
    keyword (``Config(beta=0.2)``, ``dataclasses.replace(cfg, rmu_layer=2)``) and an attribute
    (``cfg.beta`` reads and sets ``cfg.npo.beta``)."""
    groups: dict[str, ParamGroup] = getattr(cls, GROUPS_ATTR, {})
    aliases = {a: (key, name) for key, g in groups.items() for a, name in g.aliases().items()}
    fields = {f.name for f in dataclasses.fields(cls)}
    taken = [a for a in aliases if a in fields]
    if taken or len(aliases) != sum(len(g.aliases()) for g in groups.values()):
        raise TypeError(f"{cls.__name__}: aliases {taken} clash with fields or with each other")
    setattr(cls, ALIASES_ATTR, {a: f"{key}.{name}" for a, (key, name) in aliases.items()})
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        by_group: dict[str, dict[str, Any]] = defaultdict(dict)
        for alias in [k for k in kwargs if k in aliases]:
            key, name = aliases[alias]
            by_group[key][name] = kwargs.pop(alias)
        for key, values in by_group.items():
            base = kwargs.get(key)
            kwargs[key] = dataclasses.replace(
                base if base is not None else groups[key].cls(), **values
            )
        init(self, *args, **kwargs)

    cls.__init__ = __init__
    for alias, (key, name) in aliases.items():
        setattr(cls, alias, _alias_property(key, name))
    return cls


def _alias_property(key: str, name: str) -> property:
    def get(self: Any) -> Any:
        return getattr(getattr(self, key), name)

    def set_(self: Any, value: Any) -> None:
        setattr(getattr(self, key), name, value)

    return property(get, set_, doc=f"another name of {key}.{name}")


def config_aliases(schema: type) -> dict[str, str]:
    """Flat alias -> dotted key (``'satimp_beta1'`` -> ``'satimp.beta1'``) of a schema."""
    return dict(getattr(schema, ALIASES_ATTR, {}))


def resolve_aliases(values: Mapping[str, Any], schema: type, source: str) -> dict[str, Any]:
    """A source's (nested) mapping with its flat aliases moved into their groups:
    ``{'beta': 1.0, 'lr': 1e-4}`` -> ``{'npo': {'beta': 1.0}, 'lr': 1e-4}``. Setting a key and
    its alias in one source is ambiguous and fails naming both."""
    aliases = config_aliases(schema)
    out = {k: v for k, v in values.items() if k not in aliases}
    for key in named_groups(schema):  # 'benchmark: muse' is short for 'benchmark.name: muse'
        if isinstance(out.get(key), str):
            out[key] = {"name": out[key]}
    for alias in [k for k in values if k in aliases]:
        key, name = aliases[alias].split(".")
        node = out.get(key)
        if node is not None and not isinstance(node, Mapping):
            continue  # 'npo: 3' is not a group: check_keys says so
        node = out[key] = dict(node or {})
        if name in node:
            raise ConfigError(
                f"{source}: '{alias}' is another name of '{aliases[alias]}': set one of them"
            )
        node[name] = values[alias]
    return out


def named_groups(schema: type) -> tuple[str, ...]:
    """The schema's groups with a ``name`` field: a string given for the group sets its name."""
    hints = get_type_hints(schema)
    return tuple(
        f.name
        for f in dataclasses.fields(schema)
        if dataclasses.is_dataclass(hints[f.name])
        and "name" in {g.name for g in dataclasses.fields(hints[f.name])}
    )


def with_alias_keys(values: Mapping[str, Any], schema: type) -> dict[str, Any]:
    """A resolved config as a (nested) mapping, as ``config.yaml`` holds it, with each flat
    alias also at the top level: ``{'npo': {'beta': 0.1}}`` -> also ``{'beta': 0.1}``. What a
    sweep grid or a study that names a setting by its flat key (``rmu_layer``) looks up."""
    out = dict(values)
    for alias, dotted in config_aliases(schema).items():
        key, name = dotted.split(".")
        node = values.get(key)
        if isinstance(node, Mapping) and name in node and alias not in out:
            out[alias] = node[name]
    return out
