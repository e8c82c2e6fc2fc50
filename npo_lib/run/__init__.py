"""Runs: what the commands do, from a config to files another tool reads.

Config checks, run folders, fine-tuning and the embedded default, forget / influence /
evaluation runs, reports and the method study, and the notebook glue (steps, the pipeline,
sweeps, multi-rank launches).
"""
