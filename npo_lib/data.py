"""TOFU / R-TOFU records, the training views of reference.md section 1, and their batching.

Three layers, each usable alone:

1. Readers and sources: JSON-lines files from a local folder (R-TOFU layout) or a hub dataset
   id, with errors that name the file, line and field.
2. Views: a record becomes a (prompt, target) string pair (:func:`view_text`) and then token ids
   with the prompt masked out of the labels (:func:`encode_view`).
3. Batching: :class:`UnlearningDataset` pairs every forget record with its views, a seeded
   retain record and a seeded "I don't know" response; :class:`ViewCollator` pads each view.

No model is loaded here.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import Dataset

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from npo_lib.families import ChatTags

IGNORE_INDEX = -100  # label of prompt and padding positions (HF cross-entropy convention)
SPLIT_PATTERN = re.compile(r"forget(\d\d)")
KNOWN_SPLITS = ("forget01", "forget05", "forget10")
QA_FIELDS = ("question", "answer")
IDK_FILE = "idontknow.jsonl"  # plain-text lines of refusals ("I don't know" responses r)
IDK_COT_FILE = "idkcot.jsonl"  # JSON string per line: hedging trace of line i of IDK_COT_SOURCE
IDK_COT_SOURCE = "forget01"  # the forget file whose lines idkcot.jsonl follows (all tasks)

# Required fields of each evaluation set (truth ratio needs the paraphrased / perturbed answers).
EVAL_SETS: dict[str, tuple[str, ...]] = {
    "retain_perturbed": (*QA_FIELDS, "paraphrased_answer", "perturbed_answer"),
    "real_authors_perturbed": (*QA_FIELDS, "perturbed_answer"),
    "world_facts_perturbed": (*QA_FIELDS, "perturbed_answer"),
    "holdout": QA_FIELDS,
}
PERTURBED_FIELDS = EVAL_SETS["retain_perturbed"]  # forget<p>_perturbed has the same fields


class DataError(ValueError):
    """A data file or record is missing or malformed, or a view cannot be built from it."""


# ----------------------------------------------------------------------------- readers


def _lines(path: Path) -> list[str]:
    """Lines split on '\\n' only (``splitlines`` would also split on U+2028 inside text)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"data file not found: {path}") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    while lines and not lines[-1].strip():  # trailing newline(s)
        lines.pop()
    return lines


def _check_fields(
    records: Iterable[tuple[int, Any]], where: str, required: Sequence[str], unit: str = "line"
) -> list[dict]:
    """Every item is an object holding every required field (not None); else a DataError."""
    out = []
    for n, rec in records:
        if not isinstance(rec, dict):
            raise DataError(
                f"{where}, {unit} {n}: expected a JSON object, got {type(rec).__name__}"
            )
        for field in required:
            if rec.get(field) is None:
                raise DataError(
                    f"{where}, {unit} {n}: record has no field '{field}' "
                    f"(it has: {', '.join(rec) or 'nothing'})"
                )
        out.append(rec)
    return out


def read_records(path: str | Path, required: Sequence[str] = QA_FIELDS) -> list[dict]:
    """Records of a JSON-lines file (one object per line) or of a file holding one JSON array.

    Blank lines are skipped; line numbers in errors are 1-based lines of the file (for a JSON
    array, the 1-based position of the record).
    """
    path = Path(path)
    lines = _lines(path)
    first = next((line for line in lines if line.strip()), "")
    if first.lstrip().startswith("["):
        try:
            items = json.loads("\n".join(lines))
        except json.JSONDecodeError:
            items = None  # not one array: report the bad line below
        if isinstance(items, list):
            return _check_fields(enumerate(items, 1), str(path), required, unit="record")
    parsed = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            parsed.append((n, json.loads(line)))
        except json.JSONDecodeError as e:
            raise DataError(
                f"{path}, line {n}: not valid JSON ({e.msg} at column {e.colno})"
            ) from None
    return _check_fields(parsed, str(path), required)


