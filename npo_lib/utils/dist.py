"""Which rank this process is (the variables torchrun / DeepSpeed's launcher set), and the
sharding of per-item work across ranks that multi-rank evaluation uses.

Sharding is explicit: :func:`map_shards` splits work only inside a ``with sharded():`` block (and
only when a process group of more than one rank is up), so code that a single rank calls alone
(a log line on rank 0, a callback during training) never waits on a collective.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextvars import ContextVar
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")

_SHARDING: ContextVar[bool] = ContextVar("npo_sharding", default=False)


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_rank0() -> bool:
    return rank() == 0


def ensure_process_group() -> bool:
    """Join the launcher's process group when this process is one of several ranks (NCCL with a
    GPU per rank, pinned to ``LOCAL_RANK``; gloo on CPU). True when a group of > 1 rank is up."""
    if world_size() <= 1:
        return False
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank() % torch.cuda.device_count())
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_world_size() > 1


def _group_up() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@contextlib.contextmanager
def sharded(on: bool = True) -> Iterator[bool]:
    """Inside the block :func:`map_shards` splits its items across the ranks of the process
    group (``on=False``: this rank does all of them, e.g. work only rank 0 runs). Yields whether
    work is sharded."""
    token = _SHARDING.set(on and _group_up())
    try:
        yield _SHARDING.get()
    finally:
        _SHARDING.reset(token)


def sharding_active() -> bool:
    return _SHARDING.get()


def map_shards(
    items: Sequence[T],
    work: Callable[[T], R],
    progress: Callable[[Iterable[int]], Iterable[int]] = iter,
) -> list[R]:
    """``[work(x) for x in items]``; under :func:`sharded` each rank does items ``rank,
    rank + world, ...`` and every rank gets the whole list, in order (``all_gather_object``).

    Callers pass whole batches as items, so every batch is the one a single process forms: the
    results equal single-process ones bit for bit. ``progress`` wraps this rank's indices
    (a tqdm bar)."""
    if not sharding_active():
        return [work(items[i]) for i in progress(range(len(items)))]
    import torch.distributed as dist

    me, world = dist.get_rank(), dist.get_world_size()
    mine = {i: work(items[i]) for i in progress(range(me, len(items), world))}
    gathered: list[dict[int, R] | None] = [None] * world
    dist.all_gather_object(gathered, mine)
    merged: dict[int, R] = {}
    for part in gathered:
        merged.update(part or {})
    return [merged[i] for i in range(len(items))]


def on_rank0(work: Callable[[], R]) -> R:
    """``work()`` run by rank 0 alone (its own calls unsharded), its result sent to every rank;
    outside :func:`sharded` every rank runs it itself."""
    if not sharding_active():
        return work()
    import torch.distributed as dist

    box: list[Any] = [None]
    error: BaseException | None = None
    if dist.get_rank() == 0:
        try:
            with sharded(False):
                box[0] = ("ok", work())
        except Exception as e:  # noqa: BLE001 - the other ranks must not wait forever
            error, box[0] = e, ("error", f"{type(e).__name__}: {e}")
    dist.broadcast_object_list(box, src=0)
    if error is not None:
        raise error
    kind, value = box[0]
    if kind == "error":
        raise RuntimeError(f"rank 0 failed: {value}")
    return value


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if _group_up():
        import torch.distributed as dist

        dist.barrier()
