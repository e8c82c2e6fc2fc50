"""The objective registry: named terms (each registered by its own module under
:mod:`npo_lib.objectives.losses`), the composition ``FORGET[+REG...]`` (``NPO+GD``,
``INFLUENCE+GD+KL``, ``RMU+ACT``) the trainer sums, and how a term is evaluated.

total = forget_coeff · forget_term + regularization_coeff · Σ regularizers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import npo_lib.objectives.losses  # noqa: F401  (every objective registers itself)
from npo_lib.errors import ConfigError
from npo_lib.objectives.catalog import FORGET_TERMS, REGULARIZERS, Term

if TYPE_CHECKING:
    from torch import Tensor

__all__ = [
    "FORGET_TERMS",
    "REGULARIZERS",
    "LossHyper",
    "LossSpec",
    "Term",
    "composed_loss",
    "parse_loss",
    "term_value",
]


def _valid_names() -> str:
    return (
        f"valid forget terms: {', '.join(FORGET_TERMS)}; "
        f"valid regularizers: {', '.join(REGULARIZERS)}"
    )


@dataclass(frozen=True)
class LossSpec:
    """One forget term and the regularizers added to it (``FORGET[+REG...]``)."""

    forget: Term
    regularizers: tuple[Term, ...] = ()

    @property
    def terms(self) -> tuple[Term, ...]:
        return (self.forget, *self.regularizers)

    @property
    def name(self) -> str:
        return "+".join(t.name for t in self.terms)

    @property
    def views(self) -> tuple[str, ...]:
        """Data views to batch: the forget view, then "retain" if a regularizer reads it."""
        return tuple(dict.fromkeys(t.view for t in self.terms))

    @property
    def needs(self) -> set[str]:
        """Inputs some term needs (cached reference values, token weights, ...)."""
        return {n for t in self.terms for n in t.needs}

    @property
    def reads_hidden(self) -> bool:
        """Some term reads activations: the model returns its hidden states, RMU's layers train."""
        return any(t.reads == "hidden" for t in self.terms)

    @property
    def hidden_group(self) -> str | None:
        """The group that places the activations the terms read (block ℓ, the blocks that
        train): the group of the first term that reads them (RMU and ACT share ``rmu``)."""
        return next((t.group for t in self.terms if t.reads == "hidden"), None)


def parse_loss(name: str) -> LossSpec:
    """``"NPO+GD"`` -> LossSpec(NPO, (GD,)); a forget term first, then distinct regularizers."""
    first, *rest = [part.strip() for part in name.split("+")]
    for part in (first, *rest):
        if part not in FORGET_TERMS and part not in REGULARIZERS:
            raise ConfigError(f"loss '{name}': unknown part '{part}'; {_valid_names()}")
    form = "the form is FORGET[+REG...], e.g. NPO+GD"
    if first not in FORGET_TERMS:
        raise ConfigError(
            f"loss '{name}': '{first}' is a regularizer, not a forget term; {form}; "
            + _valid_names()
        )
    for part in rest:
        if part in FORGET_TERMS:
            raise ConfigError(
                f"loss '{name}': forget term '{part}' after '+' (one forget term, first); {form}"
            )
    if len(set(rest)) != len(rest):
        dup = next(p for p in rest if rest.count(p) > 1)
        raise ConfigError(f"loss '{name}': regularizer '{dup}' appears twice")
    return LossSpec(FORGET_TERMS[first], tuple(REGULARIZERS[p] for p in rest))


# ----------------------------------------------------------------------------- evaluation


def term_groups() -> dict[str, type]:
    """Every hyperparameter group a registered term reads: config key -> its dataclass."""
    terms = (*FORGET_TERMS.values(), *REGULARIZERS.values())
    return {t.group: t.params for t in terms if t.params is not None}


@dataclass(frozen=True)
class LossHyper:
    """What the terms take besides their inputs: the values of each hyperparameter group (the
    config's ``npo``, ``satimp``, ``rmu``, ... groups; a group not given is at its defaults)
    and the weights of the sum."""

    groups: Mapping[str, Any] = field(default_factory=dict)
    forget_coeff: float = 1.0
    regularization_coeff: float = 1.0

    @classmethod
    def from_config(cls, cfg: Any) -> LossHyper:
        """The groups and coefficients of ``cfg`` (a Config)."""
        return cls(
            {key: getattr(cfg, key) for key in term_groups()},
            float(cfg.forget_coeff),
            float(cfg.regularization_coeff),
        )

    def arguments(self, term: Term) -> dict[str, Any]:
        """The hyperparameter keywords of ``term``'s function, by name, from its group."""
        if term.params is None:
            return {}
        values = self.groups.get(term.group)
        args = (values if values is not None else term.params()).arguments()
        return {name: args[name] for name in term.hyper_args}


def term_value(
    term: Term,
    logits: Tensor | None,
    labels: Tensor,
    hyper: LossHyper,
    *,
    hidden: Tensor | None = None,
    **extras: Any,
) -> Tensor:
    """Evaluate ``term`` on its view's ``logits`` (or ``hidden`` activations, for a term that
    reads them) with the extras it needs (others are ignored) and its hyperparameters."""
    missing = [n for n in term.needs if extras.get(n) is None]
    if missing:
        raise ValueError(f"loss term {term.name} needs {', '.join(missing)}: pass it as a keyword")
    first = hidden if term.reads == "hidden" else logits
    if first is None:
        raise ValueError(f"loss term {term.name} reads {term.reads}: pass them")
    kwargs = {n: extras[n] for n in term.needs}
    kwargs.update(hyper.arguments(term))
    return term.fn(first, labels, **kwargs)


def composed_loss(
    spec: LossSpec,
    forget_logits: Tensor,
    forget_labels: Tensor,
    hyper: LossHyper,
    *,
    retain_logits: Tensor | None = None,
    retain_labels: Tensor | None = None,
    forget_hidden: Tensor | None = None,
    retain_hidden: Tensor | None = None,
    **extras: Any,
) -> tuple[Tensor, dict[str, float]]:
    """total = forget_coeff · forget + regularization_coeff · Σ regularizers, plus logged values.

    The forget term reads ``forget_*`` (its view's batch), regularizers read ``retain_*``;
    ``*_hidden`` are the activations RMU / ACT read; ``extras`` go to whichever term needs them
    (``ref_logits`` and ``ref_hidden`` are the retain batch's).
    Log keys: ``forget/<name>``, ``reg/<name>``, ``loss``.
    """
    if spec.regularizers and retain_labels is None:
        raise ValueError(f"loss {spec.name} has regularizers: pass retain_logits and retain_labels")
    forget = term_value(
        spec.forget, forget_logits, forget_labels, hyper, hidden=forget_hidden, **extras
    )
    total = hyper.forget_coeff * forget
    logs = {f"forget/{spec.forget.name}": forget.item()}
    for reg in spec.regularizers:
        value = term_value(reg, retain_logits, retain_labels, hyper, hidden=retain_hidden, **extras)
        total = total + hyper.regularization_coeff * value
        logs[f"reg/{reg.name}"] = value.item()
    logs["loss"] = total.item()
    return total, logs
