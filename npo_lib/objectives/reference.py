"""The cached reference: log p_ref of the fixed forget targets, computed once before training.

NPO, TNPO and INFLUENCE read p_ref only through these log-probs, so no second model is kept in
memory; the run folder keeps them (``ref_logprobs.safetensors``) so a resumed run reads the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm.auto import tqdm

from npo_lib.data.dataset import ViewCollator
from npo_lib.objectives.primitives import token_logprobs
from npo_lib.utils.io import atomic_file


@dataclass
class ReferenceLogprobs:
    """log p_ref of the fixed forget targets, per token and per sequence.

    ``token`` is ``(N, T_max - 1)`` in the causally shifted frame of each example's own (right
    padded) view, 0 where masked; ``seq`` its row sums ``(N,)``.
    """

    token: Tensor
    seq: Tensor
    fingerprint: str

    def save(self, path: str | Path) -> None:
        with atomic_file(path) as tmp:
            save_file(
                {"token": self.token.contiguous(), "seq": self.seq.contiguous()},
                str(tmp),
                metadata={"fingerprint": self.fingerprint},
            )

    @classmethod
    def load(cls, path: str | Path, fingerprint: str) -> ReferenceLogprobs | None:
        """The cache at ``path`` if it was made for ``fingerprint`` (same model, data, view)."""
        from safetensors import safe_open

        if not Path(path).is_file():
            return None
        with safe_open(str(path), framework="pt") as f:
            if (f.metadata() or {}).get("fingerprint") != fingerprint:
                return None
        t = load_file(str(path))
        return cls(token=t["token"], seq=t["seq"], fingerprint=fingerprint)


@torch.no_grad()
def compute_reference_logprobs(
    model: torch.nn.Module,
    dataset: Any,
    view: str,
    *,
    pad_token_id: int,
    batch_size: int,
    fingerprint: str,
    progress: bool = True,
) -> ReferenceLogprobs:
    """One batched no-grad pass of ``model`` over the forget ``view`` of every example."""
    collate = ViewCollator(pad_token_id=pad_token_id)
    n = len(dataset)
    t_max = max(len(dataset[i][view]["input_ids"]) for i in range(n))
    token = torch.zeros(n, t_max - 1, dtype=torch.float32)  # (N, T_max-1)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        for s in tqdm(
            range(0, n, batch_size), desc="reference log-probs", disable=not progress, leave=False
        ):
            batch = collate([dataset[i][view] for i in range(s, min(s + batch_size, n))])
            batch = {k: v.to(device) for k, v in batch.items()}
            logits = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits
            logp, _ = token_logprobs(logits, batch["labels"])  # (b, T-1)
            token[s : s + logp.shape[0], : logp.shape[1]] = logp.float().cpu()
    finally:
        model.train(was_training)
    return ReferenceLogprobs(token=token, seq=token.sum(-1), fingerprint=fingerprint)
