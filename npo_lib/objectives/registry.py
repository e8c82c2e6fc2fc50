"""The objective registry: named terms, the data view each reads, the inputs each needs, and the
composition ``FORGET[+REG...]`` (``NPO+GD``, ``INFLUENCE+GD+KL``, ``RMU+ACT``) the trainer sums.

total = forget_coeff · forget_term + regularization_coeff · Σ regularizers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from npo_lib.data.views import VIEWS
from npo_lib.errors import ConfigError
from npo_lib.objectives.terms import (
    act_loss,
    finetune_loss,
    ga_loss,
    influence_loss,
    kl_loss,
    npo_loss,
    rmu_loss,
    satimp_loss,
    simnpo_loss,
    tnpo_loss,
    undial_loss,
    wga_loss,
)

# ----------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Term:
    """A named loss term: its function, the data view it reads and the extra inputs it needs.

    ``hparams`` maps a keyword argument of ``fn`` to the :class:`LossHyper` field that fills it.
    ``reads`` is what ``fn`` takes first: the view's ``logits`` ``(B, T, V)``, or its ``hidden``
    activations ``(B, T, d)`` after the configured decoder block (RMU, ACT); the trainer asks the
    model for hidden states only when a term reads them.
    """

    name: str
    fn: Callable[..., Tensor]
    view: str  # data view the term reads: "full", "answer", "cot", "idk1", ..., "retain"
    needs: tuple[str, ...] = ()  # "ref_seq_logp", "ref_token_logp", "token_weights", "ref_logits",
    # "ref_forget_logits", "control_vec", "ref_hidden"
    doc: str = ""  # one line, with the equation
    hparams: Mapping[str, str] = field(default_factory=dict, hash=False)
    reads: str = "logits"  # "logits" or "hidden"

    def __post_init__(self) -> None:
        if self.view not in VIEWS:
            valid = ", ".join(VIEWS)
            raise ValueError(f"term {self.name}: view '{self.view}' is unknown; valid: {valid}")
        if self.reads not in ("logits", "hidden"):
            raise ValueError(
                f"term {self.name}: reads '{self.reads}' is unknown; valid: logits, hidden"
            )


_BETA = {"beta": "beta"}
_NPO_VIEWS = {"": "full", "1": "full", "2": "answer", "3": "cot"}  # a plain name (GA) is view 1

FORGET_TERMS: dict[str, Term] = {
    **{f"GA{k}": Term(f"GA{k}", ga_loss, v, doc=f"-CE({v} view)") for k, v in _NPO_VIEWS.items()},
    **{
        f"NPO{k}": Term(
            f"NPO{k}",
            npo_loss,
            v,
            ("ref_seq_logp",),
            f"-(2/β) mean_i log σ(-β Δ_i) on the {v} view, Δ_i = Σ_t log p_θ - log p_ref",
            _BETA,
        )
        for k, v in _NPO_VIEWS.items()
    },
    "SimNPO": Term(
        "SimNPO",
        simnpo_loss,
        "full",
        doc="-(2/β) mean_i log σ(-(β/|y_i|) Σ_t log p_θ(y_it) - γ), β = simnpo_beta",
        hparams={"beta": "simnpo_beta", "gamma": "gamma"},
    ),
    "TNPO": Term(
        "TNPO",
        tnpo_loss,
        "full",
        ("ref_token_logp",),
        "-(2/β) mean_it log σ(-β δ_it), δ_it = log p_θ(y_it) - log p_ref(y_it)",
        _BETA,
    ),
    "INFLUENCE": Term(
        "INFLUENCE",
        influence_loss,
        "full",
        ("ref_token_logp", "token_weights"),
        "-(2/β) Σ_it w_it log σ(-β δ_it) / Σ_it w_it, w from token influence; Σw = 0 gives 0",
        _BETA,
    ),
    **{f"IDK{k}": Term(f"IDK{k}", finetune_loss, f"idk{k}", doc=f"CE(idk{k} view)") for k in "123"},
    "WGA": Term(
        "WGA",
        wga_loss,
        "full",
        doc="-mean_it(p_it^β · CE_it), p = exp(-CE) detached, β = wga_beta",
        hparams={"beta": "wga_beta"},
    ),
    "SatImp": Term(
        "SatImp",
        satimp_loss,
        "full",
        doc="-mean_it(p_it^β1 (1 - p_it)^β2 · CE_it), p detached, β1, β2 = satimp_beta1, satimp_beta2",
        hparams={"beta1": "satimp_beta1", "beta2": "satimp_beta2"},
    ),
    "UNDIAL": Term(
        "UNDIAL",
        undial_loss,
        "full",
        ("ref_forget_logits",),
        "mean_it CE(softmax(z_ref - β e_y), p_θ), the frozen model's logits, β = undial_beta",
        {"beta": "undial_beta"},
    ),
    # RMU (Li et al. 2024, WMDP). Differs from open-unlearning's RMU trainer in two places: its
    # retain term is a separate regularizer (ACT), so RMU+GD (open-unlearning's default, NLL on
    # retain) and the paper's RMU+ACT are both spelled out; and u comes from its own seeded
    # generator rather than the global RNG, so every rank and a resumed run use the same u.
    # open-unlearning's α is GradDiff's retain coefficient, whichever retain loss it weighs; here
    # α (rmu_alpha) belongs to ACT, so RMU+GD+ACT weighs GD and ACT apart (regularization_coeff
    # still multiplies every regularizer: RMU+ACT with it at 1 is the paper's RMU + α·ACT).
    "RMU": Term(
        "RMU",
        rmu_loss,
        "full",
        ("control_vec",),
        "mean_i (1/|T_i|) Σ_t (1/d) ‖h_ℓ,it − c·u‖², h_ℓ after block rmu_layer, c = rmu_steering_coeff",
        {"steering_coeff": "rmu_steering_coeff"},
        reads="hidden",
    ),
    "FINETUNE": Term("FINETUNE", finetune_loss, "full", doc="CE(full view)"),
}

REGULARIZERS: dict[str, Term] = {
    "GD": Term("GD", finetune_loss, "retain", doc="CE(retain view)"),
    "KL": Term(
        "KL",
        kl_loss,
        "retain",
        ("ref_logits",),
        "Σ_v p_ref (log p_ref - log p_θ), mean over retain target tokens",
    ),
    "ACT": Term(
        "ACT",
        act_loss,
        "retain",
        ("ref_hidden",),
        "α mean_i (1/|T_i|) Σ_t (1/d) ‖h_ℓ,it − h^ref_ℓ,it‖² (RMU's retain term), α = rmu_alpha",
        {"alpha": "rmu_alpha"},
        reads="hidden",
    ),
}


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
    def name(self) -> str:
        return "+".join(t.name for t in (self.forget, *self.regularizers))

    @property
    def views(self) -> tuple[str, ...]:
        """Data views to batch: the forget view, then "retain" if a regularizer reads it."""
        return tuple(dict.fromkeys(t.view for t in (self.forget, *self.regularizers)))

    @property
    def needs(self) -> set[str]:
        """Extra inputs (cached reference values, token weights) some term needs."""
        return {n for t in (self.forget, *self.regularizers) for n in t.needs}

    @property
    def reads_hidden(self) -> bool:
        """Some term reads activations: the model returns its hidden states, RMU's layers train."""
        return any(t.reads == "hidden" for t in (self.forget, *self.regularizers))


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


