"""Batched greedy and sampled generation with left padding and the KV cache (batches shared
across ranks under ``dist.sharded()``), greedy fact recall, and the optional vLLM engine."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from npo_lib.config import EvalConfig
from npo_lib.data.views import view_text
from npo_lib.eval.metrics import fact_recall
from npo_lib.models.families import ChatTags
from npo_lib.utils.dist import map_shards

# The defaults of `npo eval` (the schema's eval.max_new_tokens and eval.gen_batch_size).
MAX_NEW_TOKENS: int = EvalConfig.max_new_tokens
GEN_BATCH_SIZE: int = EvalConfig.gen_batch_size

T = TypeVar("T")
R = TypeVar("R")


@contextmanager
def _decoding(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> Iterator[None]:
    """Left padding (generation continues from the right edge) and eval mode, both restored."""
    side, was_training = tokenizer.padding_side, model.training
    tokenizer.padding_side = "left"
    model.eval()
    try:
        yield
    finally:
        tokenizer.padding_side = side
        model.train(was_training)


def _shared(items: list[T], work: Callable[[T], R], desc: str, progress: bool) -> list[R]:
    """``work`` of every item; under ``dist.sharded()`` each rank does its share."""

    def bar(i: Iterable[int]) -> Iterable[int]:
        return tqdm(i, desc=desc, disable=not progress, leave=False)

    return map_shards(items, work, progress=bar)


def length_batches(
    tokenizer: PreTrainedTokenizerBase,
    prompt_lists: Sequence[Sequence[str]],
    batch_size: int,
    add_special_tokens: bool,
) -> list[tuple[int, list[int]]]:
    """(list, prompt indices) per batch: each list's prompts sorted by token length, then cut into
    batches of ``batch_size``, so a batch pads little; no batch mixes two lists."""
    batches: list[tuple[int, list[int]]] = []
    for k, prompts in enumerate(prompt_lists):
        if not prompts:
            continue
        ids = tokenizer(list(prompts), add_special_tokens=add_special_tokens)["input_ids"]
        order = sorted(range(len(prompts)), key=lambda i: len(ids[i]))
        batches += [(k, order[s : s + batch_size]) for s in range(0, len(order), batch_size)]
    return batches


def _decode_new(
    tokenizer: PreTrainedTokenizerBase, gen: torch.Tensor, prompt_len: int
) -> list[str]:
    """The generated continuation of each row (prompt cut off, special tokens stripped)."""
    return [tokenizer.decode(row, skip_special_tokens=True) for row in gen[:, prompt_len:]]


@torch.no_grad()
def greedy_generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = MAX_NEW_TOKENS,
    batch_size: int = GEN_BATCH_SIZE,
    add_special_tokens: bool = True,
    progress: bool = True,
) -> list[str]:
    """Greedy continuations of ``prompts`` (special tokens stripped, think tags kept).

    Prompts are bucketed by token length (sorted, then cut into batches) so each batch pads
    little, then returned in input order.
    """
    return greedy_generate_many(
        model,
        tokenizer,
        [prompts],
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        add_special_tokens=add_special_tokens,
        progress=progress,
    )[0]


@torch.no_grad()
def greedy_generate_many(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt_lists: Sequence[Sequence[str]],
    *,
    max_new_tokens: int = MAX_NEW_TOKENS,
    batch_size: int = GEN_BATCH_SIZE,
    add_special_tokens: bool = True,
    progress: bool = True,
) -> list[list[str]]:
    """:func:`greedy_generate` of each list, the batches of every list formed as if alone (a
    list's prompts share their batches with no other list's) and decoded in one pass: under
    ``dist.sharded()`` the ranks share the batches of all lists, so several short lists still
    keep every rank busy."""
    batches = length_batches(tokenizer, prompt_lists, batch_size, add_special_tokens)

    def work(batch: tuple[int, list[int]]) -> list[str]:
        k, idx = batch
        enc = tokenizer(
            [prompt_lists[k][i] for i in idx],
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
        return _decode_new(tokenizer, gen, enc["input_ids"].shape[1])

    with _decoding(model, tokenizer):
        texts = _shared(batches, work, "generate", progress)
    out: list[list[str]] = [[""] * len(prompts) for prompts in prompt_lists]
    for (k, idx), batch in zip(batches, texts, strict=True):
        for i, text in zip(idx, batch, strict=True):
            out[k][i] = text
    return out


@torch.no_grad()
def sample_generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    k: int,
    temperature: float,
    seed: int,
    max_new_tokens: int = MAX_NEW_TOKENS,
    batch_size: int = GEN_BATCH_SIZE,
    add_special_tokens: bool = True,
    progress: bool = True,
) -> list[list[str]]:
    """``k`` continuations per prompt sampled at ``temperature`` from the full distribution (no
    top-k / top-p), seeded: the same seed gives the same samples on the same machine."""
    starts = list(range(0, len(prompts), batch_size))
    g = torch.Generator(device="cpu").manual_seed(seed)
    # one seed per batch, drawn up front: a batch samples the same whichever rank takes it
    seeds = [int(torch.randint(0, 2**31 - 1, (1,), generator=g)) for _ in starts]

    def work(b: int) -> list[list[str]]:
        torch.manual_seed(seeds[b])
        s = starts[b]
        enc = tokenizer(
            list(prompts[s : s + batch_size]),
            return_tensors="pt",
            padding=True,
            add_special_tokens=add_special_tokens,
        ).to(model.device)
        gen = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=True,
            temperature=temperature,
            top_k=0,
            top_p=1.0,
            num_return_sequences=k,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )  # (B·k, T_prompt + T_new), k rows per prompt in order
        texts = _decode_new(tokenizer, gen, enc["input_ids"].shape[1])
        return [texts[i * k : (i + 1) * k] for i in range(len(texts) // k)]

    with _decoding(model, tokenizer):
        batches = _shared(list(range(len(starts))), work, "sample", progress)
    return [row for batch in batches for row in batch]


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
    """Share of ``records`` whose greedy answer (after the think-end tag) states
    ``record["fact"]``."""
    prompts = [view_text(r, "full", tags, tokenizer=tokenizer)[0] for r in records]
    gens = greedy_generate(
        model,
        tokenizer,
        prompts,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        progress=progress,
    )
    return fact_recall([tags.split_trace(g)[1] for g in gens], [r["fact"] for r in records])[
        "agg_value"
    ]


# ----------------------------------------------------------------------------- vLLM (optional)

VLLM_GPU_MEMORY = (
    0.5  # share of the GPU vLLM may take: the transformers copy of the model stays loaded
)


def vllm_unavailable() -> str | None:
    """Why ``eval.generator=vllm`` cannot run here (vLLM missing, no CUDA GPU), None when it can."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return "vllm is not installed (pip install -e '.[vllm]')"
    if not torch.cuda.is_available():
        return "vLLM generation needs a CUDA GPU and none is visible"
    return None


