"""Every metric of one model in memory on the loaded evaluation sets (TOFU / R-TOFU / privacy).

:func:`load_eval_data` reads the sets; :func:`compute_metrics` scores (teacher-forced), decodes
(greedy) and computes :mod:`npo_lib.eval.metrics` on them; forget quality and privleak compare
with a retain model's results.

Scoring convention: the answer is scored after an empty think block (prompt ``U q A Ts Te``;
``U q A`` without think tags), prompt and target tokenized separately as in training, and the
target ends with EOS, as TOFU's code and open-unlearning's chat templates score it; it enters
every candidate (correct, paraphrased, perturbed) alike. Prob, truth ratio, LOSS and zlib keep
the EOS token; Min-K%, Min-K%++, extraction strength and exact memorisation drop it, as
open-unlearning does (their papers are silent on it); ``eval.mia_keep_eos`` keeps it there too.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from npo_lib.config import Config, EvalConfig
from npo_lib.data.sources import load_eval_set, load_forget, load_holdout, load_perturbed
from npo_lib.data.views import view_text
from npo_lib.embedded.paths import resolve_data_path
from npo_lib.errors import DataError
from npo_lib.eval import metrics as M
from npo_lib.eval.generation import VllmGenerator, greedy_generate_many, vllm_unavailable
from npo_lib.eval.registry import (
    FORGET_KS_STAT,
    FORGET_QUALITY,
    MIA_ATTACKS,
    MODEL_UTILITY,
    PRIVLEAK,
    PRIVLEAK_ATTACK,
    QA_SETS,
    mia_auc_key,
    privleak_key,
    set_key,
)
from npo_lib.eval.scoring import SCORE_BATCH_SIZE, TargetScores, score_targets
from npo_lib.models.families import ChatTags
from npo_lib.utils.hashing import fingerprint

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

METRICS_VERSION = "2"  # bump when a metric's definition changes (part of the reuse identity)
SET_FILES = {  # evaluation set -> file stem (forget: "<split>_perturbed")
    "retain": "retain_perturbed",
    "real_authors": "real_authors_perturbed",
    "world_facts": "world_facts_perturbed",
}


def eval_identity(options: EvalConfig) -> dict[str, Any]:
    """The evaluation settings that change the numbers (a finished evaluation is reused only
    when they match); batch sizes and flattening change only the speed."""
    out = {
        "max_new_tokens": options.max_new_tokens,
        "reasoning": options.reasoning,
        "metrics_version": METRICS_VERSION,
    }
    if options.generator != "hf":  # another engine's kernels may break greedy ties differently
        out["generator"] = options.generator
    if options.mia_keep_eos:  # the default convention keeps the identity of earlier evaluations
        out["mia_keep_eos"] = True
    if options.robustness:  # an evaluation without attacks keeps its identity
        keys = (
            "robustness",
            "relearn_steps",
            "relearn_fraction",
            "relearn_lr",
            "relearn_batch_size",
            "quant_group_size",
            "leak_k",
            "leak_temperature",
            "attack_seed",
        )
        out["attacks"] = {k: getattr(options, k) for k in keys}
    return out


@dataclass
class EvalData:
    """The evaluation sets of one (benchmark, split, task): forget, retain, real_authors,
    world_facts, and holdout when the data has one (``skipped`` says why a set is absent)."""

    data_path: str
    sets: dict[str, list[dict]]
    skipped: dict[str, str] = field(default_factory=dict)

    def fingerprint(self) -> str:
        """Hash of the records themselves: the same data under another path matches."""
        return fingerprint(self.sets)


def load_eval_data(cfg: Config) -> EvalData:
    """Every evaluation set for ``cfg`` (data_path or the embedded benchmark)."""
    return load_eval_sets(resolve_data_path(cfg), cfg.split, cfg.task_id)


def load_eval_sets(data_path: str, split: str, task_id: int | None) -> EvalData:
    """Load every evaluation set of ``data_path`` for ``split`` / ``task_id``.

    forget = ``<split>_perturbed`` of ``task_id``; a record with an empty ``cot`` (R-TOFU's
    perturbed files carry ``"cot": ""``) takes ``cot`` and ``fact`` from the same question in
    ``<split>.json`` when that file exists. Missing required files fail naming the file.
    """
    skipped: dict[str, str] = {}
    forget = load_perturbed(data_path, split, task_id)
    try:
        base = {r["question"]: r for r in load_forget(data_path, split, task_id)}
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
    try:
        sets["holdout"] = load_holdout(data_path, split)
    except DataError as e:
        if "no holdout set" not in str(e):
            raise  # a holdout file that is there but malformed
        skipped["holdout"] = str(e)
    return EvalData(data_path, sets, skipped)


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


def forget_truth_ratio(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    tags: ChatTags,
    records: Sequence[Mapping[str, Any]],
    *,
    batch_size: int = SCORE_BATCH_SIZE,
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
    opt: EvalConfig,
    max_length: int | None,
    progress: bool,
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
            progress=progress,
            desc=f"score {name}",
        )
        for name, recs in data.sets.items()
    }


def _probability_metrics(
    res: _Results, scores: Mapping[str, list[list[TargetScores]]], keep_eos: bool = False
) -> None:
    """Prob / normalised prob, truth ratio, extraction strength and exact memorisation."""
    for name in QA_SETS:
        nll = [[s.nll for s in row] for row in scores[name]]
        if name in ("forget", "retain"):  # candidates: answer, paraphrase, perturbed...
            res.put(set_key(name, "prob"), M.answer_prob([n[0] for n in nll]))
            agg = "closer_to_1" if name == "forget" else "true_better"
            tr = M.truth_ratio([n[1] for n in nll], [n[2:] for n in nll], aggregate=agg)
        else:  # candidates: answer, perturbed...
            prob = M.normalised_prob([n[0] for n in nll], [n[1:] for n in nll])
            res.put(set_key(name, "prob"), prob)
            tr = M.truth_ratio([n[0] for n in nll], [n[1:] for n in nll])
        res.put(set_key(name, "truth_ratio"), tr)
    # EOS out unless eval.mia_keep_eos
    flags = [M.token_stats_for(row[0], keep_eos).argmax_ok for row in scores["forget"]]
    res.put(set_key("forget", "extraction_strength"), M.extraction_strength(flags))
    res.put(set_key("forget", "exact_memorisation"), M.exact_memorisation(flags))


def _mia_metrics(
    res: _Results,
    data: EvalData,
    scores: Mapping[str, list[list[TargetScores]]],
    progress: bool,
    keep_eos: bool = False,
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
        bare = [
            M.token_stats_for(s, keep_eos) for s in rows
        ]  # Min-K% / Min-K%++: EOS out unless eval.mia_keep_eos
        stats = {
            "loss": [M.mia_loss(s.logprobs) for s in rows],
            "zlib": [M.mia_zlib(s.logprobs, r["answer"]) for s, r in zip(rows, recs)],
            "min_k": [M.mia_min_k(s.logprobs) for s in bare],
            "min_k_plus_plus": [M.mia_min_k_plus_plus(s.logprobs, s.mu, s.sigma) for s in bare],
        }
        for a in MIA_ATTACKS:
            res.per_item[f"{name}_mia_{a}"] = M.by_index(stats[a])
    for a in MIA_ATTACKS:
        pi = res.per_item
        res.put(mia_auc_key(a), M.mia_auc(pi[f"forget_mia_{a}"], pi[f"holdout_mia_{a}"]))


def _generate_all(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    tags: ChatTags,
    data: EvalData,
    opt: EvalConfig,
    progress: bool,
    notes: dict[str, str],
) -> dict[str, dict[int, str]]:
    """Greedy generations keyed ``<set>_<decoding>``, batched within each (set, decoding):
    output lengths cluster by group (ZeroThink answers are short, traces long), so a batch
    rarely waits on a much longer neighbour; the batches of all groups go in one pass, which
    ranks share. ``eval.generator=vllm`` decodes through vLLM where it and a GPU are there;
    elsewhere it says why on stderr and in ``notes`` and uses transformers."""
    engine = None
    if opt.generator == "vllm":
        why = vllm_unavailable()
        if why is None:
            engine = VllmGenerator(model.name_or_path, tokenizer)
        else:
            notes["generator"] = f"eval.generator=vllm skipped: {why}; generations by transformers"
            print(notes["generator"], file=sys.stderr)
    lists: dict[str, list[str]] = {}  # <set>_<decoding> -> prompts
    for name in QA_SETS:
        prompts = [generation_prompts(r, tags, tokenizer) for r in data.sets[name]]
        reasoning = name == "forget" and opt.reasoning and tags.thinks
        for mode in ["default"] + (["zerothink", "lessthink"] if reasoning else []):
            lists[f"{name}_{mode}"] = [p[mode] for p in prompts]
    if engine is None:  # one pass over the batches of every list: ranks share them all
        texts = greedy_generate_many(
            model,
            tokenizer,
            list(lists.values()),
            max_new_tokens=opt.max_new_tokens,
            batch_size=opt.gen_batch_size,
            add_special_tokens=not tags.use_tokenizer_template,
            progress=progress,
        )
    else:
        texts = [
            engine.greedy(
                ps,
                max_new_tokens=opt.max_new_tokens,
                add_special_tokens=not tags.use_tokenizer_template,
            )
            for ps in lists.values()
        ]
    return {key: dict(enumerate(t)) for key, t in zip(lists, texts, strict=True)}


def _generation_metrics(
    res: _Results, data: EvalData, gens: Mapping[str, Mapping[int, str]], tags: ChatTags
) -> None:
    """ROUGE of answers, fact recall of answers and traces, CoT ROUGE / step-wise, ZeroThink
    and LessThink ROUGE."""
    for name in QA_SETS:
        recs = data.sets[name]
        answers_ref = [r["answer"] for r in recs]
        split = [tags.split_trace(gens[f"{name}_default"][i]) for i in range(len(recs))]
        traces, answers = [t for t, _ in split], [a for _, a in split]
        res.put(set_key(name, "rouge"), M.rouge_l_recall(answers, answers_ref))
        if recs and all(isinstance(r.get("fact"), str) for r in recs):
            facts = [r["fact"] for r in recs]
            res.put(set_key(name, "fact_recall"), M.fact_recall(answers, facts))
            if tags.thinks:
                res.put(set_key(name, "trace_fact_recall"), M.fact_recall(traces, facts))
        with_cot = [i for i, r in enumerate(recs) if r.get("cot")]
        if tags.thinks and with_cot and name in ("forget", "retain"):
            cots = [r.get("cot") or "" for r in recs]
            rouge = _subset(M.rouge_l_recall, with_cot, traces, cots)
            res.put(set_key(name, "cot_rouge"), rouge)
            steps = _subset(M.stepwise_cot_score, with_cot, traces, cots)
            res.put(set_key(name, "cot_stepwise"), steps)
        for mode in ("zerothink", "lessthink"):
            if f"{name}_{mode}" in gens:
                # R-TOFU scores the whole continuation: a think-end tag the model writes itself
                # after the closed trace is part of its answer, not a cut
                ans = [gens[f"{name}_{mode}"][i].strip() for i in range(len(recs))]
                res.put(set_key(name, f"{mode}_rouge"), M.rouge_l_recall(ans, answers_ref))


def compute_metrics(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    tags: ChatTags,
    data: EvalData,
    options: EvalConfig,
    *,
    reference: Mapping[str, Any] | str | None = None,
    max_length: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Every metric of the model on ``data``: ``{"aggregates", "per_item", "generations",
    "notes", "counts", "seconds"}``.

    ``reference`` is the retain model's metrics.json (forget truth ratios and MIA AUCs, for
    forget quality and privleak), ``"self"`` when this model is the retain model, or a string /
    None: forget quality and privleak are then null, the string (the reason) under ``notes``.
    """
    opt = options
    res = _Results(notes=dict(data.skipped))
    seconds: dict[str, float] = {}
    # 1. teacher-forced scores -> probabilities, truth ratios, memorisation, MIA
    t0 = time.perf_counter()
    scores = _score_all(model, tokenizer, tags, data, opt, max_length, progress)
    seconds["scoring"] = time.perf_counter() - t0
    _probability_metrics(res, scores, opt.mia_keep_eos)
    _mia_metrics(res, data, scores, progress, opt.mia_keep_eos)
    # 2. greedy generations -> ROUGE, fact recall, reasoning metrics
    t0 = time.perf_counter()
    gens = _generate_all(model, tokenizer, tags, data, opt, progress, res.notes)
    seconds["generation"] = time.perf_counter() - t0
    _generation_metrics(res, data, gens, tags)
    # 3. model utility, then forget quality and privleak against the retain model
    mu = MODEL_UTILITY.key
    try:
        res.put(mu, M.model_utility(res.agg))
    except ValueError as e:
        res.agg[mu], res.notes[mu] = None, str(e)
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
    fq, pl, tr = FORGET_QUALITY.key, PRIVLEAK.key, set_key("forget", "truth_ratio")
    ks = FORGET_KS_STAT.key
    if reference is None or isinstance(reference, str) and reference != "self":
        why = reference if isinstance(reference, str) else "no retain model to compare with"
        agg[fq] = agg[ks] = agg[pl] = None
        notes[fq] = notes[ks] = notes[pl] = why
        return
    ref_agg = agg if reference == "self" else reference["aggregates"]
    ref_tr = per_item[tr] if reference == "self" else reference["per_item"][tr]
    quality = M.forget_quality(per_item[tr], ref_tr)
    agg[fq], agg[ks] = quality["agg_value"], quality["ks_statistic"]
    agg[pl] = None
    for a in MIA_ATTACKS:
        auc, ref_auc = agg.get(mia_auc_key(a)), ref_agg.get(mia_auc_key(a))
        if auc is None or ref_auc is None:
            notes[pl] = notes.get("mia") or "the retain model's evaluation has no MIA AUC"
            continue
        value = M.privleak(auc, ref_auc)["agg_value"]
        agg[privleak_key(a)] = value
        if a == PRIVLEAK_ATTACK:
            agg[pl] = value
