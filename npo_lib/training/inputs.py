"""Where a term's inputs come from: a registry of providers, input name -> how it is checked
before any model loads, prepared once before training, and fetched for each batch.

A term names what it needs (``Term.needs``); the forget command calls :func:`check_inputs`
and :func:`prepare_inputs` for the objective it runs, the trainer :func:`batch_inputs` at every
step. A new input is one :func:`provider` here; no if-chain in the trainer or the command.

| input | prepared before training | per batch |
|---|---|---|
| ref_seq_logp, ref_token_logp | the run folder's cache (else computed at step 1) | its rows |
| token_weights | read from the influence files | rows, shifted frame |
| ref_logits, ref_forget_logits, ref_hidden | a frozen copy (no LoRA) | frozen forwards |
| control_vec | RMU's seed | the unit vector u |

Terms that read activations (RMU, ACT) also get here the block ℓ their group resolves against
the model's depth, and only their group's blocks train (:func:`prepare_activations`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from npo_lib.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from torch import Tensor

    from npo_lib.config import Config
    from npo_lib.objectives.registry import LossSpec

REFERENCE_FILE = "ref_logprobs.safetensors"  # the run folder's cache of log p_ref


@dataclass
class InputContext:
    """What checking and preparing inputs may read: the run's config and objective, its
    folders, the model's path and the training data; ``reference_model`` loads a frozen copy of
    the model (the command knows how, e.g. as a sharded engine under ZeRO-3)."""

    cfg: Config
    spec: LossSpec
    run_dir: Path | None = None  # where the reference cache is kept (None: not kept)
    model_path: str | None = None
    dataset: Any = None
    influence_dir: Path | None = None  # where token weights are read
    reference_model: Callable[[], torch.nn.Module] | None = None
    records: Callable[[str], list[dict[str, Any]]] | None = None  # the benchmark's, by role


@dataclass
class BatchContext:
    """One training step's view of the inputs: the trainer, the model as it wraps it, the
    collated batch (``{"index", <views>}``); reference forwards are made once per view."""

    trainer: Any
    model: Any
    inputs: dict[str, Any]
    reference: dict[str, Any] = field(default_factory=dict)

    @property
    def spec(self) -> LossSpec:
        return self.trainer.loss_spec

    @property
    def forget(self) -> dict[str, Tensor]:
        return self.inputs[self.spec.forget.view]

    @property
    def index(self) -> Tensor:
        return self.inputs["index"].cpu()

    @property
    def width(self) -> int:
        """Target positions of the batch in the shifted frame (T - 1)."""
        return self.forget["labels"].shape[1] - 1

    @property
    def device(self) -> torch.device:
        return self.forget["labels"].device

    def frozen(self, view: str) -> Any:
        """The frozen model's outputs on ``view``'s batch (hidden states when a term reads them)."""
        if view not in self.reference:
            hidden = self.trainer.hidden_layer is not None
            self.reference[view] = self.trainer.reference_outputs(
                self.model, self.inputs[view], hidden=hidden
            )
        return self.reference[view]


@dataclass(frozen=True)
class InputProvider:
    """How one input reaches the terms: ``fetch`` per batch; ``prepare`` once before training
    (shared by inputs that read the same thing); ``check`` before any model loads."""

    name: str
    doc: str  # one line: what the input is (``npo losses``, the docs)
    fetch: Callable[[BatchContext], Tensor]
    prepare: Callable[[Any, InputContext], None] | None = None
    check: Callable[[InputContext], None] | None = None


INPUTS: dict[str, InputProvider] = {}


def provider(name: str, doc: str, *, prepare=None, check=None) -> Callable:
    """Register the decorated ``fetch(batch) -> Tensor`` as the provider of input ``name``."""

    def register(fetch: Callable[[BatchContext], Tensor]) -> Callable:
        INPUTS[name] = InputProvider(name, doc, fetch, prepare, check)
        return fetch

    return register


def providers_of(spec: LossSpec) -> list[InputProvider]:
    """The providers of every input ``spec`` needs, in the order its terms name them."""
    names = list(dict.fromkeys(n for t in spec.terms for n in t.needs))
    missing = [n for n in names if n not in INPUTS]
    if missing:
        raise ValueError(f"loss {spec.name} needs {missing}: no provider ({', '.join(INPUTS)})")
    return [INPUTS[n] for n in names]


def check_inputs(ctx: InputContext) -> None:
    """Every check of the objective's inputs that needs no model (files, records)."""
    for check in dict.fromkeys(p.check for p in providers_of(ctx.spec) if p.check):
        check(ctx)


def prepare_inputs(trainer: Any, ctx: InputContext) -> None:
    """Before training: the activations the terms read (block ℓ, the blocks that train) and
    each input's preparation, once per provider function."""
    if ctx.spec.reads_hidden:
        prepare_activations(trainer, ctx)
    for prepare in dict.fromkeys(p.prepare for p in providers_of(ctx.spec) if p.prepare):
        prepare(trainer, ctx)


def batch_inputs(trainer: Any, model: Any, inputs: dict[str, Any]) -> dict[str, Tensor]:
    """Every input the objective needs, for this batch (before its training forwards)."""
    batch = BatchContext(trainer, model, inputs)
    return {p.name: p.fetch(batch) for p in providers_of(trainer.loss_spec)}


# ----------------------------------------------------------------------------- activations


def prepare_activations(trainer: Any, ctx: InputContext) -> None:
    """RMU / ACT: the block ℓ they read, resolved against the model's depth, and only the
    group's blocks (and submodules) train; GD / KL then train the same ones."""
    from npo_lib.training.arguments import train_only_blocks

    params = getattr(ctx.cfg, ctx.spec.hidden_group)
    n = model_depth(trainer.model)
    trainer.hidden_layer = params.block(n)
    train_only_blocks(trainer.model, params.trainable_blocks(n), params.trainable_modules)


