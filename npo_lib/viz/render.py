"""Token heatmaps as HTML: each token coloured on a diverging colormap centred at 0, the raw value
on hover, fact tokens outlined; one static page of every example (no kernel, no JavaScript).

Colour scales (:data:`SCALES`). A few outlier tokens (influence scores reach ±10⁵ on special
tokens while a fact token scores 10²) would set a max-|value| range and leave the page white, so
the default scale clips: with c = the ``percentile``-th percentile of the non-zero |s| over every
token of every example, a token's colour position is x = sign(s) · min(|s| / c, 1)^γ (values
beyond ±c saturate; the hover still shows the raw s). The power γ = 0.5 (matplotlib's
``PowerNorm``, mirrored about 0) keeps 0 white and the order of |s|, and lifts an example whose
scores are a tenth of c to a visible 0.32 instead of 0.1: examples' scales span a decade.
``example`` takes c per example (examples no longer compare, each one's pattern shows); ``rank``
colours by the signed rank of |s| inside the example, x = sign(s) · rank(|s|) / n_nonzero, so only
the order counts.

Selection rows (the INFLUENCE loss's token weights) are not scores but the weights the loss
multiplies: they are drawn on their own scale, w / max w, so every token trained on (w > 0) is
coloured, and the row says how many tokens that is.

The static page carries every scale's colour of a token as CSS custom properties
(``--bg-clip``, ``--bg-example``, ``--bg-rank``) and switches between them with radio buttons and
CSS selectors only; a checkbox turns on the compact mode (one line per example, one score row).
"""

from __future__ import annotations

import functools
import html
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from npo_lib.config import Config
from npo_lib.utils.io import atomic_write_text
from npo_lib.utils.optional import require
from npo_lib.viz.pages import (
    PAGE_CSS,
    is_document_table,
    page_controls,
    page_size_of,
    paged,
    token_anchor,
    top_tokens,
    top_tokens_html,
)
from npo_lib.viz.tables import TokenTable, is_selection, score_label

CMAP = "RdBu_r"  # diverging: blue below 0, white at 0, red above
VIZ_DEFAULTS = Config().viz  # the schema's viz.* defaults
DEFAULT_PERCENTILE: float = VIZ_DEFAULTS.clip_percentile  # the clip scale's percentile of |s|
DEFAULT_GAMMA: float = VIZ_DEFAULTS.gamma  # exponent of the power map |x|^γ
DEFAULT_SCALE: str = VIZ_DEFAULTS.scale  # the scale shown first
INK_SWITCH = 0.6  # |x| above which the token's text turns white


def clip_value(
    values: Iterable[float] | np.ndarray, percentile: float = DEFAULT_PERCENTILE
) -> float:
    """The ``percentile``-th percentile of the finite, non-zero |values| (1 when there are none).

    Zeros are left out so that a sparse row (most tokens 0) still gets the range of its non-zero
    tokens; ``percentile=100`` is the plain max |value|.
    """
    a = np.abs(
        np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=np.float64)
    )
    a = a[np.isfinite(a) & (a > 0)]
    if not a.size:
        return 1.0
    top = float(np.percentile(a, percentile))
    return top if top > 0 else 1.0


def score_range(
    tables: Iterable[TokenTable], score: str, percentile: float = DEFAULT_PERCENTILE
) -> float:
    """The shared symmetric colour range c of ``score`` over ``tables``: the ``percentile``-th
    percentile of its non-zero |values| (:func:`clip_value`; 100 gives the max |value|)."""
    rows = [t.scores[score] for t in tables if len(t) and score in t.scores]
    return clip_value(np.concatenate(rows) if rows else np.zeros(0), percentile)


def power_map(values: np.ndarray, c: float, gamma: float = DEFAULT_GAMMA) -> np.ndarray:
    """x = sign(s) · min(|s| / c, 1)^γ: the symmetric power norm, clipped at ±c."""
    return np.sign(values) * np.minimum(np.abs(values) / c, 1.0) ** gamma


def _positions_clip(
    values: np.ndarray, shared: float, percentile: float, gamma: float
) -> np.ndarray:
    return power_map(values, shared, gamma)


def _positions_example(
    values: np.ndarray, shared: float, percentile: float, gamma: float
) -> np.ndarray:
    return power_map(values, clip_value(values, percentile), gamma)


