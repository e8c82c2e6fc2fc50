"""The first study's grid-point comparison: every setting's mean ± std over seeds, the best
setting per method that keeps the utility floor, and the claim read from those (one grid point per
method, no frontier; the fair study of :mod:`npo_lib.study.study` supersedes it).

The columns are the metrics the registry shows in the study view
(:func:`npo_lib.eval.registry.metrics_for`), the floor and the claim read the headline pair.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from npo_lib.commands.evaluation import METRICS_FILE
from npo_lib.errors import ReportError
from npo_lib.eval.registry import TOFU, MetricPair, metrics_for
from npo_lib.study.runs import run_config

VIEW = "study"  # the registry view whose metrics the settings table shows
HEADLINE = TOFU.headline  # the default pair: floor on its utility, best setting by its forgetting
CLAIM, RIVAL = "INFLUENCE+GD", "NPO+GD"  # the first study's question


@dataclass
class Setting:
    """One point of the grid without its seed: every seed's aggregates."""

    key: tuple[Any, ...]
    runs: list[str] = field(default_factory=list)
    values: dict[str, list[float]] = field(default_factory=dict)

    def mean(self, metric: str) -> float | None:
        v = [x for x in self.values.get(metric, []) if x is not None]
        return statistics.fmean(v) if v else None

    def std(self, metric: str) -> float | None:
        v = [x for x in self.values.get(metric, []) if x is not None]
        return statistics.stdev(v) if len(v) > 1 else (0.0 if v else None)


def collect(run_dirs: Sequence[Path], keys: Sequence[str]) -> list[Setting]:
    """Settings in first-seen order; runs without an evaluation are skipped."""
    groups: dict[tuple[Any, ...], Setting] = {}
    for run in run_dirs:
        if not (run / METRICS_FILE).is_file():
            continue
        cfg = run_config(run)
        missing = [k for k in keys if k not in cfg]
        if missing:
            raise ReportError(f"{run}/config.yaml has no {', '.join(missing)}")
        key = tuple(cfg[k] for k in keys)
        agg = json.loads((run / METRICS_FILE).read_text())["aggregates"]
        s = groups.setdefault(key, Setting(key))
        s.runs.append(run.name)
        for m in metrics_for(VIEW):
            s.values.setdefault(m.key, []).append(agg.get(m.key))
    return list(groups.values())


def utility_floor(
    refs: Mapping[str, Mapping[str, Any]], mu_fraction: float, pair: MetricPair = HEADLINE
) -> float | None:
    """The claim's utility bar: ``mu_fraction`` x the target's utility on ``pair`` (None
    without a target row)."""
    target_mu = refs.get("target", {}).get(pair.utility)
    return None if target_mu is None else mu_fraction * target_mu


def best_per_method(
    settings: Sequence[Setting], mu_floor: float, pair: MetricPair = HEADLINE
) -> dict[str, Setting | None]:
    """Per method (first key), the setting of best mean forgetting on ``pair`` (the headline
    pair) with mean utility >= ``mu_floor`` (None when no setting of the method keeps it)."""
    out: dict[str, Setting | None] = {}
    for s in settings:
        method = str(s.key[0])
        out.setdefault(method, None)
        mu, fq = s.mean(pair.utility), s.mean(pair.forget)
        if mu is None or fq is None or mu < mu_floor:
            continue
        cur = out[method]
        best = None if cur is None else cur.mean(pair.forget)
        if best is None or pair.goodness(fq) > pair.goodness(best):
            out[method] = s
    return out


def _pm(s: Setting, m: str, fmt: str) -> str:
    mean, std = s.mean(m), s.std(m)
    return "–" if mean is None else f"{fmt.format(mean)} ± {fmt.format(std or 0.0)}"


def _settings_table(
    settings: Sequence[Setting], keys: Sequence[str], refs: Mapping[str, Mapping[str, Any]]
) -> str:
    """Reference rows, then every setting's mean ± std, columns titled with their direction."""
    metrics = metrics_for(VIEW)
    head = [*keys, "seeds", *(m.label for m in metrics)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, agg in refs.items():
        values = (m.format(agg.get(m.key)) for m in metrics)
        lines.append("| " + " | ".join([name, *[""] * (len(keys) - 1), "–", *values]) + " |")
    for s in settings:
        cells = [*map(str, s.key), str(len(s.runs)), *(_pm(s, m.key, m.fmt) for m in metrics)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(
    settings: Sequence[Setting],
    keys: Sequence[str],
    refs: Mapping[str, Mapping[str, Any]],
    mu_fraction: float,
    pair: MetricPair = HEADLINE,
) -> str:
    """The study's markdown: settings table, reference rows, best per method on ``pair``, the
    claim."""
    out = [_settings_table(settings, keys, refs)]
    floor = utility_floor(refs, mu_fraction, pair)
    if floor is None:
        return out[0]
    fq, mu = pair.forget_metric, pair.utility_metric
    best = best_per_method(settings, floor, pair)
    out.append(
        f"\nBest setting per method with mean {mu.title} >= {mu_fraction:g} x target "
        f"({mu.format(floor)}):\n"
    )
    out.append(f"| method | setting | {fq.label} | {mu.label} |\n|---|---|---|---|")
    for method, s in best.items():
        if s is None:
            out.append(f"| {method} | none keeps the utility | – | – |")
            continue
        setting = ", ".join(f"{k}={v}" for k, v in zip(keys[1:], s.key[1:], strict=False))
        out.append(
            f"| {method} | {setting} | {_pm(s, fq.key, '{:.2g}')} | {_pm(s, mu.key, mu.fmt)} |"
        )
    out.append("\n" + claim_text(best, pair))
    return "\n".join(out)


def claim_text(best: Mapping[str, Setting | None], pair: MetricPair = HEADLINE) -> str:
    """Whether INFLUENCE+GD forgets better than NPO+GD (``pair``'s forgetting) under the utility
    constraint."""
    a, b = best.get(CLAIM), best.get(RIVAL)
    if a is None or b is None:
        missing = ", ".join(m for m, s in ((CLAIM, a), (RIVAL, b)) if s is None)
        return f"Claim not testable: {missing} keeps no setting above the utility floor."
    fa, fb = a.mean(pair.forget) or 0.0, b.mean(pair.forget) or 0.0
    verdict = "holds" if pair.goodness(fa) > pair.goodness(fb) else "does not hold"
    ratio = f" ({fa / fb:.3g}x)" if fb > 0 and not math.isinf(fa / fb) else ""
    way = "higher" if pair.higher_forget else "lower"
    return (
        f"Claim ({CLAIM} reaches {way} {pair.forget_metric.title} than {RIVAL} at that "
        f"utility) {verdict}: {fa:.3g} vs {fb:.3g}{ratio}."
    )
