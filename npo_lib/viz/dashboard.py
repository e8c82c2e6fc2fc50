"""The run dashboard: the report table (sortable), forget quality against model utility, a chosen
run's loss curves and its token heatmaps.

Two forms of one view: :class:`RunDashboard`, ipywidgets for ``notebooks/dashboard.ipynb`` (a
dropdown picks the run), and :func:`write_dashboard_html`, one self-contained HTML file for
sharing (``npo report --html``: figures embedded as PNG, the table sorted by clicking a column,
a select box picking the run; no kernel, no network).
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from npo_lib.commands.evaluation import METRICS_FILE
from npo_lib.commands.folders import influence_files
from npo_lib.config import Config, load_config
from npo_lib.errors import ReportError
from npo_lib.eval.registry import DIRECTIONS, TOFU, Metric, metrics_for
from npo_lib.eval.robustness import AttackColumn, attack_columns
from npo_lib.utils.io import atomic_write_text
from npo_lib.utils.optional import require
from npo_lib.viz.explorer import TokenExplorer
from npo_lib.viz.figures import plot_fq_mu, plot_loss_terms
from npo_lib.viz.render import (
    CSS,
    DEFAULT_SCALE,
    SCALES,
    legend_html,
    render_example,
    shared_range,
)
from npo_lib.viz.report import fq_mu_points, load_run, ordered, rows
from npo_lib.viz.tables import TokenTable
from npo_lib.viz.trajectory import trajectory_overlay

VIEW = "dashboard"  # the registry view whose metrics the table shows
HEADLINE = TOFU.headline
SCATTER_TITLE = f"{HEADLINE.forget_metric.title} vs {HEADLINE.utility_metric.title}"


def find_runs(root: str | Path | Sequence[str | Path], depth: int = 3) -> list[Path]:
    """Evaluated run folders: each given folder that holds ``eval/metrics.json`` (or
    ``metrics.json``), else those found below it (a pipeline's or a sweep's runs folder), up to
    ``depth`` levels down; fails naming the folder when there are none."""
    roots = [Path(root)] if isinstance(root, (str, Path)) else [Path(r) for r in root]
    found: list[Path] = []
    for r in roots:
        if not r.is_dir():
            raise ReportError(f"runs folder not found: {r}")
        if (r / METRICS_FILE).is_file() or (r / "metrics.json").is_file():
            found.append(r)
            continue
        below = sorted(
            {
                f.parent.parent
                for f in r.rglob(METRICS_FILE.name)
                if f.parent.name == METRICS_FILE.parent.name
                and len(f.relative_to(r).parts) <= depth + 2
            }
        )
        if not below:
            raise ReportError(
                f"no evaluated runs in {r}: expected <run>/{METRICS_FILE} "
                "(run `npo eval` or `npo run`)"
            )
        found += below
    return list(dict.fromkeys(found))


@dataclass
class RunView:
    """One run of the dashboard: its report row, its folder and what can be drawn of it."""

    name: str
    folder: Path
    row: dict[str, Any]

    @property
    def config_file(self) -> Path:
        return self.folder / "config.yaml"

    @property
    def has_log(self) -> bool:
        return (self.folder / "log.jsonl").is_file()

    def config(self) -> Config | None:
        """The run's resolved config (a forget run), else None (target, retain)."""
        return load_config(files=[self.config_file]) if self.config_file.is_file() else None

    def token_tables(self) -> list[TokenTable] | None:
        """The run's influence and selection-weight rows (its influence files under its own
        selection settings); None when the run has no config or no influence files."""
        cfg = self.config()
        if cfg is None:
            return None
        folder = Path(cfg.influence_dir) if cfg.influence_dir else influence_files(cfg)
        if not (folder / "scores.safetensors").is_file():
            return None
        from npo_lib.viz.run_tables import token_tables

        return token_tables(cfg, folder, progress=False)


def run_views(root: str | Path | Sequence[str | Path]) -> list[RunView]:
    """Every evaluated run under ``root`` (target and retain first), with its report row."""
    runs = ordered([load_run(d) for d in find_runs(root)])
    folders = {
        r.name: (
            r.path.parent.parent
            if r.path.parent.name == METRICS_FILE.parent.name
            else r.path.parent
        )
        for r in runs
    }
    return [RunView(row["name"], folders[row["name"]], row) for row in rows(runs, VIEW)]


def png(fig: Any) -> bytes:
    """A matplotlib figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def sort_views(
    views: Sequence[RunView], key: str = "name", descending: bool = False
) -> list[RunView]:
    """Views sorted by a column (``name`` or a metric key); runs without the value go last."""
    have = [v for v in views if v.row.get(key) is not None]
    missing = [v for v in views if v.row.get(key) is None]
    return sorted(have, key=lambda v: v.row[key], reverse=descending) + missing


def table_columns(views: Sequence[RunView]) -> list[Metric | AttackColumn]:
    """The dashboard view's metric columns, then the attack columns any of the runs holds."""
    held = [c for c in attack_columns() if any(c.key in v.row for v in views)]
    return [*metrics_for(VIEW, [v.row for v in views]), *held]  # the columns rows() kept


