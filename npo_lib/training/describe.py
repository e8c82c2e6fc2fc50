"""Every registered objective as data and as text (``npo losses``): its equation, view, the
hyperparameters of its group (config key, flat alias, default, range, help) and the inputs its
providers bring. Generated from the registries, so a new objective documents itself."""

from __future__ import annotations

import dataclasses
from typing import Any

from npo_lib.objectives.registry import FORGET_TERMS, REGULARIZERS, Term
from npo_lib.training.inputs import INPUTS
from npo_lib.utils.params import describe_bounds

COMPOSITION = (
    "compose as FORGET[+REG...], e.g. forget_loss=NPO+GD; "
    "total = forget_coeff·forget + regularization_coeff·Σ regularizers"
)


def hyperparameters(term: Term) -> list[dict[str, Any]]:
    """The fields of ``term``'s group: ``key`` (``npo.beta``), ``alias`` (``beta`` or None),
    ``default``, ``range`` (``'> 0'`` or ``''``), ``help``, and whether ``term``'s function
    takes it (``argument``; False for e.g. RMU's layer, which places its input)."""
    if term.params is None:
        return []
    defaults = term.params()
    return [
        {
            "key": f"{term.group}.{f.name}",
            "alias": f.metadata.get("alias"),
            "default": getattr(defaults, f.name),
            "range": describe_bounds(f),
            "help": f.metadata.get("help", ""),
            "argument": f.name in term.hyper_args,
        }
        for f in dataclasses.fields(term.params)
    ]


def describe_term(term: Term) -> dict[str, Any]:
    """One objective as data (see :func:`objectives_reference`)."""
    return {
        "name": term.name,
        "kind": "regularizer" if term.regularizer else "forget",
        "view": term.view,
        "reads": term.reads,
        "equation": term.doc,
        "paper": term.paper,
        "group": term.group,
        "hyperparameters": hyperparameters(term),
        "inputs": [{"name": n, "doc": INPUTS[n].doc if n in INPUTS else ""} for n in term.needs],
        "module": term.fn.__module__,
        "function": term.fn.__name__,
    }


def objectives_reference() -> list[dict[str, Any]]:
    """Every forget term, then every regularizer, in registration order, as plain data (for a
    docs page): ``name, kind, view, reads, equation, paper, group, hyperparameters, inputs,
    module, function``."""
    return [describe_term(t) for t in (*FORGET_TERMS.values(), *REGULARIZERS.values())]


def _value(v: Any) -> str:
    """A default as a user would type it: ``0.1``, ``[mlp.down_proj]``, ``None``."""
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    return f"{v:g}" if isinstance(v, float) else str(v)


def _hyperparameter(h: dict[str, Any]) -> str:
    notes = "; ".join(x for x in (h["range"], h["alias"] and f"or {h['alias']}=") if x)
    return (
        f"{h['key']} = {_value(h['default'])}" + (f" ({notes})" if notes else "") + f": {h['help']}"
    )


def format_objectives(reference: list[dict[str, Any]] | None = None) -> str:
    """``npo losses``: a line per objective (its name first, then view and equation), under it
    its hyperparameters and inputs; a group shared by several terms is listed where it first
    appears."""
    lines, shown = [], set()
    for kind, title in (("forget", "forget terms:"), ("regularizer", "regularizers (FORGET+REG):")):
        lines.append(title)
        for t in [d for d in reference or objectives_reference() if d["kind"] == kind]:
            lines.append(f"  {t['name']:<10} view {t['view']:<7} {t['equation']}")
            pad = " " * 13
            if t["group"] in shown:
                lines.append(f"{pad}hyperparameters: the {t['group']} group (above)")
            else:
                lines += [f"{pad}{_hyperparameter(h)}" for h in t["hyperparameters"]]
            if t["group"] is not None:
                shown.add(t["group"])
            for i in t["inputs"]:
                lines.append(f"{pad}input {i['name']}: {i['doc']}")
    lines.append(COMPOSITION)
    return "\n".join(lines)
