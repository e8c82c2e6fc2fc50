"""The ipywidgets token explorer: pick an example, a score, a colour scale and a threshold; the
heatmap follows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from npo_lib.utils.optional import require
from npo_lib.viz.pages import PAGE_CSS, is_document_table
from npo_lib.viz.render import (
    CSS,
    DEFAULT_GAMMA,
    DEFAULT_PERCENTILE,
    SCALES,
    check_scale,
    compact_css,
    legend_html,
    render_example,
    shared_range,
)
from npo_lib.viz.tables import TokenTable, score_label


class TokenExplorer:
    """ipywidgets explorer of token tables.

    ``widget`` is a VBox of ``example`` (Dropdown), ``score`` (ToggleButtons), ``scale``
    (ToggleButtons: clipped at a percentile of |s| / per example / rank, :data:`render.SCALES`),
    ``threshold`` (FloatSlider on the raw |value|, 0 to the score's clip c), ``compact`` (Checkbox:
    every example on one line) and ``html`` (HTML: legend and heatmap).
    """

    def __init__(
        self,
        tables: Sequence[TokenTable],
        scores: Sequence[str] | None = None,
        threshold: float = 0.0,
        *,
        scale: str = "clip",
        percentile: float = DEFAULT_PERCENTILE,
        gamma: float = DEFAULT_GAMMA,
        compact: bool = False,
    ) -> None:
        widgets = require("ipywidgets")
        if not tables:
            raise ValueError("no token tables to explore")
        check_scale(scale)
        self.tables = list(tables)
        self.percentile, self.gamma = percentile, gamma
        self.score_names = self._score_names(scores)
        self.vmax = {s: shared_range(self.tables, s, percentile) for s in self.score_names}
        self._make_widgets(widgets, threshold, scale, compact)
        self.score.observe(self._on_score, names="value")
        for w in (self.example, self.threshold, self.scale, self.compact):
            w.observe(lambda _change: self.render(), names="value")
        self.render()

    def _score_names(self, scores: Sequence[str] | None) -> list[str]:
        """The scores asked for, else every score row the tables share; at least one."""
        common = [s for s in self.tables[0].scores if all(s in t.scores for t in self.tables)]
        names = list(scores) if scores is not None else common
        if not names:
            raise ValueError(
                "the tables share no score row: add one (tables_from_influence, add_score)"
            )
        return names

    def _make_widgets(self, widgets: Any, threshold: float, scale: str, compact: bool) -> None:
        """The controls, the HTML output and the VBox holding them, set to the first score."""
        first = self.vmax[self.score_names[0]]
        self.example = widgets.Dropdown(
            options=[(f"#{t.index}: {t.title[:70]}", i) for i, t in enumerate(self.tables)],
            value=0,
            description="example",
        )
        self.score = widgets.ToggleButtons(
            options=[(score_label(s), s) for s in self.score_names],
            value=self.score_names[0],
            description="score",
        )
        self.scale = widgets.ToggleButtons(
            options=[(v.label, k) for k, v in SCALES.items()],
            value=scale,
            description="scale",
            tooltips=[v.help for v in SCALES.values()],
        )
        self.threshold = widgets.FloatSlider(
            value=min(threshold, first),
            min=0.0,
            max=first,
            step=first / 100,
            description="|value| ≥",
            readout_format=".3g",
            continuous_update=False,
        )
        self.compact = widgets.Checkbox(
            value=compact, description="compact: one line per example", indent=False
        )
        self.html = widgets.HTML()
        self.widget = widgets.VBox(
            [self.example, self.score, self.scale, self.threshold, self.compact, self.html]
        )

    def _on_score(self, _change: Any) -> None:
        top = self.vmax[self.score.value]
        self.threshold.value = min(self.threshold.value, top)
        self.threshold.max, self.threshold.step = top, top / 100
        self.render()

    def render(self) -> str:
        """Redraw the HTML for the current choice; returns it."""
        name, scale = self.score.value, self.scale.value
        kw = {
            "threshold": self.threshold.value,
            "vmax": self.vmax[name],
            "scales": (scale,),
            "percentile": self.percentile,
            "gamma": self.gamma,
        }
        if self.compact.value:
            body = "".join(render_example(t, name, **kw) for t in self.tables)
        else:
            body = render_example(self.tables[self.example.value], name, **kw)
        legend = legend_html(name, self.vmax[name], scale=scale, percentile=self.percentile)
        mode = f"tnpo-scale-{scale}" + (" tnpo-compact" if self.compact.value else "")
        pieces = PAGE_CSS if any(is_document_table(t) for t in self.tables) else ""
        style = f"<style>{CSS}\n{compact_css('.tnpo-compact')}{pieces}</style>"
        self.html.value = f'{style}<div class="tnpo-view {mode}">{legend}{body}</div>'
        return self.html.value

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)
