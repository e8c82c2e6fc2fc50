"""Objectives: token statistics, the loss terms, their registry, the cached reference, the trainer."""
