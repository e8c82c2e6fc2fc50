"""Per-token influence scores (reference.md section 4): direction, preconditioners, scorers.

For forget example i and target token t, ℓ_it = -log p_θ(y_it | x_i, y_i,<t). Over the tracked
parameters θ_S (the weights of chosen ``nn.Linear`` layers) the differential direction is

    v = P⁻¹ (ḡ_forget − λ ḡ_retain),   ḡ = mean_i ∇θ_S L_i,   L_i = mean_t ℓ_it,

and the score is s_it = vᵀ ∇θ_S ℓ_it, the directional derivative of ℓ_it along v. So the whole row
s_i· comes from one forward-mode pass (:func:`jvp_token_scores`, ``torch.func.jvp``) or from a
symmetric finite difference of two forwards (:func:`fd_token_scores`), never from one backward per
token; :func:`autograd_token_scores` is that per-token backward loop, kept as the reference.

Layers, each usable alone:

1. :func:`tracked_modules`: which Linear layers carry θ_S (all, MLP, last N blocks, LoRA).
2. :data:`PRECONDITIONERS`: identity, diagonal empirical Fisher, K-FAC, EK-FAC, fitted from each
   layer's inputs a and output gradients δ (per-example gradient G_i = Σ_t δ_it a_itᵀ).
3. :func:`differential_direction` and the row scorers (JVP, finite difference, autograd loop).
4. :data:`SCORERS`: ``differential``, ``gradient_dot``, ``contrast``, ``kronfluence``, one interface.
5. Ground truth of the embedded benchmark: :func:`fact_token_mask` and :func:`auroc`.

Examples are encoded views (``input_ids``, ``labels`` with -100 on the prompt, ``prompt_len``) as
:func:`npo_lib.data.encode_view` makes them; a row holds one score per target token (EOS included).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from npo_lib.config import (
    INFLUENCE_MODULES,
    INFLUENCE_PRECONDITIONERS,
    INFLUENCE_SCORERS,
    InfluenceConfig,
)
from npo_lib.data import IGNORE_INDEX, ViewCollator, get_view
from npo_lib.losses import token_logprobs

if TYPE_CHECKING:
    from npo_lib.families import ChatTags

Params = dict[str, Tensor]  # parameter name (as in model.named_parameters()) -> tensor
Example = Mapping[str, Any]  # one encoded view

# ----------------------------------------------------------------------------- tracked modules

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def tracked_modules(model: nn.Module, which: str, last_n_layers: int = 1) -> dict[str, nn.Linear]:
    """The Linear layers whose weights (and biases) form θ_S, by name.

    ``all_linear``: every ``nn.Linear`` except the output layer (peft's "all-linear" rule);
    ``mlp``: those inside ``.mlp.`` blocks; ``last_n``: those of the last ``last_n_layers``
    decoder blocks (``...layers.<i>...``); ``lora``: the LoRA adapters' ``lora_A`` / ``lora_B``.
    """
    if which not in INFLUENCE_MODULES:
        raise ValueError(f"influence.modules '{which}' is unknown; valid: {', '.join(INFLUENCE_MODULES)}")
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    if which == "lora":
        chosen = {n: m for n, m in linears.items() if re.search(r"\.lora_[AB]\.", f".{n}.")}
        if not chosen:
            raise ValueError("influence.modules=lora: the model has no LoRA adapters (set LoRA.r > 0)")
        return chosen
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    base = {n: m for n, m in linears.items() if m is not head and "lora_" not in n}
    if which == "all_linear":
        chosen = base
    elif which == "mlp":
        chosen = {n: m for n, m in base.items() if ".mlp." in f".{n}."}
    else:  # last_n
        index = {n: int(m.group(1)) for n in base if (m := _LAYER.search(n))}
        if not index:
            raise ValueError(f"influence.modules=last_n: no '...layers.<i>...' Linear layers in {type(model).__name__}")
        first = max(index.values()) + 1 - last_n_layers
        chosen = {n: base[n] for n, i in index.items() if i >= first}
    if not chosen:
        raise ValueError(f"influence.modules={which} matches no nn.Linear layer of {type(model).__name__}")
    return chosen


def module_params(modules: Mapping[str, nn.Linear]) -> Params:
    """θ_S as ``{"<module>.weight": W, "<module>.bias": b}`` (live parameters, not copies)."""
    out: Params = {}
    for name, m in modules.items():
        out[f"{name}.weight"] = m.weight
        if m.bias is not None:
            out[f"{name}.bias"] = m.bias
    return out


@contextmanager
def _grad_only_on(model: nn.Module, params: Sequence[Tensor]) -> Iterator[None]:
    """requires_grad on ``params`` alone (no gradient work for the rest), restored after."""
    saved = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in saved:
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


# ----------------------------------------------------------------------------- attention

PRECISE_ATTENTION = "npo_eager"  # attn_implementation name of :func:`precise_eager_attention`


def precise_eager_attention(
    module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
    scaling: float, dropout: float = 0.0, **kwargs: Any,
) -> tuple[Tensor, Tensor]:
    """HF's eager attention with the softmax in the input dtype.

    Why: HF's eager softmax runs in float32, which caps a float64 model at ~1e-7 relative error
    (and a float64 finite difference at ~1e-3); the fused SDPA kernel has no forward-mode
    derivative at all. Plain matmuls and softmax give exact float64 and a JVP. Query
    ``(B, H, T, d)``, key / value ``(B, H_kv, S, d)`` (grouped heads repeated).
    """
    n_rep = query.shape[1] // key.shape[1]
    if n_rep > 1:
        key, value = key.repeat_interleave(n_rep, dim=1), value.repeat_interleave(n_rep, dim=1)  # (B, H, S, d)
    weights = _scale(query @ key.transpose(2, 3), scaling)  # (B, H, T, S)
    if attention_mask is not None:
        weights = weights + attention_mask[..., : key.shape[-2]]
    weights = weights.softmax(-1)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    return (weights @ value).transpose(1, 2).contiguous(), weights  # (B, T, H, d)


def _scale(x: Tensor, c: float) -> Tensor:
    """x · c through ``aten.mul.Scalar``. Why: ``x * c`` wraps c as a tensor without tangent, and
    forward AD then adds a zero tangent through a slow Python path (~1 ms per op on CPU)."""
    return torch.ops.aten.mul.Scalar(x, c)


def _rms_norm(self: nn.Module, hidden: Tensor) -> Tensor:
    # x / sqrt(mean(x²) + ε) · w, in the input dtype (HF: in float32, then cast back); + ε as a
    # Scalar op for forward AD's sake (see _scale)
    var = torch.ops.aten.add.Scalar(hidden.pow(2).mean(-1, keepdim=True), self.variance_epsilon)
    return self.weight * (hidden * torch.rsqrt(var))


def precise_norms(model: nn.Module) -> int:
    """Compute this model's RMSNorm layers in their input dtype; returns how many were changed.

    Why: HF's Llama / Qwen / Mistral RMSNorm casts to float32 and back, which rounds a float64
    forward at ~1e-7 (a float64 finite difference then errs ~1e-3). Same maths otherwise; a
    float32 model is unchanged. Only this instance is changed (nothing is patched globally).
    """
    import types

    changed = 0
    for m in model.modules():
        if type(m).__name__.endswith("RMSNorm") and hasattr(m, "variance_epsilon") and isinstance(getattr(m, "weight", None), Tensor):
            m.forward = types.MethodType(_rms_norm, m)
            changed += 1
    return changed


def register_precise_attention() -> str:
    """Make ``attn_implementation="npo_eager"`` loadable (attention and its additive mask)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(PRECISE_ATTENTION, precise_eager_attention)
    AttentionMaskInterface.register(PRECISE_ATTENTION, eager_mask)
    return PRECISE_ATTENTION


# ----------------------------------------------------------------------------- batches and losses


def batches(examples: Sequence[Example], batch_size: int, pad_token_id: int, device: torch.device | str) -> Iterator[tuple[list[int], dict[str, Tensor]]]:
    """(indices, padded batch) in order of length, so a batch pads little; rows map back by index."""
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]["input_ids"]))
    collate = ViewCollator(pad_token_id=pad_token_id)
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        batch = collate.pad([examples[i] for i in idx])
        yield idx, {k: v.to(device) for k, v in batch.items()}


