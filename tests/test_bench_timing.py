"""The bench scripts' timing: sides interleaved, the fastest repeat kept with its result."""

from __future__ import annotations

import pytest

from bench.timing import Timing, interleaved, ratio_cell


def test_sides_alternate_and_the_fastest_repeat_wins() -> None:
    order: list[str] = []
    seconds = {"a": iter([3.0, 1.0, 2.0]), "b": iter([5.0, 6.0, 4.0])}

    def side(name: str):
        def call() -> tuple[float, str]:
            order.append(name)
            s = next(seconds[name])
            return s, f"{name}@{s}"

        return call

    t = interleaved({"a": side("a"), "b": side("b")}, repeats=3)
    assert order == ["a", "b", "b", "a", "a", "b"]  # a spell of load falls on both sides
    assert (t["a"].fastest, t["a"].best) == (1.0, "a@1.0")
    assert (t["b"].fastest, t["b"].best) == (4.0, "b@4.0")
    assert t["b"].spread == pytest.approx(0.5)
    assert ratio_cell(t["b"], t["a"]) == "4.00x [1.33-6.00]"


def test_repeats_must_be_positive() -> None:
    with pytest.raises(ValueError, match="repeats must be >= 1, got 0"):
        interleaved({"a": lambda: (1.0, None)}, repeats=0)
    assert Timing([2.0]).cell() == "2.00 s (+0 %)"
