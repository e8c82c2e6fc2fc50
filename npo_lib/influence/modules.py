"""θ_S: the Linear layers whose weights token influence differentiates (all, MLP, last blocks,
LoRA)."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

from torch import Tensor, nn

from npo_lib.errors import ConfigError

Params = dict[str, Tensor]  # parameter name (as in model.named_parameters()) -> tensor
MODULE_SETS = ("all_linear", "mlp", "last_n", "lora")  # the choices of influence.modules


_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def tracked_modules(model: nn.Module, which: str, last_n_layers: int = 1) -> dict[str, nn.Linear]:
    """The Linear layers whose weights (and biases) form θ_S, by name.

    ``all_linear``: every ``nn.Linear`` except the output layer (peft's "all-linear" rule);
    ``mlp``: those inside ``.mlp.`` blocks; ``last_n``: those of the last ``last_n_layers``
    decoder blocks (``...layers.<i>...``); ``lora``: the LoRA adapters' ``lora_A`` / ``lora_B``.
    """
    if which not in MODULE_SETS:
        raise ConfigError(
            f"influence.modules '{which}' is unknown; valid: {', '.join(MODULE_SETS)}"
        )
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    if which == "lora":
        chosen = {n: m for n, m in linears.items() if re.search(r"\.lora_[AB]\.", f".{n}.")}
        if not chosen:
            raise ConfigError(
                "influence.modules=lora: the model has no LoRA adapters (set LoRA.r > 0)"
            )
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
            raise ConfigError(
                "influence.modules=last_n: no '...layers.<i>...' Linear layers in "
                f"{type(model).__name__}"
            )
        first = max(index.values()) + 1 - last_n_layers
        chosen = {n: base[n] for n, i in index.items() if i >= first}
    if not chosen:
        raise ConfigError(
            f"influence.modules={which} matches no nn.Linear layer of {type(model).__name__}"
        )
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
def grad_only_on(model: nn.Module, params: Sequence[Tensor]) -> Iterator[None]:
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
