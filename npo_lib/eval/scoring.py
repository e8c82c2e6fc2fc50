"""Teacher-forced token statistics of (prompt, target) pairs, batched.

Every candidate answer of a batch's items goes into one forward (the unbatched reference path is
``batch_size=1, flatten=False``). Prompt and target are tokenized separately, as in training,
and the target ends with EOS unless told otherwise.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm.auto import tqdm

from npo_lib.errors import EvalError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase



@dataclass
class TargetScores:
    """Teacher-forced statistics of one target's tokens (EOS included when appended)."""

    logprobs: np.ndarray  # (n,) log p(y_t | x, y_<t)
    argmax_ok: np.ndarray  # (n,) bool: argmax of the next-token distribution == y_t
    mu: np.ndarray  # (n,) E_v[log p_v] under the next-token distribution (Min-K%++)
    sigma: np.ndarray  # (n,) std_v[log p_v]
    eos: bool = False  # the last token is the appended EOS

    def without_eos(self) -> TargetScores:
        """The statistics of the target's own tokens (the appended EOS left out)."""
        if not self.eos or len(self.logprobs) < 2:
            return self
        return TargetScores(self.logprobs[:-1], self.argmax_ok[:-1], self.mu[:-1], self.sigma[:-1])

    @property
    def nll(self) -> float:
        """Mean token NLL L̄ of the target."""
        return float(-self.logprobs.mean())


def _tokenize_rows(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    targets: Sequence[Sequence[str]],
    *,
    append_eos: bool,
    add_special_tokens: bool,
    max_length: int | None,
) -> list[list[tuple[list[int], int]]]:
    """Per item, per candidate: (input ids, prompt length); the target is cut to max_length."""
    if append_eos and tokenizer.eos_token_id is None:
        raise EvalError("the tokenizer has no eos_token_id: pass append_eos=False")
    out = []
    for prompt, cands in zip(prompts, targets, strict=True):
        p_ids = tokenizer(prompt, add_special_tokens=add_special_tokens)["input_ids"]
        keep = None if max_length is None else max_length - len(p_ids)
        if keep is not None and keep <= 0:
            raise EvalError(
                f"a prompt has {len(p_ids)} tokens, max_length={max_length} leaves no room for "
                f"the answer: raise max_length (prompt: {prompt[:80]!r})"
            )
        rows = []
        for t in cands:
            t_ids = tokenizer(t, add_special_tokens=False)["input_ids"]
            t_ids = (t_ids + [tokenizer.eos_token_id] if append_eos else t_ids)[:keep]
            if not t_ids:
                raise EvalError(f"an empty target after prompt {prompt[:80]!r}: nothing to score")
            rows.append((p_ids + t_ids, len(p_ids)))
        out.append(rows)
    return out


