"""Loading a model and its tokenizer the same way for a hub id and for a local folder.

``AutoModelForCausalLM`` / ``AutoTokenizer`` with safetensors, ``trust_remote_code`` off unless
asked, the family's attention preference and the configured dtype; a hub id that cannot be
reached (no network) fails with one line saying to pass ``model_path``. A local folder is
checked for the files loading needs (:func:`check_model_folder`) where the config enters, so a
folder without them fails in one line before any model loads.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from npo_lib.config import Config
from npo_lib.errors import ConfigError, EvalError
from npo_lib.models.families import ModelFamily, get_family

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

# Any one of these lets AutoTokenizer build a tokenizer without converting a slow one.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")


def missing_model_files(folder: Path, *, tokenizer: bool = True) -> list[str]:
    """What ``folder`` lacks to load here: its config, safetensors weights (loading asks for
    safetensors only) and, with ``tokenizer``, a tokenizer file. Empty when nothing is missing."""
    missing = []
    if not any((folder / f).is_file() for f in ("config.json", "adapter_config.json")):
        missing.append("config.json")
    if not any(folder.glob("*.safetensors")):
        missing.append("*.safetensors weights")
    if tokenizer and not any((folder / f).is_file() for f in TOKENIZER_FILES):
        missing.append(f"a tokenizer ({' or '.join(TOKENIZER_FILES)})")
    return missing


def check_model_folder(path: str | Path, key: str, *, tokenizer: bool = True) -> str:
    """``path`` (user expanded) when it is a folder a model loads from; otherwise a one-line
    ConfigError naming ``key``, the folder and what it lacks."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"{key} folder not found: {folder}")
    missing = missing_model_files(folder, tokenizer=tokenizer)
    if missing:
        raise ConfigError(f"{key}={folder} is not a model folder: it lacks {', '.join(missing)}")
    return str(folder)


def attention_implementation(family: ModelFamily, device: str) -> str:
    """flash_attention_2 when preferred, on CUDA and installed; otherwise PyTorch sdpa."""
    if (
        family.prefer_flash_attention
        and device == "cuda"
        and importlib.util.find_spec("flash_attn")
    ):
        return "flash_attention_2"
    return "sdpa"


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """The torch dtype of a ``dtype`` setting; ``auto`` is bfloat16 on a CUDA device that
    supports it, else float32."""
    import torch

    if dtype == "auto":
        if device == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return getattr(torch, dtype)


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(frozen=True)
class ModelLoader:
    """How every model and tokenizer of a run loads: the family (its attention preference and
    the name an error gives), the ``dtype`` setting and ``trust_remote_code``."""

    family: ModelFamily
    dtype: str = "auto"
    trust_remote_code: bool = False

    @classmethod
    def for_config(cls, cfg: Config) -> ModelLoader:
        return cls(get_family(cfg.model_family), cfg.dtype, cfg.trust_remote_code)

    def offline_error(self, path: str, err: Exception) -> ConfigError:
        first = str(err).splitlines()[0] if str(err) else ""
        return ConfigError(
            f"could not load '{path}' for model_family={self.family.name}: "
            f"{type(err).__name__}: {first}. Without network access a hub model cannot be "
            "downloaded: pass model_path=/local/folder holding the Hugging Face files "
            "(config.json, *.safetensors, tokenizer files)."
        )

    def tokenizer(self, path: str) -> PreTrainedTokenizerBase:
        """The tokenizer at ``path`` (a folder or hub id), with a pad token."""
        from transformers import AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(path, trust_remote_code=self.trust_remote_code)
        except OSError as e:
            raise self.offline_error(path, e) from e
        if tok.pad_token is None:  # Llama tokenizers ship none; padding is masked anyway
            tok.pad_token = tok.eos_token
        return tok

    def model(
        self, path: str, *, device: str | None = None, attn_implementation: str | None = None
    ) -> PreTrainedModel:
        """``AutoModelForCausalLM.from_pretrained(path)`` with the family's attention and the
        dtype, on ``device`` (default: CUDA when there is one)."""
        from transformers import AutoModelForCausalLM

        device = device or default_device()
        try:
            model = AutoModelForCausalLM.from_pretrained(
                path,
                dtype=resolve_dtype(self.dtype, device),
                attn_implementation=attn_implementation
                or attention_implementation(self.family, device),
                trust_remote_code=self.trust_remote_code,
                use_safetensors=True,
            )
        except OSError as e:
            raise self.offline_error(path, e) from e
        return model.to(device)


def load_tokenizer(cfg: Config, path: str) -> PreTrainedTokenizerBase:
    """The tokenizer at ``path`` as ``cfg`` loads it (:meth:`ModelLoader.tokenizer`)."""
    return ModelLoader.for_config(cfg).tokenizer(path)


def load_model(
    cfg: Config,
    path: str,
    *,
    device: str | None = None,
    attn_implementation: str | None = None,
) -> PreTrainedModel:
    """The model at ``path`` as ``cfg`` loads it (:meth:`ModelLoader.model`)."""
    return ModelLoader.for_config(cfg).model(
        path, device=device, attn_implementation=attn_implementation
    )


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