def _head_cell(key: str, label: str, direction: str | None, doc: str = "") -> str:
    """A header cell: the label (title and arrow), the direction and what it measures on hover."""
    hover = "; ".join(x for x in (direction and DIRECTIONS[direction].text, doc) if x)
    return f'<th data-key="{key}" title="{html.escape(hover)}">{html.escape(label)}</th>'


def table_html(views: Sequence[RunView]) -> str:
    """The report table as HTML, each column titled with its direction (hover: what it
    measures); each cell keeps its raw value in ``data-value`` (for sorting)."""
    cols = table_columns(views)
    head = _head_cell("name", "run", None) + "".join(
        _head_cell(c.key, c.label, c.direction, c.doc) for c in cols
    )
    body = []
    for v in views:
        cells = [f'<td data-value="{html.escape(v.name)}">{html.escape(v.name)}</td>']
        for c in cols:
            x = v.row.get(c.key)
            raw = "" if x is None else x
            cells.append(f'<td data-value="{raw}" style="text-align:right">{c.format(x)}</td>')
        body.append(f'<tr data-run="{html.escape(v.name)}">{"".join(cells)}</tr>')
    return (
        f'<table class="tnpo-report"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )


TABLE_CSS = """
.tnpo-report { border-collapse: collapse; font-family: sans-serif; font-size: 90%; }
.tnpo-report th, .tnpo-report td { border: 1px solid #ccc; padding: .2em .6em; }
.tnpo-report th { background: #f0f0f0; cursor: pointer; }
"""


def heatmaps_html(
    tables: Sequence[TokenTable], scores: Sequence[str], limit: int | None = None
) -> str:
    """Legends and every example's rows under the clipped scale (the page's default)."""
    names = [s for s in scores if s in tables[0].scores]
    vmax = {n: shared_range(tables, n) for n in names}
    legends = "".join(legend_html(n, vmax[n]) for n in names)
    shown = list(tables)[:limit] if limit else list(tables)
    return legends + "".join(render_example(t, names, vmax=vmax) for t in shown)


class RunDashboard:
    """ipywidgets dashboard of a runs folder (a pipeline's ``runs/<name>``, a sweep) or of run
    folders: ``table`` (sorted by ``sort_by`` / ``descending``), ``scatter`` (forget quality vs
    model utility), and for the run picked in ``run``: ``loss`` (its loss terms) and ``tokens`` (its
    token explorer, when it has influence files); ``trajectories`` overlays the evaluation
    paths of the runs trained with ``eval.during`` (hidden when none was). ``widget`` holds them
    all."""

    def __init__(self, root: str | Path | Sequence[str | Path]) -> None:
        widgets = require("ipywidgets")
        self.views = run_views(root)
        self._tables: dict[str, list[TokenTable] | None] = {}
        columns = [("run", "name"), *((c.label, c.key) for c in table_columns(self.views))]
        self.sort_by = widgets.Dropdown(options=columns, value="name", description="sort by")
        self.descending = widgets.Checkbox(value=False, description="descending", indent=False)
        self.table = widgets.HTML()
        self.scatter = widgets.Image(
            format="png", value=png(plot_fq_mu(fq_mu_points([v.folder for v in self.views])))
        )
        overlay = trajectory_overlay({v.name: v.folder for v in self.views})
        self.trajectories = widgets.Image(format="png", value=png(overlay) if overlay else b"")
        self.trajectories.layout.display = None if overlay else "none"
        runs = [v.name for v in self.views]
        default = next((v.name for v in self.views if v.has_log), runs[0])
        self.run = widgets.Dropdown(options=runs, value=default, description="run")
        self.loss = widgets.Image(format="png")
        self.loss_note = widgets.HTML()
        self.tokens = widgets.VBox()
        self.widget = widgets.VBox(
            [
                widgets.HTML("<b>report</b>"),
                widgets.HBox([self.sort_by, self.descending]),
                self.table,
                widgets.HTML(f"<b>{SCATTER_TITLE}</b>"),
                self.scatter,
                self.trajectories,
                self.run,
                self.loss_note,
                self.loss,
                self.tokens,
            ]
        )
        for w in (self.sort_by, self.descending):
            w.observe(lambda _c: self.show_table(), names="value")
        self.run.observe(lambda _c: self.show_run(), names="value")
        self.show_table()
        self.show_run()

    def view(self, name: str) -> RunView:
        return next(v for v in self.views if v.name == name)

    def show_table(self) -> None:
        """Redraw the report table in the chosen order."""
        self.table.value = f"<style>{TABLE_CSS}</style>" + table_html(
            sort_views(self.views, self.sort_by.value, self.descending.value)
        )

    def tables(self, name: str) -> list[TokenTable] | None:
        if name not in self._tables:
            self._tables[name] = self.view(name).token_tables()
        return self._tables[name]

    def show_run(self) -> None:
        """Loss curves and token explorer of the picked run."""
        widgets = require("ipywidgets")
        v = self.view(self.run.value)
        if v.has_log:
            self.loss.value, self.loss_note.value = png(plot_loss_terms(v.folder)), ""
            self.loss.layout.display = None
        else:
            self.loss.layout.display = "none"
            self.loss_note.value = (
                f"<i>{html.escape(v.name)}: no training log (not a forget run)</i>"
            )
        tables = self.tables(v.name)
        if tables:
            self.explorer = TokenExplorer(tables)
            self.tokens.children = [widgets.HTML("<b>tokens</b>"), self.explorer.widget]
        else:
            self.tokens.children = [
                widgets.HTML(f"<i>{html.escape(v.name)}: no influence files to show tokens of</i>")
            ]

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)


