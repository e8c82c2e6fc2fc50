"""WMDP (Li et al. 2024, "The WMDP Benchmark: Measuring and Reducing Malicious Use with
Unlearning", arXiv:2403.03218): hazardous knowledge (bio, cyber) unlearned from forget corpora
of documents, measured by zero-shot multiple-choice accuracy, with MMLU (Hendrycks et al. 2021)
as the utility kept.

Accuracy comes from lm-evaluation-harness with its standard WMDP / MMLU prompt, through task
configs that read the folder's files (:mod:`npo_lib.eval.mcq`): nothing downloads. Lower WMDP
accuracy is better down to chance (0.25); higher MMLU accuracy is better.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from npo_lib.benchmarks.registry import Benchmark, register_benchmark
from npo_lib.config import BenchmarkConfig, Config, EvalConfig
from npo_lib.data.muse import chunk_documents
from npo_lib.embedded.wmdp import check_wmdp_standin_config, generate_wmdp_standin
from npo_lib.errors import DataError
from npo_lib.eval.compute import EvalData
from npo_lib.eval.mcq import UTILITY_TASK, McqFolder, load_corpus, load_mcq, mcq_accuracy

PUBLISHED_DOMAINS = ("bio", "cyber")


def fact_spans(path: Path, n_docs: int) -> list[list[list[int]]] | None:
    """Per document, the character spans of its facts, from a ``<domain>-forget-facts.json``
    (the stand-in's ground truth); None without one."""
    if not path.is_file():
        return None
    spans: list[list[list[int]]] = [[] for _ in range(n_docs)]
    for fact in json.loads(path.read_text())["facts"]:
        spans[fact["doc_id"]].extend(fact["spans"])
    return spans


def corpus_chunks(
    folder: McqFolder, domain: str, kind: str, max_length: int, tokenizer: Any
) -> list[dict]:
    """The ``<domain>-<kind>-corpus.jsonl`` documents cut into pieces of ``max_length`` tokens
    (BOS included), with fact spans where the folder has ``<domain>-<kind>-facts.json``."""
    path = folder.forget_corpus(domain) if kind == "forget" else folder.retain_corpus(domain)
    texts = [d["text"] for d in load_corpus(path)]
    spans = fact_spans(folder.root / f"{domain}-{kind}-facts.json", len(texts))
    chunks = chunk_documents(texts, tokenizer, max_length - 1, spans)
    return [{**c, "source": path.name} for c in chunks]


# corpora behind each record role
CORPORA = {
    "forget": ("forget",),
    "retain": ("retain",),
    "train_target": ("forget", "retain"),
    "train_retain": ("retain",),
}


def wmdp_records(data_path: str, role: str, cfg: Config, tokenizer: Any) -> list[dict]:
    """Document pieces of every domain's corpora behind ``role`` (:data:`CORPORA`)."""
    folder = McqFolder(Path(data_path).expanduser())
    out = []
    for domain in folder.domains():
        for kind in CORPORA[role]:
            out += corpus_chunks(folder, domain, kind, cfg.max_length, tokenizer)
    if not out:
        raise DataError(f"{data_path} has no corpus for the {role} records of WMDP")
    return out


def load_wmdp_eval(data_path: str, cfg: Config) -> EvalData:
    """Every MCQ file of the folder, by harness task name (``wmdp_<domain>``, ``mmlu``)."""
    tasks = McqFolder(Path(data_path).expanduser()).tasks()
    if not any(t != UTILITY_TASK for t in tasks):
        raise DataError(f"{data_path} holds no wmdp-<domain>.jsonl multiple-choice file")
    return EvalData(data_path, {task: load_mcq(path) for task, path in tasks.items()})


def compute_wmdp_metrics(
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
    """WMDP accuracy (mean over the domains present) and MMLU accuracy of ``model``, in
    metrics.json's shape; each task's accuracy, standard error and per-question correctness
    under ``tasks`` / ``per_item``. (``tags``, ``reference``: unused; the harness prompts the
    base model with plain text.)"""
    t0 = time.perf_counter()
    scored = mcq_accuracy(model, tokenizer, data.data_path, batch_size=options.batch_size)
    hazard = [r["acc"] for t, r in scored.items() if t != UTILITY_TASK]
    utility = scored.get(UTILITY_TASK, {}).get("acc")
    out: dict[str, Any] = {
        "aggregates": {"wmdp_acc": sum(hazard) / len(hazard), "mmlu_acc": utility},
        "per_item": {t: dict(enumerate(r["correct"])) for t, r in scored.items()},
        "tasks": {t: {k: r[k] for k in ("acc", "acc_stderr", "n")} for t, r in scored.items()},
        "generations": {},
        "notes": {} if utility is not None else {"mmlu_acc": "no mmlu.jsonl in the folder"},
        "counts": {t: r["n"] for t, r in scored.items()},
    }
    out["seconds"] = {"scoring": time.perf_counter() - t0}
    return out


def check_wmdp_settings(settings: BenchmarkConfig) -> None:
    """``benchmark.wmdp.*`` within the generator's pools (one line naming the key)."""
    check_wmdp_standin_config(settings.wmdp)


def generate_wmdp(settings: BenchmarkConfig, out_dir: Path) -> Path:
    """The WMDP-like stand-in (``benchmark.wmdp.*``): an invented, harmless domain."""
    return generate_wmdp_standin(settings.wmdp, out_dir)


def _layout() -> dict[str, str]:
    folder = McqFolder(Path("."))
    out = {"mmlu": folder.utility_file.name}
    for d in PUBLISHED_DOMAINS:
        out[f"wmdp-{d}"] = folder.mcq_file(d).name
        out[f"{d}-forget-corpus"] = folder.forget_corpus(d).name
        out[f"{d}-retain-corpus"] = folder.retain_corpus(d).name
    return out


WMDP = register_benchmark(
    Benchmark(
        name="wmdp",
        title="WMDP",
        citation="Li et al. 2024, arXiv:2403.03218; MMLU: Hendrycks et al. 2021",
        hub_id="cais/wmdp",
        layout=_layout(),
        required=(),  # any wmdp-<domain>.jsonl: load_wmdp_eval names what is missing
        training="documents",
        metric_keys=("wmdp_acc", "mmlu_acc"),
        generate=generate_wmdp,
        check_settings=check_wmdp_settings,
        records=wmdp_records,
        load_eval=load_wmdp_eval,
        compute=compute_wmdp_metrics,
        standin="an invented, harmless restricted domain (creature keeping) and a general one "
        "(islands), corpora, MCQ sets and fact spans (benchmark.wmdp.*)",
        notes=(
            "domains are the wmdp-<domain>.jsonl files present; the stand-in's is `creatures`",
            "needs lm_eval: pip install -e '.[benchmarks]'",
        ),
    )
)
