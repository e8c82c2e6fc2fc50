"""Token heatmaps as HTML: each token coloured on a diverging colormap centred at 0, the raw value
on hover, fact tokens outlined; one static page of every example (no kernel, no JavaScript)."""

from __future__ import annotations

import functools
import html
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from npo_lib.utils.io import atomic_write_text
from npo_lib.utils.optional import require
from npo_lib.viz.tables import TokenTable, score_label

CMAP = "RdBu_r"  # diverging: blue below 0, white at 0, red above



def score_range(tables: Iterable[TokenTable], score: str) -> float:
    """The symmetric colour range: max |value| of ``score`` over ``tables`` (1 when all are 0)."""
    top = max((float(np.abs(t.scores[score]).max()) for t in tables if len(t) and score in t.scores), default=0.0)
    return top if np.isfinite(top) and top > 0 else 1.0


@functools.cache
def palette(steps: int = 255) -> tuple[str, ...]:
    """:data:`CMAP` sampled at ``steps`` (odd: the middle one is exactly 0) as hex colours."""
    cmap, to_hex = require("matplotlib").colormaps[CMAP], require("matplotlib.colors").to_hex
    return tuple(to_hex(c) for c in cmap(np.linspace(0.0, 1.0, steps)))


def colour(value: float, vmax: float) -> str:
    """Hex colour of ``value`` on :data:`CMAP` over the symmetric range ``[-vmax, vmax]``
    (a ``TwoSlopeNorm`` centred at 0 with equal halves is this linear map)."""
    pal = palette()
    x = (float(np.clip(value / vmax, -1.0, 1.0)) + 1.0) / 2.0  # [-vmax, vmax] -> [0, 1]
    return pal[round(x * (len(pal) - 1))]


def _ink(value: float, vmax: float) -> str:
    """Text colour readable on the token's background."""
    return "#fff" if abs(value) > 0.6 * vmax else "#111"


CSS = """
.tnpo-example { margin: 0 0 1.2em 0; font-family: sans-serif; }
.tnpo-q { font-weight: 600; margin-bottom: .3em; }
.tnpo-score { color: #555; font-size: 80%; margin: .2em 0; }
.tnpo-tokens { white-space: pre-wrap; font-family: monospace; line-height: 1.9; }
.tnpo-tok { border-radius: 2px; }
.tnpo-tok.tnpo-special { color: #777; font-style: italic; }
.tnpo-tok.tnpo-fact { outline: 2px solid #111; outline-offset: -1px; }
.tnpo-legend { display: flex; align-items: center; gap: .5em; font-size: 80%; font-family: sans-serif; }
.tnpo-bar { width: 220px; height: 12px; border: 1px solid #999; }
.tnpo-factkey { outline: 2px solid #111; padding: 0 .3em; font-family: monospace; }
"""


def _token_span(table: TokenTable, i: int, score: str, threshold: float, vmax: float) -> str:
    value = float(table.scores[score][i])
    s, e = table.offsets[i]
    classes = ["tnpo-tok"] + (["tnpo-fact"] if table.fact[i] else []) + (["tnpo-special"] if e <= s else [])
    title = f"{score_label(score)}: {value:.4g}" + (" · fact token" if table.fact[i] else "")
    style = ""
    if abs(value) >= threshold and value != 0:
        style = f' style="background-color:{colour(value, vmax)};color:{_ink(value, vmax)}"'
    return (
        f'<span class="{" ".join(classes)}" data-value="{value:.6g}" title="{html.escape(title)}"{style}>'
        f"{html.escape(table.tokens[i])}</span>"
    )


def render_tokens(table: TokenTable, score: str, *, threshold: float = 0.0, vmax: float | None = None) -> str:
    """The target text as coloured token spans; text between token spans stays plain."""
    if score not in table.scores:
        raise KeyError(f"example {table.index} has no score '{score}'; it has: {', '.join(table.scores) or 'none'}")
    vmax = vmax if vmax is not None else score_range([table], score)
    parts, cursor = [], 0
    for i, (s, e) in enumerate(table.offsets):
        if e > s and s > cursor:
            parts.append(html.escape(table.target[cursor:s]))  # untokenized gap (trimmed spaces)
        parts.append(_token_span(table, i, score, threshold, vmax))
        cursor = max(cursor, e)
    if cursor:  # without offsets (slow tokenizers) the raw pieces alone stand for the text
        parts.append(html.escape(table.target[cursor:]))
    return f'<div class="tnpo-tokens">{"".join(parts)}</div>'


def render_example(
    table: TokenTable,
    score: str | Sequence[str] = "influence",
    *,
    threshold: float = 0.0,
    vmax: float | Mapping[str, float] | None = None,
    header: bool = True,
) -> str:
    """One example as HTML: its question, then per score its tokens coloured on :data:`CMAP`
    over ``[-vmax, vmax]`` (default: the example's own max |value|), the value in the ``title``
    (hover), fact tokens outlined, tokens with ``|value| < threshold`` left uncoloured."""
    names = [score] if isinstance(score, str) else list(score)
    head = f'<div class="tnpo-q">#{table.index} · {html.escape(table.question)}</div>' if header else ""
    body = []
    for name in names:
        v = vmax.get(name) if isinstance(vmax, Mapping) else vmax
        label = f'<div class="tnpo-score">{html.escape(score_label(name))}</div>' if len(names) > 1 else ""
        body.append(label + render_tokens(table, name, threshold=threshold, vmax=v))
    return f'<div class="tnpo-example" data-index="{table.index}">{head}{"".join(body)}</div>'


def legend_html(score: str, vmax: float, steps: int = 11) -> str:
    """A colour bar from -vmax to +vmax and the fact-outline key."""
    stops = ", ".join(colour(v, vmax) for v in np.linspace(-vmax, vmax, steps))
    return (
        f'<div class="tnpo-legend"><span>{html.escape(score_label(score))}</span>'
        f"<span>{-vmax:.3g}</span>"
        f'<span class="tnpo-bar" style="background:linear-gradient(to right, {stops})"></span>'
        f'<span>{vmax:.3g}</span><span class="tnpo-factkey">fact token</span></div>'
    )


def write_heatmap_page(
    tables: Sequence[TokenTable],
    path: str | Path,
    score: str | Sequence[str] = "influence",
    *,
    title: str = "Token heatmaps",
    threshold: float = 0.0,
) -> Path:
    """A self-contained HTML page of every example's heatmap (no kernel, no JavaScript).

    One colour range per score over all examples (so examples compare), a legend per score,
    each example under its question; hover a token for its value. Returns the path written.
    """
    names = [score] if isinstance(score, str) else list(score)
    vmax = {name: score_range(tables, name) for name in names}
    legends = "".join(legend_html(name, vmax[name]) for name in names)
    note = (
        f"{len(tables)} examples · hover a token for its value · outlined: fact tokens"
        + (f" · |value| &lt; {threshold:.3g} left white" if threshold > 0 else "")
    )
    examples = "\n".join(render_example(t, names, threshold=threshold, vmax=vmax) for t in tables)
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head>\n"
        f'<body><h1 style="font-family:sans-serif">{html.escape(title)}</h1>{legends}'
        f'<p style="font-family:sans-serif;color:#555">{note}</p>\n{examples}\n</body></html>\n'
    )
    return atomic_write_text(path, page)
