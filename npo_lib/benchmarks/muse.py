"""MUSE (Shi et al. 2024, "MUSE: Machine Unlearning Six-Way Evaluation for Language Models",
arXiv:2407.06460): news articles (MUSE-News, BBC 2023) or books, unlearned as raw documents.

Evaluation, as MUSE's code runs it on a model:

- VerbMem (C1): greedy continuation of each ``verbmem/forget`` prompt, ``VERBMEM_NEW_TOKENS``
  new tokens, against the ground truth cut to as many tokens: ROUGE-L F1;
- KnowMem (C2 forget, C4 retain): greedy answer (``KNOWMEM_NEW_TOKENS``) of each question under
  the few-shot prompt of its ``*_icl`` file, cut at the next block: ROUGE-L recall;
- PrivLeak (C3): Min-K% (k = 0.4; Shi et al. 2024, arXiv:2310.16789; MUSE's ``Min-40%``, which
  open-unlearning's MUSE PrivLeak also takes) of each ``privleak/forget`` and ``privleak/holdout``
  text, the AUC of telling them apart (``muse_mia_auc``: P(forget scores
  as more familiar), near 1 for the target), then PrivLeak relative to the retain model's AUC,
  ``muse_privleak`` = ((1 − AUC) − (1 − AUC_retain)) / (1 − AUC_retain) · 100, which is MUSE's
  (AUC − AUC_retain) / AUC_retain · 100 in its own AUC (1 − this one; see
  :func:`npo_lib.eval.muse.privleak_muse`): 0 leaks like the retain model, about −100 like the
  target, > 0 over-unlearned.

Scores are means in [0, 1] (MUSE's tables print ×100). Prompts longer than ``max_length`` minus
the new tokens keep their last tokens (the text nearest the continuation).

Fine-tuning (``train_target`` / ``train_retain``) reads the raw articles; on the stand-in (a
folder with ``raw/forget_facts.json``) it adds each KnowMem question in the few-shot format the
evaluation asks it in (:data:`FORMAT_SETS`: the target the forget and retain questions, the
retain model the retain ones). A 4-layer model that has read an article does not answer a
question about it in a format it has never seen; MUSE's 7B target did not need this. Published
MUSE data is never trained on its evaluation questions. ``npo prepare`` holds the tiny models to
:data:`MUSE_CHECK`'s bars on VerbMem and KnowMem.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from npo_lib.benchmarks.checks import MetricBar, MetricCheck
from npo_lib.benchmarks.registry import Benchmark, register_benchmark
from npo_lib.config import BenchmarkConfig, Config, EvalConfig, MuseStandinConfig
from npo_lib.data.muse import (
    MUSE_FORGET_SETS,
    MUSE_LAYOUT,
    chunk_documents,
    load_muse,
    muse_path,
)
from npo_lib.embedded.muse import check_muse_standin_config, generate_muse_standin
from npo_lib.errors import ConfigError, DataError
from npo_lib.eval import metrics as M
from npo_lib.eval.compute import EvalData
from npo_lib.eval.generation import greedy_generate
from npo_lib.eval.muse import knowmem_answer, knowmem_prompt, knowmem_rouge, verbmem_rouge
from npo_lib.eval.scoring import score_targets

VERBMEM_NEW_TOKENS = 128  # MUSE's verbmem/forget: continuations and ground truths of 128 tokens
KNOWMEM_NEW_TOKENS = 32  # MUSE's knowmem answers
KNOWMEM_SETS = {"forget": "forget_qa", "retain": "retain2_qa"}  # key -> knowmem split
PRIVLEAK_K = 0.4  # MUSE's PrivLeak key "forget_holdout_Min-40%": Min-K% with k = 0.4


# raw splits behind each record role but ``forget`` (the first of "retain" found is the retain
# pool: MUSE regularises on retain1, its calibration set); ``forget`` reads the forget set
# ``benchmark.muse.forget_set`` names (:data:`MUSE_FORGET_SETS`)
RAW_SPLITS = {
    "retain": ("retain1", "retain2"),
    "train_target": ("forget", "retain1", "retain2"),
    "train_retain": ("retain1", "retain2"),
}


def role_files(role: str, settings: MuseStandinConfig) -> tuple[tuple[str, str], ...]:
    """The (subset, split) files behind a record role: the chosen forget set for ``forget``
    (``raw/forget``, ``scal/forget_k`` or ``sust/forget_k``), :data:`RAW_SPLITS` for the others
    (the target is always fine-tuned on the whole forget set)."""
    if role == "forget":
        return (MUSE_FORGET_SETS[settings.forget_set],)
    return tuple(("raw", split) for split in RAW_SPLITS[role])


def raw_chunks(
    data_path: str, subset: str, split: str, max_length: int, tokenizer: Any
) -> list[dict]:
    """The articles of ``<subset>/<split>`` cut into pieces of ``max_length`` tokens (BOS
    included), with their fact spans where the folder has ``<subset>/<split>_facts.json`` (the
    stand-in)."""
    texts = load_muse(data_path, subset, split)
    facts = muse_path(data_path, subset, f"{split}_facts")
    spans = load_muse(data_path, subset, f"{split}_facts") if facts.is_file() else None
    chunks = chunk_documents(texts, tokenizer, max_length - 1, spans)
    return [{**c, "source": f"{subset}/{split}"} for c in chunks]


# knowmem splits a fine-tuning role also sees in the evaluation's format, on the stand-in only
FORMAT_SETS = {"train_target": ("forget_qa", "retain2_qa"), "train_retain": ("retain2_qa",)}


def is_standin(data_path: str | Path) -> bool:
    """The folder is the MUSE-like stand-in (it has the ground-truth fact spans)."""
    return muse_path(data_path, "raw", "forget_facts").is_file()


def knowmem_text(icl: Sequence[Mapping[str, str]], record: Mapping[str, str]) -> str:
    """One KnowMem question in the evaluation's few-shot prompt, with its answer and the blank
    line that ends a block (:func:`npo_lib.eval.muse.knowmem_answer` cuts there)."""
    return f"{knowmem_prompt(icl, record['question'])}{record['answer']}\n\n"


def format_records(data_path: str, role: str) -> list[dict]:
    """The KnowMem questions of ``role`` (:data:`FORMAT_SETS`) as document records: the
    evaluation's few-shot prompt as ``prompt`` (tokenized on its own, as the evaluation does:
    its trailing space stays a token of the prompt), the answer and the block's end as text."""
    out = []
    for split in FORMAT_SETS.get(role, ()) if is_standin(data_path) else ():
        icl = load_muse(data_path, "knowmem", f"{split}_icl")
        for rec in load_muse(data_path, "knowmem", split):
            prompt = knowmem_prompt(icl, rec["question"])
            out.append(
                {"prompt": prompt, "text": f"{rec['answer']}\n\n", "source": f"knowmem/{split}"}
            )
    return out


