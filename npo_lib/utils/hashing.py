"""Fingerprints: short stable hashes that key caches and tell whether two results are the same.

One function hashes values (:func:`fingerprint`), one hashes a model folder cheaply
(:func:`model_fingerprint`); every cache key and identity in the project is built from them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

_MODEL_FILES = (
    "config.json",
    "adapter_config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_SAMPLE = 1 << 20  # bytes hashed at the start, middle and end of each weight file


def _plain(x: Any) -> Any:
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return dataclasses.asdict(x)
    return x


def fingerprint(*parts: Any, length: int = 16) -> str:
    """``length`` hex chars of sha256 over ``parts``: bytes as they are, anything else as its
    JSON (dataclasses as dicts, keys sorted, unknown types by ``str``), separated by NUL."""
    h = hashlib.sha256()
    for p in parts:
        h.update(
            p
            if isinstance(p, bytes)
            else json.dumps(_plain(p), sort_keys=True, default=str, ensure_ascii=False).encode()
        )
        h.update(b"\0")
    return h.hexdigest()[:length]


def model_fingerprint(path: str | os.PathLike) -> str:
    """Identity of a model folder: its config / tokenizer files and, per weight file, its name,
    size and sha256 of 1 MiB at its start, middle and end (a sample, not the whole file: fast for
    16 GB checkpoints, and any training step changes those bytes). A hub id hashes as is."""
    p = Path(path).expanduser()
    if not p.is_dir():
        return fingerprint("hub", str(path))
    h = hashlib.sha256()
    for f in sorted(p.iterdir()):
        if f.name in _MODEL_FILES:
            h.update(f.name.encode() + b"\0" + f.read_bytes())
        elif f.suffix in _WEIGHT_SUFFIXES and f.is_file():
            size = f.stat().st_size
            h.update(f"{f.name}\0{size}".encode())
            with f.open("rb") as fh:
                for off in sorted({0, max(0, size // 2 - _SAMPLE // 2), max(0, size - _SAMPLE)}):
                    fh.seek(off)
                    h.update(fh.read(_SAMPLE))
    return h.hexdigest()[:16]


def folder_fingerprint(folder: str | os.PathLike) -> str:
    """Identity of a data folder: the names and bytes of its ``*.json`` / ``*.jsonl`` files."""
    folder = Path(folder)
    h = hashlib.sha256()
    for f in sorted(folder.glob("*.json*")):
        if f.is_file():
            h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]