def _positions_rank(
    values: np.ndarray, shared: float, percentile: float, gamma: float
) -> np.ndarray:
    a = np.abs(np.nan_to_num(values))
    nonzero = a > 0
    out = np.zeros_like(a)
    if nonzero.any():
        order = np.argsort(np.argsort(a[nonzero], kind="stable"), kind="stable")  # 0 = smallest |s|
        out[nonzero] = np.sign(values[nonzero]) * (order + 1) / nonzero.sum()
    return out


@dataclass(frozen=True)
class Scale:
    """A colour scale: maps one example's raw row (the shared clip c, the percentile, γ) to
    positions x ∈ [−1, 1]; ``ends`` gives its legend's two end labels from (c, percentile)."""

    label: str
    help: str
    positions: Callable[[np.ndarray, float, float, float], np.ndarray]
    ends: Callable[[float, float], tuple[str, str]]


SCALES: dict[str, Scale] = {
    "clip": Scale(
        "clipped",
        "(s / c)^γ, c = a percentile of |s| over all examples (examples compare)",
        _positions_clip,
        lambda c, pct: (f"≤ {-c:.3g}", f"≥ {c:.3g} (p{pct:g} of |s|; 0 white)"),
    ),
    "example": Scale(
        "per example",
        "(s / c_i)^γ, c_i = the same percentile inside each example",
        _positions_example,
        lambda c, pct: (f"−p{pct:g} of the example", f"+p{pct:g}"),
    ),
    "rank": Scale(
        "rank",
        "sign(s) · rank(|s|) / n inside each example (order only)",
        _positions_rank,
        lambda c, pct: ("−top rank", "+top rank"),
    ),
}


def check_scale(name: str) -> Scale:
    """The :data:`SCALES` entry ``name``; an unknown name fails naming the valid ones."""
    if name not in SCALES:
        raise KeyError(f"unknown colour scale '{name}'; valid: {', '.join(SCALES)}")
    return SCALES[name]


def positions(
    table: TokenTable,
    score: str,
    scale: str,
    shared: float,
    percentile: float = DEFAULT_PERCENTILE,
    gamma: float = DEFAULT_GAMMA,
) -> np.ndarray:
    """Colour positions x ∈ [−1, 1] of ``table``'s ``score`` row under ``scale``; a selection row
    (token weights) is always w / ``shared`` (pass its max weight), linear."""
    values = table.scores[score]
    if is_selection(score):
        return np.clip(values / shared, -1.0, 1.0)
    return check_scale(scale).positions(values, shared, percentile, gamma)


def shared_range(
    tables: Iterable[TokenTable], score: str, percentile: float = DEFAULT_PERCENTILE
) -> float:
    """c of ``score``: its clip percentile, or for a selection row its max weight."""
    return score_range(tables, score, 100.0 if is_selection(score) else percentile)


@functools.cache
def palette(steps: int = 255) -> tuple[str, ...]:
    """:data:`CMAP` sampled at ``steps`` (odd: the middle one is exactly 0) as hex colours."""
    cmap, to_hex = require("matplotlib").colormaps[CMAP], require("matplotlib.colors").to_hex
    return tuple(to_hex(c) for c in cmap(np.linspace(0.0, 1.0, steps)))


def position_colour(x: float) -> str:
    """Hex colour of position ``x`` ∈ [−1, 1] on :data:`CMAP` (0 is the middle, white)."""
    pal = palette()
    return pal[round((float(np.clip(x, -1.0, 1.0)) + 1.0) / 2.0 * (len(pal) - 1))]


def colour(value: float, vmax: float) -> str:
    """Hex colour of ``value`` on :data:`CMAP` over the symmetric range ``[-vmax, vmax]``
    (a ``TwoSlopeNorm`` centred at 0 with equal halves is this linear map)."""
    return position_colour(value / vmax)


