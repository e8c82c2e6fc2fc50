"""Timing shared by the bench scripts: every side repeated, the sides interleaved.

Load from other processes only ever adds time, so the fastest of a side's repeats is its best
estimate, and the spread (slowest / fastest - 1) says how much the machine disturbed it. The sides
run in turns (A B, B A, A B, ...), so a spell of load falls on both and a ratio of fastest times
stays put from one run of a script to the next.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass
class Timing(Generic[T]):
    """One side's repeats: the seconds of each and the result of the fastest."""

    seconds: list[float] = field(default_factory=list)
    best: T | None = None  # the fastest repeat's result

    def add(self, seconds: float, result: T) -> None:
        if not self.seconds or seconds < min(self.seconds):
            self.best = result
        self.seconds.append(seconds)

    @property
    def fastest(self) -> float:
        return min(self.seconds)

    @property
    def spread(self) -> float:
        """Slowest / fastest - 1: 0.05 means the repeats lay within 5 % of each other."""
        return max(self.seconds) / min(self.seconds) - 1.0

    def cell(self) -> str:
        """``fastest s (+spread %)`` for a table."""
        return f"{self.fastest:.2f} s (+{100 * self.spread:.0f} %)"


def interleaved(
    sides: Mapping[str, Callable[[], tuple[float, T]]], repeats: int
) -> dict[str, Timing[T]]:
    """Run each side ``repeats`` times in alternating order; each call returns (seconds, result).

    A side measures its own seconds (a child process's epoch time, say), so start-up a side does
    not want timed stays out."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    out: dict[str, Timing[T]] = {name: Timing() for name in sides}
    names = list(sides)
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            out[name].add(*sides[name]())
    return out


def ratio_cell(slow: Timing, fast: Timing) -> str:
    """The ratio of fastest times, with the range the repeats allow (slowest / fastest pairs)."""
    ratio = slow.fastest / fast.fastest
    lo, hi = slow.fastest / max(fast.seconds), max(slow.seconds) / fast.fastest
    return f"{ratio:.2f}x [{lo:.2f}-{hi:.2f}]"