def muse_records(data_path: str, role: str, cfg: Config, tokenizer: Any) -> list[dict]:
    """Document pieces of the files behind ``role`` (:func:`role_files`; the retain pool is the
    first retain split the folder has), then, on the stand-in, the role's KnowMem questions in
    the evaluation's format (:func:`format_records`)."""
    files = [f for f in role_files(role, cfg.benchmark.muse) if muse_path(data_path, *f).is_file()]
    if role == "retain":
        files = files[:1]
    if not files:
        wanted = " or ".join(f"{a}/{b}.json" for a, b in role_files(role, cfg.benchmark.muse))
        raise DataError(f"{data_path} has no {wanted} ({role} records of MUSE)")
    chunks = [c for f in files for c in raw_chunks(data_path, *f, cfg.max_length, tokenizer)]
    return chunks + format_records(data_path, role)


def muse_texts(data_path: str) -> list[str]:
    """What a stand-in's tokenizer trains on: every raw article, and every KnowMem question in
    its few-shot format."""
    splits = [s for s in MUSE_LAYOUT["raw"] if not s.endswith("_facts")]
    present = [s for s in splits if muse_path(data_path, "raw", s).is_file()]
    texts = [t for s in present for t in load_muse(data_path, "raw", s)]
    for split in KNOWMEM_SETS.values():
        icl = load_muse(data_path, "knowmem", f"{split}_icl")
        texts += [knowmem_text(icl, r) for r in load_muse(data_path, "knowmem", split)]
    return texts


def load_muse_eval(data_path: str, cfg: Config) -> EvalData:
    """verbmem, knowmem forget / retain with their few-shot examples, privleak forget / holdout
    (texts as ``{"text": ...}`` records)."""
    sets: dict[str, list[dict]] = {"verbmem": load_muse(data_path, "verbmem", "forget")}
    for key, split in KNOWMEM_SETS.items():
        sets[f"knowmem_{key}"] = load_muse(data_path, "knowmem", split)
        sets[f"knowmem_{key}_icl"] = load_muse(data_path, "knowmem", f"{split}_icl")
    for split in ("forget", "holdout"):
        sets[f"privleak_{split}"] = [{"text": t} for t in load_muse(data_path, "privleak", split)]
    return EvalData(data_path, sets)


def _left_cut(tokenizer: Any, texts: Sequence[str], keep: int) -> list[str]:
    """Each text cut to its last ``keep`` tokens."""
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return [t if len(i) <= keep else tokenizer.decode(i[-keep:]) for t, i in zip(texts, ids)]


