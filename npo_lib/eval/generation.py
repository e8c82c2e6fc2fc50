"""Batched greedy and sampled generation with left padding and the KV cache (batches shared
across ranks under ``dist.sharded()``), greedy fact recall, and the optional vLLM engine."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from npo_lib.data.views import view_text
from npo_lib.eval.metrics import fact_recall
from npo_lib.models.families import ChatTags
from npo_lib.utils.dist import map_shards


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
    max_new_tokens: int = 200,
    batch_size: int = 32,
    add_special_tokens: bool = True,
    progress: bool = True,
) -> list[list[str]]:
    """:func:`greedy_generate` of each list, the batches of every list formed as if alone (a
    list's prompts share their batches with no other list's) and decoded in one pass: under
    ``dist.sharded()`` the ranks share the batches of all lists, so several short lists still
    keep every rank busy."""
    batches: list[tuple[int, list[int]]] = []  # (list, prompt indices) per batch
    for k, prompts in enumerate(prompt_lists):
        lengths = (
            [
                len(ids)
                for ids in tokenizer(list(prompts), add_special_tokens=add_special_tokens)[
                    "input_ids"
                ]
            ]
            if prompts
            else []
        )
        order = sorted(range(len(prompts)), key=lambda i: lengths[i])
        batches += [(k, order[s : s + batch_size]) for s in range(0, len(order), batch_size)]
    out: list[list[str]] = [[""] * len(prompts) for prompts in prompt_lists]
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation continues from the right edge
    was_training = model.training
    model.eval()

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
        return [
            tokenizer.decode(row, skip_special_tokens=True)
            for row in gen[:, enc["input_ids"].shape[1] :]
        ]

    try:  # under dist.sharded() each rank decodes its share of the batches
        texts = map_shards(
            batches,
            work,
            progress=lambda i: tqdm(i, desc="generate", disable=not progress, leave=False),
        )
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    for (k, idx), batch in zip(batches, texts, strict=True):
        for i, text in zip(idx, batch, strict=True):
            out[k][i] = text
    return out


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
    out: list[list[str]] = []
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    was_training = model.training
    model.eval()
    gen_device = model.device
    starts = list(range(0, len(prompts), batch_size))
    g = torch.Generator(device="cpu").manual_seed(seed)
    seeds = [
        int(torch.randint(0, 2**31 - 1, (1,), generator=g)) for _ in starts
    ]  # one per batch, drawn up front

    def work(b: int) -> list[list[str]]:
        torch.manual_seed(seeds[b])  # the batch's seed whichever rank samples it
        s = starts[b]
        enc = tokenizer(
            list(prompts[s : s + batch_size]),
            return_tensors="pt",
            padding=True,
            add_special_tokens=add_special_tokens,
        ).to(gen_device)
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
        )
        new = gen[:, enc["input_ids"].shape[1] :]  # (B·k, T_new), k rows per prompt in order
        texts = [tokenizer.decode(row, skip_special_tokens=True) for row in new]
        return [texts[i * k : (i + 1) * k] for i in range(len(texts) // k)]

    try:
        for batch in map_shards(
            list(range(len(starts))),
            work,
            progress=lambda i: tqdm(i, desc="sample", disable=not progress, leave=False),
        ):
            out += batch
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
