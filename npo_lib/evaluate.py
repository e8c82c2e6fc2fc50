"""``npo eval``: every metric of reference.md section 3 on one model, written as metrics.json.

Three layers, each usable alone:

1. :func:`score_targets`: teacher-forced token statistics of (prompt, target) pairs, batched
   with every candidate answer of a batch's items in one forward (the unbatched reference path
   is ``batch_size=1, flatten=False``).
2. :func:`compute_metrics`: scoring + greedy generation + :mod:`npo_lib.metrics` on the loaded
   evaluation sets (:func:`load_eval_data`), for a model already in memory.
3. :func:`evaluate`: loads the model, checks its tokenizer, evaluates the retain model once for
   forget quality / privleak (cached), writes ``<out_dir>/eval/metrics.json`` and reuses a
   finished evaluation of the same identity.

Scoring convention: the answer is scored after an empty think block (prompt ``U q A Ts Te``;
``U q A`` without think tags), prompt and target tokenized separately as in training
(:func:`npo_lib.data.encode_view`), and the target ends with EOS. TOFU's original code and
open-unlearning's chat templates also score the end-of-answer token, so EOS is kept for
comparability; it enters every candidate (correct, paraphrased, perturbed) alike.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm.auto import tqdm

from npo_lib import metrics as M
from npo_lib.config import Config
from npo_lib.data import DataError, load_eval_set, load_forget, load_perturbed, view_text
from npo_lib.embedded import embedded_paths, fingerprint, resolve_data_path
from npo_lib.families import ChatTags, get_family, resolve_model_path
from npo_lib.generation import greedy_generate, split_generation
from npo_lib.machine import machine_info
from npo_lib.report import METRICS_FILE

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

METRICS_VERSION = "1"  # bump when a metric's definition changes (part of the reuse identity)
QA_SETS = ("forget", "retain", "real_authors", "world_facts")
SET_FILES = {  # evaluation set -> file stem (forget: "<split>_perturbed")
    "retain": "retain_perturbed",
    "real_authors": "real_authors_perturbed",
    "world_facts": "world_facts_perturbed",
    "holdout": "holdout",
}
MIA_ATTACKS = ("loss", "zlib", "min_k", "min_k_plus_plus")
HEADLINE_PRIVLEAK = "min_k"  # privleak's attack (open-unlearning's TOFU setting)


class EvalError(ValueError):
    """An evaluation cannot run as asked (tokenizer/model mismatch, no output folder, ...)."""


# ----------------------------------------------------------------------------- scoring


@dataclass
class TargetScores:
    """Teacher-forced statistics of one target's tokens (EOS included when appended)."""

    logprobs: np.ndarray  # (n,) log p(y_t | x, y_<t)
    argmax_ok: np.ndarray  # (n,) bool: argmax of the next-token distribution == y_t
    mu: np.ndarray  # (n,) E_v[log p_v] under the next-token distribution (Min-K%++)
    sigma: np.ndarray  # (n,) std_v[log p_v]

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
                out[i][j] = sc
    finally:
        model.train(was_training)
    return out  # type: ignore[return-value]


# ----------------------------------------------------------------------------- data


