"""Gradient ascent and plain fine-tuning NLL: GA (Jang et al. 2023, arXiv:2210.01504), IDK
(Maini et al. 2024, TOFU, arXiv:2401.06121; R-TOFU's reasoned refusal views), FINETUNE and the GD
regularizer (TOFU). They have no hyperparameters.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from npo_lib.objectives.catalog import VARIANT_VIEWS, Term, register_term

if TYPE_CHECKING:
    from torch import Tensor


def ga_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Gradient ascent: minimising it raises the NLL of the forget targets."""
    from npo_lib.objectives.primitives import ce

    # GA = -CE
    return -ce(logits, labels)


def finetune_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Plain fine-tuning NLL (FINETUNE, IDKk, and GD on the retain view)."""
    from npo_lib.objectives.primitives import ce

    # FINETUNE = IDKk = GD = CE
    return ce(logits, labels)


GA_PAPER = "Jang et al. 2023, arXiv:2210.01504"
TOFU_PAPER = "Maini et al. 2024 (TOFU), arXiv:2401.06121"
for suffix, view in VARIANT_VIEWS.items():
    register_term(Term(f"GA{suffix}", ga_loss, view, doc=f"-CE({view} view)", paper=GA_PAPER))
for k in "123":
    register_term(
        Term(f"IDK{k}", finetune_loss, f"idk{k}", doc=f"CE(idk{k} view)", paper=TOFU_PAPER)
    )
register_term(Term("FINETUNE", finetune_loss, "full", doc="CE(full view)"))
register_term(
    Term("GD", finetune_loss, "retain", doc="CE(retain view)", paper=TOFU_PAPER, regularizer=True)
)