CSS = """
.tnpo-example { margin: 0 0 1.2em 0; font-family: sans-serif; }
.tnpo-q { font-weight: 600; margin-bottom: .3em; }
.tnpo-score { color: #555; font-size: 80%; margin: .2em 0; }
.tnpo-count { color: #777; font-size: 90%; margin-left: .6em; }
.tnpo-idx { display: none; }
.tnpo-tokens { white-space: pre-wrap; font-family: monospace; line-height: 1.9; }
.tnpo-tok { border-radius: 2px; }
.tnpo-tok.tnpo-special { font-style: italic; }
.tnpo-tok.tnpo-fact { outline: 2px solid #111; outline-offset: -1px; }
.tnpo-legend {
  display: flex; align-items: center; gap: .5em; font-size: 80%; font-family: sans-serif; }
.tnpo-bar { width: 220px; height: 12px; border: 1px solid #999; }
.tnpo-factkey { outline: 2px solid #111; padding: 0 .3em; font-family: monospace; }
.tnpo-controls { font-family: sans-serif; font-size: 90%; margin: .4em 0 1em 0; }
.tnpo-controls label { cursor: pointer; }
""" + "".join(  # each scale's colours under its class, the default scale's without one
    f"{'' if name == DEFAULT_SCALE else f'.tnpo-scale-{name} '}.tnpo-tok {{ "
    f"background-color: var(--bg-{name}); color: var(--fg-{name}, #111); }}\n"
    for name in sorted(SCALES, key=lambda n: n != DEFAULT_SCALE)
)

# The compact mode (one line per example: its index, then its first score row), as
# (selector, declarations): under a ``.tnpo-compact`` container (the explorer) or, in the static
# page, while the compact checkbox is checked.
COMPACT_RULES: tuple[tuple[str, str], ...] = (
    (".tnpo-example", "margin: 0; display: flex; gap: .6em; align-items: baseline;"),
    (".tnpo-q, .tnpo-score, .tnpo-count", "display: none;"),
    (".tnpo-idx", "display: inline; font: 80% monospace; color: #555; min-width: 3em;"),
    (".tnpo-row", "display: none;"),
    (".tnpo-row.tnpo-first", "display: block; flex: 1; min-width: 0;"),
    (
        ".tnpo-tokens",
        "white-space: nowrap; overflow: hidden; text-overflow: ellipsis; line-height: 1.5;",
    ),
)


def compact_css(scope: str) -> str:
    """:data:`COMPACT_RULES` under the selector ``scope``."""
    return "\n".join(
        ", ".join(f"{scope} {s.strip()}" for s in sel.split(",")) + f" {{ {body} }}"
        for sel, body in COMPACT_RULES
    )


def _token_span(
    table: TokenTable,
    i: int,
    score: str,
    threshold: float,
    xs: Mapping[str, np.ndarray],
    anchor: bool = False,
) -> str:
    value = float(table.scores[score][i])
    s, e = table.offsets[i]
    classes = (
        ["tnpo-tok"]
        + (["tnpo-fact"] if table.fact[i] else [])
        + (["tnpo-special"] if e <= s else [])
    )
    title = f"{score_label(score)}: {value:.4g}" + (" · fact token" if table.fact[i] else "")
    style = ""
    if abs(value) >= threshold and value != 0:
        props = []
        for name, x in xs.items():
            props.append(f"--bg-{name}:{position_colour(x[i])}")
            if abs(x[i]) > INK_SWITCH:
                props.append(f"--fg-{name}:#fff")
        style = f' style="{";".join(props)}"'
    ident = f' id="{token_anchor(table, i)}"' if anchor else ""
    return (
        f'<span{ident} class="{" ".join(classes)}" data-value="{value:.6g}" '
        f'title="{html.escape(title)}"{style}>{html.escape(table.tokens[i])}</span>'
    )


def render_tokens(
    table: TokenTable,
    score: str,
    *,
    threshold: float = 0.0,
    vmax: float | None = None,
    scales: Sequence[str] = (DEFAULT_SCALE,),
    percentile: float = DEFAULT_PERCENTILE,
    gamma: float = DEFAULT_GAMMA,
    anchors: Collection[int] = (),
) -> str:
    """The target text as coloured token spans; text between token spans stays plain; the
    tokens of ``anchors`` carry an id (:func:`pages.token_anchor`) that links jump to.

    Each coloured span holds its colour under every scale of ``scales`` as ``--bg-<scale>``; the
    enclosing ``tnpo-scale-<scale>`` class (default: :data:`DEFAULT_SCALE`) picks one. ``vmax``
    is the shared c (default: this example's own :func:`shared_range`). Tokens with
    ``|value| < threshold`` and zeros stay uncoloured.
    """
    if score not in table.scores:
        have = ", ".join(table.scores) or "none"
        raise KeyError(f"example {table.index} has no score '{score}'; it has: {have}")
    shared = vmax if vmax is not None else shared_range([table], score, percentile)
    xs = {name: positions(table, score, name, shared, percentile, gamma) for name in scales}
    parts, cursor = [], 0
    for i, (s, e) in enumerate(table.offsets):
        if e > s and s > cursor:
            parts.append(html.escape(table.target[cursor:s]))  # untokenized gap (trimmed spaces)
        parts.append(_token_span(table, i, score, threshold, xs, i in anchors))
        cursor = max(cursor, e)
    if cursor:  # without offsets (slow tokenizers) the raw pieces alone stand for the text
        parts.append(html.escape(table.target[cursor:]))
    return f'<div class="tnpo-tokens">{"".join(parts)}</div>'


