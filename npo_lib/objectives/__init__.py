"""Objectives: token statistics, the loss terms, their registry and the cached reference."""