def read_lines(path: str | Path) -> list[str]:
    """Stripped non-blank lines of a text file (idontknow.jsonl); JSON-string lines are decoded."""
    out = []
    for line in _lines(Path(path)):
        text = line.strip()
        if text.startswith('"'):
            try:
                decoded = json.loads(text)
            except json.JSONDecodeError:
                decoded = None
            if isinstance(decoded, str):
                text = decoded.strip()
        if text:
            out.append(text)
    return out


def read_idk_cot(path: str | Path) -> list[str]:
    """One trace per line (idkcot.jsonl): a JSON string, or the raw line when it is not JSON.

    Positions are kept (a blank line gives ""), because line i belongs to line i of forget01.
    """
    out = []
    for line in _lines(Path(path)):
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            value = line
        out.append(value if isinstance(value, str) else line)
    return out


# ----------------------------------------------------------------------------- sources


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
            f"could not load hub dataset '{data_path}' (config '{name}'): {type(e).__name__}: {msg}. "
            "Without network access a hub dataset cannot be downloaded: pass "
            f"data_path=/local/folder holding {name}.json (JSON lines, R-TOFU layout)."
        ) from e
    return _check_fields(enumerate(rows, 1), f"{data_path}:{name}", required, unit="row")


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


def load_retain(data_path: str, split: str, task_id: int | None) -> list[dict]:
    """Retain records: the complement of the forget set (``split`` and ``task_id``).

    Source, first found: ``full.json`` (TOFU's 4000 records; the synthetic benchmark);
    ``retain{100-p}.json`` (TOFU's retain90 for forget10); ``retain10.json`` (R-TOFU ships a
    10 % retain sample only). In every case a record whose question is in the forget set is
    dropped, so the retain loss never reinforces what is being forgotten.
    """
    p = _check_split(split)
    forget_q = {r["question"] for r in load_forget(data_path, split, task_id)}
    candidates = ["full", f"retain{100 - p:02d}", "retain10"]
    errors = []
    for name in dict.fromkeys(candidates):
        if not _has_file(data_path, name):
            continue
        try:
            records = load_file(data_path, name)
        except DataError as e:
            if _local_dir(data_path) is not None:
                raise  # a local file that exists but is malformed
            errors.append(str(e))  # hub: that config may not exist, try the next one
            continue
        return [r for r in records if r["question"] not in forget_q]
    folder = _local_dir(data_path)
    held = f"; {folder} holds: {_json_files(folder)}" if folder is not None else ""
    detail = f" ({errors[-1]})" if errors else ""
    raise DataError(
        f"no retain source in {data_path}: looked for {', '.join(c + '.json' for c in candidates)}{held}{detail}"
    )


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


# ----------------------------------------------------------------------------- views


@dataclass(frozen=True)
class ViewSpec:
    """One row of the view table: parts after ``U q A`` in the prompt, and the target parts.

    Parts: "Ts"/"Te" think tags, "cot" the record's trace, "answer", "r" the IDK response,
    "idk_cot" the hedging trace. Families without think tags keep only the final part of the
    target (answer or r); a target ending in "cot" has no such form.
    """

    prompt: tuple[str, ...]
    target: tuple[str, ...]
    used_by: str = ""


VIEWS: dict[str, ViewSpec] = {
    "full": ViewSpec(("Ts",), ("cot", "Te", "answer"), "GA1, NPO1, TNPO, INFLUENCE, FINETUNE"),
    "answer": ViewSpec(("Ts", "cot", "Te"), ("answer",), "GA2, NPO2"),
    "cot": ViewSpec(("Ts",), ("cot",), "GA3, NPO3"),
    "idk1": ViewSpec(("Ts",), ("r", "Te", "r"), "IDK1"),
    "idk2": ViewSpec(("Ts", "cot", "Te"), ("r",), "IDK2"),
    "idk3": ViewSpec(("Ts",), ("idk_cot", "Te", "r"), "IDK3"),
    "retain": ViewSpec(("Ts",), ("cot", "Te", "answer"), "GD, KL (on a retain record)"),
}
IDK_VIEWS = frozenset(name for name, spec in VIEWS.items() if "r" in spec.target)


