"""The embedded benchmark's ground truth for token scores: which target tokens state the fact.

No public benchmark marks its fact tokens; the generated one does (``fact_spans``), so a token
score can be checked by its AUROC against the fact-token mask.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from npo_lib.data.views import get_view, is_document
from npo_lib.errors import ConfigError
from npo_lib.utils.stats import auc

if TYPE_CHECKING:
    from npo_lib.models.families import ChatTags


def fact_char_spans(record: Mapping[str, Any], view: str, tags: ChatTags) -> list[tuple[int, int]]:
    """Character spans of the record's fact in the target string of ``view`` (from ``fact_spans``).

    The target is the concatenation of the view's target parts (``cot``, ``Te``, ``answer``;
    the last part alone for families without think tags), as :func:`npo_lib.data.view_text`
    builds it; each part's spans move by the length of the parts before it.
    """
    if is_document(record):  # a document's spans are spans of its text, the whole target
        return [(int(s), int(e)) for s, e in record.get("fact_spans") or []]
    parts = get_view(view).target
    if not tags.thinks:
        parts = parts[-1:]
    texts = {
        "Ts": tags.think_start or "",
        "Te": tags.think_end or "",
        "cot": record.get("cot") or "",
        "answer": record.get("answer") or "",
    }
    spans, pos = [], 0
    for part in parts:
        for s, e in (record.get("fact_spans") or {}).get(part, []):
            spans.append((pos + s, pos + e))
        pos += len(texts.get(part) or "")
    return spans


def fact_token_mask(
    record: Mapping[str, Any], offsets: Sequence[Sequence[int]], view: str, tags: ChatTags
) -> list[bool]:
    """Per target token (its character ``offsets`` in the target): does it overlap the fact?"""
    spans = fact_char_spans(record, view, tags)
    return [any(a < e and s < b for s, e in spans) for a, b in offsets]


def fact_token_matrix(
    records: Sequence[Mapping[str, Any]],
    offsets: Sequence[Sequence[Sequence[int]]],
    view: str,
    tags: ChatTags,
    width: int,
) -> Tensor:
    """(N, width) bool: :func:`fact_token_mask` of every record, padded with False.

    The ``oracle`` selection reads it; records without ``fact_spans`` (no public benchmark has
    them) fail in one line instead of selecting nothing.
    """
    missing = [i for i, r in enumerate(records) if r.get("fact_spans") is None]
    if missing:
        raise ConfigError(
            f"selection.method=oracle needs fact_spans, which forget record {missing[0]} lacks "
            "(only the embedded benchmark marks its fact tokens)"
        )
    out = torch.zeros(len(records), width, dtype=torch.bool)
    for i, (rec, offs) in enumerate(zip(records, offsets, strict=True)):
        row = fact_token_mask(rec, offs, view, tags)[:width]
        out[i, : len(row)] = torch.tensor(row, dtype=torch.bool)
    return out


def auroc(scores: Sequence[float] | Tensor, labels: Sequence[bool] | Tensor) -> float:
    """AUROC of ``scores`` separating the tokens where ``labels`` is True (the fact tokens)."""
    s = torch.as_tensor(scores, dtype=torch.float64).flatten().numpy()
    y = torch.as_tensor(labels, dtype=torch.bool).flatten().numpy()
    return auc(s[y], s[~y])
