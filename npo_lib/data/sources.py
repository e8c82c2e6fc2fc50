"""Where records come from: a local folder in TOFU / R-TOFU layout or a hub dataset id.

Forget splits with tasks, the retain set as the forget set's complement, the evaluation sets
(perturbed answers for the truth ratio), the "I don't know" responses and R-TOFU's hedging
traces. A missing file is named with what the folder holds.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from npo_lib.data.records import QA_FIELDS, check_fields, read_idk_cot, read_lines, read_records
from npo_lib.errors import DataError

SPLIT_PATTERN = re.compile(r"forget(\d\d)")
KNOWN_SPLITS = ("forget01", "forget05", "forget10")
IDK_FILE = "idontknow.jsonl"  # plain-text lines of refusals ("I don't know" responses r)
IDK_COT_FILE = "idkcot.jsonl"  # JSON string per line: hedging trace of line i of IDK_COT_SOURCE
IDK_COT_SOURCE = "forget01"  # the forget file whose lines idkcot.jsonl follows (all tasks)

# Required fields of each evaluation set (truth ratio needs the paraphrased / perturbed answers).
EVAL_SETS: dict[str, tuple[str, ...]] = {
    "retain_perturbed": (*QA_FIELDS, "paraphrased_answer", "perturbed_answer"),
    "real_authors_perturbed": (*QA_FIELDS, "perturbed_answer"),
    "world_facts_perturbed": (*QA_FIELDS, "perturbed_answer"),
}
PERTURBED_FIELDS = EVAL_SETS["retain_perturbed"]  # forget<p>_perturbed has the same fields


def _local_dir(data_path: str) -> Path | None:
    """The folder ``data_path`` names, None for a hub id; a missing path-like folder fails."""
    p = Path(data_path).expanduser()
    if p.is_dir():
        return p
    if p.is_file():
        raise DataError(f"data_path must be a folder (or a hub dataset id), got the file {p}")
    if data_path.startswith(("/", ".", "~")) or data_path.count("/") > 1 or p.exists():
        raise DataError(f"data folder not found: {p}")
    return None


def _json_files(folder: Path) -> str:
    names = sorted(f.name for f in folder.iterdir() if f.suffix in (".json", ".jsonl"))
    return ", ".join(names) or "no .json files"


def _local_file(folder: Path, name: str) -> Path | None:
    for ext in (".json", ".jsonl"):
        if (folder / f"{name}{ext}").is_file():
            return folder / f"{name}{ext}"
    return None


def load_file(data_path: str, name: str, required: Sequence[str] = QA_FIELDS) -> list[dict]:
    """Records of the file stem ``name`` ("forget01", "retain_perturbed", ...) in ``data_path``.

    A local folder gives ``<folder>/<name>.json`` (or ``.jsonl``); anything else is read as a
    hub dataset id through ``datasets.load_dataset(data_path, name, split="train")``.
    """
    folder = _local_dir(data_path)
    if folder is not None:
        path = _local_file(folder, name)
        if path is None:
            raise DataError(
                f"data file not found: {folder / name}.json ({folder} holds: {_json_files(folder)})"
            )
        return read_records(path, required)
    try:
        from datasets import load_dataset

        rows = [dict(r) for r in load_dataset(data_path, name, split="train")]
    except Exception as e:  # network, unknown id or config: all mean "not loadable here"
        msg = str(e).splitlines()[0] if str(e) else ""
        raise DataError(
            f"could not load hub dataset '{data_path}' (config '{name}'): "
            f"{type(e).__name__}: {msg}. "
            "Without network access a hub dataset cannot be downloaded: pass "
            f"data_path=/local/folder holding {name}.json (JSON lines, R-TOFU layout)."
        ) from e
    return check_fields(enumerate(rows, 1), f"{data_path}:{name}", required, unit="row")


def _has_file(data_path: str, name: str) -> bool:
    folder = _local_dir(data_path)
    return folder is None or _local_file(folder, name) is not None  # hub: try it


def _check_split(split: str) -> int:
    """The forget percentage of a split name like "forget05"."""
    m = SPLIT_PATTERN.fullmatch(split)
    if m is None:
        raise DataError(f"split '{split}' is unknown; valid: {', '.join(KNOWN_SPLITS)}")
    return int(m.group(1))


def select_task(records: list[dict], task_id: int | None, where: str) -> list[dict]:
    """Records of one R-TOFU task (``task_id`` compared as a string); None keeps every task.

    Plain TOFU files carry no ``task_id``: the whole file is task 1 (``task_id`` None or 1).
    """
    if not any("task_id" in r for r in records):
        if task_id not in (None, 1):
            raise DataError(
                f"{where} has no task_id field (plain TOFU): use task_id=1 or null, got {task_id}"
            )
        return records
    if task_id is None:
        return records
    chosen = [r for r in records if str(r.get("task_id")) == str(task_id)]
    if not chosen:
        ids = sorted(
            {str(r["task_id"]) for r in records if "task_id" in r}, key=lambda s: (len(s), s)
        )
        raise DataError(
            f"{where} has no records with task_id {task_id}; available: {', '.join(ids)}"
        )
    return chosen


def load_forget(data_path: str, split: str, task_id: int | None) -> list[dict]:
    """Forget records: ``<split>.json`` restricted to ``task_id`` (None = every task)."""
    _check_split(split)
    return select_task(load_file(data_path, split), task_id, f"{data_path}/{split}")


def retain_names(split: str) -> list[str]:
    """Where the retain set comes from, first found: TOFU's ``full`` (the retain set is then the
    forget set's complement), its ``retain{100-p}`` (retain90 for forget10), the other
    ``retainNN`` files, R-TOFU's 10 % sample ``retain10``."""
    p = _check_split(split)
    return list(
        dict.fromkeys(
            ["full", f"retain{100 - p:02d}", "retain99", "retain95", "retain90", "retain10"]
        )
    )


