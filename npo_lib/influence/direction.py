"""The differential direction and exact per-token scores along it.

For forget example i and target token t, ℓ_it = -log p_θ(y_it | x_i, y_i,<t). Over θ_S

    v = P⁻¹ (ḡ_forget − λ ḡ_retain),   ḡ = mean_i ∇θ_S L_i,   L_i = mean_t ℓ_it,

and the score s_it = vᵀ ∇θ_S ℓ_it is the directional derivative of ℓ_it along v: the whole row
s_i· is one forward-mode pass (:func:`jvp_token_scores`) or a symmetric finite difference of two
forwards (:func:`fd_token_scores`), never one backward per token
(:func:`autograd_token_scores`, the reference the tests compare with).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from npo_lib.data.dataset import ViewCollator
from npo_lib.data.views import IGNORE_INDEX
from npo_lib.influence.modules import Params, grad_only_on
from npo_lib.influence.preconditioners import Preconditioner, per_example_gradients
from npo_lib.objectives.primitives import token_logprobs

# one encoded view (input_ids, labels with -100 on the prompt, prompt_len)
Example = Mapping[str, Any]


def batches(
    examples: Sequence[Example], batch_size: int, pad_token_id: int, device: torch.device | str
) -> Iterator[tuple[list[int], dict[str, Tensor]]]:
    """(indices, padded batch) in order of length, so a batch pads little; rows map back by
    index."""
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]["input_ids"]))
    collate = ViewCollator(pad_token_id=pad_token_id)
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        batch = collate.pad([examples[i] for i in idx])
        yield idx, {k: v.to(device) for k, v in batch.items()}


def token_nll(
    model: nn.Module, batch: Mapping[str, Tensor], params: Params | None = None
) -> Tensor:
    """ℓ per target token in the shifted frame ``(B, T-1)``, 0 on prompt and padding.

    ``params`` replaces those parameters for this call (``torch.func.functional_call``).
    """
    kwargs = {
        "input_ids": batch["input_ids"],
        "attention_mask": batch["attention_mask"],
        "use_cache": False,
    }
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
                raise RuntimeError(
                    f"layer {name} ran twice in one forward: shared layers are not supported"
                )
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
        with grad_only_on(model, []):
            for k in range(max(1, precond.passes)):
                for set_name, examples in sets.items():
                    for _, batch in batches(examples, batch_size, pad_token_id, device):
                        pad = _backward_to_embeddings(model, embed, batch)
                        n_tokens = int(batch["attention_mask"].sum())
                        _observe_batch(k, modules, capture, pad, n_tokens, precond, sums[set_name])
                        capture.clear()
                        bar.update()
                precond.end_pass(k)
    finally:
        bar.close()
        capture.remove()
    return {
        set_name: {n: g / len(sets[set_name]) for n, g in per.items()}
        for set_name, per in sums.items()
    }


def _backward_to_embeddings(
    model: nn.Module, embed: nn.Module, batch: Mapping[str, Tensor]
) -> Tensor:
    """Forward the batch and backpropagate Σ_i L_i down to the input embeddings only, so the
    hooks of :class:`_Capture` keep each tracked layer's a and δ. Returns the padding mask
    ``(B, T, 1)`` in the logits' dtype."""
    emb = embed(batch["input_ids"]).detach().requires_grad_(True)  # (B, T, H)
    logits = model(
        inputs_embeds=emb, attention_mask=batch["attention_mask"], use_cache=False
    ).logits
    logp, mask = token_logprobs(logits, batch["labels"])  # (B, T-1) each
    loss = (-(logp * mask).sum(1) / mask.sum(1).clamp_min(1)).sum()  # Σ_i L_i
    torch.autograd.grad(loss, emb)  # fills capture.d through the tensor hooks
    return batch["attention_mask"][..., None].to(logits.dtype)


def _observe_batch(
    k: int,
    modules: Mapping[str, nn.Linear],
    capture: _Capture,
    pad: Tensor,
    n_tokens: int,
    precond: Preconditioner,
    sums: dict[str, Tensor],
) -> None:
    """Add the batch's weight gradient Σ_i G_i of every tracked layer to ``sums`` (first pass
    only) and show the layer's a and δ to the preconditioner in pass ``k``."""
    for name in modules:
        a, d = capture.a[name] * pad, capture.d[name]  # (B, T, in'), (B, T, out)
        G = per_example_gradients(a, d) if k == 0 and precond.per_example else None
        if k == 0:
            g = G.sum(0) if G is not None else torch.einsum("bto,bti->oi", d, a)  # (out, in')
            sums[name] = sums.get(name, 0) + g
        precond.observe(k, name, a, d, n_tokens, G)


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
    means = mean_gradients(
        model,
        modules,
        sets,
        preconditioner=precond,
        batch_size=batch_size,
        pad_token_id=pad_token_id,
        progress=progress,
    )
    diff = {}
    for name in modules:
        diff[name] = (
            means["forget"][name] - lam * means["retain"][name]
            if lam > 0 and use_retain
            else means["forget"][name]
        )
    return _from_matrix(modules, {name: precond.solve(name, g) for name, g in diff.items()})


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


def fd_token_scores(
    model: nn.Module, tangents: Params, batch: Mapping[str, Tensor], h: float
) -> Tensor:
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


def fd_step(
    model: nn.Module, tangents: Params, batch: Mapping[str, Tensor], eps: float = 1e-3
) -> float:
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
    for idx, batch in tqdm(
        batches(examples, batch_size, pad_token_id, device),
        total=n_batches,
        desc=f"token scores ({method})",
        disable=not progress,
        leave=False,
    ):
        if method == "jvp":
            s = jvp_token_scores(model, tangents, batch)
        else:
            h = h if h is not None else fd_step(model, tangents, batch, eps)
            s = fd_token_scores(model, tangents, batch, h)
        for i, row in zip(idx, target_rows(s, batch)):
            rows[i] = row
    return rows  # type: ignore[return-value]


def autograd_token_scores(
    model: nn.Module, tangents: Params, example: Example, pad_token_id: int = 0
) -> Tensor:
    """Reference: s_it = vᵀ ∇ℓ_it by one backward per target token (slow; tests and benchmarks)."""
    named = dict(model.named_parameters())
    params = [named[n] for n in tangents]
    device = params[0].device
    batch = {
        k: v.to(device) for k, v in ViewCollator(pad_token_id=pad_token_id).pad([example]).items()
    }
    with grad_only_on(model, params):
        nll = token_nll(model, batch)[0]  # (T-1,)
        positions = (batch["labels"][0, 1:] != IGNORE_INDEX).nonzero().flatten().tolist()
        out = []
        for t in positions:
            grads = torch.autograd.grad(nll[t], params, retain_graph=True)
            out.append(
                sum((g.double() * v.double()).sum() for g, v in zip(grads, tangents.values()))
            )
    return torch.stack(out).cpu()
