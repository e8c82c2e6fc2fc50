"""Teacher-forced token statistics of (prompt, target) pairs, batched.

Every candidate answer of a batch's items goes into one forward, each item's prompt computed
once and shared by its candidates through the KV cache (the unbatched reference path is
``batch_size=1, flatten=False``). Prompt and target are tokenized separately, as in training,
and the target ends with EOS unless told otherwise. Under ``dist.sharded()`` the ranks share the
batches.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm.auto import tqdm

from npo_lib.config import EvalConfig
from npo_lib.errors import EvalError
from npo_lib.utils.dist import map_shards

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

SCORE_BATCH_SIZE: int = EvalConfig.batch_size  # items per forward (the schema's eval.batch_size)


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
    # one batched call per kind of text: the same ids as one call per text, much less overhead
    prompt_ids = (
        tokenizer(list(prompts), add_special_tokens=add_special_tokens)["input_ids"]
        if prompts
        else []
    )
    flat = [t for cands in targets for t in cands]
    target_ids = iter(tokenizer(flat, add_special_tokens=False)["input_ids"] if flat else [])
    for prompt, p_ids, cands in zip(prompts, prompt_ids, targets, strict=True):
        keep = None if max_length is None else max_length - len(p_ids)
        if keep is not None and keep <= 0:
            raise EvalError(
                f"a prompt has {len(p_ids)} tokens, max_length={max_length} leaves no room for "
                f"the answer: raise max_length (prompt: {prompt[:80]!r})"
            )
        rows = []
        for _ in cands:
            t_ids = next(target_ids)
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


def _cache_kwarg(model: PreTrainedModel) -> str:
    """The forward keyword of a filled KV cache: ``cache`` in newer transformers, else
    ``past_key_values``."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


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
    return _split_rows(_token_stats(sel, labels), counts)


