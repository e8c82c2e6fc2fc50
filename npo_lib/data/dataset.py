"""Batching: forget records with their views, a seeded retain pairing and IDK responses.

:class:`UnlearningDataset` pairs every forget record with its encoded views, a retain record
drawn anew each epoch and a seeded "I don't know" response; :class:`ViewCollator` pads each
view of a batch separately.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import Dataset

from npo_lib.data.sources import load_forget, load_idk, load_idk_cot, load_retain
from npo_lib.data.views import IDK_VIEWS, IGNORE_INDEX, encode_view, get_view
from npo_lib.errors import DataError
from npo_lib.utils.hashing import fingerprint

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from npo_lib.models.families import ChatTags


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
                f"views {', '.join(v for v in views if v in IDK_VIEWS)} need IDK responses: "
                "pass idk=load_idk(...)"
            )
        idk_rng = random.Random(f"idk:{seed}")
        self.idk_responses: list[str | None] = [
            idk[idk_rng.randrange(len(idk))] if need_idk else None for _ in self.forget
        ]
        self._encode_retain = lambda j: encode_view(
            self.retain[j], "retain", tokenizer, tags, max_length
        )
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
        """Load what ``views`` and ``with_retain`` need from the QA files of ``data_path`` and
        build the dataset."""
        return cls.from_records(
            load_forget(data_path, split, task_id),
            tokenizer,
            tags,
            retain=load_retain(data_path, split, task_id) if with_retain else None,
            data_path=data_path,
            views=views,
            with_retain=with_retain,
            max_length=max_length,
            seed=seed,
        )

    @classmethod
    def from_records(
        cls,
        forget: Sequence[Mapping[str, Any]],
        tokenizer: PreTrainedTokenizerBase,
        tags: ChatTags,
        *,
        retain: Sequence[Mapping[str, Any]] | None = None,
        data_path: str | None = None,
        views: Sequence[str] = ("full",),
        with_retain: bool = False,
        max_length: int = 512,
        seed: int = 0,
    ) -> UnlearningDataset:
        """The dataset of given forget / retain records (a benchmark plug-in's, by role); the
        IDK responses and hedging traces an IDK view needs come from ``data_path``'s QA files,
        which only a QA benchmark has."""
        need_idk = bool(IDK_VIEWS.intersection(views))
        if need_idk and data_path is None:
            raise DataError("views with IDK responses need data_path (its IDK files)")
        return cls(
            forget,
            tokenizer,
            tags,
            retain=retain if with_retain else None,
            views=views,
            with_retain=with_retain,
            max_length=max_length,
            seed=seed,
            idk=load_idk(data_path) if need_idk else None,
            idk_cot=load_idk_cot(data_path, forget) if "idk3" in views else None,
        )

    def __len__(self) -> int:
        return len(self._items)

    def fingerprint(self, view: str) -> str:
        """Identity of the token ids and labels of ``view`` of every forget example."""
        return fingerprint(
            *((item[view]["input_ids"], item[view]["labels"]) for item in self._items)
        )

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
        views = [k for k, v in features[0].items() if isinstance(v, Mapping) and "input_ids" in v]
        if not views:  # a plain example
            return self.pad(features)
        out: dict[str, Any] = {
            "index": torch.tensor([f["index"] for f in features], dtype=torch.long)
        }
        for key in views:
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