def selection_count(table: TokenTable, score: str) -> str:
    """'trained on k of n tokens (weight > 0)' for a selection row."""
    k = int(np.sum(table.scores[score] > 0))
    return f"trained on {k} of {len(table)} tokens (weight &gt; 0)"


def render_example(
    table: TokenTable,
    score: str | Sequence[str] = "influence",
    *,
    threshold: float = 0.0,
    vmax: float | Mapping[str, float] | None = None,
    header: bool = True,
    scales: Sequence[str] = (DEFAULT_SCALE,),
    percentile: float = DEFAULT_PERCENTILE,
    gamma: float = DEFAULT_GAMMA,
) -> str:
    """One example as HTML: its question, then per score a row of its tokens coloured on
    :data:`CMAP` (positions of :func:`positions`, c = ``vmax``, default this example's own), the
    raw value in the ``title`` (hover), fact tokens outlined, tokens with ``|value| < threshold``
    left uncoloured; a selection row also says how many tokens are trained on. A document
    piece shows its source instead of a question, and links to its top tokens."""
    names = [score] if isinstance(score, str) else list(score)
    head = (
        f'<div class="tnpo-q">#{table.index} · {html.escape(table.title)}</div>' if header else ""
    )
    idx = f'<span class="tnpo-idx" title="{html.escape(table.title)}">#{table.index}</span>'
    top: list[int] = []
    if is_document_table(table):
        top = top_tokens(table, names[0])
        head += top_tokens_html(table, names[0], top)
    body = []
    for k, name in enumerate(names):
        v = vmax.get(name) if isinstance(vmax, Mapping) else vmax
        count = (
            f'<span class="tnpo-count">{selection_count(table, name)}</span>'
            if is_selection(name)
            else ""
        )
        label = (
            f'<div class="tnpo-score">{html.escape(score_label(name))}{count}</div>'
            if len(names) > 1 or count
            else ""
        )
        tokens = render_tokens(
            table,
            name,
            threshold=threshold,
            vmax=v,
            scales=scales,
            percentile=percentile,
            gamma=gamma,
            anchors=top if k == 0 else (),
        )
        first = " tnpo-first" if k == 0 else ""
        body.append(
            f'<div class="tnpo-row{first}" data-score="{html.escape(name)}">{label}{tokens}</div>'
        )
    kind = "tnpo-example tnpo-doc" if is_document_table(table) else "tnpo-example"
    return f'<div class="{kind}" data-index="{table.index}">{head}{idx}{"".join(body)}</div>'


def legend_html(
    score: str,
    vmax: float,
    steps: int = 11,
    *,
    scale: str = DEFAULT_SCALE,
    percentile: float = DEFAULT_PERCENTILE,
) -> str:
    """A colour bar and its end values, and the fact-outline key.

    Under ``clip`` the ends are ∓c (values beyond saturate); a selection row runs 0 to its max
    weight; the per-example and rank scales have no shared values, their ends say so."""
    stops = ", ".join(position_colour(x) for x in np.linspace(-1.0, 1.0, steps))
    if is_selection(score):
        lo, hi = "0", f"{vmax:.3g}"
        stops = ", ".join(position_colour(x) for x in np.linspace(0.0, 1.0, steps))
    else:
        lo, hi = check_scale(scale).ends(vmax, percentile)
    return (
        f'<div class="tnpo-legend"><span>{html.escape(score_label(score))}</span>'
        f"<span>{html.escape(lo)}</span>"
        f'<span class="tnpo-bar" style="background:linear-gradient(to right, {stops})"></span>'
        f'<span>{html.escape(hi)}</span><span class="tnpo-factkey">fact token</span></div>'
    )


