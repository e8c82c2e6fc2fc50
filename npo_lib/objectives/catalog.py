"""The registry of loss terms: each objective registers itself from its own module under
:mod:`npo_lib.objectives.losses`, beside its hyperparameter group.

A term is a function ``fn(first, labels, *inputs, *hyperparameters)``: ``first`` is the view's
``logits`` ``(B, T, V)`` or its ``hidden`` activations ``(B, T, d)`` (``reads``); the inputs
(``needs``) are prepared and fetched per batch by the trainer's input providers
(:mod:`npo_lib.training.inputs`); each remaining keyword is a field of the term's group
(``params``), passed by name. Registering checks that the function takes exactly that.
Nothing here imports torch: the loss functions import it when first called.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from npo_lib.data.views import VIEWS
from npo_lib.errors import ConfigError
from npo_lib.utils.params import hp, out_of_bounds, param_group

__all__ = [
    "FORGET_TERMS",
    "REGULARIZERS",
    "VARIANT_VIEWS",
    "Params",
    "Term",
    "forget_term",
    "hp",
    "param_group",
    "register_term",
    "regularizer",
]

FORGET_TERMS: dict[str, Term] = {}  # name -> term, in registration order
REGULARIZERS: dict[str, Term] = {}
# GA and NPO come in one form per view: a plain name (GA, NPO) is view 1
VARIANT_VIEWS = {"": "full", "1": "full", "2": "answer", "3": "cot"}


@dataclass
class Params:
    """Base of a hyperparameter group (declared with :func:`hp` fields, registered with
    :func:`param_group`): its values are checked against their declared bounds, and
    :meth:`arguments` gives the loss function its keyword arguments by field name."""

    def __post_init__(self) -> None:
        message = out_of_bounds(self)
        if message:
            raise ConfigError(message)

    def arguments(self) -> dict[str, Any]:
        """Field name -> value; a group whose function takes a derived value overrides this
        (SimNPO's γ from δ)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


@dataclass(frozen=True)
class Term:
    """A named loss term: its function, the data view it reads, the inputs it needs, its
    hyperparameter group and its equation.

    ``reads`` is ``"logits"``, or ``"hidden"`` for a term that reads the activations after a
    decoder block (RMU, ACT): the trainer then asks the model for its hidden states, at the
    block the group resolves (:meth:`block`), and trains only the group's blocks.
    """

    name: str
    fn: Callable[..., Any]
    view: str  # data view the term reads: "full", "answer", "cot", "idk1", ..., "retain"
    needs: tuple[str, ...] = ()  # inputs from the providers, e.g. "ref_seq_logp", "control_vec"
    doc: str = ""  # one line, with the equation
    params: type | None = None  # the hyperparameter group (a Params dataclass), or None
    reads: str = "logits"  # "logits" or "hidden"
    paper: str = ""  # the publication, e.g. "Zhang et al. 2024, arXiv:2404.05868"
    regularizer: bool = False  # True: added as FORGET+REG, reads the retain batch

    def __post_init__(self) -> None:
        if self.view not in VIEWS:
            valid = ", ".join(VIEWS)
            raise ValueError(f"term {self.name}: view '{self.view}' is unknown; valid: {valid}")
        if self.reads not in ("logits", "hidden"):
            raise ValueError(
                f"term {self.name}: reads '{self.reads}' is unknown; valid: logits, hidden"
            )
        if self.reads == "hidden" and not hasattr(self.params, "block"):
            raise TypeError(
                f"term {self.name} reads activations: its group needs block(n_layers), "
                "trainable_blocks(n_layers) and trainable_modules"
            )
        self.hyper_args  # noqa: B018  (checks the signature at registration)

    @property
    def group(self) -> str | None:
        """The config key of the term's hyperparameters (``npo``, ``satimp``, ...)."""
        return None if self.params is None else self.params.config_key

    @cached_property
    def hyper_args(self) -> tuple[str, ...]:
        """The keywords of ``fn`` that its group fills: every parameter after the first two that
        is not an input. Each must be a field of the group (a mismatch is a bug: fail here)."""
        names = list(inspect.signature(self.fn).parameters)[2:]
        wanted = tuple(n for n in names if n not in self.needs)
        missing = [n for n in self.needs if n not in names]
        fields = {f.name for f in dataclasses.fields(self.params)} if self.params else set()
        unknown = [n for n in wanted if n not in fields]
        if missing or unknown:
            raise TypeError(
                f"term {self.name}: {self.fn.__name__} lacks the inputs {missing} / takes "
                f"{unknown}, which are neither inputs nor fields of its group"
            )
        return wanted


def register_term(term: Term) -> Term:
    """Add ``term`` to :data:`FORGET_TERMS` or :data:`REGULARIZERS` (a name is taken once)."""
    if term.name in FORGET_TERMS or term.name in REGULARIZERS:
        raise ValueError(f"loss term {term.name} is registered twice")
    (REGULARIZERS if term.regularizer else FORGET_TERMS)[term.name] = term
    return term


def forget_term(name: str, **spec: Any) -> Callable[[Callable], Callable]:
    """Register the decorated function as forget term ``name`` (keywords: see :class:`Term`)."""

    def register(fn: Callable) -> Callable:
        register_term(Term(name, fn, spec.pop("view", "full"), **spec))
        return fn

    return register


def regularizer(name: str, **spec: Any) -> Callable[[Callable], Callable]:
    """Register the decorated function as regularizer ``name`` (it reads the retain view)."""
    return forget_term(name, view="retain", regularizer=True, **spec)
