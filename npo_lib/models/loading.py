"""Loading a model and its tokenizer the same way for a hub id and for a local folder.

``AutoModelForCausalLM`` / ``AutoTokenizer`` with safetensors, ``trust_remote_code`` off unless
asked, the family's attention preference and the configured dtype; a hub id that cannot be
reached (no network) fails with one line saying to pass ``model_path``.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

from npo_lib.config import Config
from npo_lib.errors import ConfigError, EvalError
from npo_lib.models.families import ModelFamily, get_family

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def attention_implementation(family: ModelFamily, device: str) -> str:
    """flash_attention_2 when preferred, on CUDA and installed; otherwise PyTorch sdpa."""
    if (
        family.prefer_flash_attention
        and device == "cuda"
        and importlib.util.find_spec("flash_attn")
    ):
        return "flash_attention_2"
    return "sdpa"


def resolve_dtype(cfg: Config, device: str) -> torch.dtype:
    """``cfg.dtype``; ``auto`` is bfloat16 on a CUDA device that supports it, else float32."""
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


def load_tokenizer(cfg: Config, path: str) -> PreTrainedTokenizerBase:
    """The tokenizer at ``path`` (a folder or hub id), with a pad token."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
    except OSError as e:
        raise _offline_error(cfg, path, e) from e
    if tok.pad_token is None:  # Llama tokenizers ship none; padding is masked anyway
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    cfg: Config,
    path: str,
    *,
    device: str | None = None,
    attn_implementation: str | None = None,
) -> PreTrainedModel:
    """``AutoModelForCausalLM.from_pretrained(path)`` with the family's attention and dtype."""
    from transformers import AutoModelForCausalLM

    family = get_family(cfg.model_family)
    device = device or default_device()
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


def check_tokenizer(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    *,
    model_name: str,
    tokenizer_name: str,
) -> None:
    """Fail when the tokenizer can produce ids the model has no embedding for."""
    rows = model.get_input_embeddings().num_embeddings
    problems = []
    if len(tokenizer) > rows:
        problems.append(
            f"the tokenizer has {len(tokenizer)} tokens, the model's embedding {rows} rows"
        )
    for attr in ("eos_token_id", "pad_token_id", "bos_token_id"):
        i = getattr(tokenizer, attr, None)
        if isinstance(i, int) and not 0 <= i < rows:
            problems.append(f"{attr}={i} is outside the model's {rows} embedding rows")
    if problems:
        raise EvalError(
            f"tokenizer {tokenizer_name} does not match model {model_name}: {'; '.join(problems)}"
        )
