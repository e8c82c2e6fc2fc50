"""Preconditioners P of the influence direction v = P⁻¹ g, fitted on Linear layers.

Each layer's inputs a ``(B, T, in')`` (a ones column for the bias) and output gradients δ
``(B, T, out)`` give the per-example gradient G_i = Σ_t δ_it a_itᵀ. ``identity`` (P = I),
``diagonal`` (empirical Fisher diagonal), ``kfac`` (Martens & Grosse 2015, arXiv:1503.05671),
``ekfac`` (George et al. 2018, arXiv:1806.03884).
"""

from __future__ import annotations

import torch
from torch import Tensor

from npo_lib.config import InfluenceConfig
from npo_lib.errors import ConfigError

DAMPING: float = InfluenceConfig.damping  # the schema's influence.damping


class Preconditioner:
    """P = I. Subclasses fit P from each layer's inputs a ``(B, T, in')`` and output gradients
    δ ``(B, T, out)`` over ``passes`` data passes, and solve ``P⁻¹ g`` for ``g`` ``(out, in')``
    (in' = in, plus one column for the bias). ``damping`` is relative: the solve adds
    ``damping · mean(eigenvalues of P)`` per layer (kronfluence's heuristic uses 0.1)."""

    passes = 0  # data passes that fit it
    per_example = False  # wants the per-example gradients G_i of the first pass

    def __init__(self, damping: float = DAMPING) -> None:
        self.damping = damping

    def observe(
        self,
        pass_index: int,
        name: str,
        a: Tensor,
        d: Tensor,
        n_tokens: int,
        G: Tensor | None = None,
    ) -> None:
        """Accumulate one batch of one layer (padding rows of ``a`` zeroed, ``n_tokens`` real
        ones; ``G`` ``(B, out, in')`` when :attr:`per_example`)."""

    def end_pass(self, pass_index: int) -> None:
        """Normalise what a pass accumulated (after its last batch)."""

    def solve(self, name: str, g: Tensor) -> Tensor:
        return g

    def _shift(self, eig: Tensor) -> Tensor:
        mean = float(eig.mean())
        return eig + (self.damping * mean if mean > 0 else 1.0)


def per_example_gradients(a: Tensor, d: Tensor) -> Tensor:
    """G_i = Σ_t δ_it a_itᵀ: ``(B, out, in')`` from a ``(B, T, in')`` and δ ``(B, T, out)``."""
    return torch.einsum("bto,bti->boi", d, a)


class DiagonalFisher(Preconditioner):
    """P = diag(E_i[G_i ⊙ G_i]), the empirical Fisher's diagonal over per-sequence gradients."""

    passes = 1
    per_example = True

    def __init__(self, damping: float = DAMPING) -> None:
        super().__init__(damping)
        self.sq: dict[str, Tensor] = {}
        self.n: dict[str, int] = {}

    def observe(
        self,
        pass_index: int,
        name: str,
        a: Tensor,
        d: Tensor,
        n_tokens: int,
        G: Tensor | None = None,
    ) -> None:
        G = per_example_gradients(a, d) if G is None else G  # (B, out, in')
        self.sq[name] = self.sq.get(name, 0) + (G * G).sum(0).double()  # (out, in')
        self.n[name] = self.n.get(name, 0) + G.shape[0]

    def end_pass(self, pass_index: int) -> None:
        self.fisher = {k: v / self.n[k] for k, v in self.sq.items()}

    def solve(self, name: str, g: Tensor) -> Tensor:
        return g / self._shift(self.fisher[name]).to(g)


class KFAC(Preconditioner):
    """P = A ⊗ S per layer: A = E_tokens[a aᵀ], S = E_seq[Σ_t δ_t δ_tᵀ] (Martens & Grosse 2015),
    solved in the eigenbases Q_A, Q_S with eigenvalues Λ = λ_S λ_Aᵀ."""

    passes = 1

    def __init__(self, damping: float = DAMPING) -> None:
        super().__init__(damping)
        self.A: dict[str, Tensor] = {}
        self.S: dict[str, Tensor] = {}
        self.tokens: dict[str, int] = {}
        self.seqs: dict[str, int] = {}
        self.basis: dict[str, tuple[Tensor, Tensor]] = {}
        self.eig: dict[str, Tensor] = {}

    def observe(
        self,
        pass_index: int,
        name: str,
        a: Tensor,
        d: Tensor,
        n_tokens: int,
        G: Tensor | None = None,
    ) -> None:
        a2, d2 = a.flatten(0, 1), d.flatten(0, 1)  # (B·T, in'), (B·T, out)
        self.A[name] = self.A.get(name, 0) + (a2.T @ a2).double()  # (in', in'), summed in float64
        self.S[name] = self.S.get(name, 0) + (d2.T @ d2).double()  # (out, out)
        self.tokens[name] = self.tokens.get(name, 0) + n_tokens
        self.seqs[name] = self.seqs.get(name, 0) + a.shape[0]

    def end_pass(self, pass_index: int) -> None:
        for name in self.A:
            eA, QA = torch.linalg.eigh(self.A[name] / max(self.tokens[name], 1.0))
            eS, QS = torch.linalg.eigh(self.S[name] / self.seqs[name])
            self.basis[name] = (QS, QA)
            self.eig[name] = torch.outer(eS.clamp_min(0), eA.clamp_min(0))  # (out, in')

    def solve(self, name: str, g: Tensor) -> Tensor:
        QS, QA = self.basis[name]
        r = QS.T @ g.double() @ QA  # (out, in') in the eigenbasis
        r = r / self._shift(self.eig[name])
        return (QS @ r @ QA.T).to(g)


class EKFAC(KFAC):
    """K-FAC's eigenbases with eigenvalues re-fitted to the data (George et al. 2018):
    Λ = E_i[(Q_Sᵀ G_i Q_A)²], a second pass over per-sequence gradients."""

    passes = 2

    def observe(
        self,
        pass_index: int,
        name: str,
        a: Tensor,
        d: Tensor,
        n_tokens: int,
        G: Tensor | None = None,
    ) -> None:
        if pass_index == 0:
            return super().observe(pass_index, name, a, d, n_tokens)
        QS, QA = (q.to(a.dtype) for q in self.basis[name])
        # (B, out, in') = Q_Sᵀ G_i Q_A, rotating a and δ first (cheaper)
        R = per_example_gradients(a @ QA, d @ QS)
        self.lam[name] = self.lam.get(name, 0) + (R * R).sum(0).double()

    def end_pass(self, pass_index: int) -> None:
        if pass_index == 0:
            super().end_pass(pass_index)
            self.lam: dict[str, Tensor] = {}
        else:
            self.eig = {k: v / self.seqs[k] for k, v in self.lam.items()}


PRECONDITIONERS: dict[str, type[Preconditioner]] = {
    "identity": Preconditioner,
    "diagonal": DiagonalFisher,
    "kfac": KFAC,
    "ekfac": EKFAC,
}


def get_preconditioner(name: str, damping: float) -> Preconditioner:
    """A fresh preconditioner of the registered kind, or an error listing the valid names."""
    if name not in PRECONDITIONERS:
        raise ConfigError(
            f"influence.preconditioner '{name}' is unknown; valid: {', '.join(PRECONDITIONERS)}"
        )
    return PRECONDITIONERS[name](damping)
