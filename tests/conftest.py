"""Shared test fixtures: a tiny byte-level tokenizer and the real R-TOFU folder (when present)."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest

RTOFU_ENV = "TNPO_RTOFU_DIR"


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
    """Byte-level BPE (vocab 512) from ``npo_lib.tokenizer``: tokenizes any text."""
    from npo_lib.tokenizer import train_tokenizer

    return train_tokenizer(_tokenizer_texts(), 512)


@pytest.fixture(scope="session")
def rtofu_dir() -> Path:
    """The real R-TOFU files beside the repo (``../shared/rtofu``, or $TNPO_RTOFU_DIR); else skip."""
    default = Path(__file__).resolve().parents[2] / "shared" / "rtofu"
    path = Path(os.environ.get(RTOFU_ENV) or default)
    if not (path / "forget01.json").is_file():
        pytest.skip(f"R-TOFU data not found at {path} (set {RTOFU_ENV})")
    return path