def _controls(scales: Sequence[str], extra: str = "") -> tuple[str, str]:
    """Radio buttons (scale) and a checkbox (compact), and the CSS rules that make them act;
    ``extra`` ends the controls line (the page labels)."""
    inputs, labels, rules = [], [], []
    for i, s in enumerate(scales):
        checked = " checked" if i == 0 else ""
        inputs.append(
            f'<input type="radio" name="tnpo-scale" id="tnpo-scale-{s}" value="{s}"{checked} '
            "hidden>"
        )
        labels.append(
            f'<label for="tnpo-scale-{s}" title="{html.escape(SCALES[s].help)}">'
            f"{html.escape(SCALES[s].label)}</label>"
        )
        rules.append(
            f"#tnpo-scale-{s}:checked ~ .tnpo-main .tnpo-tok {{ background-color: var(--bg-{s}); "
            f"color: var(--fg-{s}, #111); }}"
        )
        rules.append(
            f"#tnpo-scale-{s}:checked ~ .tnpo-controls label[for=tnpo-scale-{s}] "
            "{ font-weight: 700; text-decoration: underline; }"
        )
        rules.append(
            f"#tnpo-scale-{s}:checked ~ .tnpo-main .tnpo-legends > "
            f"div:not([data-scale={s}]) {{ display: none; }}"
        )
    inputs.append('<input type="checkbox" id="tnpo-compact" hidden>')
    rules.append(
        "#tnpo-compact:checked ~ .tnpo-controls label[for=tnpo-compact] "
        "{ font-weight: 700; text-decoration: underline; }"
    )
    rules.append(compact_css("#tnpo-compact:checked ~ .tnpo-main"))
    controls = (
        '<div class="tnpo-controls">scale: '
        + " · ".join(labels)
        + ' &nbsp;|&nbsp; <label for="tnpo-compact" '
        + 'title="one line per example, the first score row">'
        + f"compact (one line per example)</label>{extra}</div>"
    )
    return "".join(inputs) + controls, "\n".join(rules)


def write_heatmap_page(
    tables: Sequence[TokenTable],
    path: str | Path,
    score: str | Sequence[str] = "influence",
    *,
    title: str = "Token heatmaps",
    threshold: float = 0.0,
    percentile: float = DEFAULT_PERCENTILE,
    gamma: float = DEFAULT_GAMMA,
    scales: Sequence[str] = tuple(SCALES),
    page_size: int | None = None,
) -> Path:
    """A self-contained HTML page of every example's heatmap (no kernel, no JavaScript).

    One clip c per score over all examples (so examples compare), a legend per score, each
    example under its question (a document piece under its source, with links to its top
    tokens); hover a token for its raw value. Radio buttons switch the scale (clipped, per
    example, rank) and the page (``page_size`` examples each; default
    :data:`pages.DOCUMENT_PAGE_SIZE` for document pieces, one page for QA), a checkbox the
    compact mode. Returns the path written.
    """
    names = [score] if isinstance(score, str) else list(score)
    for s in scales:
        check_scale(s)
    vmax = {name: shared_range(tables, name, percentile) for name in names}
    legends = "".join(
        f'<div data-scale="{s}">'
        + "".join(legend_html(n, vmax[n], scale=s, percentile=percentile) for n in names)
        + "</div>"
        for s in scales
    )
    size = page_size_of(tables, page_size)
    kw = {"threshold": threshold, "vmax": vmax, "scales": scales, "percentile": percentile}
    examples, n_pages = paged([render_example(t, names, gamma=gamma, **kw) for t in tables], size)
    note = f"{len(tables)} examples · hover a token for its raw value · outlined: fact tokens" + (
        f" · |value| &lt; {threshold:.3g} left white" if threshold > 0 else ""
    )
    note += f" · {size} per page" if n_pages > 1 else ""
    page_inputs, page_labels, page_rules = page_controls(n_pages)
    controls, rules = _controls(scales, page_labels)
    if any(is_document_table(t) for t in tables):
        rules += f"\n{PAGE_CSS}{page_rules}"
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{CSS}\n{rules}</style></head>\n"
        f'<body><h1 style="font-family:sans-serif">{html.escape(title)}</h1>'
        f'{page_inputs}{controls}<div class="tnpo-main"><div class="tnpo-legends">{legends}</div>'
        f'<p style="font-family:sans-serif;color:#555">{note}</p>\n{examples}\n'
        "</div></body></html>\n"
    )
    return atomic_write_text(path, page)
