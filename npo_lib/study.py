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
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from npo_lib.report import METRICS_FILE, ReportError

METRICS = ("forget_quality", "model_utility", "forget_fact_recall", "retain_fact_recall", "privleak")
GROUP_KEYS = ("forget_loss", "lr", "num_epochs")


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


def collect(run_dirs: Sequence[Path], keys: Sequence[str] = GROUP_KEYS) -> list[Setting]:
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


FORMATS = {"forget_quality": "{:.2g}", "model_utility": "{:.3f}", "forget_fact_recall": "{:.2f}", "retain_fact_recall": "{:.2f}", "privleak": "{:.1f}"}


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
    from npo_lib.config import load_config
    from npo_lib.embedded import embedded_paths
    from npo_lib.evaluate import EvalOptions, evaluate

    run = next(r for r in run_dirs if (r / "config.yaml").is_file())
    cfg = load_config(files=[run / "config.yaml"], overrides={"save_dir": None, "resume": False, "overwrite": False})
    if cfg.model_family != "tiny" or cfg.model_path:
        return {}
    paths = embedded_paths(cfg)
    out = {}
    for role, model in (("target", paths.target), ("retain", paths.retain)):
        res = evaluate(cfg, str(model), out_dir=run.parent / f"_{role}", options=EvalOptions(progress=False))
        out[role] = res["aggregates"]
    return out


def plot(settings: Sequence[Setting], refs: Mapping[str, Mapping[str, Any]], path: Path, mu_fraction: float = 0.95) -> Path:
    """Mean forget quality (log) vs mean model utility per setting, seed std as error bars."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 5))
    ax = fig.subplots()
    methods = list(dict.fromkeys(str(s.key[0]) for s in settings))
    colours = {m: f"C{i}" for i, m in enumerate(methods)}
    for m in methods:
        pts = [s for s in settings if str(s.key[0]) == m and s.mean("forget_quality") is not None]
        ax.errorbar([s.mean("model_utility") for s in pts], [max(s.mean("forget_quality"), 1e-30) for s in pts],
                    xerr=[s.std("model_utility") for s in pts], fmt="o", color=colours[m], label=m, alpha=0.8, capsize=2)
    for role, marker in (("target", "*"), ("retain", "D")):
        if role in refs and refs[role].get("forget_quality") is not None:
            ax.scatter([refs[role]["model_utility"]], [max(refs[role]["forget_quality"], 1e-30)], marker=marker, s=160, color="k", label=role, zorder=5)
    floor = utility_floor(refs, mu_fraction)
    if floor is not None:
        ax.axvline(floor, color="0.5", ls="--", lw=1, label=f"{mu_fraction:g} x target MU")
    ax.set_yscale("log")
    ax.set(xlabel="model utility", ylabel="forget quality (log)", title="embedded benchmark: forget quality vs model utility (mean over seeds)")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: never hides a point
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def write_study(sweep_dir: str | Path, out: str | Path = "docs", keys: Sequence[str] = GROUP_KEYS, mu_fraction: float = 0.95) -> dict[str, Any]:
    """Write study.md / study.csv / study_fq_mu.png for the sweep folder; returns their paths and the markdown."""
    root = Path(sweep_dir)
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


def cmd_study(sweep_dir: str, out: str, group_by: str, mu_fraction: float) -> int:
    try:
        res = write_study(sweep_dir, out, tuple(k.strip() for k in group_by.split(",")), mu_fraction)
    except ReportError as e:
        print(f"npo study: {e}", file=sys.stderr)
        return 2
    print(res["markdown"])
    print(f"\nwrote {res['md']}, {res['csv']}, {res['plot']}")
    return 0