@dataclass
class EvalOptions:
    """How an evaluation runs. Only ``identity()`` fields change the numbers (and the reuse key)."""

    batch_size: int = 8  # items per teacher-forced forward (all their candidate answers together)
    gen_batch_size: int = 32  # prompts per greedy-generation batch
    max_new_tokens: int = 200  # greedy generation budget (TOFU / open-unlearning: 200)
    flatten: bool = True  # False: one forward per row (with batch_size=1: the unbatched path)
    reasoning: bool = True  # ZeroThink / LessThink answers on the forget set (think families)
    progress: bool = True  # tqdm bars (and a line when MIA is skipped)

    def __post_init__(self) -> None:
        for name in ("batch_size", "gen_batch_size", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise EvalError(f"{name} must be >= 1, got {getattr(self, name)}")

    @classmethod
    def single(cls, **kw: Any) -> EvalOptions:
        """One example at a time everywhere (the reference the batched path must match)."""
        return cls(**{"batch_size": 1, "gen_batch_size": 1, "flatten": False, **kw})

    def identity(self) -> dict[str, Any]:
        return {
            "max_new_tokens": self.max_new_tokens,
            "reasoning": self.reasoning,
            "metrics_version": METRICS_VERSION,
        }


@dataclass
class EvalData:
    """The evaluation sets of one (benchmark, split, task): forget, retain, real_authors,
    world_facts, and holdout when the data has one (``skipped`` says why a set is absent)."""

    data_path: str
    sets: dict[str, list[dict]]
    skipped: dict[str, str] = field(default_factory=dict)

    def fingerprint(self) -> str:
        """sha256 of the records themselves: the same data under another path matches."""
        blob = json.dumps(self.sets, sort_keys=True, ensure_ascii=False, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _optional_set(data_path: str, stem: str) -> tuple[list[dict] | None, str | None]:
    """Records of an optional file, or None and why (a local file that exists but is bad fails)."""
    folder = Path(data_path).expanduser()
    if folder.is_dir() and not any((folder / f"{stem}{e}").is_file() for e in (".json", ".jsonl")):
        return None, f"no {stem}.json in {folder}"
    try:
        return load_eval_set(data_path, stem), None
    except DataError as e:
        if folder.is_dir():
            raise
        return None, str(e)


def load_eval_data(cfg: Config) -> EvalData:
    """Load every evaluation set for ``cfg`` (data_path or the embedded benchmark).

    forget = ``<split>_perturbed`` of ``task_id``; a record with an empty ``cot`` (R-TOFU's
    perturbed files carry ``"cot": ""``) takes ``cot`` and ``fact`` from the same question in
    ``<split>.json`` when that file exists. Missing required files fail naming the file.
    """
    data_path = resolve_data_path(cfg)
    skipped: dict[str, str] = {}
    forget = load_perturbed(data_path, cfg.split, cfg.task_id)
    try:
        base = {r["question"]: r for r in load_forget(data_path, cfg.split, cfg.task_id)}
    except DataError as e:
        base, skipped["forget_cot"] = {}, f"forget traces unavailable: {e}"
    merged = []
    for r in forget:
        src = base.get(r["question"], {})
        extra = {k: src[k] for k in ("cot", "fact") if not r.get(k) and src.get(k)}
        merged.append({**r, **extra})
    sets = {"forget": merged}
    for name in ("retain", "real_authors", "world_facts"):
        sets[name] = load_eval_set(data_path, SET_FILES[name])
    holdout, why = _optional_set(data_path, SET_FILES["holdout"])
    if holdout is None:
        skipped["holdout"] = why or "no holdout set"
    else:
        sets["holdout"] = holdout
    return EvalData(data_path, sets, skipped)


# ----------------------------------------------------------------------------- metrics


def answer_prompt(record: Mapping[str, Any], tags: ChatTags, tokenizer: Any = None) -> str:
    """Scoring prompt: ``U q A Ts Te`` (an empty think block) for think families, else ``U q A``."""
    return view_text({**record, "cot": ""}, "answer", tags, tokenizer=tokenizer)[0]


def generation_prompts(
    record: Mapping[str, Any], tags: ChatTags, tokenizer: Any = None
) -> dict[str, str]:
    """Greedy-decoding prompts: ``default`` (``U q A Ts``: the model reasons, then answers) and,
    for think families, ``zerothink`` (``U q A Ts Te``) and ``lessthink``
    (``U q A Ts`` + the LessThink sentence + ``Te``), R-TOFU's forced-short decodings."""
    default = view_text(record, "full", tags, tokenizer=tokenizer)[0]
    out = {"default": default}
    if tags.thinks:
        out["zerothink"] = answer_prompt(record, tags, tokenizer)
        out["lessthink"] = default + M.LESS_THINK + tags.think_end
    return out


def forced_answer(text: str, tags: ChatTags) -> str:
    """Answer of a ZeroThink / LessThink generation (the prompt already closed the trace)."""
    end = (tags.think_end or "").strip()
    if end and end in text:
        text = text.split(end, 1)[1]
    return text.strip()


def forget_truth_ratio(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    tags: ChatTags,
    records: Sequence[Mapping[str, Any]],
    *,
    batch_size: int = 8,
    max_length: int | None = None,
) -> dict:
    """Per-item truth ratios of ``records`` (``<split>_perturbed``: paraphrased vs perturbed
    answers, scored as :func:`compute_metrics` scores them), aggregated as the forget set's."""
    scores = score_targets(
        model,
        tokenizer,
        [answer_prompt(r, tags, tokenizer) for r in records],
        [[r["paraphrased_answer"], *r["perturbed_answer"]] for r in records],
        batch_size=batch_size,
        add_special_tokens=not tags.use_tokenizer_template,
        max_length=max_length,
        progress=False,
    )
    nll = [[s.nll for s in row] for row in scores]
    return M.truth_ratio([n[0] for n in nll], [n[1:] for n in nll], aggregate="closer_to_1")


def _candidates(name: str, r: Mapping[str, Any]) -> list[str]:
    if name in ("forget", "retain"):  # answer, paraphrase (TR's correct), perturbed
        return [r["answer"], r["paraphrased_answer"], *r["perturbed_answer"]]
    if name == "holdout":
        return [r["answer"]]
    return [r["answer"], *r["perturbed_answer"]]  # real authors / world facts


def _subset(metric: Any, idx: list[int], *args: Sequence[Any]) -> dict:
    """``metric`` over the items ``idx`` only, with value_by_index keyed by the original index."""
    res = metric(*[[a[i] for i in idx] for a in args])
    return {
        "agg_value": res["agg_value"],
        "value_by_index": {idx[k]: v for k, v in res["value_by_index"].items()},
    }


@dataclass
class _Results:
    """Aggregates, per-item values and notes being filled by the metric steps."""

    agg: dict[str, float | None] = field(default_factory=dict)
    per_item: dict[str, dict[int, float]] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)

    def put(self, key: str, res: Mapping[str, Any]) -> None:
        self.agg[key] = res["agg_value"]
        if "value_by_index" in res:
            self.per_item[key] = res["value_by_index"]


def _score_all(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    tags: ChatTags,
    data: EvalData,
    opt: EvalOptions,
    max_length: int | None,
) -> dict[str, list[list[TargetScores]]]:
    """Teacher-forced statistics of every candidate answer of every set (answer-view prompt)."""
    return {
        name: score_targets(
            model,
            tokenizer,
            [answer_prompt(r, tags, tokenizer) for r in recs],
            [_candidates(name, r) for r in recs],
            batch_size=opt.batch_size,
            flatten=opt.flatten,
            add_special_tokens=not tags.use_tokenizer_template,
            max_length=max_length,
            progress=opt.progress,
            desc=f"score {name}",
        )
        for name, recs in data.sets.items()
    }


def _probability_metrics(res: _Results, scores: Mapping[str, list[list[TargetScores]]]) -> None:
    """Prob / normalised prob, truth ratio, extraction strength and exact memorisation."""
    for name in QA_SETS:
        nll = [[s.nll for s in row] for row in scores[name]]
        if name in ("forget", "retain"):  # candidates: answer, paraphrase, perturbed...
            res.put(f"{name}_prob", M.answer_prob([n[0] for n in nll]))
            agg = "closer_to_1" if name == "forget" else "true_better"
            tr = M.truth_ratio([n[1] for n in nll], [n[2:] for n in nll], aggregate=agg)
        else:  # candidates: answer, perturbed...
            res.put(f"{name}_prob", M.normalised_prob([n[0] for n in nll], [n[1:] for n in nll]))
            tr = M.truth_ratio([n[0] for n in nll], [n[1:] for n in nll])
        res.put(f"{name}_truth_ratio", tr)
    flags = [row[0].argmax_ok for row in scores["forget"]]
    res.put("forget_extraction_strength", M.extraction_strength(flags))
    res.put("forget_exact_memorisation", M.exact_memorisation(flags))


def _mia_metrics(
    res: _Results, data: EvalData, scores: Mapping[str, list[list[TargetScores]]], progress: bool
) -> None:
    """Per-item attack statistics of forget (members) and holdout (non-members), and AUCs."""
    if "holdout" not in data.sets:
        res.notes["mia"] = (
            f"MIA and privleak skipped: {data.skipped.get('holdout', 'no holdout set')}"
        )
        if progress:
            print(res.notes["mia"], file=sys.stderr)
        return
    for name in ("forget", "holdout"):
        rows, recs = [row[0] for row in scores[name]], data.sets[name]
        stats = {
            "loss": [M.mia_loss(s.logprobs) for s in rows],
            "zlib": [M.mia_zlib(s.logprobs, r["answer"]) for s, r in zip(rows, recs)],
            "min_k": [M.mia_min_k(s.logprobs) for s in rows],
            "min_k_plus_plus": [M.mia_min_k_plus_plus(s.logprobs, s.mu, s.sigma) for s in rows],
        }
        for a in MIA_ATTACKS:
            res.per_item[f"{name}_mia_{a}"] = M.by_index(stats[a])
    for a in MIA_ATTACKS:
        pi = res.per_item
        res.put(f"mia_{a}_auc", M.mia_auc(pi[f"forget_mia_{a}"], pi[f"holdout_mia_{a}"]))


def _generate_all(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    tags: ChatTags,
    data: EvalData,
    opt: EvalOptions,
) -> dict[str, dict[int, str]]:
    """Greedy generations keyed ``<set>_<decoding>``, one batched call per (set, decoding):
    output lengths cluster by group (ZeroThink answers are short, traces long), so a batch
    rarely waits on a much longer neighbour."""
    gens: dict[str, dict[int, str]] = {}
    for name in QA_SETS:
        prompts = [generation_prompts(r, tags, tokenizer) for r in data.sets[name]]
        reasoning = name == "forget" and opt.reasoning and tags.thinks
        for mode in ["default"] + (["zerothink", "lessthink"] if reasoning else []):
            texts = greedy_generate(
                model,
                tokenizer,
                [p[mode] for p in prompts],
                max_new_tokens=opt.max_new_tokens,
                batch_size=opt.gen_batch_size,
                add_special_tokens=not tags.use_tokenizer_template,
                progress=opt.progress,
            )
            gens[f"{name}_{mode}"] = dict(enumerate(texts))
    return gens


def _generation_metrics(
    res: _Results, data: EvalData, gens: Mapping[str, Mapping[int, str]], tags: ChatTags
) -> None:
    """ROUGE of answers, fact recall of answers and traces, CoT ROUGE / step-wise, ZeroThink
    and LessThink ROUGE."""
    for name in QA_SETS:
        recs = data.sets[name]
        answers_ref = [r["answer"] for r in recs]
        split = [split_generation(gens[f"{name}_default"][i], tags) for i in range(len(recs))]
        traces, answers = [t for t, _ in split], [a for _, a in split]
        res.put(f"{name}_rouge", M.rouge_l_recall(answers, answers_ref))
        if recs and all(isinstance(r.get("fact"), str) for r in recs):
            facts = [r["fact"] for r in recs]
            res.put(f"{name}_fact_recall", M.fact_recall(answers, facts))
            if tags.thinks:
                res.put(f"{name}_trace_fact_recall", M.fact_recall(traces, facts))
        with_cot = [i for i, r in enumerate(recs) if r.get("cot")]
        if tags.thinks and with_cot and name in ("forget", "retain"):
            cots = [r.get("cot") or "" for r in recs]
            res.put(f"{name}_cot_rouge", _subset(M.rouge_l_recall, with_cot, traces, cots))
            res.put(f"{name}_cot_stepwise", _subset(M.stepwise_cot_score, with_cot, traces, cots))
        for mode in ("zerothink", "lessthink"):
            if f"{name}_{mode}" in gens:
                ans = [forced_answer(gens[f"{name}_{mode}"][i], tags) for i in range(len(recs))]
                res.put(f"{name}_{mode}_rouge", M.rouge_l_recall(ans, answers_ref))


def compute_metrics(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    tags: ChatTags,
    data: EvalData,
    options: EvalOptions | None = None,
    *,
    reference: Mapping[str, Any] | str | None = None,
    max_length: int | None = None,
) -> dict[str, Any]:
    """Every metric of the model on ``data``: ``{"aggregates", "per_item", "generations",
    "notes", "counts", "seconds"}``.

    ``reference`` is the retain model's metrics.json (forget truth ratios and MIA AUCs, for
    forget quality and privleak), ``"self"`` when this model is the retain model, or a string /
    None: forget quality and privleak are then null, the string (the reason) under ``notes``.
    """
    opt = options or EvalOptions()
    res = _Results(notes=dict(data.skipped))
    seconds: dict[str, float] = {}
    # 1. teacher-forced scores -> probabilities, truth ratios, memorisation, MIA
    t0 = time.perf_counter()
    scores = _score_all(model, tokenizer, tags, data, opt, max_length)
    seconds["scoring"] = time.perf_counter() - t0
    _probability_metrics(res, scores)
    _mia_metrics(res, data, scores, opt.progress)
    # 2. greedy generations -> ROUGE, fact recall, reasoning metrics
    t0 = time.perf_counter()
    gens = _generate_all(model, tokenizer, tags, data, opt)
    seconds["generation"] = time.perf_counter() - t0
    _generation_metrics(res, data, gens, tags)
    # 3. model utility, then forget quality and privleak against the retain model
    try:
        res.put("model_utility", M.model_utility(res.agg))
    except ValueError as e:
        res.agg["model_utility"], res.notes["model_utility"] = None, str(e)
    _reference_metrics(res.agg, res.per_item, res.notes, reference)
    return {
        "aggregates": res.agg,
        "per_item": res.per_item,
        "generations": gens,
        "notes": res.notes,
        "counts": {k: len(v) for k, v in data.sets.items()},
        "seconds": seconds,
    }


def _reference_metrics(
    agg: dict[str, Any], per_item: dict[str, Any], notes: dict[str, str], reference: Any
) -> None:
    """Forget quality and privleak against the retain model's results (or null with a reason)."""
    if reference is None or isinstance(reference, str) and reference != "self":
        why = reference if isinstance(reference, str) else "no retain model to compare with"
        agg["forget_quality"] = agg["privleak"] = None
        notes["forget_quality"] = notes["privleak"] = why
        return
    ref_agg = agg if reference == "self" else reference["aggregates"]
    ref_tr = (
        per_item["forget_truth_ratio"]
        if reference == "self"
        else reference["per_item"]["forget_truth_ratio"]
    )
    agg["forget_quality"] = M.forget_quality(per_item["forget_truth_ratio"], ref_tr)["agg_value"]
    agg["privleak"] = None
    for a in MIA_ATTACKS:
        auc, ref_auc = agg.get(f"mia_{a}_auc"), ref_agg.get(f"mia_{a}_auc")
        if auc is None or ref_auc is None:
            notes["privleak"] = notes.get("mia") or "the retain model's evaluation has no MIA AUC"
            continue
        value = M.privleak(auc, ref_auc)["agg_value"]
        agg[f"privleak_{a}"] = value
        if a == HEADLINE_PRIVLEAK:
            agg["privleak"] = value


# ----------------------------------------------------------------------------- identity


_MODEL_FILES = (
    "config.json",
    "adapter_config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_SAMPLE = 1 << 20  # bytes hashed at the start, middle and end of each weight file


def model_fingerprint(path: str | os.PathLike) -> str:
    """Identity of a model folder: its config / tokenizer files and, per weight file, its name,
    size and sha256 of 1 MiB at its start, middle and end (a sample, not the whole file: fast
    for 16 GB checkpoints, and any training step changes those bytes). A hub id hashes as is."""
    p = Path(path).expanduser()
    if not p.is_dir():
        return fingerprint("hub", str(path))
    h = hashlib.sha256()
    for f in sorted(p.iterdir()):
        if f.name in _MODEL_FILES:
            h.update(f.name.encode() + b"\0" + f.read_bytes())
        elif f.suffix in _WEIGHT_SUFFIXES and f.is_file():
            size = f.stat().st_size
            h.update(f"{f.name}\0{size}".encode())
            with f.open("rb") as fh:
                for off in sorted({0, max(0, size // 2 - _SAMPLE // 2), max(0, size - _SAMPLE)}):
                    fh.seek(off)
                    h.update(fh.read(_SAMPLE))
    return h.hexdigest()[:16]


def check_tokenizer(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    *,
    model_name: str,
    tokenizer_name: str,
) -> None:
    """Fail when the tokenizer can produce ids the model has no embedding for."""
    rows = model.get_input_embeddings().num_embeddings
    problems = []
    if len(tokenizer) > rows:
        problems.append(
            f"the tokenizer has {len(tokenizer)} tokens, the model's embedding {rows} rows"
        )
    for attr in ("eos_token_id", "pad_token_id", "bos_token_id"):
        i = getattr(tokenizer, attr, None)
        if isinstance(i, int) and not 0 <= i < rows:
            problems.append(f"{attr}={i} is outside the model's {rows} embedding rows")
    if problems:
        raise EvalError(
            f"tokenizer {tokenizer_name} does not match model {model_name}: {'; '.join(problems)}"
        )


def _config_dict(cfg: Config) -> dict[str, Any]:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.structured(cfg))  # type: ignore[return-value]


def _resolved_dtype(cfg: Config) -> str:
    from npo_lib.families import default_device, resolve_dtype

    return str(resolve_dtype(cfg, default_device())).removeprefix("torch.")


def _identity(
    cfg: Config,
    model_path: str,
    tokenizer_path: str,
    data: EvalData,
    options: EvalOptions,
    retain: str | None,
    role: str,
) -> dict[str, Any]:
    return {
        "model_path": model_path,
        "model_fingerprint": model_fingerprint(model_path),
        "tokenizer_path": tokenizer_path,
        "tokenizer_fingerprint": model_fingerprint(tokenizer_path)
        if tokenizer_path != model_path
        else None,
        "data_path": data.data_path,
        "data_fingerprint": data.fingerprint(),
        "split": cfg.split,
        "task_id": cfg.task_id,
        "model_family": cfg.model_family,
        "max_length": cfg.max_length,
        "dtype": _resolved_dtype(cfg),  # "auto" differs by device: bf16 on GPU, fp32 on CPU
        "options": options.identity(),
        "role": role,
        "retain_model_path": retain,
        "retain_model_fingerprint": model_fingerprint(retain) if retain else None,
        "config": _config_dict(cfg),
    }


# Fields whose equality means "same numbers": a finished evaluation matching them is reused.
_REUSE_KEYS = (
    "model_fingerprint",
    "tokenizer_fingerprint",
    "data_fingerprint",
    "split",
    "task_id",
    "model_family",
    "max_length",
    "dtype",
    "options",
    "retain_model_fingerprint",
)


def _reusable(file: Path, identity: Mapping[str, Any]) -> dict | None:
    if not file.is_file():
        return None
    try:
        old = json.loads(file.read_text())
    except json.JSONDecodeError:
        return None
    old_id = old.get("identity", {})
    if all(old_id.get(k) == identity[k] for k in _REUSE_KEYS):
        return old
    return None


def _write_json(file: Path, obj: Mapping[str, Any]) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(f"{file.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, ensure_ascii=False, default=str))
    os.replace(tmp, file)


# ----------------------------------------------------------------------------- evaluate


def _auto_retain(cfg: Config, retain_model_path: str | None) -> tuple[str | None, str | None]:
    """(retain model folder, None) or (None, why there is none)."""
    if retain_model_path:
        p = Path(retain_model_path).expanduser()
        if not p.is_dir():
            raise EvalError(f"retain_model_path folder not found: {p}")
        return str(p), None
    if cfg.data_path is None and get_family(cfg.model_family).hub_id is None:
        retain = embedded_paths(cfg).retain
        if (retain / "config.json").is_file():
            return str(retain), None
        return None, f"the embedded retain model is not prepared ({retain}): run `npo prepare`"
    return None, (
        "no retain model: pass retain_model_path=<folder of a model fine-tuned without the "
        "forget set> to get forget quality and privleak"
    )


def _role(cfg: Config, model_fp: str, retain_fp: str | None) -> str:
    if retain_fp is not None and model_fp == retain_fp:
        return "retain"
    family = get_family(cfg.model_family)
    if family.hub_id is None and cfg.data_path is None:
        target = embedded_paths(cfg).target
        if target.is_dir() and model_fingerprint(target) == model_fp:
            return "target"
    elif model_fp == model_fingerprint(family.hub_id or ""):
        return "target"
    return "run"


def _run(
    cfg: Config,
    model_path: str,
    tokenizer_path: str,
    data: EvalData,
    options: EvalOptions,
    identity: dict[str, Any],
    reference: Mapping[str, Any] | str | None,
    file: Path,
) -> dict[str, Any]:
    """Load the model, compute, write ``file``."""
    from npo_lib.families import load_model, load_tokenizer

    t0 = time.perf_counter()
    tokenizer = load_tokenizer(cfg, tokenizer_path)
    model = load_model(cfg, model_path)
    check_tokenizer(model, tokenizer, model_name=model_path, tokenizer_name=tokenizer_path)
    res = compute_metrics(
        model,
        tokenizer,
        get_family(cfg.model_family).tags,
        data,
        options,
        reference=reference,
        max_length=cfg.max_length,
    )
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # before the next model of the session loads
    out = {**res, "identity": identity, "machine": machine_info()}  # where the numbers came from
    out["seconds"] = {**res["seconds"], "total": time.perf_counter() - t0}
    _write_json(file, out)
    return json.loads(json.dumps(out, default=str))  # the same (string-keyed) form as reloaded


def evaluate(
    cfg: Config,
    model_path: str | None = None,
    *,
    out_dir: str | os.PathLike,
    recompute: bool = False,
    retain_reference: Mapping[str, Any] | str | None = "auto",
    retain_model_path: str | None = None,
    tokenizer_path: str | None = None,
    options: EvalOptions | None = None,
) -> dict[str, Any]:
    """Evaluate ``model_path`` (default: ``cfg.model_path`` or the embedded target) on the
    evaluation sets of ``cfg`` and write ``<out_dir>/eval/metrics.json``; returns its content.

    Forget quality and privleak compare with the retain model, evaluated once per (data, split,
    task, retain model, options) and cached as ``cfg.cache_path/eval/<fingerprint>/metrics.json``
    (``recompute`` does not redo it). ``retain_reference``: ``"auto"`` uses
    ``retain_model_path`` when given, else the embedded retain model for the embedded benchmark,
    else none; a mapping is a retain model's metrics.json already loaded; None means no
    comparison (forget quality and privleak null, the reason under ``notes``). A model whose
    weights are the retain model's is its own reference (forget quality 1, privleak 0).
    An earlier result with the same identity (model, tokenizer, data, split, task, options,
    retain model) is returned as is unless ``recompute``.
    """
    options = options or EvalOptions()
    model_path = str(model_path or resolve_model_path(cfg))
    tokenizer_path = str(tokenizer_path or model_path)
    data = load_eval_data(cfg)
    # 1. which retain model (if any) forget quality and privleak compare with
    retain_path, why = None, "retain_reference=None: no comparison asked"
    if retain_reference == "auto":
        retain_path, why = _auto_retain(cfg, retain_model_path)
    elif isinstance(retain_reference, str):
        raise EvalError(
            f"retain_reference must be 'auto', None or a metrics mapping, got {retain_reference!r}"
        )
    retain_fp = model_fingerprint(retain_path) if retain_path else None
    role = _role(cfg, model_fingerprint(model_path), retain_fp)
    identity = _identity(cfg, model_path, tokenizer_path, data, options, retain_path, role)
    if isinstance(retain_reference, Mapping):  # a retain model's results, already computed
        identity["retain_model_fingerprint"] = retain_reference.get("identity", {}).get(
            "model_fingerprint", "given"
        )
    # 2. reuse a finished evaluation of the same identity
    file = Path(out_dir) / METRICS_FILE
    if not recompute and (old := _reusable(file, identity)) is not None:
        return old
    # 3. compute (the retain model's own results are shared with every model's comparison)
    if isinstance(retain_reference, Mapping):
        return _run(
            cfg, model_path, tokenizer_path, data, options, identity, retain_reference, file
        )
    if role == "retain" and tokenizer_path == model_path:
        res = {
            **retain_metrics(cfg, model_path, data, options, recompute=recompute),
            "identity": identity,
        }
        _write_json(file, res)
        return res
    if role == "retain":
        reference: Mapping[str, Any] | str | None = "self"
    elif retain_path is not None:
        reference = retain_metrics(cfg, retain_path, data, options)
    else:
        reference = why
    return _run(cfg, model_path, tokenizer_path, data, options, identity, reference, file)


def retain_metrics(
    cfg: Config,
    retain_path: str,
    data: EvalData | None = None,
    options: EvalOptions | None = None,
    *,
    recompute: bool = False,
) -> dict[str, Any]:
    """The retain model's metrics (its own reference), cached under ``cache_path/eval``."""
    options = options or EvalOptions()
    data = data or load_eval_data(cfg)
    identity = _identity(cfg, retain_path, retain_path, data, options, retain_path, "retain")
    key = fingerprint({k: identity[k] for k in _REUSE_KEYS})
    file = cfg.cache_path / "eval" / key / "metrics.json"
    if not recompute and (old := _reusable(file, identity)) is not None:
        return old
    return _run(cfg, retain_path, retain_path, data, options, identity, "self", file)


# ----------------------------------------------------------------------------- CLI


SUMMARY_KEYS = (
    "forget_quality",
    "model_utility",
    "forget_fact_recall",
    "retain_fact_recall",
    "forget_rouge",
    "forget_prob",
    "forget_truth_ratio",
    "retain_rouge",
    "privleak",
)


def summary(result: Mapping[str, Any]) -> str:
    """A few headline numbers of a metrics.json, one per line."""
    agg = result["aggregates"]
    lines = []
    for k in SUMMARY_KEYS:
        if k in agg:
            v = agg[k]
            lines.append(f"  {k:<22} {'null' if v is None else f'{v:.4g}'}")
    lines += [f"  note: {k}: {v}" for k, v in result.get("notes", {}).items()]
    return "\n".join(lines)


def default_out_dir(cfg: Config, model_path: str | None = None) -> Path:
    """Where ``npo eval`` writes: ``save_dir`` when set, else the model's own local folder."""
    if cfg.save_dir:
        return Path(cfg.save_dir)
    path = Path(model_path or resolve_model_path(cfg)).expanduser()
    if path.is_dir():
        return path
    raise EvalError(
        f"{path} is not a local folder: pass save_dir=... (or --out-dir) for the results"
    )


def cmd_eval(cfg: Config, opts: argparse.Namespace) -> int:
    """``npo eval [params] [key=value]``: evaluate ``model_path`` (default: the embedded target).

    Optional ``opts`` attributes (CLI flags the lead may add): ``out_dir``, ``recompute``,
    ``retain_model_path``, ``eval_batch_size``, ``max_new_tokens``.
    """
    options = EvalOptions()
    if getattr(opts, "eval_batch_size", None):
        options.batch_size = opts.eval_batch_size
    if getattr(opts, "max_new_tokens", None):
        options.max_new_tokens = opts.max_new_tokens
    try:
        out_dir = Path(getattr(opts, "out_dir", None) or default_out_dir(cfg))
        result = evaluate(
            cfg,
            out_dir=out_dir,
            recompute=bool(getattr(opts, "recompute", False)),
            retain_model_path=getattr(opts, "retain_model_path", None),
            options=options,
        )
    except (DataError, EvalError) as e:
        print(f"npo eval: {e}", file=sys.stderr)
        return 2
    print(f"{result['identity']['model_path']} ({result['identity']['role']})")
    print(summary(result))
    print(f"wrote {out_dir / METRICS_FILE} in {result['seconds'].get('total', 0.0):.1f} s")
    return 0