def _token_stats(sel: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """(N, 4) float64: log p of the label, argmax == label, mean and std of log p over the
    vocabulary, for each of the N next-token logit rows ``sel`` (N, V)."""
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
    return torch.cat(parts).double().cpu().numpy()  # (N, 4)


def _split_rows(stats: np.ndarray, counts: Sequence[int]) -> list[TargetScores]:
    out, start = [], 0
    for n in counts:
        s = stats[start : start + n]
        out.append(TargetScores(s[:, 0].copy(), s[:, 1] > 0.5, s[:, 2].copy(), s[:, 3].copy()))
        start += n
    return out


def _prefix_forward(
    model: PreTrainedModel, prompts: Sequence[list[int]], pad_id: int
) -> tuple[Any, torch.Tensor]:
    """One left-padded forward over ``prompts`` (positions as the unpadded prompt has them),
    filling the KV cache; returns its output (the last position's logits) and the mask (B, P)."""
    B, P = len(prompts), max(len(p) for p in prompts)
    ids = torch.full((B, P), pad_id, dtype=torch.long)  # (B, P), left-padded
    mask = torch.zeros((B, P), dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, P - len(p) :] = torch.as_tensor(p)
        mask[b, P - len(p) :] = 1
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    kw: dict[str, Any] = {"logits_to_keep": 1} if _accepts_logits_to_keep(model) else {}
    dev = model.device
    out = model(
        input_ids=ids.to(dev),
        attention_mask=mask.to(dev),
        position_ids=pos.to(dev),
        use_cache=True,
        **kw,
    )
    return out, mask


def _continuation_stats(
    model: PreTrainedModel,
    pre: Any,
    pre_mask: torch.Tensor,
    prompt_lens: Sequence[int],
    rows: Sequence[tuple[int, list[int]]],
    pad_id: int,
) -> np.ndarray:
    """(N, 4) statistics of every target token after the first, rows (item, target) in order:
    the prompts' KV cache repeated per row, then one right-padded forward over the targets
    (their last token is only predicted, never fed)."""
    L = max(len(t) for _, t in rows) - 1
    if L <= 0:
        return np.zeros((0, 4))
    dev = model.device
    item_of_row = torch.as_tensor([b for b, _ in rows])  # (R,)
    cache = pre["cache"] if "cache" in pre else pre.past_key_values  # renamed in transformers 5
    cache.reorder_cache(item_of_row.to(dev))  # (B, ...) -> (R, ...): each row gets its prompt
    ids = torch.full((len(rows), L), pad_id, dtype=torch.long)  # (R, L): targets but the last
    mask = torch.zeros((len(rows), L), dtype=torch.long)
    row_idx: list[int] = []
    pos_idx: list[int] = []
    for r, (_, t) in enumerate(rows):
        n = len(t) - 1
        ids[r, :n] = torch.as_tensor(t[:-1])
        mask[r, :n] = 1
        row_idx += [r] * n
        pos_idx += range(n)
    plen = torch.as_tensor([prompt_lens[b] for b, _ in rows])
    pos = plen[:, None] + torch.arange(L)[None]  # (R, L)
    logits = model(
        input_ids=ids.to(dev),
        attention_mask=torch.cat([pre_mask[item_of_row], mask], 1).to(dev),
        position_ids=pos.to(dev),
        use_cache=True,
        **{_cache_kwarg(model): cache},
    ).logits  # (R, L, V)
    ri, pi = torch.as_tensor(row_idx, device=dev), torch.as_tensor(pos_idx, device=dev)
    labels = torch.as_tensor([tok for _, t in rows for tok in t[1:]], device=dev)
    return _token_stats(logits[ri, pi], labels)


@torch.no_grad()
def _forward_shared_prefix(
    model: PreTrainedModel, items: Sequence[tuple[list[int], list[list[int]]]], pad_id: int
) -> list[list[TargetScores]]:
    """Statistics of every candidate target of every (prompt, candidates) item, the prompt run
    once per item: a left-padded prefix forward fills the KV cache, which is repeated for each
    candidate row, then one right-padded forward over the targets. Same numbers as
    :func:`_forward_rows` up to float rounding, with the prompt's layers computed once instead
    of once per candidate."""
    pre, pre_mask = _prefix_forward(model, [p for p, _ in items], pad_id)
    rows = [(b, t) for b, (_, cands) in enumerate(items) for t in cands]
    item_of_row = torch.as_tensor([b for b, _ in rows], device=model.device)  # (R,)
    labels_first = torch.as_tensor([t[0] for _, t in rows], device=model.device)
    # (R, 4): each target's first token, predicted by its prompt's last position
    first = _token_stats(pre.logits[:, -1][item_of_row], labels_first)
    lens = [len(p) for p, _ in items]
    rest = _continuation_stats(model, pre, pre_mask, lens, rows, pad_id)
    out: list[list[TargetScores]] = [[] for _ in items]
    start = 0
    for r, (b, t) in enumerate(rows):
        n = len(t) - 1
        stats = np.concatenate([first[r : r + 1], rest[start : start + n]])
        start += n
        out[b].append(_split_rows(stats, [n + 1])[0])
    return out


def _forward_items(
    model: PreTrainedModel,
    encoded: Sequence[list[tuple[list[int], int]]],
    group: Sequence[tuple[int, int]],
    pad_id: int,
) -> list[TargetScores]:
    """:func:`_forward_shared_prefix` over the items of ``group`` (every candidate of each), in
    the group's (item, candidate) order; :func:`_forward_rows` when each item has one candidate."""
    item_ids = list(dict.fromkeys(i for i, _ in group))
    if len(item_ids) == len(group):  # one candidate per item: nothing to share, one forward
        return _forward_rows(model, [encoded[i][j] for i, j in group], pad_id)
    items = [
        (encoded[i][0][0][: encoded[i][0][1]], [ids[p:] for ids, p in encoded[i]]) for i in item_ids
    ]
    per_item = dict(zip(item_ids, _forward_shared_prefix(model, items, pad_id), strict=True))
    return [per_item[i][j] for i, j in group]


def _batches(
    encoded: Sequence[list[tuple[list[int], int]]], batch_size: int, flatten: bool
) -> list[list[tuple[int, int]]]:
    """The (item, candidate) keys of each forward: ``flatten``: items sorted by length (longest
    first), ``batch_size`` items with all their candidates; else ``batch_size`` rows in order."""
    if flatten:
        order = sorted(
            range(len(encoded)), key=lambda i: -max((len(r[0]) for r in encoded[i]), default=0)
        )
        groups = [
            [(i, j) for i in order[s : s + batch_size] for j in range(len(encoded[i]))]
            for s in range(0, len(order), batch_size)
        ]
    else:
        keys = [(i, j) for i, rows in enumerate(encoded) for j in range(len(rows))]
        groups = [keys[s : s + batch_size] for s in range(0, len(keys), batch_size)]
    return [g for g in groups if g]


@torch.no_grad()
def score_targets(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    targets: Sequence[Sequence[str]],
    *,
    batch_size: int = SCORE_BATCH_SIZE,
    flatten: bool = EvalConfig.flatten,
    share_prefix: bool = True,
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
    ``share_prefix`` (with ``flatten``): each item's prompt is run once and its KV cache serves
    all of its candidates (:func:`_forward_shared_prefix`); False: each row carries its prompt.
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
    groups = _batches(encoded, batch_size, flatten)

    def work(group: list[tuple[int, int]]) -> list[TargetScores]:
        if flatten and share_prefix:
            return _forward_items(model, encoded, group, pad_id)
        return _forward_rows(model, [encoded[i][j] for i, j in group], pad_id)

    was_training = model.training
    model.eval()
    try:  # under dist.sharded() each rank forwards its share of the batches, then all are gathered
        per_group = map_shards(
            groups,
            work,
            progress=lambda idx: tqdm(idx, desc=desc, disable=not progress, leave=False),
        )
    finally:
        model.train(was_training)
    eos_id = tokenizer.eos_token_id if append_eos else None
    return _in_input_order(encoded, groups, per_group, eos_id)


def _in_input_order(
    encoded: Sequence[list[tuple[list[int], int]]],
    groups: Sequence[list[tuple[int, int]]],
    per_group: Sequence[list[TargetScores]],
    eos_id: int | None,
) -> list[list[TargetScores]]:
    """The batches' scores back in (item, candidate) order, each marked when its last token is
    the appended EOS (``eos_id``; None: none was appended), which max_length may have cut."""
    out: list[list[TargetScores | None]] = [[None] * len(rows) for rows in encoded]
    for group, scores in zip(groups, per_group, strict=True):
        for (i, j), sc in zip(group, scores, strict=True):
            sc.eos = eos_id is not None and encoded[i][j][0][-1] == eos_id
            out[i][j] = sc
    return out  # type: ignore[return-value]