def get_view(view: str) -> ViewSpec:
    try:
        return VIEWS[view]
    except KeyError:
        raise DataError(f"view '{view}' is unknown; valid: {', '.join(VIEWS)}") from None


def _question_head(question: str) -> str:
    q = " ".join(question.split())
    return q[:60] + ("..." if len(q) > 60 else "")


def view_text(
    record: Mapping[str, Any],
    view: str,
    tags: ChatTags,
    *,
    idk: str | None = None,
    idk_cot: str | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> tuple[str, str]:
    """(prompt, target) strings of ``record`` under ``view`` (reference.md section 1).

    Think families: a record with an empty or missing ``cot`` gets an empty trace, so "full"
    is prompt ``U q A Ts`` and target ``Te answer``; the "cot" view then fails (nothing to
    learn). Other families: prompt ``U q A``, target the answer (or r for IDK views).
    ``idk_cot`` defaults to the record's own ``idk_cot`` field.
    """
    spec = get_view(view)
    q = record.get("question")
    if not isinstance(q, str):
        raise DataError(
            f"view '{view}' needs a record with a question, got fields {', '.join(record)}"
        )
    if tags.use_tokenizer_template:
        if tokenizer is None:
            raise DataError("tags.use_tokenizer_template needs the tokenizer: pass tokenizer=...")
        head = tokenizer.apply_chat_template(
            [{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True
        )
        if not isinstance(head, str):
            raise DataError(
                f"apply_chat_template(tokenize=False) returned {type(head).__name__}, not str"
            )
        if tags.think_start:  # some templates (DeepSeek-R1's) already open the think block
            head = head.removesuffix(tags.think_start)
    else:
        head = tags.user_start + q + tags.user_end + tags.assistant_start
    idk_cot = idk_cot if idk_cot is not None else record.get("idk_cot")
    parts = {
        "Ts": tags.think_start or "",
        "Te": tags.think_end or "",
        "cot": record.get("cot") or "",
        "answer": record.get("answer"),
        "r": idk,
        "idk_cot": idk_cot,
    }
    target_parts = spec.target
    prompt_parts = spec.prompt
    if not tags.thinks:
        if target_parts[-1] not in ("answer", "r"):
            raise DataError(
                f"view '{view}' needs think tags; this family has none (answer-only targets)"
            )
        target_parts, prompt_parts = target_parts[-1:], ()
    if "answer" in target_parts and not isinstance(parts["answer"], str):
        raise DataError(f"view '{view}' needs an answer; question '{_question_head(q)}' has none")
    if "r" in target_parts and not idk:
        raise DataError(f"view '{view}' needs an IDK response: pass idk=...")
    if "idk_cot" in target_parts and not idk_cot:
        raise DataError(
            f"view '{view}' needs a hedging trace (idk_cot) for question '{_question_head(q)}'"
        )
    if target_parts == ("cot",) and not parts["cot"]:
        raise DataError(
            f"view 'cot' needs a reasoning trace; question '{_question_head(q)}' has none"
        )
    prompt = head + "".join(parts[p] for p in prompt_parts)
    target = "".join(parts[p] for p in target_parts)
    return prompt, target


def encode_view(
    record: Mapping[str, Any],
    view: str,
    tokenizer: PreTrainedTokenizerBase,
    tags: ChatTags,
    max_length: int,
    *,
    idk: str | None = None,
    idk_cot: str | None = None,
) -> dict[str, Any]:
    """Token ids of one view: ``input_ids``, ``labels`` (-100 on the prompt), ``prompt_len``,
    ``target_offsets`` (char span of each target token in the target string; EOS gets an empty
    span at the end).

    Prompt and target are tokenized separately, so each decodes back to its own string. The
    prompt takes the tokenizer's special tokens (its BOS) unless it came from a chat template,
    which already holds them; the target gets EOS appended (the model must learn to stop).
    Over ``max_length`` the target is cut on the right; a prompt that fills it fails.
    """
    prompt, target = view_text(record, view, tags, idk=idk, idk_cot=idk_cot, tokenizer=tokenizer)
    prompt_ids = tokenizer(prompt, add_special_tokens=not tags.use_tokenizer_template)["input_ids"]
    if len(prompt_ids) >= max_length:
        raise DataError(
            f"prompt of question '{_question_head(record['question'])}' has {len(prompt_ids)} tokens, "
            f"max_length={max_length} leaves no room for the target: raise max_length"
        )
    if tokenizer.eos_token_id is None:
        raise DataError("the tokenizer has no eos_token_id: targets end with EOS")
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(target, add_special_tokens=False, return_offsets_mapping=True)
        offsets = [tuple(o) for o in enc["offset_mapping"]]
    else:  # slow tokenizers give no offsets
        enc = tokenizer(target, add_special_tokens=False)
        offsets = []
    target_ids = [*enc["input_ids"], tokenizer.eos_token_id]
    if offsets:
        offsets.append((len(target), len(target)))
    keep = max_length - len(prompt_ids)
    target_ids, offsets = target_ids[:keep], offsets[:keep]
    return {
        "input_ids": prompt_ids + target_ids,
        "labels": [IGNORE_INDEX] * len(prompt_ids) + target_ids,
        "prompt_len": len(prompt_ids),
        "target_offsets": offsets,
    }


def encode_records(
    records: Sequence[Mapping[str, Any]],
    view: str,
    tokenizer: PreTrainedTokenizerBase,
    tags: ChatTags,
    max_length: int,
    *,
    idk: str | None = None,
) -> list[dict[str, Any]]:
    """Encoded ``view`` of every record: plain fine-tuning examples (pad with ViewCollator)."""
    return [encode_view(r, view, tokenizer, tags, max_length, idk=idk) for r in records]


# ----------------------------------------------------------------------------- dataset


class UnlearningDataset(Dataset):
    """Forget records with their views, a paired retain record and an IDK response.

    Item i: ``{"index": i, <view>: encoded view of forget record i for each of ``views``,
    "retain": encoded retain view of its paired retain record}`` (retain only when
    ``with_retain``). The IDK response of each forget record is drawn once from an RNG seeded
    by ``seed``; the retain pairing is drawn anew for every epoch (:meth:`set_epoch`) from a
    separate stream seeded by ``seed`` and the epoch, so GD / KL see many retain records over a
    run (as TOFU's random retain index does) and a resumed run sees the same pairs.
    """

    def __init__(
        self,
        forget: Sequence[Mapping[str, Any]],
        tokenizer: PreTrainedTokenizerBase,
        tags: ChatTags,
        *,
        retain: Sequence[Mapping[str, Any]] | None = None,
        views: Sequence[str] = ("full",),
        with_retain: bool = False,
        max_length: int = 512,
        seed: int = 0,
        idk: Sequence[str] | None = None,
        idk_cot: Sequence[str | None] | None = None,
    ) -> None:
        views = tuple(views)
        for v in views:
            get_view(v)
        if not views:
            raise DataError("views is empty: name at least one forget view, e.g. ('full',)")
        if not forget:
            raise DataError("no forget records")
        if with_retain and not retain:
            raise DataError("with_retain=True needs retain records")
        if idk_cot is not None and len(idk_cot) != len(forget):
            raise DataError(f"idk_cot has {len(idk_cot)} entries for {len(forget)} forget records")
        self.forget = list(forget)
        self.retain = list(retain or [])
        self.views = views
        self.with_retain = with_retain
        self.seed = seed

        need_idk = any(v in IDK_VIEWS for v in views)
        if need_idk and not idk:
            raise DataError(
                f"views {', '.join(v for v in views if v in IDK_VIEWS)} need IDK responses: pass idk=load_idk(...)"
            )
        idk_rng = random.Random(f"idk:{seed}")
        self.idk_responses: list[str | None] = [
            idk[idk_rng.randrange(len(idk))] if need_idk else None for _ in self.forget
        ]
        self._encode_retain = lambda j: encode_view(self.retain[j], "retain", tokenizer, tags, max_length)
        self._retain_cache: dict[int, dict[str, Any]] = {}
        self.retain_index: list[int] = []
        self.set_epoch(0)

        def encode(rec: Mapping[str, Any], view: str, **kw: Any) -> dict[str, Any]:
            return encode_view(rec, view, tokenizer, tags, max_length, **kw)

        traces = list(idk_cot) if idk_cot is not None else [None] * len(self.forget)
        self._items: list[dict[str, Any]] = []
        for i, rec in enumerate(self.forget):
            item: dict[str, Any] = {"index": i}
            for v in views:
                item[v] = encode(rec, v, idk=self.idk_responses[i], idk_cot=traces[i])
            self._items.append(item)

    @classmethod
    def from_files(
        cls,
        data_path: str,
        split: str,
        task_id: int | None,
        tokenizer: PreTrainedTokenizerBase,
        tags: ChatTags,
        *,
        views: Sequence[str] = ("full",),
        with_retain: bool = False,
        max_length: int = 512,
        seed: int = 0,
    ) -> UnlearningDataset:
        """Load what ``views`` and ``with_retain`` need from ``data_path`` and build the dataset."""
        forget = load_forget(data_path, split, task_id)
        return cls(
            forget,
            tokenizer,
            tags,
            retain=load_retain(data_path, split, task_id) if with_retain else None,
            views=views,
            with_retain=with_retain,
            max_length=max_length,
            seed=seed,
            idk=load_idk(data_path) if IDK_VIEWS.intersection(views) else None,
            idk_cot=load_idk_cot(data_path, forget) if "idk3" in views else None,
        )

    def __len__(self) -> int:
        return len(self._items)

    def set_epoch(self, epoch: int) -> None:
        """Draw the retain record paired with each forget record for ``epoch`` (deterministic)."""
        if not self.with_retain:
            return
        rng = random.Random(f"retain:{self.seed}" if epoch == 0 else f"retain:{self.seed}:{epoch}")
        self.retain_index = [rng.randrange(len(self.retain)) for _ in self.forget]

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self._items[i]
        if not self.with_retain:
            return item
        j = self.retain_index[i]
        if j not in self._retain_cache:
            self._retain_cache[j] = self._encode_retain(j)
        return {**item, "retain": self._retain_cache[j]}


@dataclass
class ViewCollator:
    """Right-pads each view of a batch separately: input_ids, attention_mask, labels (-100 on pad).

    Features from :class:`UnlearningDataset` give ``{"index": [B], <view>: {...}, ...}``;
    plain examples (a feature with ``input_ids`` itself, as in HF Trainer fine-tuning) give
    the flat padded dict. Other per-example keys (prompt_len, target_offsets) are dropped.
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.pad_token_id, int):
            raise DataError(f"pad_token_id must be an int, got {self.pad_token_id!r}")

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        if not features:
            raise DataError("empty batch")
        if "input_ids" in features[0]:
            return self.pad(features)
        out: dict[str, Any] = {
            "index": torch.tensor([f["index"] for f in features], dtype=torch.long)
        }
        for key, value in features[0].items():
            if isinstance(value, Mapping) and "input_ids" in value:
                out[key] = self.pad([f[key] for f in features])
        return out

    def pad(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        """[B, T] tensors, T the longest example rounded up to ``pad_to_multiple_of``."""
        T = max(len(e["input_ids"]) for e in examples)
        if self.pad_to_multiple_of:
            T = -(-T // self.pad_to_multiple_of) * self.pad_to_multiple_of
        B = len(examples)
        input_ids = torch.full((B, T), self.pad_token_id, dtype=torch.long)  # (B, T)
        labels = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)  # (B, T)
        attention_mask = torch.zeros((B, T), dtype=torch.long)  # (B, T)
        for b, e in enumerate(examples):
            n = len(e["input_ids"])
            input_ids[b, :n] = torch.as_tensor(e["input_ids"], dtype=torch.long)
            labels[b, :n] = torch.as_tensor(e.get("labels", e["input_ids"]), dtype=torch.long)
            attention_mask[b, :n] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
