"""MUSE's file layout (Shi et al. 2024, "MUSE: Machine Unlearning Six-Way Evaluation for Language
Models", arXiv:2407.06460): one declared table of subsets, splits and record kinds, a loader, and
the chunking that turns raw documents into causal-LM training pieces.

A MUSE folder (MUSE-News, MUSE-Books, or the embedded stand-in) holds one JSON list per split,
``<subset>/<split>.json``. ``raw`` holds the corpus (forget, retain1, retain2, holdout);
``verbmem`` the prompt / continuation pairs of verbatim memorisation (C1); ``knowmem`` the QA of
knowledge memorisation (C2, forget) and utility (C4, retain2) with their few-shot examples;
``privleak`` the texts of the membership attack (C3); ``scal`` nested forget sets (C5: forget_2
contains forget_1, ...) and ``sust`` pairwise disjoint ones (C6). The stand-in adds
``<split>_facts.json`` files: per document, the [start, end] character spans of its fact values.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from npo_lib.errors import DataError


@dataclass(frozen=True)
class MuseSplit:
    """One file of the layout: the kind of its records and whether evaluation needs it.

    Kinds: ``text`` (a list of strings), ``verbmem`` (objects with ``prompt`` and ``gt``), ``qa``
    (objects with ``question`` and ``answer``), ``spans`` (per document, a list of [start, end]).
    """

    kind: str
    required: bool


_TEXT, _FACTS = MuseSplit("text", False), MuseSplit("spans", False)
_FORGET_SETS = {f"forget_{k}": _TEXT for k in range(1, 5)}
_FORGET_FACTS = {f"forget_{k}_facts": _FACTS for k in range(1, 5)}

# subset -> split -> record kind. Required: what MUSE's four metrics and unlearning on the forget
# set read; the rest (retain / holdout corpora, scal, sust, fact spans) is used when present.
MUSE_LAYOUT: dict[str, dict[str, MuseSplit]] = {
    "raw": {
        "forget": MuseSplit("text", True),
        "retain1": _TEXT,
        "retain2": _TEXT,
        "holdout": _TEXT,
        "forget_facts": _FACTS,
        "retain1_facts": _FACTS,
        "retain2_facts": _FACTS,
        "holdout_facts": _FACTS,
    },
    "verbmem": {"forget": MuseSplit("verbmem", True)},
    "knowmem": {
        "forget_qa": MuseSplit("qa", True),
        "forget_qa_icl": MuseSplit("qa", True),
        "retain2_qa": MuseSplit("qa", True),
        "retain2_qa_icl": MuseSplit("qa", True),
    },
    "privleak": {
        "forget": MuseSplit("text", True),
        "holdout": MuseSplit("text", True),
        "retain2": MuseSplit("text", True),
    },
    "scal": {**_FORGET_SETS, **_FORGET_FACTS},
    "sust": {**_FORGET_SETS, **_FORGET_FACTS},
}
RECORD_FIELDS = {"verbmem": ("prompt", "gt"), "qa": ("question", "answer")}

# benchmark.muse.forget_set -> the (subset, split) a run unlearns: MUSE's full forget set, its
# scalability sets (scal_k: the first k quarters, nested) and its sustainability requests
# (sust_k: the k-th quarter, pairwise disjoint, unlearned one after another)
MUSE_FORGET_SETS: dict[str, tuple[str, str]] = {
    "forget": ("raw", "forget"),
    **{
        f"{subset}_{split.removeprefix('forget_')}": (subset, split)
        for subset in ("scal", "sust")
        for split in MUSE_LAYOUT[subset]
        if not split.endswith("_facts")
    },
}


def muse_path(folder: str | Path, subset: str, split: str) -> Path:
    """``folder/subset/split.json``, after checking that the layout declares subset and split."""
    if subset not in MUSE_LAYOUT:
        raise DataError(f"MUSE has no subset '{subset}'; valid: {', '.join(MUSE_LAYOUT)}")
    if split not in MUSE_LAYOUT[subset]:
        valid = ", ".join(MUSE_LAYOUT[subset])
        raise DataError(f"MUSE subset '{subset}' has no split '{split}'; valid: {valid}")
    return Path(folder) / subset / f"{split}.json"


def _holdings(folder: Path) -> str:
    """The JSON files under ``folder`` as ``subset/split.json``, for error messages."""
    if not folder.is_dir():
        return "the folder does not exist"
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*.json"))
    if not files:
        return "the folder holds no JSON file"
    shown = ", ".join(files[:12]) + (f" and {len(files) - 12} more" if len(files) > 12 else "")
    return f"the folder holds {shown}"


def _check_items(items: list[Any], kind: str, path: Path) -> list[Any]:
    """Every item has the shape of ``kind``; else a DataError naming the file and item."""
    for n, item in enumerate(items, 1):
        if kind == "text":
            ok, want = isinstance(item, str), "a string"
        elif kind == "spans":
            ok = isinstance(item, list) and all(
                isinstance(s, list) and len(s) == 2 and all(isinstance(v, int) for v in s)
                for s in item
            )
            want = "a list of [start, end] pairs"
        else:
            fields = RECORD_FIELDS[kind]
            ok = isinstance(item, dict) and all(isinstance(item.get(f), str) for f in fields)
            want = "an object with string fields " + ", ".join(fields)
        if not ok:
            raise DataError(f"{path}, record {n}: expected {want}, got {str(item)[:80]!r}")
    return items


def load_muse(folder: str | Path, subset: str, split: str) -> list[Any]:
    """The records of ``folder/subset/split.json``: strings for raw, privleak, scal and sust;
    dicts for verbmem (``prompt``, ``gt``) and knowmem (``question``, ``answer``); span lists for
    the ``*_facts`` files. A missing or malformed file is a one-line DataError."""
    folder = Path(folder)
    path = muse_path(folder, subset, split)
    if not path.is_file():
        raise DataError(f"MUSE file not found: {path} ({_holdings(folder)})")
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a JSON file ({e})".replace("\n", " ")) from None
    if not isinstance(items, list):
        raise DataError(f"{path}: expected one JSON list, got {type(items).__name__}")
    return _check_items(items, MUSE_LAYOUT[subset][split].kind, path)


def muse_layout_problems(folder: str | Path) -> list[str]:
    """One line per required file of :data:`MUSE_LAYOUT` that ``folder`` lacks (empty: usable)."""
    folder = Path(folder)
    return [
        f"missing {subset}/{split}.json"
        for subset, splits in MUSE_LAYOUT.items()
        for split, spec in splits.items()
        if spec.required and not (folder / subset / f"{split}.json").is_file()
    ]


# ----------------------------------------------------------------------------- chunking


def _token_starts(text: str, tokenizer: Any) -> list[int]:
    """Character offset at which each token of ``text`` starts (no special tokens)."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return [int(start) for start, _ in enc["offset_mapping"]]