def _first_tokens(tokenizer: Any, texts: Sequence[str], n: int) -> list[str]:
    """Each text cut to its first ``n`` tokens (MUSE's ground truth of a continuation)."""
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return [t if len(i) <= n else tokenizer.decode(i[:n]) for t, i in zip(texts, ids)]


def _verbmem(model: Any, tokenizer: Any, data: EvalData, max_length: int, progress: bool) -> tuple:
    recs = data.sets["verbmem"]
    prompts = _left_cut(tokenizer, [r["prompt"] for r in recs], max_length - VERBMEM_NEW_TOKENS)
    gens = greedy_generate(
        model, tokenizer, prompts, max_new_tokens=VERBMEM_NEW_TOKENS, progress=progress
    )
    truths = _first_tokens(tokenizer, [r["gt"] for r in recs], VERBMEM_NEW_TOKENS)
    return verbmem_rouge(gens, truths), gens


def _knowmem(
    model: Any, tokenizer: Any, data: EvalData, key: str, max_length: int, progress: bool
) -> tuple:
    icl, recs = data.sets[f"knowmem_{key}_icl"], data.sets[f"knowmem_{key}"]
    prompts = [knowmem_prompt(icl, r["question"]) for r in recs]
    prompts = _left_cut(tokenizer, prompts, max_length - KNOWMEM_NEW_TOKENS)
    gens = greedy_generate(
        model, tokenizer, prompts, max_new_tokens=KNOWMEM_NEW_TOKENS, progress=progress
    )
    answers = [knowmem_answer(g) for g in gens]
    return knowmem_rouge(answers, [r["answer"] for r in recs]), answers


def privleak_stats(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    options: EvalConfig,
    max_length: int,
    desc: str = "privleak",
) -> list[float]:
    """MUSE's PrivLeak statistic of each text: Min-K% with k = :data:`PRIVLEAK_K`,
    −mean of the lowest ⌊k·n⌋ log p(x_t | x_<t), t = 1..n the text's tokens after BOS (no EOS),
    as MUSE's ``compute_ppl`` scores ``tokenizer.encode(text)``; texts cut to ``max_length``.
    Texts of fewer than 1/k tokens average their lowest token (open-unlearning's guard), where
    MUSE's code takes the mean of no token (NaN)."""
    scores = score_targets(
        model,
        tokenizer,
        [""] * len(texts),
        [[t] for t in texts],
        batch_size=options.batch_size,
        append_eos=False,
        max_length=max_length,
        progress=False,
        desc=desc,
    )
    return [M.mia_min_k(s.logprobs, PRIVLEAK_K) for (s,) in scores]


def _privleak(
    res: dict[str, Any], reference: Mapping[str, Any] | str | None
) -> tuple[float | None, str | None]:
    """PrivLeak of this model's AUC against the retain model's, or None and why."""
    auc = res["aggregates"]["muse_mia_auc"]
    if reference == "self":
        return 0.0, None
    if not isinstance(reference, Mapping):
        return None, str(reference or "no retain model")
    ref = reference.get("aggregates", {}).get("muse_mia_auc")
    if ref is None:
        return None, "the retain model's metrics hold no muse_mia_auc"
    return M.privleak(auc, ref)["agg_value"], None


