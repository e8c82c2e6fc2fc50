"""Document pieces on the heatmap page: pages of pieces and each piece's top tokens.

A document benchmark (MUSE, WMDP) gives hundreds of forget pieces of up to ``max_length`` tokens
each, none with a question. The static page then shows ``page_size`` pieces at a time (radio
buttons and CSS selectors, no JavaScript, as the scale switch), each under its source (file,
document, first character), its long text wrapped, and above its tokens the highest-|value|
tokens of its first score row as links to them, so the tokens that matter are found without
reading the whole piece. A QA page (TOFU) has neither: its examples are short and few.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

import numpy as np

from npo_lib.viz.tables import TokenTable, score_label

DOCUMENT_PAGE_SIZE = 20  # pieces per page of a document run's heatmap page
TOP_TOKENS = 10  # how many of a piece's highest-|value| tokens it lists

PAGE_CSS = """
.tnpo-doc .tnpo-tokens { overflow-wrap: anywhere; max-width: 72em; }
.tnpo-top { font-family: sans-serif; font-size: 80%; color: #555; margin: .2em 0; }
.tnpo-top a { margin-right: .5em; font-family: monospace; color: #1a4f8b; }
.tnpo-tok:target { outline: 3px solid #e6a800; outline-offset: 1px; }
"""


def is_document_table(table: TokenTable) -> bool:
    """A document piece: it has a source and no question."""
    return bool(table.source) and not table.question


def page_size_of(tables: Sequence[TokenTable], page_size: int | None) -> int:
    """Pieces per page: ``page_size`` when given; else :data:`DOCUMENT_PAGE_SIZE` for document
    pieces and 0 (one page, as before) for QA examples."""
    if page_size is not None:
        if page_size < 0:
            raise ValueError(f"page_size must be >= 0 (0: one page), got {page_size}")
        return page_size
    return DOCUMENT_PAGE_SIZE if any(is_document_table(t) for t in tables) else 0


def token_anchor(table: TokenTable, i: int) -> str:
    """The HTML id of token ``i`` of ``table`` (the target of its top-token link)."""
    return f"tnpo-t{table.index}-{i}"


def top_tokens(table: TokenTable, score: str, k: int = TOP_TOKENS) -> list[int]:
    """Indices of the ``k`` tokens of highest |value| in ``score`` (non-zero only), highest
    first."""
    values = np.nan_to_num(np.abs(table.scores[score]))
    order = np.argsort(-values, kind="stable")[:k]
    return [int(i) for i in order if values[i] > 0]


def top_tokens_html(table: TokenTable, score: str, top: Sequence[int]) -> str:
    """'top tokens of <score>:' and a link to each of ``top`` with its value."""
    links = "".join(
        f'<a href="#{token_anchor(table, i)}">'
        f"{html.escape(table.tokens[i].strip() or repr(table.tokens[i]))}</a>"
        f"({float(table.scores[score][i]):.3g}) "
        for i in top
    )
    return (
        f'<div class="tnpo-top">top tokens ({html.escape(score_label(score))}): '
        f"{links or 'none (all zero)'}</div>"
    )


def page_controls(n_pages: int) -> tuple[str, str, str]:
    """(hidden radio inputs, the 'page: 1 · 2 ...' labels, the CSS rules that show one page)
    for ``n_pages`` pages; all empty for a single page."""
    if n_pages <= 1:
        return "", "", ""
    inputs, labels, rules = [], [], []
    for p in range(1, n_pages + 1):
        checked = " checked" if p == 1 else ""
        inputs.append(f'<input type="radio" name="tnpo-page" id="tnpo-page-{p}"{checked} hidden>')
        labels.append(f'<label for="tnpo-page-{p}">{p}</label>')
        rules.append(
            f'#tnpo-page-{p}:checked ~ .tnpo-main .tnpo-page:not([data-page="{p}"]) '
            "{ display: none; }"
        )
        rules.append(
            f"#tnpo-page-{p}:checked ~ .tnpo-controls label[for=tnpo-page-{p}] "
            "{ font-weight: 700; text-decoration: underline; }"
        )
    controls = " &nbsp;|&nbsp; page: " + " · ".join(labels)
    return "".join(inputs), controls, "\n".join(rules)


def paged(examples: Sequence[str], page_size: int) -> tuple[str, int]:
    """The examples' HTML in pages of ``page_size`` (0: one unwrapped page) and the page count."""
    if page_size <= 0 or len(examples) <= page_size:
        return "\n".join(examples), 1
    pages = [examples[i : i + page_size] for i in range(0, len(examples), page_size)]
    body = "\n".join(
        f'<div class="tnpo-page" data-page="{p}">' + "\n".join(chunk) + "</div>"
        for p, chunk in enumerate(pages, 1)
    )
    return body, len(pages)