def _n_tokens(text: str, tokenizer: Any) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def chunk_documents(
    texts: Sequence[str],
    tokenizer: Any,
    max_length: int,
    spans: Sequence[Sequence[Sequence[int]]] | None = None,
) -> list[dict[str, Any]]:
    """Split each document into consecutive chunks of at most ``max_length`` tokens.

    MUSE trains and unlearns on raw articles as causal-LM text cut into fixed-length token
    windows. A chunk here is an exact substring: chunks start where a token starts (the
    tokenizer's offset mapping, a fast tokenizer is needed) and the chunks of a document
    concatenate back to it. Each chunk is re-tokenized; a chunk whose tokens differ at the cut and
    exceed ``max_length`` is shortened by a token until it fits. Empty documents give no chunk.

    Returns records ``{"text", "doc", "start"}``: the chunk, its document's index and its first
    character in that document. With ``spans`` (per document, [start, end] character spans of
    its facts) each record also gets ``fact_spans``: the spans lying wholly inside the chunk,
    shifted to the chunk's characters; a span cut by a chunk boundary belongs to no chunk.
    """
    if max_length < 1:
        raise ValueError(f"chunk_documents: max_length must be >= 1, got {max_length}")
    if spans is not None and len(spans) != len(texts):
        raise ValueError(f"chunk_documents: {len(texts)} documents but {len(spans)} span lists")
    out: list[dict[str, Any]] = []
    for doc, text in enumerate(texts):
        starts = _token_starts(text, tokenizer)
        bounds = [0, *starts[1:], len(text)]  # chunk i covers bounds[a]..bounds[b]
        a = 0
        while a < len(starts):
            b = min(a + max_length, len(starts))
            while b > a + 1 and _n_tokens(text[bounds[a] : bounds[b]], tokenizer) > max_length:
                b -= 1
            lo, hi = bounds[a], bounds[b]
            rec: dict[str, Any] = {"text": text[lo:hi], "doc": doc, "start": lo}
            if spans is not None:
                rec["fact_spans"] = [
                    [int(s) - lo, int(e) - lo] for s, e in spans[doc] if lo <= s and e <= hi
                ]
            out.append(rec)
            a = b
    return out
