"""Evaluation: metrics as pure functions, teacher-forced scoring, greedy generation, and every
metric of one model in memory."""
