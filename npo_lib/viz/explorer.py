"""The ipywidgets token explorer: pick an example, a score and a threshold; the heatmap follows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from npo_lib.utils.optional import require
from npo_lib.viz.render import CSS, legend_html, render_example, score_range
from npo_lib.viz.tables import TokenTable, score_label


class TokenExplorer:
    """ipywidgets explorer: pick an example, a score and a threshold; the heatmap follows.

    ``widget`` is a VBox of ``example`` (Dropdown), ``score`` (ToggleButtons), ``threshold``
    (FloatSlider, 0 to the score's range) and ``html`` (HTML: legend and heatmap).
    """

    def __init__(self, tables: Sequence[TokenTable], scores: Sequence[str] | None = None, threshold: float = 0.0) -> None:
        widgets = require("ipywidgets")
        if not tables:
            raise ValueError("no token tables to explore")
        self.tables = list(tables)
        common = [s for s in self.tables[0].scores if all(s in t.scores for t in self.tables)]
        self.score_names = list(scores) if scores is not None else common
        if not self.score_names:
            raise ValueError("the tables share no score row: add one (tables_from_influence, add_score)")
        self.vmax = {s: score_range(self.tables, s) for s in self.score_names}
        first = self.vmax[self.score_names[0]]
        self.example = widgets.Dropdown(
            options=[(f"#{t.index}: {t.question[:70]}", i) for i, t in enumerate(self.tables)], value=0,
            description="example",
        )
        self.score = widgets.ToggleButtons(
            options=[(score_label(s), s) for s in self.score_names], value=self.score_names[0], description="score"
        )
        self.threshold = widgets.FloatSlider(
            value=min(threshold, first), min=0.0, max=first, step=first / 100, description="|value| ≥",
            readout_format=".3g", continuous_update=False,
        )
        self.html = widgets.HTML()
        self.widget = widgets.VBox([self.example, self.score, self.threshold, self.html])
        self.score.observe(self._on_score, names="value")
        for w in (self.example, self.threshold):
            w.observe(lambda _change: self.render(), names="value")
        self.render()

    def _on_score(self, _change: Any) -> None:
        top = self.vmax[self.score.value]
        self.threshold.value = min(self.threshold.value, top)
        self.threshold.max, self.threshold.step = top, top / 100
        self.render()

    def render(self) -> str:
        """Redraw the HTML for the current choice; returns it."""
        name, table = self.score.value, self.tables[self.example.value]
        body = render_example(table, name, threshold=self.threshold.value, vmax=self.vmax[name])
        self.html.value = f"<style>{CSS}</style>{legend_html(name, self.vmax[name])}{body}"
        return self.html.value

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)
