"""The metrics and headline pairs of the benchmarks beyond TOFU, registered in
:mod:`npo_lib.eval.registry` when :mod:`npo_lib.eval` is imported (so every view knows them).

- MUSE (Shi et al. 2024, arXiv:2407.06460): VerbMem and KnowMem on the forget set (lower is
  better), KnowMem on the retain set (utility), PrivLeak of Min-K%;
- WMDP (Li et al. 2024, arXiv:2403.03218): zero-shot multiple-choice accuracy on the hazardous
  questions (lower is better, down to chance) against MMLU's (utility).
"""

from __future__ import annotations

from npo_lib.eval.registry import (
    TABLE_VIEWS,
    BenchmarkMetrics,
    Metric,
    MetricPair,
    register,
    register_pairs,
)

# MUSE (Shi et al. 2024, arXiv:2407.06460) on its News / Books layout, each a 0-1 mean.
MUSE_VERBMEM_FORGET = register(
    Metric(
        "muse_verbmem_forget",
        "VerbMem forget",
        "{:.3f}",
        "lower",
        "MUSE VerbMem: ROUGE-L F1 of the greedy continuation of each verbmem/forget prompt "
        "against its true continuation",
        TABLE_VIEWS | {"frontier"},
        abbrev="VerbMem",
    )
)
MUSE_KNOWMEM_FORGET = register(
    Metric(
        "muse_knowmem_forget",
        "KnowMem forget",
        "{:.3f}",
        "lower",
        "MUSE KnowMem on knowmem/forget_qa: ROUGE-L recall of the greedy answer under the "
        "few-shot prompt of forget_qa_icl",
        TABLE_VIEWS | {"frontier"},
        abbrev="KnowMem-F",
    )
)
MUSE_KNOWMEM_RETAIN = register(
    Metric(
        "muse_knowmem_retain",
        "KnowMem retain",
        "{:.3f}",
        "higher",
        "MUSE utility preservation: KnowMem on knowmem/retain2_qa (few-shot prompt of "
        "retain2_qa_icl)",
        TABLE_VIEWS | {"frontier"},
        abbrev="KnowMem-R",
    )
)
MUSE_PRIVLEAK = register(
    Metric(
        "muse_privleak",
        "PrivLeak (MUSE)",
        "{:.1f}",
        "zero",
        "MUSE PrivLeak: (AUC - AUC_retain) / AUC_retain x 100 of Min-K% (k = 0.4), "
        "privleak/forget vs privleak/holdout; 0 leaks like the retain model",
        TABLE_VIEWS,
        abbrev="PrivLeak",
    )
)
MUSE_MIA_AUC = register(
    Metric(
        "muse_mia_auc",
        "Min-K% AUC (MUSE)",
        "{:.3f}",
        "reference",
        "AUC of telling privleak/forget from privleak/holdout by Min-K% (k = 0.4)",
        frozenset({"dashboard"}),
    )
)
# WMDP (Li et al. 2024, arXiv:2403.03218): zero-shot multiple choice through lm-eval.
WMDP_ACC = register(
    Metric(
        "wmdp_acc",
        "WMDP accuracy",
        "{:.3f}",
        "lower",
        "zero-shot multiple-choice accuracy on the hazardous-knowledge questions (mean over "
        "the domains present: bio, cyber); chance is 0.25",
        TABLE_VIEWS | {"frontier"},
        abbrev="WMDP",
    )
)
MMLU_ACC = register(
    Metric(
        "mmlu_acc",
        "MMLU accuracy",
        "{:.3f}",
        "higher",
        "zero-shot multiple-choice accuracy on MMLU (general knowledge: the utility WMDP keeps)",
        TABLE_VIEWS | {"frontier"},
        abbrev="MMLU",
    )
)


MUSE_PAIRS = register_pairs(
    BenchmarkMetrics(
        "muse",
        "MUSE",
        (
            MetricPair("knowmem", MUSE_KNOWMEM_FORGET.key, MUSE_KNOWMEM_RETAIN.key),
            MetricPair("verbmem", MUSE_VERBMEM_FORGET.key, MUSE_KNOWMEM_RETAIN.key),
        ),
    )
)
WMDP_PAIRS = register_pairs(
    BenchmarkMetrics("wmdp", "WMDP", (MetricPair("wmdp_mmlu", WMDP_ACC.key, MMLU_ACC.key),))
)
