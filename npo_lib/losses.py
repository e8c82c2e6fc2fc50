"""Unlearning losses of reference.md section 2, and the registry that composes them.

A loss term is a small pure function of logits, labels and cached reference values; it returns
a 0-dim tensor. Log-probabilities are computed in float32 (float64 stays float64) so that bf16
logits give stable results. One registry per role (:data:`FORGET_TERMS`, :data:`REGULARIZERS`)
maps a name to a :class:`Term`; :func:`parse_loss` reads names like ``NPO+GD`` and
:func:`composed_loss` sums the terms for the trainer. No model is called here.

Labels follow the HF convention: ``labels[:, t]`` is the token at position t, -100
(``IGNORE_INDEX``) on prompt and padding, and ``logits[:, t]`` predicts ``labels[:, t + 1]``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from npo_lib.data import IGNORE_INDEX, VIEWS

# ----------------------------------------------------------------------------- primitives


def _upcast(x: Tensor) -> Tensor:
    """At least float32: bf16 / fp16 become float32, float64 stays float64."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _check_shape(name: str, x: Tensor, shape: tuple[int, ...]) -> None:
    """A cached input must match exactly: broadcasting (B,) against (B, 1) would be silent."""
    if tuple(x.shape) != shape:
        raise ValueError(f"{name} has shape {tuple(x.shape)}, expected {shape}")


