"""Which point of an unlearning trajectory a run keeps, and when it stops early.

A trajectory is the list of evaluation points of one forget run, each ``{"step", "metrics"}``
(``metrics``: aggregate key -> value or None), in step order; step 0 is the model before
unlearning (the target), the reference of a ``x target`` bound and never a candidate itself.

A selection rule is one line::

    max|min <metric> [s.t. <metric> >= <number> [x target]]

(``<=`` is accepted too), with metric keys from :mod:`npo_lib.eval.registry`: e.g.
``max forget_quality s.t. model_utility >= 0.95 x target`` keeps the point of highest forget
quality among those whose model utility is at least 95 % of the target model's.

Selection: among the trained points (step > 0) that meet the constraint and have the objective,
the best one, the earliest on a tie; with none, the last point (and the reason says so).

Early stopping after ``patience`` points: the rule's best point lies ``patience`` or more points
back (later points did not beat it strictly), or, while no point met the constraint yet, the
constraint's metric moved away from its bound at each of the last ``patience`` points (utility
that only falls cannot come back to a lower bound by training further in the same direction).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from npo_lib.errors import ConfigError
from npo_lib.eval.registry import METRICS

GRAMMAR = "max|min <metric> [s.t. <metric> >= <number> [x target]]"
_RULE = re.compile(
    r"^\s*(?P<goal>max|min)\s+(?P<metric>\w+)"
    r"(?:\s+s\.t\.\s+(?P<bound_metric>\w+)\s*(?P<op>>=|<=)\s*"
    r"(?P<bound>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)"
    r"(?P<target>\s*[x*]\s*target)?)?\s*$"
)

Point = Mapping[str, Any]  # {"step": int, "metrics": {key: value or None}, ...}


@dataclass(frozen=True)
class Constraint:
    """``metric >= bound`` (or ``<=``), the bound a multiple of the target's value when
    ``of_target``."""

    metric: str
    op: str
    bound: float
    of_target: bool

    def threshold(self, target: Mapping[str, Any] | None) -> float:
        """The bound in the metric's units (``x target``: times the target point's value)."""
        if not self.of_target:
            return self.bound
        value = (target or {}).get(self.metric)
        if value is None:
            raise ConfigError(
                f"eval.during.select bounds {self.metric} by the target's value, which is "
                f"not known (null at step 0)"
            )
        return self.bound * float(value)

    def holds(self, value: float | None, threshold: float) -> bool:
        """Whether ``value`` meets the bound (None never does)."""
        if value is None:
            return False
        return value >= threshold if self.op == ">=" else value <= threshold

    def text(self) -> str:
        return f"{self.metric} {self.op} {self.bound:g}" + (" x target" if self.of_target else "")


@dataclass(frozen=True)
class SelectionRule:
    """``goal`` (max / min) of ``metric`` under an optional :class:`Constraint`."""

    goal: str
    metric: str
    constraint: Constraint | None
    text: str

    @property
    def metrics(self) -> tuple[str, ...]:
        """Every metric the rule reads."""
        return (self.metric,) + ((self.constraint.metric,) if self.constraint else ())

    def better(self, a: float, b: float) -> bool:
        """Whether objective ``a`` is strictly better than ``b``."""
        return a > b if self.goal == "max" else a < b


def parse_rule(text: str) -> SelectionRule | None:
    """The rule of ``eval.during.select`` ('' = none); a one-line ConfigError on bad syntax or an
    unregistered metric."""
    if not text.strip():
        return None
    m = _RULE.match(text)
    if m is None:
        raise ConfigError(f"eval.during.select {text!r} does not parse; expected '{GRAMMAR}'")
    for key in (m["metric"], m["bound_metric"]):
        if key is not None and key not in METRICS:
            raise ConfigError(
                f"eval.during.select: unknown metric '{key}' (registered aggregates: "
                f"docs/reference/metrics.md)"
            )
    constraint = None
    if m["bound_metric"]:
        constraint = Constraint(m["bound_metric"], m["op"], float(m["bound"]), bool(m["target"]))
    return SelectionRule(m["goal"], m["metric"], constraint, " ".join(text.split()))


@dataclass(frozen=True)
class Selection:
    """The chosen point: its index in the trajectory, its step, the rule's values there and why."""

    index: int
    step: int
    values: dict[str, float | None]
    why: str
    rule: str
    met: bool = True  # False: no point met the rule, the last one stands in


def _candidates(
    points: Sequence[Point], rule: SelectionRule, target: Mapping[str, Any] | None
) -> list[int]:
    """Indices of the trained points meeting the constraint and holding the objective."""
    c = rule.constraint
    threshold = c.threshold(target) if c else 0.0
    return [
        i
        for i, p in enumerate(points)
        if p["step"] > 0
        and p["metrics"].get(rule.metric) is not None
        and (c is None or c.holds(p["metrics"].get(c.metric), threshold))
    ]


def _best(points: Sequence[Point], rule: SelectionRule, idx: list[int]) -> int:
    """The index of the best objective among ``idx`` (the earliest on a tie)."""
    best = idx[0]
    for i in idx[1:]:
        if rule.better(points[i]["metrics"][rule.metric], points[best]["metrics"][rule.metric]):
            best = i
    return best


def select_point(
    points: Sequence[Point], rule: SelectionRule | None, target: Mapping[str, Any] | None = None
) -> Selection:
    """The point the run keeps under ``rule`` (None: the last one); ``target``: the metrics of
    the model before unlearning."""
    if not points:
        raise ValueError("an empty trajectory has no point to select")
    last = len(points) - 1
    if rule is None:
        return Selection(last, points[last]["step"], {}, "no rule: the last step", "", False)
    idx = _candidates(points, rule, target)
    met = bool(idx)
    if met:
        i = _best(points, rule, idx)
        c = rule.constraint
        scope = f"the {len(idx)} trained points meeting {c.text()}" if c else "the trained points"
        why = f"{rule.goal} {rule.metric} over {scope}"
    else:
        i = last
        cond = rule.constraint.text() if rule.constraint else f"a value of {rule.metric}"
        why = f"no trained point has {cond}: the last step"
    values = {k: points[i]["metrics"].get(k) for k in rule.metrics}
    return Selection(i, points[i]["step"], values, why, rule.text, met)


def stop_reason(
    points: Sequence[Point],
    rule: SelectionRule | None,
    patience: int,
    target: Mapping[str, Any] | None = None,
) -> str | None:
    """Why training stops after the last point of ``points`` (None: it goes on); see the module
    text for the two reasons."""
    if rule is None or patience <= 0:
        return None
    trained = [i for i, p in enumerate(points) if p["step"] > 0]
    if len(trained) < patience:
        return None
    idx = _candidates(points, rule, target)
    if idx:
        best = _best(points, rule, idx)
        since = sum(1 for i in trained if i > best)
        if since >= patience:
            return (
                f"{rule.metric} has not improved under '{rule.text}' for {since} evaluation "
                f"points (best at step {points[best]['step']})"
            )
        return None
    c = rule.constraint
    if c is None:
        return None
    values = [points[i]["metrics"].get(c.metric) for i in range(len(points))]
    tail = values[-(patience + 1) :]
    if len(tail) <= patience or any(v is None for v in tail):
        return None
    away = all((b < a) if c.op == ">=" else (b > a) for a, b in zip(tail, tail[1:]))
    if away:
        return (
            f"no point meets {c.text()} and {c.metric} moved away from it at each of the last "
            f"{patience} evaluation points"
        )
    return None
