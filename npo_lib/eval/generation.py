"""Batched greedy generation with left padding and the KV cache, and greedy fact recall."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from npo_lib.data.views import view_text
from npo_lib.eval.metrics import fact_recall
from npo_lib.models.families import ChatTags


@torch.no_grad()
def greedy_generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 200,
    batch_size: int = 32,
    add_special_tokens: bool = True,
    progress: bool = True,
) -> list[str]:
    """Greedy continuations of ``prompts`` (special tokens stripped, think tags kept).

    Prompts are sorted by length so each batch pads little, then returned in input order.
    """
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[str | None] = [None] * len(prompts)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation continues from the right edge
    was_training = model.training
    model.eval()
    try:
        starts = range(0, len(order), batch_size)
        for s in tqdm(starts, desc="generate", disable=not progress, leave=False):
            idx = order[s : s + batch_size]
            enc = tokenizer(
                [prompts[i] for i in idx],
                return_tensors="pt",
                padding=True,
                add_special_tokens=add_special_tokens,
            ).to(model.device)
            gen = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )  # (B, T_prompt + T_new)
            new = gen[:, enc["input_ids"].shape[1] :]
            for i, row in zip(idx, new, strict=True):
                out[i] = tokenizer.decode(row, skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return [o or "" for o in out]


def sample_generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    k: int,
    temperature: float,
    seed: int,
    max_new_tokens: int = 200,
    batch_size: int = 32,
    add_special_tokens: bool = True,
    progress: bool = True,
) -> list[list[str]]:
    """``k`` continuations per prompt sampled at ``temperature`` from the full distribution (no
    top-k / top-p), seeded: the same seed gives the same samples on the same machine."""
    import torch

    out: list[list[str]] = []
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    was_training = model.training
    model.eval()
    gen_device = model.device
    try:
        g = torch.Generator(device="cpu").manual_seed(seed)
        for s in tqdm(range(0, len(prompts), batch_size), desc="sample", disable=not progress, leave=False):
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))  # one seed per batch
            enc = tokenizer(list(prompts[s : s + batch_size]), return_tensors="pt", padding=True,
                            add_special_tokens=add_special_tokens).to(gen_device)
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature,
                                 top_k=0, top_p=1.0, num_return_sequences=k,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            new = gen[:, enc["input_ids"].shape[1] :]  # (B·k, T_new), k rows per prompt in order
            texts = [tokenizer.decode(row, skip_special_tokens=True) for row in new]
            out += [texts[i * k : (i + 1) * k] for i in range(len(texts) // k)]
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return out


def greedy_fact_recall(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    records: Sequence[dict],
    tags: ChatTags,
    *,
    max_new_tokens: int = 96,
    batch_size: int = 64,
    progress: bool = False,
) -> float:
    """Share of ``records`` whose greedy answer (after the think-end tag) states ``record["fact"]``."""
    prompts = [view_text(r, "full", tags, tokenizer=tokenizer)[0] for r in records]
    gens = greedy_generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress)
    return fact_recall([tags.split_trace(g)[1] for g in gens], [r["fact"] for r in records])["agg_value"]