SORT_JS = """
document.querySelectorAll('.tnpo-report th').forEach((th, col) => th.addEventListener('click',
() => {
  const body = th.closest('table').tBodies[0], rows = Array.from(body.rows);
  const down = th.dataset.order !== 'desc';
  th.closest('tr').querySelectorAll('th').forEach(h => delete h.dataset.order);
  th.dataset.order = down ? 'desc' : 'asc';
  const val = r => r.cells[col].dataset.value, num = v => v !== '' && !isNaN(Number(v));
  rows.sort((a, b) => {
    const x = val(a), y = val(b);
    if (x === '' || y === '') return (x === '') - (y === '');
    const c = num(x) && num(y) ? Number(x) - Number(y) : x.localeCompare(y);
    return down ? -c : c;
  });
  rows.forEach(r => body.appendChild(r));
}));
const pick = document.getElementById('tnpo-run');
const show = () => document.querySelectorAll('section[data-run]')
  .forEach(s => { s.hidden = s.dataset.run !== pick.value; });
pick.addEventListener('change', show); show();
"""


def _b64_png(fig: Any) -> str:
    return base64.b64encode(png(fig)).decode()


def run_section(v: RunView, scores: Sequence[str], examples: int | None) -> str:
    """One run's section of the page: its loss curves and its token heatmaps (under the default
    colour scale), or a line saying why there are none."""
    name = html.escape(v.name)
    parts = [f"<h3>{name}</h3>"]
    if v.has_log:
        loss = _b64_png(plot_loss_terms(v.folder))
        parts.append(
            f'<img class="tnpo-loss" alt="loss terms of {name}" src="data:image/png;base64,{loss}">'
        )
    else:
        parts.append("<p><i>no training log (not a forget run)</i></p>")
    tables = v.token_tables()
    if tables:
        heat = heatmaps_html(tables, scores, examples)
        parts.append(f'<div class="tnpo-view tnpo-scale-{DEFAULT_SCALE}">{heat}</div>')
    else:
        parts.append("<p><i>no influence files to show tokens of</i></p>")
    return f'<section data-run="{name}">{"".join(parts)}</section>'


def write_dashboard_html(
    root: str | Path | Sequence[str | Path],
    path: str | Path,
    *,
    title: str = "Run dashboard",
    scores: Sequence[str] = ("influence", "weight"),
    examples: int | None = None,
) -> Path:
    """The dashboard as one self-contained HTML file: the report table (click a column to sort),
    the forget quality / model utility scatter, the runs' trajectories overlaid (when any was
    trained with ``eval.during``), and per run (picked in a select box) its loss curves and
    token heatmaps (``examples`` of them; None: all). Returns the path written."""
    views = run_views(root)
    scatter = _b64_png(plot_fq_mu(fq_mu_points([v.folder for v in views])))
    default = next((v.name for v in views if v.has_log), views[0].name)
    options = "".join(
        f'<option value="{html.escape(v.name)}"{" selected" if v.name == default else ""}>'
        f"{html.escape(v.name)}</option>"
        for v in views
    )
    sections = [run_section(v, scores, examples) for v in views]
    overlay = trajectory_overlay({v.name: v.folder for v in views})
    paths = (
        f'<h2>trajectories</h2><img class="tnpo-trajectories" alt="trajectories" '
        f'src="data:image/png;base64,{_b64_png(overlay)}">\n'
        if overlay
        else ""
    )
    heat_help = html.escape(SCALES[DEFAULT_SCALE].help)
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title>"
        f"<style>{CSS}\n{TABLE_CSS}\nbody {{ font-family: sans-serif; }}</style></head>\n"
        f"<body><h1>{html.escape(title)}</h1>\n"
        f"<h2>report</h2><p>click a column to sort</p>{table_html(views)}\n"
        f'<h2>{SCATTER_TITLE}</h2><img class="tnpo-scatter" alt="{SCATTER_TITLE}" '
        f'src="data:image/png;base64,{scatter}">\n'
        f"{paths}"
        f'<h2>run <select id="tnpo-run">{options}</select></h2>\n'
        f'<p style="color:#555">heatmaps: {heat_help}; hover a token for its raw value</p>'
        + "\n".join(sections)
        + f"\n<script>{SORT_JS}</script></body></html>\n"
    )
    return atomic_write_text(path, page)