class VllmGenerator:
    """Greedy and sampled continuations through vLLM's offline ``LLM.generate``, with the outputs
    contract of :func:`greedy_generate` / :func:`sample_generate`: the same prompts tokenized by
    the same tokenizer (``add_special_tokens`` as given), special tokens stripped from the text,
    no top-k / top-p. vLLM batches and schedules the requests itself; under ``dist.sharded()``
    each rank's engine takes its share of chunks of prompts."""

    CHUNK = 512  # prompts per request list (the unit ranks share)

    def __init__(
        self,
        model_path: str,
        tokenizer: PreTrainedTokenizerBase,
        *,
        dtype: str = "auto",
        seed: int = 0,
    ) -> None:
        from vllm import LLM

        self.tokenizer = tokenizer
        self.llm = LLM(
            model=model_path,
            tokenizer=model_path,
            dtype=dtype,
            seed=seed,
            gpu_memory_utilization=VLLM_GPU_MEMORY,
            enforce_eager=True,
        )

    def _run(
        self, prompts: Sequence[str], params: object, add_special_tokens: bool
    ) -> list[list[str]]:
        from vllm.inputs import TokensPrompt

        def work(s: int) -> list[list[str]]:
            reqs = [
                TokensPrompt(
                    prompt_token_ids=self.tokenizer(p, add_special_tokens=add_special_tokens)[
                        "input_ids"
                    ]
                )
                for p in prompts[s : s + self.CHUNK]
            ]
            outs = self.llm.generate(reqs, params, use_tqdm=False)
            return [[c.text for c in o.outputs] for o in outs]

        chunks = map_shards(list(range(0, len(prompts), self.CHUNK)), work)
        return [row for chunk in chunks for row in chunk]

    def greedy(
        self, prompts: Sequence[str], *, max_new_tokens: int, add_special_tokens: bool = True
    ) -> list[str]:
        from vllm import SamplingParams

        params = SamplingParams(
            temperature=0.0, max_tokens=max_new_tokens, n=1, skip_special_tokens=True
        )
        return [row[0] for row in self._run(prompts, params, add_special_tokens)]

    def sample(
        self,
        prompts: Sequence[str],
        *,
        k: int,
        temperature: float,
        seed: int,
        max_new_tokens: int,
        add_special_tokens: bool = True,
    ) -> list[list[str]]:
        from vllm import SamplingParams

        params = SamplingParams(
            temperature=temperature,
            top_k=-1,
            top_p=1.0,
            max_tokens=max_new_tokens,
            n=k,
            seed=seed,
            skip_special_tokens=True,
        )
        return self._run(prompts, params, add_special_tokens)
