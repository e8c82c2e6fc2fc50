"""Model families: hub id, chat and think tags, attention and memory preferences, loading.

A family is what the seed scripts called ``model_family``. ``model_path`` overrides the hub id
with a local folder; the embedded ``tiny`` family resolves to the target model `npo prepare`
made. Loading goes through ``AutoModelForCausalLM`` / ``AutoTokenizer`` with safetensors and
``trust_remote_code`` off unless asked, so a hub model and the embedded one take the same path.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from npo_lib.config import Config, ConfigError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


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
            description="embedded Llama-architecture model trained by `npo prepare` on the synthetic benchmark",
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
            description="R-TOFU's target: DeepSeek-R1-Distill-Llama-8B with its chat and think tags",
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
        raise ConfigError(f"model_family '{name}' is unknown; valid: {', '.join(FAMILIES)}") from None


def resolve_model_path(cfg: Config) -> str:
    """``model_path`` when given, else the embedded target (tiny) or the family's hub id."""
    if cfg.model_path:
        p = Path(cfg.model_path).expanduser()
        if not p.is_dir():
            raise ConfigError(f"model_path folder not found: {p}")
        return str(p)
    family = get_family(cfg.model_family)
    if family.hub_id is None:
        from npo_lib.embedded import embedded_paths

        target = embedded_paths(cfg).target
        if not (target / "config.json").is_file():
            raise ConfigError(
                f"the embedded target model is not prepared ({target}); run `npo prepare` "
                "(with the same benchmark.* / tiny.* settings) or pass model_path=..."
            )
        return str(target)
    return family.hub_id


def attention_implementation(family: ModelFamily, device: str) -> str:
    """flash_attention_2 when preferred, on CUDA and installed; otherwise PyTorch sdpa."""
    if family.prefer_flash_attention and device == "cuda" and importlib.util.find_spec("flash_attn"):
        return "flash_attention_2"
    return "sdpa"


def resolve_dtype(cfg: Config, device: str) -> torch.dtype:
    import torch

    if cfg.dtype == "auto":
        if device == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return getattr(torch, cfg.dtype)


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _offline_error(cfg: Config, path: str, err: Exception) -> ConfigError:
    return ConfigError(
        f"could not load '{path}' for model_family={cfg.model_family}: {type(err).__name__}: "
        f"{str(err).splitlines()[0] if str(err) else ''}. Without network access a hub model "
        "cannot be downloaded: pass model_path=/local/folder holding the Hugging Face files "
        "(config.json, *.safetensors, tokenizer files)."
    )


def load_tokenizer(cfg: Config, path: str | None = None) -> PreTrainedTokenizerBase:
    """The family's tokenizer (from ``path``, else the resolved model path), with a pad token."""
    from transformers import AutoTokenizer

    path = path or resolve_model_path(cfg)
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
    except OSError as e:
        raise _offline_error(cfg, path, e) from e
    if tok.pad_token is None:  # Llama tokenizers ship none; padding is masked anyway
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    cfg: Config,
    path: str | None = None,
    *,
    device: str | None = None,
    attn_implementation: str | None = None,
) -> PreTrainedModel:
    """``AutoModelForCausalLM.from_pretrained`` with the family's attention and dtype choices."""
    from transformers import AutoModelForCausalLM

    family = get_family(cfg.model_family)
    device = device or default_device()
    path = path or resolve_model_path(cfg)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path,
            dtype=resolve_dtype(cfg, device),
            attn_implementation=attn_implementation or attention_implementation(family, device),
            trust_remote_code=cfg.trust_remote_code,
            use_safetensors=True,
        )
    except OSError as e:
        raise _offline_error(cfg, path, e) from e
    return model.to(device)
