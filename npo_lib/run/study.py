"""``npo study SWEEP_DIR``: a method comparison from a finished sweep (mean ± std over seeds).

Groups the sweep's evaluated runs by the config keys that define a setting (method, learning
rate, epochs; the seed is what varies inside a group), evaluates the target and retain models
as the reference points, and writes into ``--out`` (``docs/`` by default):

* ``study.md``: the table of every setting (mean ± std over seeds), the best setting per method
  under the utility constraint, and the claim check;
* ``study.csv``: the same numbers at full precision;
* ``study_fq_mu.png``: forget quality vs model utility of every setting, target and retain marked.

The claim the study tests: INFLUENCE+GD reaches higher forget quality than NPO+GD at model
utility >= ``mu_fraction`` x the target's.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from npo_lib.config import StudyConfig, load_config
from npo_lib.embedded.paths import embedded_paths, uses_embedded
from npo_lib.errors import ReportError
from npo_lib.eval.compute import HEADLINE_METRICS
from npo_lib.run.evaluation import METRICS_FILE, evaluate
from npo_lib.viz.figures import FqMuPoint, plot_fq_mu

METRICS = tuple(m.key for m in HEADLINE_METRICS)
FORMATS = {m.key: m.fmt for m in HEADLINE_METRICS}


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


def _run_config(run: Path) -> dict[str, Any]:
    file = run / "config.yaml"
    if not file.is_file():
        raise ReportError(f"{run} has no config.yaml: not a forget run folder")
    return yaml.safe_load(file.read_text())


def collect(run_dirs: Sequence[Path], keys: Sequence[str]) -> list[Setting]:
    """Settings in first-seen order; runs without an evaluation are skipped."""
    groups: dict[tuple[Any, ...], Setting] = {}
    for run in run_dirs:
        if not (run / METRICS_FILE).is_file():
            continue
        cfg = _run_config(run)
        missing = [k for k in keys if k not in cfg]
        if missing:
            raise ReportError(f"{run}/config.yaml has no {', '.join(missing)}")
        key = tuple(cfg[k] for k in keys)
        agg = json.loads((run / METRICS_FILE).read_text())["aggregates"]
        s = groups.setdefault(key, Setting(key))
        s.runs.append(run.name)
        for m in METRICS:
            s.values.setdefault(m, []).append(agg.get(m))
    return list(groups.values())


def utility_floor(refs: Mapping[str, Mapping[str, Any]], mu_fraction: float) -> float | None:
    """The claim's model-utility bar: ``mu_fraction`` x the target's (None without a target row)."""
    target_mu = refs.get("target", {}).get("model_utility")
    return None if target_mu is None else mu_fraction * target_mu


def best_per_method(settings: Sequence[Setting], mu_floor: float) -> dict[str, Setting | None]:
    """Per method (first key), the setting of highest mean forget quality with mean model
    utility >= ``mu_floor`` (None when no setting of the method keeps that utility)."""
    out: dict[str, Setting | None] = {}
    for s in settings:
        method = str(s.key[0])
        out.setdefault(method, None)
        mu, fq = s.mean("model_utility"), s.mean("forget_quality")
        if mu is None or fq is None or mu < mu_floor:
            continue
        cur = out[method]
        if cur is None or fq > (cur.mean("forget_quality") or -1):
            out[method] = s
    return out


def _pm(s: Setting, m: str, fmt: str) -> str:
    mean, std = s.mean(m), s.std(m)
    return "–" if mean is None else f"{fmt.format(mean)} ± {fmt.format(std or 0.0)}"


def markdown(settings: Sequence[Setting], keys: Sequence[str], refs: Mapping[str, Mapping[str, Any]], mu_fraction: float) -> str:
    """The study's markdown: settings table, reference rows, best per method, the claim."""
    head = [*keys, "seeds", *METRICS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, agg in refs.items():
        cells = [name, *[""] * (len(keys) - 1), "–", *("–" if agg.get(m) is None else FORMATS[m].format(agg[m]) for m in METRICS)]
        lines.append("| " + " | ".join(cells) + " |")
    for s in settings:
        lines.append("| " + " | ".join([*map(str, s.key), str(len(s.runs)), *(_pm(s, m, FORMATS[m]) for m in METRICS)]) + " |")
    floor = utility_floor(refs, mu_fraction)
    out = ["\n".join(lines)]
    if floor is not None:
        best = best_per_method(settings, floor)
        out.append(f"\nBest setting per method with mean model utility >= {mu_fraction:g} x target ({floor:.3f}):\n")
        out.append("| method | setting | forget quality | model utility |\n|---|---|---|---|")
        for method, s in best.items():
            if s is None:
                out.append(f"| {method} | none keeps the utility | – | – |")
            else:
                out.append(f"| {method} | {', '.join(f'{k}={v}' for k, v in zip(keys[1:], s.key[1:]))} | {_pm(s, 'forget_quality', '{:.2g}')} | {_pm(s, 'model_utility', '{:.3f}')} |")
        out.append("\n" + claim_text(best))
    return "\n".join(out)


def claim_text(best: Mapping[str, Setting | None]) -> str:
    """Whether INFLUENCE+GD beats NPO+GD on forget quality under the utility constraint."""
    a, b = best.get("INFLUENCE+GD"), best.get("NPO+GD")
    if a is None or b is None:
        return "Claim not testable: " + ", ".join(m for m, s in (("INFLUENCE+GD", a), ("NPO+GD", b)) if s is None) + " keeps no setting above the utility floor."
    fa, fb = a.mean("forget_quality") or 0.0, b.mean("forget_quality") or 0.0
    verdict = "holds" if fa > fb else "does not hold"
    ratio = f" ({fa / fb:.3g}x)" if fb > 0 and not math.isinf(fa / fb) else ""
    return f"Claim (INFLUENCE+GD reaches higher forget quality than NPO+GD at that utility) {verdict}: {fa:.3g} vs {fb:.3g}{ratio}."


def _references(run_dirs: Sequence[Path]) -> dict[str, dict[str, Any]]:
    """Target and retain aggregates for the sweep's config (evaluated once, then cached)."""
    run = next(r for r in run_dirs if (r / "config.yaml").is_file())
    cfg = load_config(files=[run / "config.yaml"], overrides={"save_dir": None, "resume": False, "overwrite": False})
    if not uses_embedded(cfg) or cfg.model_path:
        return {}
    paths = embedded_paths(cfg)
    out = {}
    for role, model in (("target", paths.target), ("retain", paths.retain)):
        res = evaluate(cfg, str(model), out_dir=run.parent / f"_{role}", progress=False)
        out[role] = res["aggregates"]
    return out


def plot(settings: Sequence[Setting], refs: Mapping[str, Mapping[str, Any]], path: Path, mu_fraction: float) -> Path:
    """Mean forget quality (log) vs mean model utility per setting, seed std as error bars."""
    points = [
        FqMuPoint(", ".join(map(str, s.key[1:])), s.mean("forget_quality"), s.mean("model_utility"),
                  group=str(s.key[0]), mu_err=s.std("model_utility") or 0.0)
        for s in settings
    ]
    points += [FqMuPoint(role, agg.get("forget_quality"), agg.get("model_utility"), role=role) for role, agg in refs.items()]
    plot_fq_mu(points, floor=utility_floor(refs, mu_fraction), floor_label=f"{mu_fraction:g} x target MU", annotate=False,
               title="embedded benchmark: forget quality vs model utility (mean over seeds)", path=path)
    return path


def write_study(sweep_dir: str | Path, out: str | Path, study: StudyConfig) -> dict[str, Any]:
    """Write study.md / study.csv / study_fq_mu.png for the sweep folder; returns their paths and the markdown."""
    keys, mu_fraction = tuple(study.group_by), study.mu_fraction
    root = Path(sweep_dir)
    if not root.is_dir():
        raise ReportError(f"sweep folder not found: {root}")
    run_dirs = sorted(p for p in root.iterdir() if p.is_dir() and (p / "config.yaml").is_file())
    settings = collect(run_dirs, keys)
    if not settings:
        raise ReportError(f"no evaluated runs in {root}")
    refs = _references(run_dirs)
    text = markdown(settings, keys, refs, mu_fraction)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "study.md").write_text(text + "\n")
    with (out / "study.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([*keys, "seeds", *(f"{m}_{s}" for m in METRICS for s in ("mean", "std"))])
        for s in settings:
            w.writerow([*s.key, len(s.runs), *(x for m in METRICS for x in (s.mean(m), s.std(m)))])
    png = plot(settings, refs, out / "study_fq_mu.png", mu_fraction)
    return {"markdown": text, "md": str(out / "study.md"), "csv": str(out / "study.csv"), "plot": str(png)}