def holdout_names(split: str) -> list[str]:
    """The membership-inference holdout, first found: TOFU's ``holdout{p}`` matched to the split
    (holdout10 for forget10), then a plain ``holdout``."""
    p = _check_split(split)
    return [f"holdout{p:02d}", "holdout"]


def load_first(
    data_path: str, names: Sequence[str], what: str, required: Sequence[str] = QA_FIELDS
) -> tuple[str, list[dict]]:
    """(name, records) of the first file of ``names`` that ``data_path`` has; a DataError naming
    every name tried (and what the folder holds) when none is there."""
    errors = []
    for name in dict.fromkeys(names):
        if not _has_file(data_path, name):
            continue
        try:
            return name, load_file(data_path, name, required)
        except DataError as e:
            if _local_dir(data_path) is not None:
                raise  # a local file that exists but is malformed
            errors.append(str(e))  # hub: that config may not exist, try the next one
    folder = _local_dir(data_path)
    held = f"; {folder} holds: {_json_files(folder)}" if folder is not None else ""
    detail = f" ({errors[-1]})" if errors else ""
    raise DataError(
        f"no {what} in {data_path}: looked for "
        f"{', '.join(n + '.json' for n in dict.fromkeys(names))}{held}{detail}"
    )


def load_retain(data_path: str, split: str, task_id: int | None) -> list[dict]:
    """Retain records: the complement of the forget set (``split`` and ``task_id``), from the
    first of :func:`retain_names`. A record whose question is in the forget set is always
    dropped, so the retain loss never reinforces what is being forgotten."""
    forget_q = {r["question"] for r in load_forget(data_path, split, task_id)}
    _, records = load_first(data_path, retain_names(split), "retain source")
    return [r for r in records if r["question"] not in forget_q]


def load_holdout(data_path: str, split: str) -> list[dict]:
    """Non-member records for membership inference (:func:`holdout_names`)."""
    return load_first(data_path, holdout_names(split), "holdout set")[1]


def training_names() -> list[str]:
    """The QA files that together are a benchmark's training data: ``full`` alone where it exists
    (TOFU, the embedded benchmark), else the union of the forget and retain files."""
    return [
        "full",
        *(f"forget{p:02d}" for p in (1, 5, 10)),
        *(f"retain{p:02d}" for p in (99, 95, 90, 10)),
    ]