def token_logprobs(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Per-token log p(label) after the causal shift, and the target mask.

    Equivalent to ``torch.gather(logits[:, :-1].log_softmax(-1), -1, labels[:, 1:, None])``
    with masked positions set to 0, computed by ``cross_entropy`` in at least float32.
    Returns ``(logp, mask)``, both ``(B, T-1)`` in the compute dtype.
    """
    B, T, V = logits.shape
    _check_shape("labels", labels, (B, T))
    pred = _upcast(logits[:, :-1])  # (B, T-1, V)
    target = labels[:, 1:]  # (B, T-1)
    nll = F.cross_entropy(
        pred.reshape(-1, V), target.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none"
    )  # (B*(T-1),), 0 where ignored
    mask = (target != IGNORE_INDEX).to(pred.dtype)  # (B, T-1)
    return -nll.view(B, T - 1), mask


def sequence_logprob(logits: Tensor, labels: Tensor) -> Tensor:
    """Σ_t log p(y_t | x, y_<t) over each sequence's target tokens: ``(B,)``."""
    logp, _ = token_logprobs(logits, labels)  # (B, T-1)
    return logp.sum(-1)  # (B,)


def ce(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean token NLL over every target token of the batch (HF: token sum / token count).

    A batch without target tokens gives 0 (not NaN, as HF would).
    """
    logp, mask = token_logprobs(logits, labels)  # (B, T-1)
    # CE = -Σ_it m_it log p(y_it) / Σ_it m_it
    return -logp.sum() / mask.sum().clamp_min(1)


# ----------------------------------------------------------------------------- forget terms


def ga_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Gradient ascent: minimising it raises the NLL of the forget targets."""
    # GA = -CE
    return -ce(logits, labels)


def npo_loss(logits: Tensor, labels: Tensor, ref_seq_logp: Tensor, beta: float) -> Tensor:
    """NPO on sequence log-ratios against cached reference sequence log-probs ``(B,)``."""
    seq = sequence_logprob(logits, labels)  # (B,)
    _check_shape("ref_seq_logp", ref_seq_logp, tuple(seq.shape))
    delta = seq - ref_seq_logp.detach().to(seq)  # (B,)  Δ_i = log p_θ(y_i) - log p_ref(y_i)
    # NPO = -(2/β) · mean_i log σ(-β Δ_i) = (2/β) · mean_i log(1 + (p_θ/p_ref)^β)
    return -(2.0 / beta) * F.logsigmoid(-beta * delta).mean()


def simnpo_loss(logits: Tensor, labels: Tensor, beta: float, gamma: float) -> Tensor:
    """SimNPO: NPO without a reference, on length-normalised sequence log-probs."""
    logp, mask = token_logprobs(logits, labels)  # (B, T-1)
    avg = logp.sum(-1) / mask.sum(-1).clamp_min(1)  # (B,)  (1/|y_i|) Σ_t log p_θ(y_it)
    # SimNPO = -(2/β) · mean_i log σ(-(β/|y_i|) Σ_t log p_θ(y_it) - γ)
    return -(2.0 / beta) * F.logsigmoid(-beta * avg - gamma).mean()


def _weighted_token_npo(
    logits: Tensor, labels: Tensor, ref_token_logp: Tensor, weights: Tensor | None, beta: float
) -> Tensor:
    """Token-level NPO with weights w (None: w = target mask); Σw = 0 gives exactly 0."""
    logp, mask = token_logprobs(logits, labels)  # (B, T-1)
    _check_shape("ref_token_logp", ref_token_logp, tuple(logp.shape))
    delta = (logp - ref_token_logp.detach().to(logp)) * mask  # (B, T-1)  δ_it
    if weights is None:
        w = mask  # (B, T-1)
    else:
        _check_shape("token_weights", weights, tuple(logp.shape))
        w = weights.detach().to(logp) * mask  # (B, T-1), 0 on prompt and padding
    total = w.sum()
    # A zero total would give 0/0: divide by 1 instead, the numerator is then exactly 0 and
    # still connected to the logits (no data-dependent branch, no NaN in the gradient).
    total = torch.where(total > 0, total, torch.ones_like(total))
    # TNPO = -(2/β) · Σ_it w_it log σ(-β δ_it) / Σ_it w_it
    return -(2.0 / beta) * (w * F.logsigmoid(-beta * delta)).sum() / total


def tnpo_loss(logits: Tensor, labels: Tensor, ref_token_logp: Tensor, beta: float) -> Tensor:
    """Token-level NPO, w = 1 on target tokens; at δ = 0 its gradient is GA's token mean."""
    return _weighted_token_npo(logits, labels, ref_token_logp, None, beta)


def influence_loss(
    logits: Tensor, labels: Tensor, ref_token_logp: Tensor, token_weights: Tensor, beta: float
) -> Tensor:
    """TNPO weighted by token influence ``(B, T-1)`` (aligned with the shifted labels)."""
    return _weighted_token_npo(logits, labels, ref_token_logp, token_weights, beta)


def finetune_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Plain fine-tuning NLL (FINETUNE, IDKk, and GD on the retain view)."""
    # FINETUNE = IDKk = GD = CE
    return ce(logits, labels)


# ----------------------------------------------------------------------------- regularizers


def kl_loss(logits: Tensor, labels: Tensor, ref_logits: Tensor) -> Tensor:
    """KL(p_ref ‖ p_θ) per position, averaged over the target tokens of the shifted labels.

    open-unlearning and R-TOFU average over every position (prompt and padding included,
    ``kl_div(..., reduction="batchmean")`` on flattened tokens), so their values are smaller.
    """
    _check_shape("ref_logits", ref_logits, tuple(logits.shape))
    logq = _upcast(logits[:, :-1]).log_softmax(-1)  # (B, T-1, V)  log p_θ
    logp = _upcast(ref_logits[:, :-1].detach()).to(logq).log_softmax(-1)  # (B, T-1, V)  log p_ref
    mask = (labels[:, 1:] != IGNORE_INDEX).to(logq.dtype)  # (B, T-1)
    kl = F.kl_div(logq, logp, reduction="none", log_target=True).sum(-1)  # (B, T-1)
    # KL = Σ_it m_it Σ_v p_ref(v) (log p_ref(v) - log p_θ(v)) / Σ_it m_it
    return (kl * mask).sum() / mask.sum().clamp_min(1)


# ----------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Term:
    """A named loss term: its function, the data view it reads and the extra inputs it needs.

    ``hparams`` maps a keyword argument of ``fn`` to the :class:`LossHyper` field that fills it.
    """

    name: str
    fn: Callable[..., Tensor]
    view: str  # data view the term reads: "full", "answer", "cot", "idk1", ..., "retain"
    needs: tuple[str, ...] = ()  # "ref_seq_logp", "ref_token_logp", "token_weights", "ref_logits"
    doc: str = ""  # one line, with the equation
    hparams: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if self.view not in VIEWS:
            valid = ", ".join(VIEWS)
            raise ValueError(f"term {self.name}: view '{self.view}' is unknown; valid: {valid}")


_BETA = {"beta": "beta"}
_NPO_VIEWS = {"": "full", "1": "full", "2": "answer", "3": "cot"}  # a plain name (GA) is view 1

FORGET_TERMS: dict[str, Term] = {
    **{
        f"GA{k}": Term(f"GA{k}", ga_loss, v, doc=f"-CE({v} view)")
        for k, v in _NPO_VIEWS.items()
    },
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
    **{
        f"IDK{k}": Term(f"IDK{k}", finetune_loss, f"idk{k}", doc=f"CE(idk{k} view)")
        for k in "123"
    },
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


def parse_loss(name: str) -> LossSpec:
    """``"NPO+GD"`` -> LossSpec(NPO, (GD,)); a forget term first, then distinct regularizers."""
    first, *rest = [part.strip() for part in name.split("+")]
    for part in (first, *rest):
        if part not in FORGET_TERMS and part not in REGULARIZERS:
            raise ValueError(f"loss '{name}': unknown part '{part}'; {_valid_names()}")
    form = "the form is FORGET[+REG...], e.g. NPO+GD"
    if first not in FORGET_TERMS:
        raise ValueError(
            f"loss '{name}': '{first}' is a regularizer, not a forget term; {form}; "
            + _valid_names()
        )
    for part in rest:
        if part in FORGET_TERMS:
            raise ValueError(
                f"loss '{name}': forget term '{part}' after '+' (one forget term, first); {form}"
            )
    if len(set(rest)) != len(rest):
        dup = next(p for p in rest if rest.count(p) > 1)
        raise ValueError(f"loss '{name}': regularizer '{dup}' appears twice")
    return LossSpec(FORGET_TERMS[first], tuple(REGULARIZERS[p] for p in rest))


# ----------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class LossHyper:
    """Loss hyperparameters in the papers' symbols (plain floats, no Config dependency)."""

    beta: float = 0.1  # NPO / TNPO / INFLUENCE temperature β
    simnpo_beta: float = 2.5  # SimNPO temperature β
    gamma: float = 0.0  # SimNPO reward margin γ
    forget_coeff: float = 1.0  # weight of the forget term
    regularization_coeff: float = 1.0  # weight of each regularizer

    def __post_init__(self) -> None:
        for key in ("beta", "simnpo_beta"):
            if not getattr(self, key) > 0:
                raise ValueError(f"{key} must be > 0, got {getattr(self, key)}")

    @classmethod
    def from_config(cls, cfg: Any) -> LossHyper:
        """The fields of ``cfg`` (e.g. a Config) that share a name; the others keep defaults."""
        names = [f.name for f in dataclasses.fields(cls) if hasattr(cfg, f.name)]
        return cls(**{n: float(getattr(cfg, n)) for n in names})


def term_value(
    term: Term, logits: Tensor, labels: Tensor, hyper: LossHyper, **extras: Any
) -> Tensor:
    """Evaluate ``term`` with the extras it needs (others are ignored) and its hyperparameters."""
    missing = [n for n in term.needs if extras.get(n) is None]
    if missing:
        raise ValueError(f"loss term {term.name} needs {', '.join(missing)}: pass it as a keyword")
    kwargs = {n: extras[n] for n in term.needs}
    kwargs.update({arg: getattr(hyper, key) for arg, key in term.hparams.items()})
    return term.fn(logits, labels, **kwargs)


def composed_loss(
    spec: LossSpec,
    forget_logits: Tensor,
    forget_labels: Tensor,
    hyper: LossHyper,
    *,
    retain_logits: Tensor | None = None,
    retain_labels: Tensor | None = None,
    **extras: Any,
) -> tuple[Tensor, dict[str, float]]:
    """total = forget_coeff · forget + regularization_coeff · Σ regularizers, plus logged values.

    The forget term reads ``forget_*`` (its view's batch), regularizers read ``retain_*``;
    ``extras`` go to whichever term needs them (``ref_logits`` is the retain batch's).
    Log keys: ``forget/<name>``, ``reg/<name>``, ``loss``.
    """
    if spec.regularizers and (retain_logits is None or retain_labels is None):
        raise ValueError(f"loss {spec.name} has regularizers: pass retain_logits and retain_labels")
    forget = term_value(spec.forget, forget_logits, forget_labels, hyper, **extras)
    total = hyper.forget_coeff * forget
    logs = {f"forget/{spec.forget.name}": forget.item()}
    for reg in spec.regularizers:
        value = term_value(reg, retain_logits, retain_labels, hyper, **extras)
        total = total + hyper.regularization_coeff * value
        logs[f"reg/{reg.name}"] = value.item()
    logs["loss"] = total.item()
    return total, logs
