"""The forgetting trainer: one HF ``Trainer`` subclass that wires data to registered loss terms.

Everything a method is made of lives in its module under :mod:`npo_lib.objectives.losses`, and
every input a term needs comes from its provider (:mod:`npo_lib.training.inputs`); this class

1. fetches the inputs the objective's terms need, from their providers (the cached reference
   log-probs, computed once before the first update from the model itself: no second model in
   memory for NPO / TNPO / INFLUENCE; a frozen reference's logits or activations, from a frozen
   copy or the base model with the LoRA adapter off; RMU's fixed seeded direction u),
2. runs the forward pass on the view each term reads (forget view, and ``retain`` for GD / KL),
   with the hidden states only when a term reads activations (RMU, ACT), and
3. logs every term, and stops on a non-finite loss naming the step and the term.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from transformers import Trainer, TrainerCallback

from npo_lib.errors import UserError
from npo_lib.objectives.primitives import random_unit_vector
from npo_lib.objectives.reference import ReferenceLogprobs, compute_reference_logprobs
from npo_lib.objectives.registry import LossHyper, LossSpec, composed_loss
from npo_lib.training.inputs import batch_inputs


class NonFiniteLossError(UserError, RuntimeError):
    """A loss term became NaN or infinite; training stops, earlier checkpoints stay."""


class UnlearningTrainer(Trainer):
    """HF ``Trainer`` whose loss is a :class:`~npo_lib.objectives.registry.LossSpec` over the
    batch's views.

    Batches come from :class:`~npo_lib.data.dataset.UnlearningDataset` + :class:`ViewCollator`:
    ``{"index", <forget view>, "retain"}``. The keywords after ``hyper`` hold what the input
    providers prepare (:func:`npo_lib.training.inputs.prepare_inputs` fills them): the cached
    reference, ``token_weights`` (``(N, T_max)``, aligned with each example's unshifted
    forget-view labels) for INFLUENCE, a frozen ``ref_model``, ``hidden_layer`` (the decoder
    block ℓ, 0-based, whose output RMU / ACT read) and ``control_seed`` (RMU's direction u).
    """

    def __init__(
        self,
        *args: Any,
        loss_spec: LossSpec,
        hyper: LossHyper,
        reference: ReferenceLogprobs | None = None,
        reference_fingerprint: str = "",
        reference_path: str | Path | None = None,
        ref_model: torch.nn.Module | None = None,
        token_weights: Tensor | None = None,
        log_file: str | Path | None = None,
        hidden_layer: int | None = None,
        control_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.loss_spec = loss_spec
        self.hyper = hyper
        self.reference = reference
        self.reference_fingerprint = reference_fingerprint
        self.reference_path = Path(reference_path) if reference_path else None
        self.ref_model = ref_model
        self.token_weights = token_weights
        self.hidden_layer = hidden_layer
        self.control_seed = control_seed
        self.control_vec: Tensor | None = None
        self._term_sums: dict[str, float] = defaultdict(float)
        self._term_count = 0
        if log_file is not None:
            self.add_callback(JsonlLogCallback(log_file))
        if hasattr(self.train_dataset, "set_epoch"):
            self.add_callback(RetainPairingCallback(self.train_dataset))

    # -- state of the inputs the terms need (their providers read it) ---------------------

    def ensure_reference(self, model: torch.nn.Module) -> None:
        """Compute the cached reference log-probs with the not-yet-updated model, once.

        Runs through ``model`` as the Trainer wraps it (DeepSpeed engine included), so under
        ZeRO-3 every rank takes part in the same forwards; every rank computes the whole
        (small) forget set, rank 0 writes the cache file the run folder keeps for resumes.
        """
        if self.reference is not None:
            return
        if self.state.global_step > 0:
            raise RuntimeError(
                "reference log-probs are missing after training started (a resumed run needs the "
                f"run folder's cache {self.reference_path}); start the run again with "
                f"overwrite=true"
            )
        self.reference = compute_reference_logprobs(
            model,
            self.train_dataset,
            self.loss_spec.forget.view,
            pad_token_id=self.data_collator.pad_token_id,
            batch_size=self.args.per_device_train_batch_size,
            fingerprint=self.reference_fingerprint,
            progress=self.is_world_process_zero(),
        )
        if self.reference_path is not None and self.is_world_process_zero():
            self.reference.save(self.reference_path)

    def reference_logprobs(self, model: torch.nn.Module) -> ReferenceLogprobs:
        """The cached reference log-probs, computed first if the run has none yet."""
        self.ensure_reference(model)
        return self.reference

    @torch.no_grad()
    def reference_outputs(
        self, model: torch.nn.Module, batch: dict[str, Tensor], hidden: bool = False
    ) -> Any:
        """The frozen model's outputs on ``batch`` (KL's and ACT's retain batch, UNDIAL's forget
        batch), with hidden states if ``hidden``: a frozen copy, or the base model with the LoRA
        adapter off (no second model in memory)."""
        kwargs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        if hidden:
            kwargs["output_hidden_states"] = True
        if self.ref_model is not None:
            return self.ref_model(**kwargs)
        unwrapped = self.accelerator.unwrap_model(model)
        if not hasattr(unwrapped, "disable_adapter"):
            raise ValueError(
                "KL / UNDIAL / ACT need a reference model: pass ref_model or train with LoRA.r > 0"
            )
        with unwrapped.disable_adapter():
            return model(**kwargs)

    def reference_logits(self, model: torch.nn.Module, batch: dict[str, Tensor]) -> Tensor:
        """The frozen model's logits on ``batch`` (see :meth:`reference_outputs`)."""
        return self.reference_outputs(model, batch).logits

    def layer_activations(self, outputs: Any) -> Tensor:
        """The residual stream after decoder block ℓ: HF's ``hidden_states[ℓ + 1]`` (entry 0 is
        the embeddings; the checks keep ℓ below the last block, whose entry HF returns normed)."""
        if self.hidden_layer is None:
            raise ValueError(f"loss {self.loss_spec.name} reads activations: pass hidden_layer")
        return outputs.hidden_states[self.hidden_layer + 1]

    def control_vector(self, dim: int, device: torch.device) -> Tensor:
        """RMU's fixed direction u ``(dim,)``, drawn once from ``control_seed``."""
        if self.control_vec is None or self.control_vec.shape[0] != dim:
            self.control_vec = random_unit_vector(dim, self.control_seed)
        return self.control_vec.to(device)

    # -- the loss -------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Fetch the inputs the terms need, forward the views they read, sum the terms."""
        spec = self.loss_spec
        kwargs: dict[str, Any] = batch_inputs(self, model, inputs)
        forget = inputs[spec.forget.view]
        forget_out = self._forward(model, forget, spec.forget.reads == "hidden")
        if spec.forget.reads == "hidden":
            kwargs["forget_hidden"] = self.layer_activations(forget_out)
        if spec.regularizers:
            retain = inputs["retain"]
            retain_hidden = any(t.reads == "hidden" for t in spec.regularizers)
            retain_out = self._forward(model, retain, retain_hidden)
            kwargs["retain_logits"] = retain_out.logits
            kwargs["retain_labels"] = retain["labels"]
            if retain_hidden:
                kwargs["retain_hidden"] = self.layer_activations(retain_out)
        loss, logs = composed_loss(spec, forget_out.logits, forget["labels"], self.hyper, **kwargs)
        self._check_finite(logs)
        if model.training:
            for k, v in logs.items():
                self._term_sums[k] += v
            self._term_count += 1
        return (loss, forget_out) if return_outputs else loss

    @staticmethod
    def _forward(model: torch.nn.Module, batch: dict[str, Tensor], hidden: bool) -> Any:
        return model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            **({"output_hidden_states": True} if hidden else {}),
        )

    def _check_finite(self, logs: dict[str, float]) -> None:
        bad = [k for k, v in logs.items() if not math.isfinite(v)]
        if bad:
            last = self._last_checkpoint()
            raise NonFiniteLossError(
                f"non-finite loss at step {self.state.global_step + 1}: "
                + ", ".join(f"{k}={logs[k]}" for k in bad)
                + (f"; last good checkpoint: {last}" if last else "; no checkpoint was saved yet")
            )

    def _last_checkpoint(self) -> str | None:
        from transformers.trainer_utils import get_last_checkpoint

        out = Path(self.args.output_dir)
        return get_last_checkpoint(str(out)) if out.is_dir() else None

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """Add the mean of every loss term since the last log to the Trainer's record."""
        if self._term_count and "loss" in logs:
            for k, v in self._term_sums.items():
                if k != "loss":
                    logs[k] = v / self._term_count
            self._term_sums.clear()
            self._term_count = 0
        super().log(logs, *args, **kwargs)


class RetainPairingCallback(TrainerCallback):
    """Re-draw the forget -> retain pairing at the start of every epoch (seeded by the epoch)."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.dataset.set_epoch(int(state.epoch or 0))


class JsonlLogCallback(TrainerCallback):
    """Per-step log as JSON lines (rank 0); a resumed run drops lines past its checkpoint."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero and self.path.is_file():
            keep = [
                line
                for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= state.global_step
            ]
            self.path.write_text("".join(f"{line}\n" for line in keep))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            with self.path.open("a") as f:
                f.write(
                    json.dumps({"step": state.global_step, "epoch": state.epoch, **logs}) + "\n"
                )
