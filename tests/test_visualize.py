"""Token heatmaps: fact masks, tables, Δ log-prob, HTML, the widget explorer, figures, and the
static page rendered in headless Chromium (skipped, with the reason, where none is installed).

The Chromium screenshot is kept as a test artifact in ``test-artifacts/visualize/`` (git-ignored),
or under ``$TNPO_TEST_ARTIFACTS`` when set.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from npo_lib.viz import explorer, figures, render
from npo_lib.viz import tables as T

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("TNPO_TEST_ARTIFACTS") or ROOT / "test-artifacts") / "visualize"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


@pytest.fixture(scope="module")
def world(mini_world):
    """(tokenizer, tags, forget10 task-1 dataset) of the mini benchmark."""
    from transformers import AutoTokenizer

    from npo_lib.data.dataset import UnlearningDataset
    from npo_lib.models.families import get_family

    tags = get_family("tiny").tags
    tok = AutoTokenizer.from_pretrained(mini_world["model_path"])
    return tok, tags, UnlearningDataset.from_files(mini_world["data_path"], "forget10", 1, tok, tags)


@pytest.fixture
def influence_dir(world, tmp_path) -> Path:
    """Influence files with signed scores: fact tokens +1, other tokens alternate -0.6 and 0.1."""
    from npo_lib.influence.files import token_manifest, write_influence_files
    from npo_lib.influence.ground_truth import fact_token_mask

    tok, tags, ds = world
    rows = token_manifest(ds, "full", tok, tags)
    scores = [
        [1.0 if f else (-0.6 if t % 2 else 0.1) for t, f in enumerate(fact_token_mask(rec, row["offsets"], "full", tags))]
        for row, rec in zip(rows, ds.forget)
    ]
    return write_influence_files(tmp_path / "influence", scores, rows, {"scorer": "test"})


def test_dataset_tables_outline_every_fact_occurrence(world):
    tok, tags, ds = world
    tables = T.tables_from_dataset(ds, tok, tags, "full")
    for t, rec in zip(tables, ds.forget):
        assert t.target == rec["cot"] + tags.think_end + rec["answer"] and not t.scores
        covered = "".join(x for x, f in zip(t.tokens, t.fact) if f)
        n_spans = len(rec["fact_spans"]["cot"]) + len(rec["fact_spans"]["answer"])
        assert covered.count(rec["fact"]) == n_spans > 0 and 0 < sum(t.fact) < len(t)
    with pytest.raises(ValueError, match="tags="):
        T.table_from_row({"index": 0, "target": "x", "tokens": ["x"], "offsets": [[0, 1]]}, ds.forget[0])


def test_tables_from_influence_read_as_the_target_text(world, influence_dir):
    from npo_lib.config import SelectionConfig
    from npo_lib.influence.files import read_influence_files
    from npo_lib.influence.selection import token_weights, word_ids

    _, tags, ds = world
    sel = SelectionConfig(method="top_k", k=2, whole_words=True)
    tables = T.tables_from_influence(influence_dir, ds.forget, tags=tags, selection=sel, w_selected=1.0, w_other=0.25)
    scores, lengths, rows, _ = read_influence_files(influence_dir)
    _, weights = token_weights(scores, lengths, sel, w_selected=1.0, w_other=0.25, words=[word_ids(r["offsets"], r["target"]) for r in rows])
    assert len(tables) == len(ds.forget)
    for i, t in enumerate(tables):
        n = int(lengths[i])
        assert set(t.scores) == {"influence", "weight"} and len(t) == n
        np.testing.assert_allclose(t.scores["influence"], scores[i, :n].double().numpy())
        np.testing.assert_allclose(t.scores["weight"], weights[i, :n].double().numpy())
        assert t.fact == [s == 1.0 for s in t.scores["influence"]]
        # byte-level pieces are shown as the text they cover: no 'Ġ', and the tokens spell the target
        assert "".join(t.tokens[:-1]) == t.target and not any("Ġ" in x for x in t.tokens)
        assert t.tokens[-1] == "<|eos|>" and t.offsets[-1] == (len(t.target), len(t.target))
    with pytest.raises(ValueError, match="other split or task"):
        T.tables_from_influence(influence_dir, list(reversed(ds.forget)), tags=tags)


def test_delta_logprobs_batched_equals_one_at_a_time(mini_world, world):
    from transformers import AutoModelForCausalLM

    from npo_lib.data.dataset import ViewCollator
    from npo_lib.objectives.primitives import token_logprobs
    from npo_lib.objectives.reference import compute_reference_logprobs

    tok, tags, ds = world
    target = AutoModelForCausalLM.from_pretrained(mini_world["model_path"], dtype=torch.float32)
    unlearned = copy.deepcopy(target)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in unlearned.parameters():
            p.add_(0.05 * torch.randn_like(p))
    delta = T.delta_logprobs(target, unlearned, ds, pad_token_id=tok.pad_token_id, batch_size=3)
    collate = ViewCollator(pad_token_id=tok.pad_token_id)
    for i in range(len(ds)):
        b = collate([ds[i]["full"]])
        lp = [token_logprobs(m(input_ids=b["input_ids"]).logits, b["labels"]) for m in (target, unlearned)]
        mask = lp[0][1][0].bool()
        expect = (lp[1][0][0] - lp[0][0][0])[mask].detach().double().numpy()
        np.testing.assert_allclose(delta[i], expect, atol=1e-5)
        assert np.abs(delta[i]).max() > 1e-3
    # a run's cached reference stands in for the target model; a model against itself gives 0
    ref = compute_reference_logprobs(target, ds, "full", pad_token_id=tok.pad_token_id, batch_size=2, fingerprint="", progress=False)
    cached = T.delta_logprobs(ref, unlearned, ds, pad_token_id=tok.pad_token_id)
    for a, b in zip(cached, delta):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert all(np.abs(d).max() < 1e-5 for d in T.delta_logprobs(target, target, ds, pad_token_id=tok.pad_token_id))
    tables = T.add_score(T.tables_from_dataset(ds, tok, tags), "delta_logp", delta)
    assert all(len(t.scores["delta_logp"]) == len(t) for t in tables)


def _table() -> T.TokenTable:
    target = "Ann <b>won</b> the Prize."
    offsets = [(0, 3), (3, 7), (7, 10), (10, 14), (14, 18), (18, 24), (24, 25), (25, 25)]
    raw = ["Ann", "Ġ<b>", "won", "</b>", "Ġthe", "ĠPrize", ".", "<|eos|>"]
    return T.TokenTable(
        index=7, question="Who won <it>?", target=target, tokens=T.display_tokens(target, offsets, raw),
        offsets=offsets, fact=[False] * 5 + [True, False, False],
        scores={"influence": [0.2, -1.0, 0.05, 0.0, 0.3, 2.0, -0.5, 0.01]},
    )


def test_example_html_colours_escapes_and_outlines():
    t = _table()
    assert t.tokens == ["Ann", " <b>", "won", "</b>", " the", " Prize", ".", "<|eos|>"]
    out = render.render_example(t, "influence", threshold=0.1, vmax=2.0)
    spans = re.findall(r'<span class="([^"]*)" data-value="([^"]*)" title="([^"]*)"( style="[^"]*")?>([^<]*)</span>', out)
    assert [s[4] for s in spans] == ["Ann", " &lt;b&gt;", "won", "&lt;/b&gt;", " the", " Prize", ".", "&lt;|eos|&gt;"]
    coloured = [float(s[1]) for s in spans if s[3]]
    assert coloured == [0.2, -1.0, 0.3, 2.0, -0.5]  # |value| >= 0.1 only; 0 never
    assert "&lt;it&gt;" in out and "<it>" not in out  # the question is escaped too
    (fact,) = [s for s in spans if "tnpo-fact" in s[0]]
    assert fact[4] == " Prize" and "fact token" in fact[2] and "influence score: 2" in fact[2]
    assert "tnpo-special" in spans[-1][0]
    # symmetric range centred at 0: +v is red, -v is blue, mirrored on the colormap
    assert render.colour(2.0, 2.0) == render.palette()[-1] and render.colour(-2.0, 2.0) == render.palette()[0]
    r, _, b = matplotlib.colors.to_rgb(render.colour(1.0, 2.0))
    assert r > b and render.colour(-1.0, 2.0) != render.colour(1.0, 2.0)
    assert render.colour(5.0, 2.0) == render.colour(2.0, 2.0)  # clipped to the range
    with pytest.raises(KeyError, match="it has: influence"):
        render.render_example(t, "delta_logp")


def test_explorer_builds_the_widgets_and_follows_them():
    import ipywidgets as W

    a, b = _table(), _table()
    b.index, b.question = 8, "Second question"
    a.add("weight", [1.0 if f else 0.0 for f in a.fact])
    b.add("weight", [0.5] * len(b))
    ex = explorer.TokenExplorer([a, b], threshold=0.1)
    assert isinstance(ex.widget, W.VBox)
    kinds = [type(c) for c in ex.widget.children]
    assert kinds == [W.Dropdown, W.ToggleButtons, W.FloatSlider, W.HTML]
    assert ex.example.options == (("#7: Who won <it>?", 0), ("#8: Second question", 1))
    assert ex.score.options == (("influence score", "influence"), ("selection weight", "weight"))
    assert ex.threshold.max == 2.0 and ex.threshold.value == 0.1
    first = ex.html.value
    assert "#7 · Who won &lt;it&gt;?" in first and "<style>" in first and "tnpo-bar" in first
    ex.example.value = 1
    assert ex.html.value != first and "#8 · Second question" in ex.html.value
    ex.score.value = "weight"
    assert ex.threshold.max == 1.0 and "selection weight" in ex.html.value
    ex.threshold.value = 0.6
    assert 'style="background' not in ex.html.value.split('class="tnpo-example"')[1]  # 0.5 < 0.6
    assert "application/vnd.jupyter.widget-view+json" in ex._repr_mimebundle_()


def test_figures_from_logs_metrics_and_tables(tmp_path):
    run = tmp_path / "npo_gd"
    run.mkdir()
    rows = [{"step": s, "epoch": s / 4, "loss": 1.0 - 0.1 * s, "forget/NPO": 1.4 - 0.2 * s, "reg/GD": 0.3, "grad_norm": 1.0, "learning_rate": 1e-3} for s in range(1, 5)]
    rows.append({"step": 4, "epoch": 1.0, "train_runtime": 3.0, "train_loss": 0.7})
    (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    fig = figures.plot_loss_terms(run, tmp_path / "loss.png")
    assert [ln.get_label() for ln in fig.axes[0].get_lines() if not ln.get_label().startswith("_")] == ["loss", "forget/NPO", "reg/GD"]
    assert (tmp_path / "loss.png").stat().st_size > 1000

    def metrics(name: str, role: str, fq: float | None, mu: float) -> Path:
        d = tmp_path / name / "eval"
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(json.dumps({"aggregates": {"forget_quality": fq, "model_utility": mu}, "identity": {"role": role}}))
        return d.parent

    runs = [metrics("npo", "run", 0.2, 0.5), metrics("ga", "run", None, 0.3), metrics("tgt", "target", 1e-6, 0.6)]
    from npo_lib.run.report import fq_mu_points

    points = [*fq_mu_points(runs), figures.FqMuPoint("ret", 1.0, 0.55, role="retain")]
    fig = figures.plot_fq_mu(points, floor=0.5, path=tmp_path / "fqmu.png")
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    assert [t.get_text() for t in ax.texts] == ["target (tgt)", "npo", "ret"]  # the target's row first, as in the report
    assert {t.get_text() for t in ax.get_legend().get_texts()} == {"target", "retain", "runs", "utility floor"}
    assert any("ga" in t.get_text() for t in fig.texts)  # the run without forget quality is named

    fig = figures.plot_score_distributions([_table(), _table()], "influence", bins=10, path=tmp_path / "dist.png")
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels[0].startswith("fact tokens (n=2") and labels[1].startswith("other tokens (n=14")
    with pytest.raises(FileNotFoundError, match="npo forget"):
        figures.read_log(tmp_path)


def _chromium() -> str | None:
    return next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)


def _headless(binary: str, url: str, *args: str, profile: Path) -> subprocess.CompletedProcess:
    cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--user-data-dir={profile}", *args, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)


def test_static_page_renders_in_headless_chromium(world, influence_dir, tmp_path):
    binary = _chromium()
    if binary is None:
        pytest.skip(f"no Chromium on PATH (looked for {', '.join(CHROMIUM_NAMES)}); `apt-get install chromium` (.ci/run does)")
    _, tags, ds = world
    tables = T.tables_from_influence(influence_dir, ds.forget, tags=tags)[:3]
    page = render.write_heatmap_page(tables, tmp_path / "heatmaps.html", "influence", title="Influence <test>", threshold=0.05)
    url = page.resolve().as_uri()
    # 1. the DOM Chromium builds holds one coloured span per token over the threshold
    dom = _headless(binary, url, "--dump-dom", profile=tmp_path / "profile-dom").stdout
    coloured = re.findall(r'<span class="tnpo-tok[^"]*" data-value="[^"]*" title="[^"]*" style="background-color:#[0-9a-f]{6}', dom)
    expected = sum(int(np.sum(np.abs(t.scores["influence"]) >= 0.05)) for t in tables)
    assert len(coloured) == expected > 0
    assert dom.count('class="tnpo-tok tnpo-fact"') == sum(sum(t.fact) for t in tables) > 0
    assert "Influence &lt;test&gt;" in dom and all(f"#{t.index} · " in dom for t in tables)
    # 2. the screenshot shows the colormap's red (fact tokens, +1) and blue (-0.6) backgrounds
    shot = tmp_path / "heatmaps.png"
    _headless(binary, url, f"--screenshot={shot}", "--window-size=1100,900", profile=tmp_path / "profile-shot")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, ARTIFACTS / "heatmaps.png")
    shutil.copy(page, ARTIFACTS / "heatmaps.html")
    rgb = matplotlib.image.imread(shot)[..., :3]
    red_hex, blue_hex = render.colour(1.0, 1.0), render.colour(-0.6, 1.0)
    for hexcol in (red_hex, blue_hex):
        want = np.array(matplotlib.colors.to_rgb(hexcol))
        close = np.abs(rgb - want).max(-1) < 0.04
        assert close.sum() > 200, f"few pixels of {hexcol} in the screenshot ({close.sum()})"