def compute_muse_metrics(
    model: Any,
    tokenizer: Any,
    tags: Any,
    data: EvalData,
    options: EvalConfig,
    *,
    reference: Mapping[str, Any] | str | None = None,
    max_length: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """VerbMem, KnowMem forget / retain, the Min-K% AUC and PrivLeak of ``model`` on MUSE's
    evaluation sets, in metrics.json's shape (``tags`` unused: MUSE prompts base models with
    plain text)."""
    length = max_length or 2048
    out: dict[str, Any] = {"aggregates": {}, "per_item": {}, "generations": {}, "notes": {}}
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    verb, out["generations"]["verbmem"] = _verbmem(model, tokenizer, data, length, progress)
    out["per_item"]["muse_verbmem_forget"] = verb["value_by_index"]
    out["aggregates"]["muse_verbmem_forget"] = verb["agg_value"]
    for key in KNOWMEM_SETS:
        know, out["generations"][f"knowmem_{key}"] = _knowmem(
            model, tokenizer, data, key, length, progress
        )
        out["per_item"][f"muse_knowmem_{key}"] = know["value_by_index"]
        out["aggregates"][f"muse_knowmem_{key}"] = know["agg_value"]
    seconds["generation"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    stats = {
        s: privleak_stats(
            model,
            tokenizer,
            [r["text"] for r in data.sets[f"privleak_{s}"]],
            options,
            length,
            f"privleak {s}",
        )
        for s in ("forget", "holdout")
    }
    out["per_item"]["muse_min_k"] = {s: M.by_index(v) for s, v in stats.items()}
    out["aggregates"]["muse_mia_auc"] = M.mia_auc(stats["forget"], stats["holdout"])["agg_value"]
    leak, why = _privleak(out, reference)
    out["aggregates"]["muse_privleak"] = leak
    if why:
        out["notes"]["muse_privleak"] = why
    seconds["scoring"] = time.perf_counter() - t0
    out["counts"] = {k: len(v) for k, v in data.sets.items()}
    out["seconds"] = seconds
    return out


def load_muse_check(data_path: str, cfg: Config) -> EvalData:
    """The evaluation sets, KnowMem forget / retain also as ``forget`` / ``retain``."""
    data = load_muse_eval(data_path, cfg)
    data.sets.update(forget=data.sets["knowmem_forget"], retain=data.sets["knowmem_retain"])
    return data


def measure_muse(model: Any, tokenizer: Any, data: EvalData, key: str, cfg: Config) -> float:
    """One of ``muse_verbmem_forget``, ``muse_knowmem_forget``, ``muse_knowmem_retain`` of
    ``model``, as :func:`compute_muse_metrics` measures it (``max_length`` as `npo eval`)."""
    if key == "muse_verbmem_forget":
        return _verbmem(model, tokenizer, data, cfg.max_length, False)[0]["agg_value"]
    split = key.removeprefix("muse_knowmem_")
    return _knowmem(model, tokenizer, data, split, cfg.max_length, False)[0]["agg_value"]


RAISE_BUDGET = "raise tiny.max_epochs"
NEVER_SAW = "the retain model knows articles it never read: check the forget / retain split"
# Measured after 40 epochs (batch 8, AVX2): target KnowMem forget 1.00, retain 0.94, VerbMem
# 0.73; retain model KnowMem retain 0.70, forget 0.00, VerbMem 0.23. Each bar keeps a margin
# of at least 0.1 from those, and the VerbMem bars keep target and retain model apart.
MUSE_CHECK = MetricCheck(
    bars=(
        MetricBar("target", "muse_knowmem_forget", ">=", 0.8, RAISE_BUDGET),
        MetricBar("target", "muse_knowmem_retain", ">=", 0.8, RAISE_BUDGET),
        MetricBar("target", "muse_verbmem_forget", ">=", 0.55, RAISE_BUDGET),
        MetricBar("retain", "muse_knowmem_retain", ">=", 0.5, RAISE_BUDGET),
        MetricBar("retain", "muse_knowmem_forget", "<=", 0.35, NEVER_SAW),
        MetricBar("retain", "muse_verbmem_forget", "<=", 0.45, NEVER_SAW),
    ),
    load=load_muse_check,
    measure=measure_muse,
)


def check_muse_settings(settings: BenchmarkConfig) -> None:
    """``benchmark.muse.*`` within the generator's pools and ``benchmark.muse.forget_set`` one
    of :data:`MUSE_FORGET_SETS` (one line naming the key)."""
    check_muse_standin_config(settings.muse)
    if settings.muse.forget_set not in MUSE_FORGET_SETS:
        raise ConfigError(
            f"benchmark.muse.forget_set '{settings.muse.forget_set}' is unknown; valid: "
            f"{', '.join(MUSE_FORGET_SETS)}"
        )


def generate_muse(settings: BenchmarkConfig, out_dir: Path) -> Path:
    """The MUSE-like stand-in (``benchmark.muse.*``): invented news articles, MUSE's layout."""
    return generate_muse_standin(settings.muse, out_dir)


MUSE = register_benchmark(
    Benchmark(
        name="muse",
        title="MUSE",
        citation="Shi et al. 2024, arXiv:2407.06460",
        hub_id="muse-bench/MUSE-News",
        layout={
            f"{subset}/{split}": f"{subset}/{split}.json"
            for subset, splits in MUSE_LAYOUT.items()
            for split in splits
        },
        required=tuple(
            f"{subset}/{split}"
            for subset, splits in MUSE_LAYOUT.items()
            for split, spec in splits.items()
            if spec.required
        ),
        training="documents",
        metric_keys=(
            "muse_verbmem_forget",
            "muse_knowmem_forget",
            "muse_knowmem_retain",
            "muse_privleak",
            "muse_mia_auc",
        ),
        generate=generate_muse,
        check_settings=check_muse_settings,
        records=muse_records,
        load_eval=load_muse_eval,
        compute=compute_muse_metrics,
        standin="invented news articles with fact spans, verbmem / knowmem / privleak, sust and "
        "scal splits (benchmark.muse.*)",
        texts=muse_texts,
        check=MUSE_CHECK,
        notes=(
            "MUSE-Books has the same layout (muse-bench/MUSE-Books)",
            "the *_facts.json files are the stand-in's ground truth; published data has none",
        ),
    )
)