def token_nll(model: nn.Module, batch: Mapping[str, Tensor], params: Params | None = None) -> Tensor:
    """ℓ per target token in the shifted frame ``(B, T-1)``, 0 on prompt and padding.

    ``params`` replaces those parameters for this call (``torch.func.functional_call``).
    """
    kwargs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False}
    if params is None:
        logits = model(**kwargs).logits
    else:
        logits = torch.func.functional_call(model, params, args=(), kwargs=kwargs).logits
    logp, _ = token_logprobs(logits, batch["labels"])  # (B, T-1), already 0 where masked
    return -logp


def target_rows(values: Tensor, batch: Mapping[str, Tensor]) -> list[Tensor]:
    """Per example, the values ``(B, T-1)`` (shifted frame) at its target tokens, as CPU float64."""
    target = batch["labels"][:, 1:] != IGNORE_INDEX  # (B, T-1)
    return [values[b][target[b]].detach().double().cpu() for b in range(values.shape[0])]


# ----------------------------------------------------------------------------- preconditioners


class Preconditioner:
    """P = I. Subclasses fit P from each layer's inputs a ``(B, T, in')`` and output gradients
    δ ``(B, T, out)`` over ``passes`` data passes, and solve ``P⁻¹ g`` for ``g`` ``(out, in')``
    (in' = in, plus one column for the bias). ``damping`` is relative: the solve adds
    ``damping · mean(eigenvalues of P)`` per layer (kronfluence's heuristic uses 0.1)."""

    passes = 0  # data passes that fit it
    per_example = False  # wants the per-example gradients G_i of the first pass

    def __init__(self, damping: float = 1e-4) -> None:
        self.damping = damping

    def observe(self, pass_index: int, name: str, a: Tensor, d: Tensor, n_tokens: int, G: Tensor | None = None) -> None:
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

    def __init__(self, damping: float = 1e-4) -> None:
        super().__init__(damping)
        self.sq: dict[str, Tensor] = {}
        self.n: dict[str, int] = {}

    def observe(self, pass_index: int, name: str, a: Tensor, d: Tensor, n_tokens: int, G: Tensor | None = None) -> None:
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

    def __init__(self, damping: float = 1e-4) -> None:
        super().__init__(damping)
        self.A: dict[str, Tensor] = {}
        self.S: dict[str, Tensor] = {}
        self.tokens: dict[str, int] = {}
        self.seqs: dict[str, int] = {}
        self.basis: dict[str, tuple[Tensor, Tensor]] = {}
        self.eig: dict[str, Tensor] = {}

    def observe(self, pass_index: int, name: str, a: Tensor, d: Tensor, n_tokens: int, G: Tensor | None = None) -> None:
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

    def observe(self, pass_index: int, name: str, a: Tensor, d: Tensor, n_tokens: int, G: Tensor | None = None) -> None:
        if pass_index == 0:
            return super().observe(pass_index, name, a, d, n_tokens)
        QS, QA = (q.to(a.dtype) for q in self.basis[name])
        R = per_example_gradients(a @ QA, d @ QS)  # (B, out, in') = Q_Sᵀ G_i Q_A, rotating a and δ first (cheaper)
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


