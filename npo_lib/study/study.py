"""``npo study SWEEP_DIR...``: the method comparison of finished sweeps, at matched utility.

Every evaluated run becomes a :class:`~npo_lib.study.frontier.RunResult`: its method (the
objective, plus the selection / influence settings that differ from the defaults, e.g.
``INFLUENCE+GD random``), its strength setting (``study.strength_keys``: lr, epochs,
forget_coeff), its seed, its benchmark (``study.benchmark_keys``). The target and retain models
are evaluated once per benchmark as the reference points. Written into ``--out`` (default
``<first SWEEP_DIR>/study``; ``npo study --run``: ``<runs_dir>/<plan>-study``), never over an
earlier study there unless ``--overwrite`` (the published ``docs/study.md`` only by ``--out docs``):

* ``study.md``: per benchmark, each method's forgetting at 0.95 and 0.98 x the target's utility
  on every pair of the benchmark's plug-in (TOFU: forget quality vs model utility, forget fact
  recall vs retain fact recall; MUSE: KnowMem and VerbMem forget vs KnowMem retain), read on the
  Pareto frontier of each seed, mean over seeds with a bootstrap 95 % interval,
  the forget fact recall after the relearning and 4-bit attacks at the matched setting, the
  selection controls of INFLUENCE in their own table, and the verdict built from the numbers;
* ``study.csv`` (those numbers), ``study_settings.csv`` (every grid point, mean ± std);
* ``study_frontier.png`` (frontiers with intervals, target and retain marked),
  ``study_selection.png`` (the selection controls).

The runs are read by :mod:`npo_lib.study.runs`, each benchmark analysed and its verdict built by
:mod:`npo_lib.study.readings`, its markdown, CSV rows and figure panels laid out by
:mod:`npo_lib.study.tables`; the metrics, their titles and directions come from the metric
registry (:mod:`npo_lib.eval.registry`). The adaptive search, the plan and ``npo study --run``
live in :mod:`npo_lib.study.plan`; the first study's grid-point functions (``collect``,
``best_per_method``, ``markdown``) in :mod:`npo_lib.study.grid`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from npo_lib.config import StudyConfig
from npo_lib.errors import ReportError
from npo_lib.study.figures import plot_frontiers, plot_selection
from npo_lib.study.frontier import RunResult
from npo_lib.study.grid import Setting, best_per_method, claim_text, collect, markdown
from npo_lib.study.readings import (
    BenchmarkStudy,
    MethodRow,
    analyse,
    fmt_summary,
    verdict,
)
from npo_lib.study.runs import (
    ATTACKS_DIR,
    ReferencesFn,
    config_defaults,
    flatten,
    load_results,
    references_file,
    references_for,
    run_folders,
    run_metrics,
    run_time_line,
)
from npo_lib.study.tables import (
    benchmark_markdown,
    frontier_panels,
    selection_axes,
    selection_groups,
    settings_rows,
    study_csv_rows,
)
from npo_lib.utils.io import write_csv_rows

__all__ = [  # what notebooks, the CLI and earlier code import from here
    "ATTACKS_DIR",
    "BenchmarkStudy",
    "MethodRow",
    "Setting",
    "analyse",
    "best_per_method",
    "check_outputs",
    "claim_text",
    "collect",
    "config_defaults",
    "flatten",
    "fmt_summary",
    "load_results",
    "markdown",
    "references_file",
    "references_for",
    "run_folders",
    "run_metrics",
    "verdict",
    "write_study",
]


# result key -> file written into ``--out`` (the selection figure only with selection controls)
OUTPUTS = {
    "md": "study.md",
    "csv": "study.csv",
    "settings_csv": "study_settings.csv",
    "frontier": "study_frontier.png",
}
SELECTION_FILE = "study_selection.png"
DEFAULT_OUT = "study"  # the study of SWEEP_DIR... goes to <first SWEEP_DIR>/study by default


def check_outputs(out: str | Path, overwrite: bool) -> None:
    """Refuse (one line naming the file and the flag) a folder that holds any output of a study,
    unless ``overwrite``."""
    held = next((f for f in (*OUTPUTS.values(), SELECTION_FILE) if (Path(out) / f).exists()), None)
    if held is not None and not overwrite:
        raise ReportError(
            f"{Path(out) / held} exists: pass --overwrite to replace the study there, "
            "or choose another --out"
        )


def load_benchmarks(
    roots: Sequence[Path], study: StudyConfig
) -> tuple[dict[str, list[RunResult]], dict[str, Path]]:
    """The evaluated runs of every sweep folder by benchmark, and the folder each benchmark was
    first seen in (where its reference evaluations sit)."""
    benches: dict[str, list[RunResult]] = {}
    where: dict[str, Path] = {}
    for root in roots:
        for name, rs in load_results(run_folders(root), study).items():
            benches.setdefault(name, []).extend(rs)
            where.setdefault(name, root)
    if not benches:
        raise ReportError(f"no evaluated runs in {', '.join(map(str, roots))}")
    return benches, where


def study_markdown(studies: Sequence[BenchmarkStudy], study: StudyConfig, cost: list[str]) -> str:
    """study.md: every benchmark's section, then the run time of the sweeps."""
    return "\n".join(
        [
            "# Method study: frontiers at matched utility",
            "",
            *(benchmark_markdown(b, study) for b in studies),
            *(["## Cost", "", *(f"- {c}" for c in cost), ""] if cost else []),
        ]
    )


def write_study(
    sweep_dir: str | Path | Sequence[str | Path],
    out: str | Path | None,
    study: StudyConfig,
    *,
    references: ReferencesFn | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write study.md, study.csv, study_settings.csv, study_frontier.png, study_selection.png
    for one or more sweep folders (e.g. one per benchmark) into ``out`` (None: ``<first sweep
    folder>/study``); returns their paths and the markdown.

    ``references(runs, sweep_folder)`` gives a benchmark's target / retain aggregates (default:
    evaluated beside the runs, cached). A folder that holds any of these files is refused unless
    ``overwrite`` (:func:`check_outputs`).
    """
    roots = (
        [Path(sweep_dir)] if isinstance(sweep_dir, (str, Path)) else [Path(p) for p in sweep_dir]
    )
    out = Path(out) if out is not None else roots[0] / DEFAULT_OUT
    check_outputs(out, overwrite)
    benches, where = load_benchmarks(roots, study)
    refs_of = references or references_for
    studies = [analyse(name, rs, refs_of(rs, where[name]), study) for name, rs in benches.items()]
    text = study_markdown(studies, study, [x for r in roots if (x := run_time_line(r))])
    out.mkdir(parents=True, exist_ok=True)
    (out / "study.md").write_text(text + "\n")
    write_csv_rows(out / "study.csv", study_csv_rows(studies))
    settings = [{"benchmark": b.name, **row} for b in studies for row in settings_rows(b.results)]
    write_csv_rows(out / "study_settings.csv", settings)
    plot_frontiers(frontier_panels(studies, study), path=out / "study_frontier.png")
    paths = {"markdown": text, **{k: str(out / f) for k, f in OUTPUTS.items()}}
    groups = selection_groups(studies, study)
    if any(len(g) > 1 for g in groups.values()):
        paths["selection"] = str(out / SELECTION_FILE)
        axes = selection_axes(studies, study)
        first = next(iter(axes.values()))
        plot_selection(
            groups, xlabel=first[0], log_x=first[1], axes_of=axes, path=out / SELECTION_FILE
        )
    else:
        (out / SELECTION_FILE).unlink(missing_ok=True)  # an earlier study's, replaced
    return {**paths, "studies": studies}