def _vocab_chunk_rows(vocab: int) -> int:
    """Rows of [rows, vocab] float32 logits handled at once (about 256 MB)."""
    return max(1, (1 << 26) // vocab)


def _accepts_logits_to_keep(model: PreTrainedModel) -> bool:
    """HF causal LMs (transformers >= 4.50) can skip the lm_head on leading positions."""
    return "logits_to_keep" in inspect.signature(model.forward).parameters


@torch.no_grad()
def _forward_rows(
    model: PreTrainedModel, rows: Sequence[tuple[list[int], int]], pad_id: int
) -> list[TargetScores]:
    """One right-padded forward over ``rows``; statistics of every target token."""
    R, T = len(rows), max(len(ids) for ids, _ in rows)
    input_ids = torch.full((R, T), pad_id, dtype=torch.long)  # (R, T)
    attention_mask = torch.zeros((R, T), dtype=torch.long)  # (R, T)
    row_idx, pos_idx, counts = [], [], []
    for r, (ids, p) in enumerate(rows):
        input_ids[r, : len(ids)] = torch.as_tensor(ids)
        attention_mask[r, : len(ids)] = 1
        n = len(ids) - p
        row_idx += [r] * n
        pos_idx += range(p - 1, len(ids) - 1)  # logits at t-1 predict token t
        counts.append(n)
    dev = model.device
    kw: dict[str, Any] = {}
    first = min(pos_idx)  # logits before the earliest target position are not needed
    if first > 0 and _accepts_logits_to_keep(model):
        kw["logits_to_keep"] = T - first  # the last T - first positions: saves lm_head work
    logits = model(
        input_ids=input_ids.to(dev), attention_mask=attention_mask.to(dev), use_cache=False, **kw
    ).logits  # (R, T - first or T, V)
    offset = T - logits.shape[1]
    ri, pi = torch.as_tensor(row_idx, device=dev), torch.as_tensor(pos_idx, device=dev)
    labels = input_ids.to(dev)[ri, pi + 1]  # (N,)
    sel = logits[ri, pi - offset]  # (N, V), every target position of the batch
    parts: list[torch.Tensor] = []
    step = _vocab_chunk_rows(sel.shape[-1])
    for s in range(0, sel.shape[0], step):
        lp = sel[s : s + step].float().log_softmax(-1)  # (n, V)
        p = lp.exp()
        mu = (p * lp).sum(-1)  # (n,)
        var = (p * (lp - mu[:, None]).square()).sum(-1)  # two-pass: no cancellation
        tok = lp.gather(-1, labels[s : s + step, None]).squeeze(-1)  # (n,)
        ok = (lp.argmax(-1) == labels[s : s + step]).float()
        parts.append(torch.stack([tok, ok, mu, var.sqrt()], dim=-1))  # (n, 4)
    stats = torch.cat(parts).double().cpu().numpy()  # (N, 4)
    out, start = [], 0
    for n in counts:
        s = stats[start : start + n]
        out.append(TargetScores(s[:, 0].copy(), s[:, 1] > 0.5, s[:, 2].copy(), s[:, 3].copy()))
        start += n
    return out


@torch.no_grad()
def score_targets(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    targets: Sequence[Sequence[str]],
    *,
    batch_size: int = 8,
    flatten: bool = True,
    append_eos: bool = True,
    add_special_tokens: bool = True,
    max_length: int | None = None,
    progress: bool = True,
    desc: str = "score",
) -> list[list[TargetScores]]:
    """Teacher-forced statistics of every candidate target of every prompt.

    ``targets[i]`` lists the candidates of prompt i (answer, paraphrase, perturbed answers).
    ``flatten=True``: items sorted by length, ``batch_size`` items per forward with all their
    candidates as rows (item x candidate flattened). ``flatten=False``: ``batch_size`` rows per
    forward in input order; ``batch_size=1, flatten=False`` is the one-example-at-a-time path.
    Rows are right-padded with the pad id (attention mask 0); the model runs in eval mode under
    ``torch.no_grad`` in the dtype and attention it was loaded with.
    """
    if batch_size < 1:
        raise EvalError(f"batch_size must be >= 1, got {batch_size}")
    encoded = _tokenize_rows(
        tokenizer,
        prompts,
        targets,
        append_eos=append_eos,
        add_special_tokens=add_special_tokens,
        max_length=max_length,
    )
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    keys = [(i, j) for i, rows in enumerate(encoded) for j in range(len(rows))]
    if flatten:
        order = sorted(
            range(len(encoded)), key=lambda i: -max((len(r[0]) for r in encoded[i]), default=0)
        )
        groups = [
            [(i, j) for i in order[s : s + batch_size] for j in range(len(encoded[i]))]
            for s in range(0, len(order), batch_size)
        ]
    else:
        groups = [keys[s : s + batch_size] for s in range(0, len(keys), batch_size)]
    out: list[list[TargetScores | None]] = [[None] * len(rows) for rows in encoded]
    was_training = model.training
    model.eval()
    try:
        for group in tqdm(groups, desc=desc, disable=not progress, leave=False):
            if not group:
                continue
            scores = _forward_rows(model, [encoded[i][j] for i, j in group], pad_id)
            for (i, j), sc in zip(group, scores, strict=True):
                sc.eos = append_eos and encoded[i][j][0][-1] == tokenizer.eos_token_id  # not cut by max_length
                out[i][j] = sc
    finally:
        model.train(was_training)
    return out  # type: ignore[return-value]
