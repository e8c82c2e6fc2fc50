"""TOFU (Maini et al. 2024, arXiv:2401.06121) and R-TOFU (Yoon et al. 2025): fictitious-author
question answering, with reasoning traces in R-TOFU. The default benchmark.

The layout is TOFU's file names for the ``forget10`` split (``forget01`` / ``forget05`` and
their ``retain99`` / ``retain95`` twins for the others, R-TOFU's ``retain10`` sample and hedging
traces where present; :mod:`npo_lib.data.sources` reads them). The stand-in is the embedded
generator of :mod:`npo_lib.embedded.benchmark`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from npo_lib.benchmarks.registry import Benchmark, register_benchmark
from npo_lib.config import BenchmarkConfig, Config
from npo_lib.data.sources import load_eval_set, load_forget, load_retain, load_training_records
from npo_lib.embedded.benchmark import check_benchmark_config, generate_benchmark
from npo_lib.embedded.tokenizer import corpus_texts
from npo_lib.eval.compute import EvalData, compute_metrics, load_eval_sets


def tofu_records(data_path: str, role: str, cfg: Config, tokenizer: Any = None) -> list[dict]:
    """The split / task's forget records, the retain pool (TOFU's retain file, else the forget
    set's complement), and the fine-tuning data: every training record (target) or those whose
    question is not in the forget split / task (retain), then ``finetune.extra_sets``."""
    if role == "forget":
        return load_forget(data_path, cfg.split, cfg.task_id)
    if role == "retain":
        return load_retain(data_path, cfg.split, cfg.task_id)
    records = load_training_records(data_path)
    if role == "train_retain":
        forget_q = {r["question"] for r in load_forget(data_path, cfg.split, cfg.task_id)}
        records = [r for r in records if r["question"] not in forget_q]
    for name in cfg.finetune.extra_sets:
        records.extend(load_eval_set(data_path, name))
    return records


def load_tofu_eval(data_path: str, cfg: Config) -> EvalData:
    """The forget (``split`` / ``task_id``), retain, real-author, world-fact and holdout sets."""
    return load_eval_sets(data_path, cfg.split, cfg.task_id)


def generate_tofu_standin(settings: BenchmarkConfig, out_dir: Path) -> Path:
    """The fictitious-author benchmark in R-TOFU's layout, from ``benchmark.*``."""
    return generate_benchmark(settings, out_dir)


TOFU = register_benchmark(
    Benchmark(
        name="tofu",
        title="TOFU",
        citation="Maini et al. 2024, arXiv:2401.06121; R-TOFU: Yoon et al. 2025",
        hub_id="locuslab/TOFU",
        layout={
            "full": "full.json",
            "forget": "forget10.json",
            "forget_perturbed": "forget10_perturbed.json",
            "retain": "retain90.json",
            "retain_perturbed": "retain_perturbed.json",
            "real_authors": "real_authors_perturbed.json",
            "world_facts": "world_facts_perturbed.json",
            "holdout": "holdout10.json",
            "idk": "idontknow.jsonl",
            "idk_cot": "idkcot.jsonl",
        },
        required=(),  # data.sources names a missing file when a command needs it
        training="qa",
        metric_keys=(
            "forget_quality",
            "model_utility",
            "forget_fact_recall",
            "retain_fact_recall",
            "forget_rouge",
            "privleak",
        ),
        generate=generate_tofu_standin,
        check_settings=check_benchmark_config,
        records=tofu_records,
        load_eval=load_tofu_eval,
        compute=compute_metrics,
        standin="fictitious authors with ground-truth fact spans (benchmark.* settings)",
        texts=corpus_texts,
        notes=("forget01 / forget05 use their own forget, perturbed, retain and holdout files",),
    )
)
