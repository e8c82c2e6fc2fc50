"""Model families: hub id, chat and think tags, attention and memory preferences.

A family is what ``model_family`` names. ``model_path`` overrides the hub id
with a local folder; the embedded ``tiny`` family has no hub id (``npo prepare`` makes it).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from npo_lib.errors import ConfigError


@dataclass(frozen=True)
class ChatTags:
    """Prompt = user_start + question + user_end + assistant_start (+ think_start).

    Think families (R-TOFU) train on ``cot + think_end + answer``; the others on the answer alone.
    With ``use_tokenizer_template`` the user/assistant part comes from the tokenizer's own chat
    template (``apply_chat_template(..., add_generation_prompt=True)``) instead.
    """

    user_start: str
    user_end: str
    assistant_start: str
    think_start: str | None = None
    think_end: str | None = None
    use_tokenizer_template: bool = False

    @property
    def thinks(self) -> bool:
        return self.think_start is not None and self.think_end is not None

    def split_trace(self, text: str, *, closed: bool = False) -> tuple[str, str]:
        """(trace, answer) of a generated continuation: the answer follows the think-end tag.

        Without think tags the whole text is the answer. ``closed``: the prompt already ended
        the trace (ZeroThink / LessThink), so a text without the tag is all answer; otherwise a
        trace that never closes has no answer (a fact inside an unfinished trace is not counted).
        """
        if not self.thinks:
            return "", text.strip()
        end = self.think_end.strip()
        if end in text:
            trace, answer = text.split(end, 1)
            return trace.strip(), answer.strip()
        return ("", text.strip()) if closed else (text.strip(), "")


R1_TAGS = ChatTags("<｜User｜>", "", "<｜Assistant｜>", "<think>\n", "\n</think>\n\n")


@dataclass(frozen=True)
class ModelFamily:
    """What a researcher means by a ``model_family`` name."""

    name: str
    hub_id: str | None  # None: local only (the embedded tiny model)
    tags: ChatTags
    gradient_checkpointing: bool = True  # default for full fine-tuning at this size
    prefer_flash_attention: bool = True  # flash_attention_2 when installed and on GPU, else sdpa
    description: str = ""


FAMILIES: dict[str, ModelFamily] = {
    f.name: f
    for f in [
        ModelFamily(
            "tiny",
            None,
            ChatTags("<|user|>", "", "<|assistant|>", "<think>\n", "\n</think>\n\n"),
            gradient_checkpointing=False,
            prefer_flash_attention=False,
            description=(
                "embedded Llama-architecture model trained by `npo prepare` on the synthetic "
                "benchmark"
            ),
        ),
        ModelFamily(
            "llama2-7b",
            "meta-llama/Llama-2-7b-chat-hf",
            ChatTags("[INST] ", " [/INST]", ""),
            description="TOFU's original target family (no think tags: answer-only targets)",
        ),
        ModelFamily(
            "llama3-8b",
            "deepseek-ai/DeepSeek-R1-Distill-Llama-8B",
            R1_TAGS,
            description=(
                "R-TOFU's target: DeepSeek-R1-Distill-Llama-8B with its chat and think tags"
            ),
        ),
        ModelFamily(
            "llama3.2-1b",
            "meta-llama/Llama-3.2-1B-Instruct",
            ChatTags(
                "<|start_header_id|>user<|end_header_id|>\n\n",
                "<|eot_id|>",
                "<|start_header_id|>assistant<|end_header_id|>\n\n",
            ),
            description="open-unlearning's small TOFU target (answer-only targets)",
        ),
        ModelFamily(
            "qwen2.5-7b",
            "Qwen/Qwen2.5-7B-Instruct",
            ChatTags("<|im_start|>user\n", "<|im_end|>\n", "<|im_start|>assistant\n"),
            description="Qwen2.5 instruct (answer-only targets)",
        ),
        ModelFamily(
            "r1-qwen-7b",
            "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B",
            R1_TAGS,
            description="DeepSeek-R1-Distill-Qwen-7B with R-TOFU's think tags",
        ),
        ModelFamily(
            "zephyr-7b",
            "HuggingFaceH4/zephyr-7b-beta",
            ChatTags("<|user|>\n", "</s>\n", "<|assistant|>\n"),
            description="WMDP's RMU target (Li et al. 2024); documents train without chat tags",
        ),
        ModelFamily(
            "r1-qwen-1.5b",
            "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",
            R1_TAGS,
            description="small reasoning model for quick R-TOFU runs",
        ),
    ]
}


def get_family(name: str) -> ModelFamily:
    """The registered family, or an error listing the valid names."""
    try:
        return FAMILIES[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(FAMILIES), n=3)
        raise ConfigError(
            f"model_family '{name}' is unknown; valid: {', '.join(FAMILIES)}"
            + (f" (closest: {', '.join(close)})" if close else "")
        ) from None
