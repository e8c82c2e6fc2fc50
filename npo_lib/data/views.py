"""The training views: a record becomes a (prompt, target) string pair, then token ids.

| view | prompt | target | used by |
|---|---|---|---|
| full | U q A Ts | cot Te answer | GA1, NPO1, TNPO, INFLUENCE, FINETUNE |
| answer | U q A Ts cot Te | answer | GA2, NPO2 |
| cot | U q A Ts | cot | GA3, NPO3 |
| idk1 / idk2 / idk3 | U q A Ts / U q A Ts cot Te / U q A Ts | r Te r / r / idk_cot Te r | IDK1-3 |
| retain | U q' A Ts | cot' Te answer' | GD, KL |

U / A: the family's user and assistant tags, Ts / Te its think tags (R-TOFU, Yoon et al. 2025);
r an "I don't know" response. Labels are -100 (:data:`IGNORE_INDEX`) on the prompt.

A document record (``{"text": ...}``, no question: a piece of a MUSE article or a WMDP corpus
document) is plain causal-LM text in every view that ends in the answer (full, answer,
retain): the prompt is empty (the tokenizer's BOS alone) and the target is the text, with no EOS
appended (a piece of a longer text does not end there). A document record may carry a
``prompt`` (a benchmark's own question format, e.g. MUSE's few-shot KnowMem prompt): it is
tokenized on its own, as the evaluation tokenizes it, and not trained on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from npo_lib.errors import DataError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from npo_lib.models.families import ChatTags

IGNORE_INDEX = -100  # label of prompt and padding positions (HF cross-entropy convention)


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


DOCUMENT_VIEWS = frozenset(name for name, spec in VIEWS.items() if spec.target[-1] == "answer")


def is_document(record: Mapping[str, Any]) -> bool:
    """A document record: text to model as it is, without a question."""
    return "question" not in record and isinstance(record.get("text"), str)


def document_source(record: Mapping[str, Any]) -> dict[str, Any]:
    """Where a document piece comes from, shown in place of a question: its ``source`` (the
    benchmark file, e.g. ``raw/forget``), document index ``doc`` and first character ``start``."""
    return {k: record.get(k) for k in ("source", "doc", "start")}


def get_view(view: str) -> ViewSpec:
    try:
        return VIEWS[view]
    except KeyError:
        raise DataError(f"view '{view}' is unknown; valid: {', '.join(VIEWS)}") from None


def question_head(question: str) -> str:
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
    """(prompt, target) strings of ``record`` under ``view`` (the table at the top of this
    module).

    Think families: a record with an empty or missing ``cot`` gets an empty trace, so "full"
    is prompt ``U q A Ts`` and target ``Te answer``; the "cot" view then fails (nothing to
    learn). Other families: prompt ``U q A``, target the answer (or r for IDK views).
    ``idk_cot`` defaults to the record's own ``idk_cot`` field.
    """
    spec = get_view(view)
    if is_document(record):
        if view not in DOCUMENT_VIEWS:
            raise DataError(
                f"view '{view}' needs question-answer records; a document has only text "
                f"(document views: {', '.join(sorted(DOCUMENT_VIEWS))})"
            )
        return record.get("prompt") or "", record["text"]
    q = record.get("question")
    if not isinstance(q, str):
        raise DataError(
            f"view '{view}' needs a record with a question, got fields {', '.join(record)}"
        )
    head = _prompt_head(q, tags, tokenizer)
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
    _check_target_parts(view, q, target_parts, parts)
    prompt = head + "".join(parts[p] for p in prompt_parts)
    target = "".join(parts[p] for p in target_parts)
    return prompt, target


def _prompt_head(question: str, tags: ChatTags, tokenizer: PreTrainedTokenizerBase | None) -> str:
    """``U q A``: the family's tags around the question, or the tokenizer's chat template."""
    if not tags.use_tokenizer_template:
        return tags.user_start + question + tags.user_end + tags.assistant_start
    if tokenizer is None:
        raise DataError("tags.use_tokenizer_template needs the tokenizer: pass tokenizer=...")
    head = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )
    if not isinstance(head, str):
        raise DataError(
            f"apply_chat_template(tokenize=False) returned {type(head).__name__}, not str"
        )
    if tags.think_start:  # some templates (DeepSeek-R1's) already open the think block
        head = head.removesuffix(tags.think_start)
    return head


def _check_target_parts(
    view: str, question: str, target_parts: tuple[str, ...], parts: Mapping[str, Any]
) -> None:
    """Raise :class:`DataError` when a part the target needs is missing from the record."""
    if "answer" in target_parts and not isinstance(parts["answer"], str):
        raise DataError(
            f"view '{view}' needs an answer; question '{question_head(question)}' has none"
        )
    if "r" in target_parts and not parts["r"]:
        raise DataError(f"view '{view}' needs an IDK response: pass idk=...")
    if "idk_cot" in target_parts and not parts["idk_cot"]:
        raise DataError(
            f"view '{view}' needs a hedging trace (idk_cot) for question "
            f"'{question_head(question)}'"
        )
    if target_parts == ("cot",) and not parts["cot"]:
        raise DataError(
            f"view 'cot' needs a reasoning trace; question '{question_head(question)}' has none"
        )


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
    document = is_document(record)
    special = document or not tags.use_tokenizer_template  # a document starts at BOS
    prompt_ids = tokenizer(prompt, add_special_tokens=special)["input_ids"]
    if len(prompt_ids) >= max_length:
        raise DataError(
            f"prompt of question '{question_head(record.get('question', ''))}' has "
            f"{len(prompt_ids)} tokens, max_length={max_length} leaves no room for the target: "
            "raise max_length"
        )
    if tokenizer.eos_token_id is None:
        raise DataError("the tokenizer has no eos_token_id: targets end with EOS")
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(target, add_special_tokens=False, return_offsets_mapping=True)
        offsets = [tuple(o) for o in enc["offset_mapping"]]
    else:  # slow tokenizers give no offsets
        enc = tokenizer(target, add_special_tokens=False)
        offsets = []
    target_ids = [*enc["input_ids"], *([] if document else [tokenizer.eos_token_id])]
    if offsets and not document:
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