@dataclass(frozen=True)
class LossHyper:
    """Loss hyperparameters as plain floats, in the papers' symbols. No defaults of its own: the
    values come from the config (:meth:`from_config`), where each default and its help live."""

    beta: float  # NPO / TNPO / INFLUENCE temperature β
    simnpo_beta: float  # SimNPO temperature β
    gamma: float  # SimNPO reward margin γ (the config's delta δ enters as γ = β·δ)
    wga_beta: float  # WGA weight exponent β
    satimp_beta1: float  # SatImp saturation exponent β1
    satimp_beta2: float  # SatImp importance exponent β2
    undial_beta: float  # UNDIAL logit reduction β
    rmu_steering_coeff: float  # RMU steering coefficient c
    rmu_alpha: float  # weight α of RMU's retain-activation term ACT
    forget_coeff: float  # weight of the forget term
    regularization_coeff: float  # weight of each regularizer

    def __post_init__(self) -> None:
        for key in ("beta", "simnpo_beta"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"{key} must be > 0, got {getattr(self, key)}")

    @classmethod
    def from_config(cls, cfg: Any) -> LossHyper:
        """Every field from the attribute of ``cfg`` (a Config) of the same name; SimNPO's γ
        from ``gamma``, else β·``delta`` (the authors' parametrisation), else 0."""
        values = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls)}
        if values["gamma"] is None:
            delta = getattr(cfg, "delta", None)
            values["gamma"] = 0.0 if delta is None else float(cfg.simnpo_beta) * float(delta)
        return cls(**{k: float(v) for k, v in values.items()})


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
    kwargs.update({arg: getattr(hyper, key) for arg, key in term.hparams.items()})
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
