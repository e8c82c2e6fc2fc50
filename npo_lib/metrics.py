"""Evaluation metrics. Each returns ``{"agg_value": float, "value_by_index": {...}}`` so the
aggregate and the per-item values travel together (open-unlearning's convention)."""

from __future__ import annotations

import re
from collections.abc import Sequence


def _norm(s: str) -> str:
    return re.sub(r"\s+", " ", s).strip().casefold()


def fact_recall(texts: Sequence[str], facts: Sequence[str]) -> dict:
    """Share of ``texts`` that contain their ground-truth ``fact`` (case- and space-insensitive).

    On the embedded benchmark this is the clearest signal of what a tiny model knows: a greedy
    answer either states the fact value or it does not.
    """
    if len(texts) != len(facts):
        raise ValueError(f"fact_recall: {len(texts)} texts but {len(facts)} facts")
    hits = {i: float(_norm(f) in _norm(t)) for i, (t, f) in enumerate(zip(texts, facts, strict=True))}
    return {"agg_value": sum(hits.values()) / max(len(hits), 1), "value_by_index": hits}
