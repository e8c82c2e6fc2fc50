"""The loss functions by name: each lives in :mod:`npo_lib.objectives.losses` beside its
hyperparameter group and its registration; this module gathers them for callers that want a
function, not a registered term (the relearning attack's ``finetune_loss``, the tests). A new
objective need not be added here: import it from its own module."""

from __future__ import annotations

from npo_lib.objectives.losses.ga import finetune_loss, ga_loss
from npo_lib.objectives.losses.kl import kl_loss
from npo_lib.objectives.losses.npo import influence_loss, npo_loss, tnpo_loss
from npo_lib.objectives.losses.rmu import act_loss, rmu_loss
from npo_lib.objectives.losses.satimp import satimp_loss
from npo_lib.objectives.losses.simnpo import simnpo_loss
from npo_lib.objectives.losses.undial import undial_loss
from npo_lib.objectives.losses.wga import wga_loss

__all__ = [
    "act_loss",
    "finetune_loss",
    "ga_loss",
    "influence_loss",
    "kl_loss",
    "npo_loss",
    "rmu_loss",
    "satimp_loss",
    "simnpo_loss",
    "tnpo_loss",
    "undial_loss",
    "wga_loss",
]
