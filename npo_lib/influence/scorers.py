"""The scorers of `npo influence`, one interface: a :class:`ScoreContext` in, one row per example
out.

The registry describes each scorer: what its number means, whether it reads the
preconditioner, a retain sample or a retain model, whether it can track LoRA adapters, and the
optional package it needs. Config checks and the influence run read these fields; adding a
scorer is one entry here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from npo_lib.config import InfluenceConfig
from npo_lib.errors import ConfigError
from npo_lib.influence.direction import (
    Example,
    batches,
    differential_direction,
    score_rows,
    target_rows,
    token_nll,
)
from npo_lib.influence.modules import tracked_modules
from npo_lib.influence.preconditioners import Preconditioner, get_preconditioner


@dataclass
class ScoreContext:
    """What a scorer reads: the model (in the scoring dtype), encoded forget and retain views."""

    model: nn.Module
    forget: Sequence[Example]
    retain: Sequence[Example]
    cfg: InfluenceConfig
    pad_token_id: int = 0
    retain_model: Callable[[], nn.Module] | None = None  # loads the contrast scorer's retain model
    progress: bool = False
    info: dict[str, Any] = field(default_factory=dict)  # what the scorer reports (meta.json)


def _direction_rows(ctx: ScoreContext, precond: Preconditioner, lam: float) -> list[Tensor]:
    c = ctx.cfg
    modules = tracked_modules(ctx.model, c.modules, c.last_n_layers)
    v = differential_direction(
        ctx.model,
        modules,
        ctx.forget,
        ctx.retain,
        lam=lam,
        preconditioner=precond,
        batch_size=c.batch_size,
        pad_token_id=ctx.pad_token_id,
        progress=ctx.progress,
    )
    ctx.info.update(
        tracked_modules=len(modules),
        tracked_parameters=sum(t.numel() for t in v.values()),
        direction_norm=float(torch.sqrt(sum((t.double() ** 2).sum() for t in v.values()))),
    )
    return score_rows(
        ctx.model,
        v,
        ctx.forget,
        method=c.method,
        fd_eps=c.fd_eps,
        batch_size=c.batch_size,
        pad_token_id=ctx.pad_token_id,
        progress=ctx.progress,
    )


def differential_scores(ctx: ScoreContext) -> list[Tensor]:
    """s_it = [P⁻¹ (ḡ_forget − λ ḡ_retain)]ᵀ ∇ℓ_it."""
    c = ctx.cfg
    return _direction_rows(ctx, get_preconditioner(c.preconditioner, c.damping), c.lam)


def gradient_dot_scores(ctx: ScoreContext) -> list[Tensor]:
    """s_it = ḡ_forgetᵀ ∇ℓ_it: plain gradient similarity (P = I, λ = 0), the baseline."""
    return _direction_rows(ctx, Preconditioner(), 0.0)


def contrast_scores(ctx: ScoreContext) -> list[Tensor]:
    """s_it = log p_target(y_it) − log p_retain(y_it): what the target knows beyond the retain
    model."""
    if ctx.retain_model is None:
        raise ConfigError(
            "influence.scorer=contrast needs a retain model: pass retain_model_path=<folder>"
        )
    retain_model = ctx.retain_model()
    device = next(ctx.model.parameters()).device
    rows: list[Tensor | None] = [None] * len(ctx.forget)
    with torch.no_grad():
        for idx, batch in batches(ctx.forget, ctx.cfg.batch_size, ctx.pad_token_id, device):
            diff = token_nll(retain_model, batch) - token_nll(ctx.model, batch)  # (B, T-1)
            for i, row in zip(idx, target_rows(diff, batch)):
                rows[i] = row
    return rows  # type: ignore[return-value]


def kronfluence_scores(ctx: ScoreContext) -> list[Tensor]:
    """kronfluence's per-token pairwise scores, a different quantity: see
    :mod:`npo_lib.influence.kronfluence`."""
    from npo_lib.influence.kronfluence import kronfluence_token_scores

    rows, info = kronfluence_token_scores(
        ctx.model,
        ctx.forget,
        ctx.retain,
        ctx.cfg,
        pad_token_id=ctx.pad_token_id,
        progress=ctx.progress,
    )
    ctx.info.update(info)
    return rows


@dataclass(frozen=True)
class Scorer:
    """A named scorer: its function, what its number means, and what it needs."""

    name: str
    fn: Callable[[ScoreContext], list[Tensor]]
    quantity: str
    uses_preconditioner: bool = False  # reads influence.preconditioner (and damping)
    needs_retain_sample: bool = False  # a seeded sample of retain examples (ḡ_retain, fitting P)
    uses_retain_model: bool = False  # a second model fine-tuned without the forget set
    supports_lora: bool = True  # can track LoRA adapters (influence.modules=lora)
    requires: str | None = None  # optional package it imports (an extra of the project)


SCORERS: dict[str, Scorer] = {
    s.name: s
    for s in [
        Scorer(
            "differential",
            differential_scores,
            "s_it = [P^-1 (g_forget - lam g_retain)]^T grad l_it, "
            "l_it = -log p(y_it | x_i, y_i,<t)",
            uses_preconditioner=True,
            needs_retain_sample=True,
        ),
        Scorer(
            "gradient_dot",
            gradient_dot_scores,
            "s_it = g_forget^T grad l_it (identity, no retain term)",
        ),
        Scorer(
            "contrast",
            contrast_scores,
            "s_it = log p_target(y_it) - log p_retain(y_it)",
            uses_retain_model=True,
        ),
        Scorer(
            "kronfluence",
            kronfluence_scores,
            "kronfluence per-token pairwise score: token t's share of the train gradient "
            "(includes later tokens' losses through attention), mean over forget queries "
            "- lam x mean over retain queries, EK-FAC; NOT the directional derivative of l_it",
            uses_preconditioner=True,
            needs_retain_sample=True,
            supports_lora=False,
            requires="kronfluence",
        ),
    ]
}


def get_scorer(name: str) -> Scorer:
    """The registered scorer, or an error listing the valid names."""
    try:
        return SCORERS[name]
    except KeyError:
        raise ConfigError(
            f"influence.scorer '{name}' is unknown; valid: {', '.join(SCORERS)}"
        ) from None


def compute_token_scores(ctx: ScoreContext) -> list[Tensor]:
    """The configured scorer's rows for ``ctx.forget`` (model left in eval mode)."""
    ctx.model.eval()
    return get_scorer(ctx.cfg.scorer).fn(ctx)
