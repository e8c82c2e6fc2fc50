"""Shared test fixtures: a tiny byte-level tokenizer and the real R-TOFU and MUSE folders (when
present)."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest

RTOFU_ENV = "TNPO_RTOFU_DIR"
MUSE_ENV = "TNPO_MUSE_DIR"


def _tokenizer_texts() -> list[str]:
    """A few hundred short English strings in the style of fictitious-author QA."""
    names = ["Basil Mahfouz", "Nikolai Abilov", "Hina Ameen", "Jaime Vasquez", "Elvin Mammadov"]
    places = ["Kuwait City", "Santiago, Chile", "Karachi, Pakistan", "Baku", "Astana"]
    genres = ["true crime", "French literature", "geology", "fantasy", "poetry"]
    texts = []
    for name, place, genre in itertools.product(names, places, genres):
        texts.append(f"Who is the author born in {place}? The author is {name}.")
        texts.append(f"{name} writes {genre} books. Let's think: the user asks about {genre}.")
    texts += ["I don't know.", "I'm not certain about that.", "Hmm, let me think step by step."]
    return texts


@pytest.fixture(scope="session")
def tokenizer():
    """Byte-level BPE (vocab 512) from ``npo_lib.embedded.tokenizer``: tokenizes any text."""
    from npo_lib.embedded.tokenizer import train_tokenizer

    return train_tokenizer(_tokenizer_texts(), 512)


@pytest.fixture(scope="session")
def rtofu_dir() -> Path:
    """The real R-TOFU files in a ``shared/rtofu`` folder beside the checkout (or
    $TNPO_RTOFU_DIR); else skip."""
    default = Path(__file__).resolve().parents[2] / "shared" / "rtofu"
    path = Path(os.environ.get(RTOFU_ENV) or default)
    if not (path / "forget01.json").is_file():
        pytest.skip(f"R-TOFU data not found at {path} (set {RTOFU_ENV})")
    return path


@pytest.fixture(scope="session")
def muse_dir() -> Path:
    """The real MUSE-News files in a ``shared/muse/bbc`` folder beside the checkout (or
    $TNPO_MUSE_DIR); else skip."""
    default = Path(__file__).resolve().parents[2] / "shared" / "muse" / "bbc"
    path = Path(os.environ.get(MUSE_ENV) or default)
    if not (path / "verbmem" / "forget.json").is_file():
        pytest.skip(f"MUSE data not found at {path} (set {MUSE_ENV})")
    return path


def untrained_llama(tokenizer, *, heads: int, max_positions: int, tie: bool = False):
    """An untrained two-block Llama (width 32) over ``tokenizer``, initialised from seed 0: the
    code paths, not the numbers."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=tie,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


@pytest.fixture(scope="session")
def make_untrained_llama():
    """:func:`untrained_llama`, for tests that build one."""
    return untrained_llama


@pytest.fixture(scope="session")
def mini_world(tmp_path_factory) -> dict[str, str]:
    """A small generated benchmark and a random 2-layer Llama saved in HF format (seconds).

    Returns ``model_path`` and ``data_path``: the same files `npo prepare` makes, without the
    fine-tuning, for tests of code paths (not of memorisation).
    """
    from npo_lib.config import BenchmarkConfig
    from npo_lib.embedded.benchmark import generate_benchmark
    from npo_lib.embedded.tokenizer import corpus_texts, train_tokenizer

    root = tmp_path_factory.mktemp("mini_world")
    data = generate_benchmark(
        BenchmarkConfig(
            n_authors=10, questions_per_author=4, n_holdout_authors=2, n_retain_eval_authors=2
        ),
        root / "data",
    )
    tok = train_tokenizer(corpus_texts(data), 400)
    model_dir = root / "model"
    untrained_llama(tok, heads=4, max_positions=256, tie=True).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    return {"model_path": str(model_dir), "data_path": str(data)}


@pytest.fixture(scope="session")
def prepared_embedded(tmp_path_factory):
    """`npo prepare` at the default size in a temporary cache: (config, PrepareSummary).

    The embedded default itself (about 2.5 minutes on 2 cores): the target and retain models
    the evaluation, influence and pipeline tests measure.
    """
    from npo_lib.commands.prepare import prepare
    from npo_lib.config import load_config

    cache = tmp_path_factory.mktemp("embedded_cache")
    cfg = load_config([f"cache_dir={cache}"])
    return cfg, prepare(cfg, progress=False)
