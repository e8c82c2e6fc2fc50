"""The embedded tokenizer: byte-level BPE trained on the benchmark text (HF ``tokenizers``).

Byte-level, so any text (real R-TOFU records too) tokenizes without unknown tokens and decodes
back to the same string. Saved as a ``PreTrainedTokenizerFast`` with the tiny family's chat tags
as single tokens and a chat template, so ``AutoTokenizer.from_pretrained`` loads it like a hub one.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS = "<|pad|>", "<|bos|>", "<|eos|>"
CHAT_SPECIAL = ["<|user|>", "<|assistant|>"]
THINK_TOKENS = ["<think>", "</think>"]  # ordinary added tokens: they survive skip_special_tokens

# Same prompt as the tiny family's explicit ChatTags (tested to agree).
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'user' %}<|user|>{{ m['content'] }}"
    "{% elif m['role'] == 'assistant' %}<|assistant|>{{ m['content'] }}{{ eos_token }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def train_tokenizer(
    texts: Iterable[str], vocab_size: int = 1024, save_dir: str | Path | None = None
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``texts``; optionally ``save_pretrained`` it to ``save_dir``."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS, *CHAT_SPECIAL],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, bos_id)]
            ),
        ]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=CHAT_SPECIAL,
        clean_up_tokenization_spaces=False,
        model_max_length=4096,
    )
    fast.add_tokens(THINK_TOKENS)
    fast.chat_template = CHAT_TEMPLATE
    if save_dir is not None:
        fast.save_pretrained(str(save_dir))
    return fast


TEXT_FIELDS = ("question", "answer", "cot", "paraphrased_answer", "paraphrased_question", "idk_cot")


def corpus_texts(folder: str | Path) -> list[str]:
    """Every text of a data folder's ``*.json`` / ``*.jsonl`` files (its records' question, answer,
    traces, paraphrases and perturbed answers; plain-text lines as they are): what the tokenizer
    is trained on. ``meta.json`` is skipped."""
    texts: list[str] = []
    for f in sorted(Path(folder).glob("*.json*")):
        if f.name == "meta.json":
            continue
        for line in f.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                rec = line
            if isinstance(rec, str):
                texts.append(rec)
            elif isinstance(rec, dict):
                texts.extend(rec[k] for k in TEXT_FIELDS if isinstance(rec.get(k), str))
                texts.extend(rec.get("perturbed_answer") or [])
    return texts
