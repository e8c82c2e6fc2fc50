"""Token influence: how `npo influence` scores tokens and which tokens INFLUENCE unlearns."""

from __future__ import annotations

from dataclasses import dataclass

from npo_lib.config.fields import need, opt


@dataclass
class SelectionConfig:
    """Which target tokens INFLUENCE unlearns, from their influence scores."""

    method: str = opt(
        "top_p",
        "top_k (per example), top_p (global % of tokens), threshold, zscore; controls: random, "
        "oracle (fact_spans), inverse (lowest scores)",
    )
    budget: str = opt(
        "top_p",
        "random / oracle / inverse: select as many tokens as top_p (global p %) or top_k (k per "
        "example) would",
    )
    seed: int | None = opt(None, "random / oracle: seed of the random draw; None = the run's seed")
    k: int = opt(5, "top_k: tokens per example")
    p: float = opt(10.0, "top_p: percent of all target tokens of the split, highest scores first")
    threshold: float = opt(0.0, "threshold: select tokens scoring above it")
    z: float = opt(
        1.0, "zscore: select tokens more than z standard deviations above their example's mean"
    )
    window: int = opt(0, "also select this many tokens either side of a selected one")
    whole_words: bool = opt(True, "extend a selection to every token of the words it touches")
    soft: bool = opt(False, "weights grow with the score instead of a hard w_selected / w_other")

    def __post_init__(self) -> None:
        need(
            self.k >= 1 and 0 < self.p <= 100 and self.window >= 0 and self.z >= 0,
            f"selection: need k >= 1, 0 < p <= 100, window >= 0, z >= 0; got k={self.k}, "
            f"p={self.p}, "
            f"window={self.window}, z={self.z}",
        )


@dataclass
class InfluenceConfig:
    """Per-token influence scores for INFLUENCE (`npo influence`).

    s_it = vᵀ ∇θ_S ℓ_it with v = P⁻¹ (ḡ_forget − λ ḡ_retain) over the tracked parameters θ_S.
    """

    scorer: str = opt(
        "differential",
        "differential, gradient_dot (ḡ_forget, P = I), contrast (log p_target − log p_retain), "
        "kronfluence (optional package)",
    )
    preconditioner: str = opt(
        "ekfac",
        "P: identity, diagonal (empirical Fisher), kfac, ekfac (eigenvalue-corrected K-FAC)",
    )
    lam: float = opt(1.0, "λ, weight of the retain gradient in the direction")
    modules: str = opt(
        "all_linear", "θ_S: all_linear (every Linear but lm_head), mlp, last_n, lora (LoRA.r > 0)"
    )
    last_n_layers: int = opt(1, "modules=last_n: how many of the last decoder blocks")
    method: str = opt(
        "jvp",
        "row scores: jvp (forward-mode, exact) or fd (symmetric finite difference, two forwards)",
    )
    dtype: str = opt("float32", "scoring precision: float32, or float64 (exactness checks)")
    damping: float = opt(
        1e-4, "P + damping · mean eigenvalue of P, per layer (diagonal, kfac, ekfac)"
    )
    fd_eps: float | None = opt(
        None,
        "fd step h: the largest token-loss change of a step, in nats; None = 3e-3 (float32), 1e-4 "
        "(float64)",
    )
    retain_samples: int = opt(
        0, "retain examples for ḡ_retain (and P); 0 = as many as the forget set"
    )
    batch_size: int = opt(8, "sequences per forward / backward")

    def __post_init__(self) -> None:
        need(
            self.dtype in ("float32", "float64"),
            f"influence.dtype '{self.dtype}' is unknown; valid: float32, float64",
        )
        need(
            self.method in ("jvp", "fd"),
            f"influence.method '{self.method}' is unknown; valid: jvp, fd",
        )
        for key in ("damping", "fd_eps"):
            value = getattr(self, key)
            need(value is None or value > 0, f"influence.{key} must be > 0, got {value}")
        need(
            self.lam >= 0
            and self.retain_samples >= 0
            and self.last_n_layers >= 1
            and self.batch_size >= 1,
            "influence: need lam >= 0, retain_samples >= 0, last_n_layers >= 1, batch_size >= 1; "
            f"got lam={self.lam}, retain_samples={self.retain_samples}, "
            f"last_n_layers={self.last_n_layers}, "
            f"batch_size={self.batch_size}",
        )