def load_training_records(data_path: str) -> list[dict]:
    """Every QA record a model of this benchmark is fine-tuned on (the target's data): ``full``,
    else the union of the forget and retain files there are, deduplicated by question."""
    if _has_file(data_path, "full"):
        try:
            return load_file(data_path, "full")
        except DataError:
            if _local_dir(data_path) is not None:
                raise
    out: dict[str, dict] = {}
    found = []
    for name in training_names()[1:]:
        if not _has_file(data_path, name):
            continue
        try:
            records = load_file(data_path, name)
        except DataError:
            if _local_dir(data_path) is not None:
                raise
            continue
        found.append(name)
        for r in records:
            out.setdefault(r["question"], {k: v for k, v in r.items() if k != "task_id"})
    if not found:
        load_first(data_path, training_names(), "training data")  # raises, naming every file tried
    return list(out.values())


def load_perturbed(data_path: str, split: str, task_id: int | None) -> list[dict]:
    """``<split>_perturbed.json`` (truth-ratio evaluation of the forget set) for ``task_id``."""
    _check_split(split)
    name = f"{split}_perturbed"
    return select_task(load_file(data_path, name, PERTURBED_FIELDS), task_id, f"{data_path}/{name}")


def load_eval_set(data_path: str, name: str) -> list[dict]:
    """An evaluation set by name (retain_perturbed, real_authors_perturbed, ...), fields checked.

    R-TOFU's ``*_cot`` variants (e.g. real_authors_perturbed_cot) take their base set's fields.
    """
    base = name.removesuffix("_cot")  # R-TOFU's *_cot copies of the real-author / world-fact sets
    if base in EVAL_SETS:
        return load_file(data_path, name, EVAL_SETS[base])
    if re.fullmatch(r"forget\d\d_perturbed", name):
        return load_file(data_path, name, PERTURBED_FIELDS)
    raise DataError(
        f"evaluation set '{name}' is unknown; valid: {', '.join(EVAL_SETS)}, forget<pp>_perturbed"
    )


def load_idk(data_path: str) -> list[str]:
    """The "I don't know" responses r (idontknow.jsonl, plain text lines)."""
    folder = _local_dir(data_path)
    if folder is None:
        raise DataError(
            f"{IDK_FILE} is read from a local folder only; pass data_path=/local/folder"
        )
    if not (folder / IDK_FILE).is_file():
        raise DataError(
            f"data file not found: {folder / IDK_FILE} ({folder} holds: {_json_files(folder)})"
        )
    lines = read_lines(folder / IDK_FILE)
    if not lines:
        raise DataError(f"{folder / IDK_FILE} holds no responses")
    return lines


def load_idk_cot(data_path: str, records: Sequence[Mapping[str, Any]]) -> list[str | None]:
    """Hedging trace (idk_cot) of each record, None where unknown.

    A record's own ``idk_cot`` field wins (the synthetic benchmark). Otherwise line i of
    idkcot.jsonl is the trace of line i of forget01.json (all tasks): we map it by question.
    R-TOFU's code indexes idkcot by the position inside the selected task, which is right only
    for task 1; keying on the question keeps every task aligned.
    """
    out: list[str | None] = [r.get("idk_cot") or None for r in records]
    if all(t is not None for t in out):
        return out
    folder = _local_dir(data_path)
    source = _local_file(folder, IDK_COT_SOURCE) if folder is not None else None
    if folder is None or source is None or not (folder / IDK_COT_FILE).is_file():
        return out
    questions = [r["question"] for r in read_records(source)]
    traces = read_idk_cot(folder / IDK_COT_FILE)
    if len(questions) != len(traces):
        raise DataError(
            f"{folder / IDK_COT_FILE} has {len(traces)} lines but {source} has {len(questions)}: "
            "line i of the traces must belong to line i of the forget file"
        )
    by_question = {q: t for q, t in zip(questions, traces) if t.strip()}
    return [t if t is not None else by_question.get(r["question"]) for t, r in zip(out, records)]