# ----------------------------------------------------------------------------- direction


class _Capture:
    """Forward hooks keeping each tracked layer's input a ``(B, T, in')`` (a ones column for
    the bias) and tensor hooks keeping its output gradient δ ``(B, T, out)``."""

    def __init__(self, modules: Mapping[str, nn.Linear]) -> None:
        self.a: dict[str, Tensor] = {}
        self.d: dict[str, Tensor] = {}
        self.handles = [m.register_forward_hook(self._hook(n)) for n, m in modules.items()]

    def _hook(self, name: str) -> Callable:
        def hook(module: nn.Linear, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            if name in self.a:
                raise RuntimeError(f"layer {name} ran twice in one forward: shared layers are not supported")
            a = inputs[0].detach()
            if module.bias is not None:
                a = torch.cat([a, torch.ones_like(a[..., :1])], -1)
            self.a[name] = a
            output.register_hook(lambda g: self.d.__setitem__(name, g.detach()))

        return hook

    def clear(self) -> None:
        self.a.clear()
        self.d.clear()

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _from_matrix(modules: Mapping[str, nn.Linear], mats: Mapping[str, Tensor]) -> Params:
    out: Params = {}
    for name, m in modules.items():
        g = mats[name]
        out[f"{name}.weight"] = g[:, : m.in_features].contiguous()
        if m.bias is not None:
            out[f"{name}.bias"] = g[:, m.in_features].contiguous()
    return out


def mean_gradients(
    model: nn.Module,
    modules: Mapping[str, nn.Linear],
    sets: Mapping[str, Sequence[Example]],
    *,
    preconditioner: Preconditioner | None = None,
    batch_size: int = 8,
    pad_token_id: int = 0,
    progress: bool = False,
) -> dict[str, dict[str, Tensor]]:
    """Mean gradient ḡ of the sequence loss L_i = mean_t ℓ_it over each named set, per layer as
    ``{set: {layer: ḡ (out, in')}}``, and the preconditioner fitted on every set together.

    One batched backward per batch and pass, down to the input embeddings only: no weight
    gradient is formed by autograd. Hooks keep each tracked layer's input a and output gradient δ;
    the batch loss Σ_i L_i makes row i of δ that of L_i alone, so the weight gradient is
    Σ_i G_i with G_i = Σ_t δ_it a_itᵀ, and per-example G_i (diagonal Fisher) cost no extra pass.
    """
    precond = preconditioner or Preconditioner()
    device = next(model.parameters()).device
    sums: dict[str, dict[str, Tensor]] = {name: {} for name in sets}
    capture = _Capture(modules)
    embed = model.get_input_embeddings()
    total = max(1, precond.passes) * sum(-(-len(ex) // batch_size) for ex in sets.values())
    bar = tqdm(total=total, desc="influence direction", disable=not progress, leave=False)
    try:
        with _grad_only_on(model, []):
            for k in range(max(1, precond.passes)):
                for set_name, examples in sets.items():
                    for _, batch in batches(examples, batch_size, pad_token_id, device):
                        emb = embed(batch["input_ids"]).detach().requires_grad_(True)  # (B, T, H)
                        logits = model(inputs_embeds=emb, attention_mask=batch["attention_mask"], use_cache=False).logits
                        logp, mask = token_logprobs(logits, batch["labels"])  # (B, T-1) each
                        loss = (-(logp * mask).sum(1) / mask.sum(1).clamp_min(1)).sum()  # Σ_i L_i
                        torch.autograd.grad(loss, emb)  # fills capture.d through the tensor hooks
                        pad = batch["attention_mask"][..., None].to(logits.dtype)  # (B, T, 1)
                        n_tokens = int(batch["attention_mask"].sum())
                        for name in modules:
                            a, d = capture.a[name] * pad, capture.d[name]  # (B, T, in'), (B, T, out)
                            G = per_example_gradients(a, d) if k == 0 and precond.per_example else None
                            if k == 0:
                                g = G.sum(0) if G is not None else torch.einsum("bto,bti->oi", d, a)  # (out, in')
                                sums[set_name][name] = sums[set_name].get(name, 0) + g
                            precond.observe(k, name, a, d, n_tokens, G)
                        capture.clear()
                        bar.update()
                precond.end_pass(k)
    finally:
        bar.close()
        capture.remove()
    return {set_name: {n: g / len(sets[set_name]) for n, g in per.items()} for set_name, per in sums.items()}


def differential_direction(
    model: nn.Module,
    modules: Mapping[str, nn.Linear],
    forget: Sequence[Example],
    retain: Sequence[Example],
    *,
    lam: float = 1.0,
    preconditioner: Preconditioner | None = None,
    batch_size: int = 8,
    pad_token_id: int = 0,
    progress: bool = False,
) -> Params:
    """v = P⁻¹ (ḡ_forget − λ ḡ_retain) over the tracked layers, P fitted on forget ∪ retain."""
    precond = preconditioner or Preconditioner()
    use_retain = len(retain) > 0 and (lam > 0 or precond.passes > 0)  # P is fitted on both sets
    sets = {"forget": forget, "retain": retain} if use_retain else {"forget": forget}
    means = mean_gradients(model, modules, sets, preconditioner=precond, batch_size=batch_size,
                           pad_token_id=pad_token_id, progress=progress)
    diff = {}
    for name in modules:
        diff[name] = means["forget"][name] - lam * means["retain"][name] if lam > 0 and use_retain else means["forget"][name]
    return _from_matrix(modules, {name: precond.solve(name, g) for name, g in diff.items()})


# ----------------------------------------------------------------------------- row scores


def _primals(model: nn.Module, tangents: Params) -> Params:
    named = dict(model.named_parameters())
    return {n: named[n].detach() for n in tangents}


def _with_zero_tangents(model: nn.Module, tangents: Params) -> tuple[Params, Params]:
    """(primals, tangents) for θ_S plus every 1-D parameter and floating buffer (norm weights,
    biases, rotary frequencies) with a zero tangent. Why: an op mixing a tensor that has a
    tangent with one that has none takes forward AD's slow zero-tangent path (~1 ms per op on
    CPU, about half the JVP's time on the tiny model); real zeros on these small tensors avoid
    it. Large untracked matrices (embeddings, lm_head) stay constant: their zeros would cost a
    matmul each."""
    primals, tan = _primals(model, tangents), dict(tangents)
    small = [(n, p) for n, p in model.named_parameters() if p.dim() <= 1]
    small += [(n, b) for n, b in model.named_buffers() if b.is_floating_point()]
    for n, p in small:
        if n not in primals:
            primals[n], tan[n] = p.detach(), torch.zeros_like(p)
    return primals, tan


def jvp_token_scores(model: nn.Module, tangents: Params, batch: Mapping[str, Tensor]) -> Tensor:
    """s = ∂ℓ/∂θ_S · v for every position ``(B, T-1)``: one forward-mode pass (``torch.func.jvp``).

    Needs attention without fused kernels (:func:`precise_eager_attention`): PyTorch's SDPA has
    no forward-mode derivative.
    """
    primals, tangents = _with_zero_tangents(model, tangents)
    with torch.no_grad():
        _, s = torch.func.jvp(lambda p: token_nll(model, batch, p), (primals,), (tangents,))
    return s


def fd_token_scores(model: nn.Module, tangents: Params, batch: Mapping[str, Tensor], h: float) -> Tensor:
    """s ≈ (ℓ(θ + h v) − ℓ(θ − h v)) / 2h ``(B, T-1)``: two forwards, error O(h²) + rounding / h."""
    primals = _primals(model, tangents)
    with torch.no_grad():
        plus = token_nll(model, batch, {n: p + h * tangents[n] for n, p in primals.items()})
        minus = token_nll(model, batch, {n: p - h * tangents[n] for n, p in primals.items()})
    return (plus - minus) / (2 * h)


# fd_eps by dtype where not given: float32 rounding favours large steps, float64 small ones
# (max relative error against the float64 autograd loop: float32 ~1e-3 on the tiny target and
# the random test model, float64 ~1e-6)
FD_EPS = {torch.float32: 3e-3, torch.float64: 1e-4}


def fd_step(model: nn.Module, tangents: Params, batch: Mapping[str, Tensor], eps: float = 1e-3) -> float:
    """The step h whose largest token-loss change max_t |h s_t| on ``batch`` is ``eps`` (nats).

    Scale-free: a fixed h (or one relative to ‖θ‖ / ‖v‖) suits one direction and not another
    (the raw gradient points into curved directions). A pilot difference at a tiny step
    estimates max |s_t| once; every batch then uses the same h.
    """
    primals = _primals(model, tangents)
    norm_p = torch.sqrt(sum((p.double() ** 2).sum() for p in primals.values()))
    norm_v = torch.sqrt(sum((v.double() ** 2).sum() for v in tangents.values()))
    if norm_v == 0:
        return 1.0
    h0 = float(1e-4 * norm_p / norm_v)
    biggest = float(fd_token_scores(model, tangents, batch, h0).abs().max())
    return eps / biggest if biggest > 0 else h0


def score_rows(
    model: nn.Module,
    tangents: Params,
    examples: Sequence[Example],
    *,
    method: str = "jvp",
    fd_eps: float | None = None,
    batch_size: int = 8,
    pad_token_id: int = 0,
    progress: bool = False,
) -> list[Tensor]:
    """Row i: s_it = vᵀ ∇ℓ_it for every target token of example i (a constant number of passes)."""
    if method not in ("jvp", "fd"):
        raise ValueError(f"influence.method '{method}' is unknown; valid: jvp, fd")
    device = next(iter(tangents.values())).device
    rows: list[Tensor | None] = [None] * len(examples)
    h = None
    eps = fd_eps if fd_eps is not None else FD_EPS.get(next(iter(tangents.values())).dtype, 3e-3)
    n_batches = -(-len(examples) // batch_size)
    for idx, batch in tqdm(batches(examples, batch_size, pad_token_id, device), total=n_batches,
                           desc=f"token scores ({method})", disable=not progress, leave=False):
        if method == "jvp":
            s = jvp_token_scores(model, tangents, batch)
        else:
            h = h if h is not None else fd_step(model, tangents, batch, eps)
            s = fd_token_scores(model, tangents, batch, h)
        for i, row in zip(idx, target_rows(s, batch)):
            rows[i] = row
    return rows  # type: ignore[return-value]


def autograd_token_scores(model: nn.Module, tangents: Params, example: Example, pad_token_id: int = 0) -> Tensor:
    """Reference: s_it = vᵀ ∇ℓ_it by one backward per target token (slow; tests and benchmarks)."""
    named = dict(model.named_parameters())
    params = [named[n] for n in tangents]
    device = params[0].device
    batch = {k: v.to(device) for k, v in ViewCollator(pad_token_id=pad_token_id).pad([example]).items()}
    with _grad_only_on(model, params):
        nll = token_nll(model, batch)[0]  # (T-1,)
        positions = (batch["labels"][0, 1:] != IGNORE_INDEX).nonzero().flatten().tolist()
        out = []
        for t in positions:
            grads = torch.autograd.grad(nll[t], params, retain_graph=True)
            out.append(sum((g.double() * v.double()).sum() for g, v in zip(grads, tangents.values())))
    return torch.stack(out).cpu()


# ----------------------------------------------------------------------------- scorers


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
    v = differential_direction(ctx.model, modules, ctx.forget, ctx.retain, lam=lam, preconditioner=precond,
                               batch_size=c.batch_size, pad_token_id=ctx.pad_token_id, progress=ctx.progress)
    ctx.info.update(
        tracked_modules=len(modules),
        tracked_parameters=sum(t.numel() for t in v.values()),
        direction_norm=float(torch.sqrt(sum((t.double() ** 2).sum() for t in v.values()))),
    )
    return score_rows(ctx.model, v, ctx.forget, method=c.method, fd_eps=c.fd_eps, batch_size=c.batch_size,
                      pad_token_id=ctx.pad_token_id, progress=ctx.progress)


def differential_scores(ctx: ScoreContext) -> list[Tensor]:
    """s_it = [P⁻¹ (ḡ_forget − λ ḡ_retain)]ᵀ ∇ℓ_it."""
    c = ctx.cfg
    return _direction_rows(ctx, PRECONDITIONERS[c.preconditioner](c.damping), c.lam)


def gradient_dot_scores(ctx: ScoreContext) -> list[Tensor]:
    """s_it = ḡ_forgetᵀ ∇ℓ_it: plain gradient similarity (P = I, λ = 0), the baseline."""
    return _direction_rows(ctx, Preconditioner(), 0.0)


def contrast_scores(ctx: ScoreContext) -> list[Tensor]:
    """s_it = log p_target(y_it) − log p_retain(y_it): what the target knows beyond the retain model."""
    if ctx.retain_model is None:
        raise ValueError("scorer contrast needs a retain model (influence.retain_model_path)")
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
    """kronfluence's per-token pairwise scores, a different quantity: see :mod:`npo_lib.kronfluence_scores`."""
    from npo_lib.kronfluence_scores import kronfluence_token_scores

    return kronfluence_token_scores(ctx)


@dataclass(frozen=True)
class Scorer:
    """A named scorer: the function, what its number means, whether it reads ``preconditioner``."""

    name: str
    fn: Callable[[ScoreContext], list[Tensor]]
    quantity: str
    uses_preconditioner: bool = False
    uses_retain_model: bool = False


SCORERS: dict[str, Scorer] = {
    s.name: s
    for s in [
        Scorer("differential", differential_scores,
               "s_it = [P^-1 (g_forget - lam g_retain)]^T grad l_it, l_it = -log p(y_it | x_i, y_i,<t)", True),
        Scorer("gradient_dot", gradient_dot_scores, "s_it = g_forget^T grad l_it (identity, no retain term)"),
        Scorer("contrast", contrast_scores, "s_it = log p_target(y_it) - log p_retain(y_it)", uses_retain_model=True),
        Scorer("kronfluence", kronfluence_scores,
               "kronfluence per-token pairwise score: token t's share of the train gradient (includes later "
               "tokens' losses through attention), mean over forget queries - lam x mean over retain queries, "
               "EK-FAC; NOT the directional derivative of l_it", True),
    ]
}
assert tuple(SCORERS) == INFLUENCE_SCORERS and tuple(PRECONDITIONERS) == INFLUENCE_PRECONDITIONERS


def compute_token_scores(ctx: ScoreContext) -> list[Tensor]:
    """The configured scorer's rows for ``ctx.forget`` (model left in eval mode)."""
    ctx.model.eval()
    return SCORERS[ctx.cfg.scorer].fn(ctx)


# ----------------------------------------------------------------------------- ground truth


def fact_char_spans(record: Mapping[str, Any], view: str, tags: ChatTags) -> list[tuple[int, int]]:
    """Character spans of the record's fact in the target string of ``view`` (from ``fact_spans``).

    The target is the concatenation of the view's target parts (``cot``, ``Te``, ``answer``;
    the last part alone for families without think tags), as :func:`npo_lib.data.view_text`
    builds it; each part's spans move by the length of the parts before it.
    """
    parts = get_view(view).target
    if not tags.thinks:
        parts = parts[-1:]
    texts = {"Ts": tags.think_start or "", "Te": tags.think_end or "", "cot": record.get("cot") or "",
             "answer": record.get("answer") or ""}
    spans, pos = [], 0
    for part in parts:
        for s, e in (record.get("fact_spans") or {}).get(part, []):
            spans.append((pos + s, pos + e))
        pos += len(texts.get(part) or "")
    return spans


def fact_token_mask(record: Mapping[str, Any], offsets: Sequence[Sequence[int]], view: str, tags: ChatTags) -> list[bool]:
    """Per target token (its character ``offsets`` in the target): does it overlap the fact?"""
    spans = fact_char_spans(record, view, tags)
    return [any(a < e and s < b for s, e in spans) for a, b in offsets]


def auroc(scores: Sequence[float] | Tensor, labels: Sequence[bool] | Tensor) -> float:
    """Area under the ROC curve of ``scores`` separating ``labels`` (Mann-Whitney U, ties halved)."""
    from scipy.stats import rankdata

    s = torch.as_tensor(scores, dtype=torch.float64).flatten().numpy()
    y = torch.as_tensor(labels, dtype=torch.bool).flatten().numpy()
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s)  # average ranks for ties
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
