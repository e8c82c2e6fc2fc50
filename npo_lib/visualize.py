"""Token heatmaps and run figures: which target tokens a score singles out, and how runs compare.

Three layers, each usable alone:

1. Data: a :class:`TokenTable` per forget example holds its target tokens as displayed text,
   their character offsets, a fact mask (from the benchmark's ``fact_spans``) and score rows (see
   :data:`SCORES`). Built from an influence folder (:func:`tables_from_influence`, with the
   selection weights) or a dataset (:func:`tables_from_dataset`); :func:`delta_logprobs` gives
   the per-token change of log-prob from the target to the unlearned model for :func:`add_score`.
2. Rendering: :func:`render_example` colours each token on a diverging colormap centred at 0
   with a symmetric range, the raw value on hover and fact tokens outlined;
   :func:`write_heatmap_page` writes every example into one static page (no kernel, no
   JavaScript); :class:`TokenExplorer` is the ipywidgets explorer of the same HTML.
3. Figures (matplotlib ``Figure`` objects, no pyplot state): :func:`plot_loss_terms`,
   :func:`plot_fq_mu`, :func:`plot_score_distributions`.

matplotlib and ipywidgets come with the ``notebooks`` extra; they load on first use.
"""

from __future__ import annotations

import functools
import html
import importlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from npo_lib.config import Config
    from npo_lib.families import ChatTags
    from npo_lib.report import Run
    from npo_lib.selection import SelectionConfig
    from npo_lib.trainer import ReferenceLogprobs

CMAP = "RdBu_r"  # diverging: blue below 0, white at 0, red above


@dataclass(frozen=True)
class ScoreSpec:
    """How a score row is named in legends, hover titles and axes."""

    label: str
    help: str


# Score rows the builders of this module make; other names work too (labelled by their name).
SCORES: dict[str, ScoreSpec] = {
    "influence": ScoreSpec("influence score", "the scorer's per-token influence (influence folder)"),
    "weight": ScoreSpec("selection weight", "the INFLUENCE loss's token weight after selection"),
    "delta_logp": ScoreSpec("Δ log p (unlearned − target)", "change of the token's log-prob"),
}


def score_label(name: str) -> str:
    return SCORES[name].label if name in SCORES else name


