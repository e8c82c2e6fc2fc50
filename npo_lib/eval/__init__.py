"""Evaluation: metrics as pure functions, teacher-forced scoring, greedy generation, and every
metric of one model in memory."""

# the metrics and pairs of MUSE and WMDP join the registry wherever npo_lib.eval is imported
from npo_lib.eval import benchmark_metrics as benchmark_metrics  # noqa: E402