def model_depth(model: Any) -> int:
    """``num_hidden_layers`` of the model (under LoRA: of its base)."""
    config = getattr(model, "config", None)
    n = getattr(config, "num_hidden_layers", None)
    if not isinstance(n, int):
        raise ConfigError("the model's config has no num_hidden_layers: RMU / ACT cannot place ℓ")
    return n


# ----------------------------------------------------------------------------- providers


def _load_reference_cache(trainer: Any, ctx: InputContext) -> None:
    """The run folder's cache of log p_ref, if it was made for this model, data and view; else
    the trainer computes it at the first step (and keeps it in the run folder)."""
    from npo_lib.objectives.reference import ReferenceLogprobs
    from npo_lib.utils.hashing import fingerprint

    if ctx.run_dir is None or trainer.reference is not None:
        return
    view = ctx.spec.forget.view
    key = fingerprint(ctx.model_path, ctx.dataset.fingerprint(view), view, ctx.cfg.LoRA.r)
    trainer.reference_fingerprint = key
    trainer.reference_path = Path(ctx.run_dir) / REFERENCE_FILE
    trainer.reference = ReferenceLogprobs.load(trainer.reference_path, key)


@provider(
    "ref_seq_logp",
    "log p_ref(y_i) of each forget target (B,): the not-yet-updated model's, cached once",
    prepare=_load_reference_cache,
)
def ref_seq_logp(b: BatchContext) -> Tensor:
    return b.trainer.reference_logprobs(b.model).seq[b.index].to(b.device)


@provider(
    "ref_token_logp",
    "log p_ref(y_it) of each forget target token (B, T-1): the not-yet-updated model's, cached",
    prepare=_load_reference_cache,
)
def ref_token_logp(b: BatchContext) -> Tensor:
    return b.trainer.reference_logprobs(b.model).token[b.index, : b.width].to(b.device)


def _check_token_weights(ctx: InputContext) -> None:
    """INFLUENCE: the influence scores exist, and the oracle control's fact spans too."""
    from npo_lib.data.sources import load_forget
    from npo_lib.embedded.paths import resolve_data_path
    from npo_lib.influence.selection import needs_facts

    cfg = ctx.cfg
    if needs_facts(cfg.selection):
        forget = (
            ctx.records("forget")
            if ctx.records is not None
            else load_forget(resolve_data_path(cfg), cfg.split, cfg.task_id)
        )
        missing = next((i for i, r in enumerate(forget) if "fact_spans" not in r), None)
        if missing is not None:
            raise ConfigError(
                f"selection.method=oracle needs fact_spans, which forget record {missing} of "
                f"{resolve_data_path(cfg)} lacks (the embedded benchmark marks its fact tokens; "
                "public benchmarks do not): choose another selection.method"
            )
    scores = Path(ctx.influence_dir) / "scores.safetensors"
    if not scores.is_file():
        raise ConfigError(
            f"forget_loss={cfg.forget_loss} needs token influence scores: expected {scores}. "
            "Make them with `npo influence` (same model, data_path, split, task_id) "
            "or point influence_dir=... at a folder holding scores.safetensors"
        )


def _load_token_weights(trainer: Any, ctx: InputContext) -> None:
    from npo_lib.influence.files import load_token_weights

    if trainer.token_weights is None:
        view = ctx.spec.forget.view
        trainer.token_weights = load_token_weights(ctx.cfg, ctx.influence_dir, ctx.dataset, view)


@provider(
    "token_weights",
    "INFLUENCE's weight of each forget target token (B, T-1), from the influence files and "
    "selection.*",
    prepare=_load_token_weights,
    check=_check_token_weights,
)
def token_weights(b: BatchContext) -> Tensor:
    if b.trainer.token_weights is None:
        raise ValueError(f"loss {b.spec.name} needs token weights (influence_dir)")
    return b.trainer.token_weights[b.index, 1 : b.width + 1].to(b.device)


def _load_frozen_model(trainer: Any, ctx: InputContext) -> None:
    """Without LoRA a frozen copy of the model; with LoRA the base model with the adapter off
    serves (no second model in memory)."""
    if trainer.ref_model is None and ctx.cfg.LoRA.r == 0 and ctx.reference_model is not None:
        trainer.ref_model = ctx.reference_model()


@provider(
    "ref_logits",
    "the frozen model's logits on the retain batch (B, T, V)",
    prepare=_load_frozen_model,
)
def ref_logits(b: BatchContext) -> Tensor:
    return b.frozen("retain").logits


@provider(
    "ref_forget_logits",
    "the frozen model's logits on the forget batch (B, T, V)",
    prepare=_load_frozen_model,
)
def ref_forget_logits(b: BatchContext) -> Tensor:
    return b.frozen(b.spec.forget.view).logits


@provider(
    "ref_hidden",
    "the frozen model's activations after block ℓ on the retain batch (B, T, d)",
    prepare=_load_frozen_model,
)
def ref_hidden(b: BatchContext) -> Tensor:
    return b.trainer.layer_activations(b.frozen("retain"))


def _seed_control_vector(trainer: Any, ctx: InputContext) -> None:
    trainer.control_seed = ctx.cfg.seed


@provider(
    "control_vec",
    "RMU's fixed direction u (d,): uniform on [0, 1)^d from the run's seed, unit norm",
    prepare=_seed_control_vector,
)
def control_vec(b: BatchContext) -> Tensor:
    dim = b.trainer.accelerator.unwrap_model(b.model).config.hidden_size
    return b.trainer.control_vector(dim, b.device)