def _require(module: str) -> Any:
    """Import an optional dependency, naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(
            f"{module} is needed for npo_lib.visualize: pip install -e '.[notebooks]'"
        ) from e


# ----------------------------------------------------------------------------- token tables


# Byte-level BPE markers of raw token pieces, shown as the characters they stand for.
_PIECE_MARKS = {"Ġ": " ", "Ċ": "\n", "▁": " "}


def display_tokens(text: str, offsets: Sequence[Sequence[int]], raw: Sequence[str]) -> list[str]:
    """Each token as the text it covers (``text[start:end]``), so byte-level pieces ('Ġthe')
    read as written; a token without a span of its own (EOS, the tail of a character split
    over two tokens) shows its raw piece."""
    out, cursor = [], 0
    for (s, e), piece in zip(offsets, raw, strict=True):
        s = max(s, cursor)
        if e > s:
            out.append(text[s:e])
            cursor = e
        else:
            out.append("".join(_PIECE_MARKS.get(c, c) for c in piece))
    return out


def _row(name: str, values: Any, n: int) -> np.ndarray:
    row = np.asarray(values, dtype=np.float64).reshape(-1)
    if row.shape[0] != n:
        raise ValueError(f"score '{name}' has {row.shape[0]} values for {n} tokens")
    return row


@dataclass
class TokenTable:
    """One forget example's target tokens with named per-token score rows.

    ``tokens[i]`` is what token i shows, ``offsets[i]`` its character span in ``target``
    (``(len, len)`` for EOS), ``fact[i]`` whether it is part of the fact value, and
    ``scores[name]`` an ``(n,)`` float array per score.
    """

    index: int
    question: str
    target: str
    tokens: list[str]
    offsets: list[tuple[int, int]]
    fact: list[bool]
    scores: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.tokens)
        if len(self.offsets) != n or len(self.fact) != n:
            raise ValueError(
                f"example {self.index}: {n} tokens, {len(self.offsets)} offsets, {len(self.fact)} fact flags"
            )
        self.offsets = [(int(s), int(e)) for s, e in self.offsets]
        self.scores = {k: _row(k, v, n) for k, v in self.scores.items()}

    def __len__(self) -> int:
        return len(self.tokens)

    def add(self, name: str, values: Any) -> None:
        """Add (or replace) the score row ``name``; it needs one value per token."""
        self.scores[name] = _row(name, values, len(self))


def table_from_row(
    row: Mapping[str, Any],
    record: Mapping[str, Any] | None = None,
    scores: Mapping[str, Any] | None = None,
    *,
    view: str = "full",
    tags: ChatTags | None = None,
) -> TokenTable:
    """A table from a ``tokens.jsonl`` row (:func:`npo_lib.influence.token_manifest`).

    The fact mask comes from the forget ``record``'s ``fact_spans`` placed in the ``view``'s
    target (:func:`npo_lib.influence_scores.fact_token_mask`, the scorers' AUROC ground truth);
    all False without a record or for records without ``fact_spans`` (plain TOFU / R-TOFU).
    """
    from npo_lib.influence_scores import fact_token_mask

    text, raw = row["target"], list(row["tokens"])
    offsets = [tuple(o) for o in row["offsets"]] or [(0, 0)] * len(raw)  # slow tokenizers: none
    if record is not None and tags is None:
        raise ValueError("a fact mask needs the family's chat tags: pass tags=get_family(cfg.model_family).tags")
    fact = fact_token_mask(record, offsets, view, tags) if record is not None else [False] * len(raw)
    return TokenTable(
        index=int(row["index"]),
        question=row.get("question", ""),
        target=text,
        tokens=display_tokens(text, offsets, raw),
        offsets=offsets,
        fact=fact,
        scores=dict(scores or {}),
    )


def _check_records(rows: Sequence[Mapping[str, Any]], records: Sequence[Mapping[str, Any]] | None, where: str) -> None:
    if records is None:
        return
    if len(records) != len(rows):
        raise ValueError(f"{where} covers {len(rows)} examples, {len(records)} records given")
    for row, rec in zip(rows, records):
        if row.get("question") not in (None, rec.get("question")):
            raise ValueError(
                f"{where}: example {row['index']} is about '{row['question'][:60]}', the record "
                f"given for it about '{str(rec.get('question'))[:60]}': other split or task?"
            )


def tables_from_influence(
    folder: str | Path,
    records: Sequence[Mapping[str, Any]] | None = None,
    *,
    tags: ChatTags | None = None,
    view: str = "full",
    selection: SelectionConfig | None = None,
    w_selected: float = 1.0,
    w_other: float = 0.0,
) -> list[TokenTable]:
    """Tables of an influence folder: the ``influence`` row, and the ``weight`` row the INFLUENCE
    loss would use under ``selection`` (pass ``cfg.selection, cfg.w_selected, cfg.w_other``).

    ``records``: the forget records the scores were made for (``dataset.forget``), in the files'
    order (checked by question), with the family's ``tags`` and the scored ``view``: the fact mask.
    """
    import torch

    from npo_lib.influence import read_influence_files
    from npo_lib.selection import token_weights, word_ids

    scores, lengths, rows, _ = read_influence_files(folder)
    _check_records(rows, records, f"influence files in {folder}")
    weights = None
    if selection is not None:
        words = [word_ids(r["offsets"], r["target"]) for r in rows]
        _, weights = token_weights(scores, lengths, selection, w_selected=w_selected, w_other=w_other, words=words)
    tables = []
    for i, row in enumerate(rows):
        n = int(lengths[i])
        row_scores: dict[str, Any] = {"influence": scores[i, :n].to(torch.float64).numpy()}
        if weights is not None:
            row_scores["weight"] = weights[i, :n].to(torch.float64).numpy()
        rec = records[i] if records is not None else None
        tables.append(table_from_row(row, rec, row_scores, view=view, tags=tags))
    return tables


def tables_from_dataset(dataset: Any, tokenizer: Any, tags: ChatTags, view: str = "full") -> list[TokenTable]:
    """Tables (no scores yet) of every forget example of an
    :class:`~npo_lib.data.UnlearningDataset` under ``view``, with fact masks from its records."""
    from npo_lib.influence import token_manifest

    rows = token_manifest(dataset, view, tokenizer, tags)
    return [table_from_row(row, rec, view=view, tags=tags) for row, rec in zip(rows, dataset.forget)]


def add_score(tables: Sequence[TokenTable], name: str, rows: Sequence[Any]) -> list[TokenTable]:
    """Add the score row ``name`` to every table (``rows[i]`` for table i); returns the tables."""
    if len(rows) != len(tables):
        raise ValueError(f"{len(rows)} rows of '{name}' for {len(tables)} tables")
    for t, r in zip(tables, rows):
        t.add(name, r)
    return list(tables)


# ----------------------------------------------------------------------------- Δ log-prob


def reference_rows(ref: ReferenceLogprobs, dataset: Any, view: str = "full") -> list[np.ndarray]:
    """Per example, log p of each target token, cut from an ``(N, T_max - 1)`` shifted-frame
    cache (:func:`npo_lib.trainer.compute_reference_logprobs`, a run's ``ref_logprobs``)."""
    out = []
    for i in range(len(dataset)):
        enc = dataset[i][view]
        p, n = enc["prompt_len"], len(enc["input_ids"]) - enc["prompt_len"]
        out.append(ref.token[i, p - 1 : p - 1 + n].double().numpy())  # logits at t-1 predict t
    return out


def target_logprobs(
    model: Any, dataset: Any, view: str = "full", *, pad_token_id: int, batch_size: int = 8, progress: bool = False
) -> list[np.ndarray]:
    """Per forget example, ``log p_model`` of each target token (batched, no grad)."""
    from npo_lib.trainer import compute_reference_logprobs

    ref = compute_reference_logprobs(
        model, dataset, view, pad_token_id=pad_token_id, batch_size=batch_size, fingerprint="", progress=progress
    )
    return reference_rows(ref, dataset, view)


def delta_logprobs(
    target: Any,
    unlearned: Any,
    dataset: Any,
    view: str = "full",
    *,
    pad_token_id: int,
    batch_size: int = 8,
    progress: bool = False,
) -> list[np.ndarray]:
    """Per forget example, ``log p_unlearned(y_t) − log p_target(y_t)`` of each target token.

    ``target`` is the model before unlearning, or a run's cached
    :class:`~npo_lib.trainer.ReferenceLogprobs` (its log-probs of the same ``view``).
    Negative where unlearning pushed a token down: the row to colour as ``delta_logp``.
    """
    from npo_lib.trainer import ReferenceLogprobs

    kw = {"pad_token_id": pad_token_id, "batch_size": batch_size, "progress": progress}
    before = (
        reference_rows(target, dataset, view)
        if isinstance(target, ReferenceLogprobs)
        else target_logprobs(target, dataset, view, **kw)
    )
    after = target_logprobs(unlearned, dataset, view, **kw)
    return [a - b for a, b in zip(after, before, strict=True)]


# ----------------------------------------------------------------------------- colours, HTML


def score_range(tables: Iterable[TokenTable], score: str) -> float:
    """The symmetric colour range: max |value| of ``score`` over ``tables`` (1 when all are 0)."""
    top = max((float(np.abs(t.scores[score]).max()) for t in tables if len(t) and score in t.scores), default=0.0)
    return top if np.isfinite(top) and top > 0 else 1.0


@functools.cache
def _palette(steps: int = 255) -> tuple[str, ...]:
    """:data:`CMAP` sampled at ``steps`` (odd: the middle one is exactly 0) as hex colours."""
    cmap, to_hex = _require("matplotlib").colormaps[CMAP], _require("matplotlib.colors").to_hex
    return tuple(to_hex(c) for c in cmap(np.linspace(0.0, 1.0, steps)))


def colour(value: float, vmax: float) -> str:
    """Hex colour of ``value`` on :data:`CMAP` over the symmetric range ``[-vmax, vmax]``
    (a ``TwoSlopeNorm`` centred at 0 with equal halves is this linear map)."""
    pal = _palette()
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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- explorer


class TokenExplorer:
    """ipywidgets explorer: pick an example, a score and a threshold; the heatmap follows.

    ``widget`` is a VBox of ``example`` (Dropdown), ``score`` (ToggleButtons), ``threshold``
    (FloatSlider, 0 to the score's range) and ``html`` (HTML: legend and heatmap).
    """

    def __init__(self, tables: Sequence[TokenTable], scores: Sequence[str] | None = None, threshold: float = 0.0) -> None:
        widgets = _require("ipywidgets")
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


# ----------------------------------------------------------------------------- figures


def _figure(**kw: Any) -> Figure:
    return _require("matplotlib.figure").Figure(**kw)


def _save(fig: Figure, path: str | Path | None) -> Figure:
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig


def read_log(run_dir: str | Path) -> list[dict[str, Any]]:
    """The training-step rows of a run's ``log.jsonl`` (those with a ``loss``; not the summary)."""
    file = Path(run_dir) / "log.jsonl"
    if not file.is_file():
        raise FileNotFoundError(f"no training log: {file} (written by `npo forget`)")
    rows = [json.loads(line) for line in file.read_text().splitlines() if line.strip()]
    return [r for r in rows if "loss" in r and "train_runtime" not in r]


def plot_loss_terms(run_dir: str | Path, path: str | Path | None = None) -> Figure:
    """Total loss and every logged term (``forget/…``, ``reg/…``) against the step."""
    rows = read_log(run_dir)
    terms = ["loss", *sorted({k for r in rows for k in r if "/" in k})]
    fig = _figure(figsize=(6.5, 3.8))
    ax = fig.subplots()
    for name in terms:
        pts = [(r["step"], r[name]) for r in rows if isinstance(r.get(name), int | float)]
        if pts:
            ax.plot(*zip(*pts), marker="." if len(pts) < 30 else None, label=name, lw=2 if name == "loss" else 1.2)
    ax.set(xlabel="step", ylabel="loss term", title=f"loss terms: {Path(run_dir).name}")
    ax.axhline(0, color="#999", lw=0.6)
    ax.legend(fontsize="small")
    return _save(fig, path)


# Marker of each run role in the forget quality / model utility plane.
ROLE_STYLE: dict[str, dict[str, Any]] = {
    "target": {"marker": "*", "s": 220, "color": "black", "zorder": 3},
    "retain": {"marker": "D", "s": 90, "color": "tab:green", "zorder": 3},
    "run": {"marker": "o", "s": 50, "color": "tab:blue", "zorder": 2},
}


def plot_fq_mu(
    runs: Sequence[str | Path | Run],
    *,
    target: str | Path | None = None,
    retain: str | Path | None = None,
    path: str | Path | None = None,
) -> Figure:
    """Forget quality (log scale) against model utility, one point per evaluated run.

    ``runs``: run folders with ``eval/metrics.json`` (or :class:`~npo_lib.report.Run`); the
    target and retain models are marked by the role their metrics record, or given as
    ``target`` / ``retain``. Runs without a forget quality are listed under the plot.
    """
    from npo_lib.report import load_run, ordered

    loaded = [r if not isinstance(r, str | Path) else load_run(r) for r in runs]
    for role, extra in (("target", target), ("retain", retain)):
        if extra is not None:
            run = load_run(extra)
            run.role = role
            loaded.append(run)
    fig = _figure(figsize=(6, 4.2))
    ax = fig.subplots()
    seen, missing = set(), []
    for run in ordered(loaded):
        agg = run.metrics["aggregates"]
        fq, mu = agg.get("forget_quality"), agg.get("model_utility")
        if fq is None or mu is None:
            missing.append(run.name)
            continue
        role = run.role if run.role in ROLE_STYLE else "run"
        label = role if role != "run" or role not in seen else None
        seen.add(role)
        ax.scatter([mu], [max(fq, 1e-300)], label=label, **ROLE_STYLE[role])
        ax.annotate(run.name, (mu, max(fq, 1e-300)), textcoords="offset points", xytext=(5, 4), fontsize="small")
    ax.set_yscale("log")
    ax.set(xlabel="model utility", ylabel="forget quality (log)", title="forget quality vs model utility")
    if seen:
        ax.legend(fontsize="small")
    if missing:
        fig.text(0.01, -0.02, "no forget quality / utility: " + ", ".join(missing), fontsize="small")
    return _save(fig, path)


def plot_score_distributions(
    tables: Sequence[TokenTable], score: str = "influence", *, bins: int = 40, path: str | Path | None = None
) -> Figure:
    """Histograms (densities, shared bins) of ``score`` on fact tokens and on the other tokens."""
    values = np.concatenate([t.scores[score] for t in tables]) if tables else np.zeros(0)
    fact = np.concatenate([np.asarray(t.fact, dtype=bool) for t in tables]) if tables else np.zeros(0, bool)
    edges = np.histogram_bin_edges(values, bins=bins) if values.size else bins
    fig = _figure(figsize=(6, 3.8))
    ax = fig.subplots()
    for name, sel, col in (("fact tokens", fact, "tab:red"), ("other tokens", ~fact, "tab:blue")):
        if sel.any():
            v = values[sel]
            ax.hist(v, bins=edges, density=True, alpha=0.55, color=col, label=f"{name} (n={v.size}, mean {v.mean():.3g})")
    ax.set(xlabel=score_label(score), ylabel="density", title=f"{score_label(score)}: fact vs other tokens")
    ax.legend(fontsize="small")
    return _save(fig, path)


# ----------------------------------------------------------------------------- the visualisation step


def token_tables(
    cfg: Config,
    influence_dir: str | Path | None = None,
    unlearned_model_path: str | Path | None = None,
    *,
    progress: bool = True,
) -> list[TokenTable]:
    """Every forget example's table for a run: ``influence`` and ``weight`` (the INFLUENCE loss's
    selection under ``cfg.selection``) from the influence files, fact masks from the records, and
    ``delta_logp`` (unlearned − target model) when ``unlearned_model_path`` is given.

    ``influence_dir`` defaults to where INFLUENCE reads (``forget.influence_files(cfg)``); the
    files must match ``cfg``'s data (checked by question).
    """
    from npo_lib.compute_influence import INFLUENCE_VIEW, load_inputs
    from npo_lib.families import load_model
    from npo_lib.forget import influence_files

    folder = Path(influence_dir) if influence_dir else influence_files(cfg)
    inputs = load_inputs(cfg)
    tables = tables_from_influence(
        folder, inputs.dataset.forget, tags=inputs.tags, view=INFLUENCE_VIEW,
        selection=cfg.selection, w_selected=cfg.w_selected, w_other=cfg.w_other,
    )
    if unlearned_model_path is not None:
        target = load_model(cfg, inputs.model_path).eval()
        unlearned = load_model(cfg, str(unlearned_model_path)).eval()
        rows = delta_logprobs(target, unlearned, inputs.dataset, INFLUENCE_VIEW, pad_token_id=inputs.tokenizer.pad_token_id, progress=progress)
        add_score(tables, "delta_logp", rows)
    return tables
