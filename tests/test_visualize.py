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
    return (
        tok,
        tags,
        UnlearningDataset.from_files(mini_world["data_path"], "forget10", 1, tok, tags),
    )


@pytest.fixture
def influence_dir(world, tmp_path) -> Path:
    """Influence files with signed scores: fact tokens +1, other tokens alternate -0.6 and 0.1."""
    from npo_lib.influence.files import token_manifest, write_influence_files
    from npo_lib.influence.ground_truth import fact_token_mask

    tok, tags, ds = world
    rows = token_manifest(ds, "full", tok, tags)
    scores = [
        [
            1.0 if f else (-0.6 if t % 2 else 0.1)
            for t, f in enumerate(fact_token_mask(rec, row["offsets"], "full", tags))
        ]
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
        T.table_from_row(
            {"index": 0, "target": "x", "tokens": ["x"], "offsets": [[0, 1]]}, ds.forget[0]
        )


def test_tables_from_influence_read_as_the_target_text(world, influence_dir):
    from npo_lib.config import SelectionConfig
    from npo_lib.influence.files import read_influence_files
    from npo_lib.influence.selection import token_weights, word_ids

    _, tags, ds = world
    sel = SelectionConfig(method="top_k", k=2, whole_words=True)
    tables = T.tables_from_influence(
        influence_dir, ds.forget, tags=tags, selection=sel, w_selected=1.0, w_other=0.25
    )
    scores, lengths, rows, _ = read_influence_files(influence_dir)
    _, weights = token_weights(
        scores,
        lengths,
        sel,
        w_selected=1.0,
        w_other=0.25,
        words=[word_ids(r["offsets"], r["target"]) for r in rows],
    )
    assert len(tables) == len(ds.forget)
    for i, t in enumerate(tables):
        n = int(lengths[i])
        assert set(t.scores) == {"influence", "weight"} and len(t) == n
        np.testing.assert_allclose(t.scores["influence"], scores[i, :n].double().numpy())
        np.testing.assert_allclose(t.scores["weight"], weights[i, :n].double().numpy())
        assert t.fact == [s == 1.0 for s in t.scores["influence"]]
        # byte-level pieces are shown as the text they cover: no 'Ġ', the tokens spell the target
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
        lp = [
            token_logprobs(m(input_ids=b["input_ids"]).logits, b["labels"])
            for m in (target, unlearned)
        ]
        mask = lp[0][1][0].bool()
        expect = (lp[1][0][0] - lp[0][0][0])[mask].detach().double().numpy()
        np.testing.assert_allclose(delta[i], expect, atol=1e-5)
        assert np.abs(delta[i]).max() > 1e-3
    # a run's cached reference stands in for the target model; a model against itself gives 0
    ref = compute_reference_logprobs(
        target,
        ds,
        "full",
        pad_token_id=tok.pad_token_id,
        batch_size=2,
        fingerprint="",
        progress=False,
    )
    cached = T.delta_logprobs(ref, unlearned, ds, pad_token_id=tok.pad_token_id)
    for a, b in zip(cached, delta):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert all(
        np.abs(d).max() < 1e-5
        for d in T.delta_logprobs(target, target, ds, pad_token_id=tok.pad_token_id)
    )
    tables = T.add_score(T.tables_from_dataset(ds, tok, tags), "delta_logp", delta)
    assert all(len(t.scores["delta_logp"]) == len(t) for t in tables)


def _table() -> T.TokenTable:
    target = "Ann <b>won</b> the Prize."
    offsets = [(0, 3), (3, 7), (7, 10), (10, 14), (14, 18), (18, 24), (24, 25), (25, 25)]
    raw = ["Ann", "Ġ<b>", "won", "</b>", "Ġthe", "ĠPrize", ".", "<|eos|>"]
    return T.TokenTable(
        index=7,
        question="Who won <it>?",
        target=target,
        tokens=T.display_tokens(target, offsets, raw),
        offsets=offsets,
        fact=[False] * 5 + [True, False, False],
        scores={"influence": [0.2, -1.0, 0.05, 0.0, 0.3, 2.0, -0.5, 0.01]},
    )


def test_example_html_colours_escapes_and_outlines():
    t = _table()
    assert t.tokens == ["Ann", " <b>", "won", "</b>", " the", " Prize", ".", "<|eos|>"]
    out = render.render_example(t, "influence", threshold=0.1, vmax=2.0)
    spans = re.findall(
        r'<span class="([^"]*)" data-value="([^"]*)" title="([^"]*)"'
        r'( style="[^"]*")?>([^<]*)</span>',
        out,
    )
    assert [s[4] for s in spans] == [
        "Ann",
        " &lt;b&gt;",
        "won",
        "&lt;/b&gt;",
        " the",
        " Prize",
        ".",
        "&lt;|eos|&gt;",
    ]
    coloured = [float(s[1]) for s in spans if s[3]]
    assert coloured == [0.2, -1.0, 0.3, 2.0, -0.5]  # |value| >= 0.1 only; 0 never
    assert "&lt;it&gt;" in out and "<it>" not in out  # the question is escaped too
    (fact,) = [s for s in spans if "tnpo-fact" in s[0]]
    assert fact[4] == " Prize" and "fact token" in fact[2] and "influence score: 2" in fact[2]
    assert "tnpo-special" in spans[-1][0]
    # symmetric range centred at 0: +v is red, -v is blue, mirrored on the colormap
    assert (
        render.colour(2.0, 2.0) == render.palette()[-1]
        and render.colour(-2.0, 2.0) == render.palette()[0]
    )
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
    assert kinds == [
        W.Dropdown,
        W.ToggleButtons,
        W.ToggleButtons,
        W.FloatSlider,
        W.Checkbox,
        W.HTML,
    ]
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
    assert 'style="--bg' not in ex.html.value.split('class="tnpo-example"')[1]  # 0.5 < 0.6
    ex.threshold.value = 0.0
    assert (
        "trained on 8 of 8 tokens" in ex.html.value
    )  # the selection row counts the tokens trained on
    # the scale toggle: the rank view colours the example's top token at the colormap's end
    ex.score.value, ex.scale.value = "influence", "rank"
    assert (
        "tnpo-scale-rank" in ex.html.value and f"--bg-rank:{render.palette()[-1]}" in ex.html.value
    )
    ex.compact.value = True  # every example, one line each
    assert ex.html.value.count('class="tnpo-example"') == 2 and "tnpo-compact" in ex.html.value
    assert "application/vnd.jupyter.widget-view+json" in ex._repr_mimebundle_()


def _heavy_tailed_tables(n: int = 40, seed: int = 0) -> list[T.TokenTable]:
    """Examples whose scores span a decade of scale (Student-t tails), and a few ±7e5 outlier
    tokens (special tokens in the demo's influence scores) in three of them."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        m = int(rng.integers(12, 40))
        target = " ".join(f"w{j}" for j in range(m))
        offsets = [
            (3 * j, 3 * j + 2) if j < 10 else (30 + 4 * (j - 10), 33 + 4 * (j - 10))
            for j in range(m)
        ]
        toks = [target[s:e] for s, e in offsets]
        values = rng.standard_t(3, size=m) * 10 ** rng.uniform(2, 3)
        if i in (3, 17, 29):
            values[-1] = 7.17e5 * (-1) ** i
        out.append(
            T.TokenTable(i, f"q{i}", target, toks, offsets, [False] * m, {"influence": values})
        )
    return out


def _whiteness(hexcol: str) -> float:
    """How far a colour is from white: the largest channel distance (0 = white, 1 = black/pure)."""
    return float(1.0 - min(matplotlib.colors.to_rgb(hexcol)))


def test_default_scale_clips_outliers_so_every_examples_top_token_shows():
    tables = _heavy_tailed_tables()
    c = render.score_range(tables, "influence")
    assert (
        c < 1e4 < render.score_range(tables, "influence", percentile=100)
    )  # the outliers no longer set it
    for scale in render.SCALES:  # every scale: the top |score| token of every example is coloured
        for t in tables:
            x = render.positions(t, "influence", scale, c)
            top = int(np.argmax(np.abs(t.scores["influence"])))
            assert _whiteness(render.position_colour(x[top])) > 0.15, (scale, t.index)
    # a linear map at the max |value| would leave most examples' top tokens white
    pale = [
        t
        for t in tables
        if _whiteness(render.colour(np.abs(t.scores["influence"]).max(), 7.17e5)) < 0.1
    ]
    assert len(pale) > 30
    # rank view: sign(s) · rank(|s|) / n; per-example view: the example's own percentile
    t = T.TokenTable(
        0,
        "q",
        "a b c d",
        ["a", "b", "c", "d"],
        [(0, 1), (2, 3), (4, 5), (6, 7)],
        [False] * 4,
        {"influence": [0.0, -3.0, 1.0, 2.0]},
    )
    np.testing.assert_allclose(
        render.positions(t, "influence", "rank", 1.0), [0.0, -1.0, 1 / 3, 2 / 3]
    )
    np.testing.assert_allclose(
        render.positions(t, "influence", "example", 1e9, 100.0, 1.0), [0.0, -1.0, 1 / 3, 2 / 3]
    )
    # x = sign(s) · min(|s| / c, 1)^γ: γ = 0.5 lifts a tenth of c to 0.32, keeps 0 at 0 and clips
    np.testing.assert_allclose(
        render.positions(t, "influence", "clip", 2.0), [0.0, -1.0, 0.5**0.5, 1.0]
    )
    with pytest.raises(KeyError, match="valid: clip, example, rank"):
        render.positions(t, "influence", "log", 1.0)


def test_page_toggles_scales_and_compact_mode_and_shows_the_trained_tokens(tmp_path):
    t = _table()
    t.add("weight", [0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.25, 0.0])
    page = render.write_heatmap_page([t], tmp_path / "p.html", ["influence", "weight"]).read_text()
    for s in render.SCALES:
        assert (
            f'id="tnpo-scale-{s}"' in page
            and f"#tnpo-scale-{s}:checked ~ .tnpo-main .tnpo-tok" in page
        )
    assert (
        'id="tnpo-compact"' in page
        and "#tnpo-compact:checked ~ .tnpo-main .tnpo-row.tnpo-first" in page
    )
    assert "<script" not in page  # CSS-only toggles
    weight_row = page.split('data-score="weight"')[1]
    assert "trained on 3 of 8 tokens" in weight_row
    spans = re.findall(r'data-value="([^"]*)" title="[^"]*"( style="[^"]*")?', weight_row)
    assert [float(v) for v, style in spans if style] == [
        1.0,
        1.0,
        0.25,
    ]  # exactly the tokens trained on
    assert (
        f"--bg-clip:{render.palette()[-1]}" in weight_row
    )  # weight 1 = the colormap's end, under any scale
    assert f"--bg-rank:{render.palette()[-1]}" in weight_row


def test_figures_from_logs_metrics_and_tables(tmp_path):
    run = tmp_path / "npo_gd"
    run.mkdir()
    rows = [
        {
            "step": s,
            "epoch": s / 4,
            "loss": 1.0 - 0.1 * s,
            "forget/NPO": 1.4 - 0.2 * s,
            "reg/GD": 0.3,
            "grad_norm": 1.0,
            "learning_rate": 1e-3,
        }
        for s in range(1, 5)
    ]
    rows.append({"step": 4, "epoch": 1.0, "train_runtime": 3.0, "train_loss": 0.7})
    (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    fig = figures.plot_loss_terms(run, tmp_path / "loss.png")
    assert [
        ln.get_label() for ln in fig.axes[0].get_lines() if not ln.get_label().startswith("_")
    ] == ["loss", "forget/NPO", "reg/GD"]
    assert (tmp_path / "loss.png").stat().st_size > 1000

    def metrics(name: str, role: str, fq: float | None, mu: float) -> Path:
        d = tmp_path / name / "eval"
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(
            json.dumps(
                {
                    "aggregates": {"forget_quality": fq, "model_utility": mu},
                    "identity": {"role": role},
                }
            )
        )
        return d.parent

    runs = [
        metrics("npo", "run", 0.2, 0.5),
        metrics("ga", "run", None, 0.3),
        metrics("tgt", "target", 1e-6, 0.6),
    ]
    from npo_lib.viz.report import fq_mu_points

    points = [*fq_mu_points(runs), figures.FqMuPoint("ret", 1.0, 0.55, role="retain")]
    fig = figures.plot_fq_mu(points, floor=0.5, path=tmp_path / "fqmu.png")
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    assert [t.get_text() for t in ax.texts] == [
        "target (tgt)",
        "npo",
        "ret",
    ]  # the target's row first, as in the report
    assert {t.get_text() for t in ax.get_legend().get_texts()} == {
        "target",
        "retain",
        "runs",
        "utility floor",
    }
    assert any("ga" in t.get_text() for t in fig.texts)  # the run without forget quality is named

    fig = figures.plot_score_distributions(
        [_table(), _table()], "influence", bins=10, path=tmp_path / "dist.png"
    )
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels[0].startswith("fact tokens (n=2") and labels[1].startswith("other tokens (n=14")
    with pytest.raises(FileNotFoundError, match="npo forget"):
        figures.read_log(tmp_path)


def _chromium() -> str | None:
    return next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)


def _headless(binary: str, url: str, *args: str, profile: Path) -> subprocess.CompletedProcess:
    cmd = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        *args,
        url,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)


def test_static_page_renders_in_headless_chromium(world, influence_dir, tmp_path):
    binary = _chromium()
    if binary is None:
        pytest.skip(
            f"no Chromium on PATH (looked for {', '.join(CHROMIUM_NAMES)}); "
            "`apt-get install chromium` (.ci/run does)"
        )
    _, tags, ds = world
    tables = T.tables_from_influence(influence_dir, ds.forget, tags=tags)[:3]
    page = render.write_heatmap_page(
        tables, tmp_path / "heatmaps.html", "influence", title="Influence <test>", threshold=0.05
    )
    url = page.resolve().as_uri()
    # 1. the DOM Chromium builds holds one coloured span per token over the threshold
    dom = _headless(binary, url, "--dump-dom", profile=tmp_path / "profile-dom").stdout
    coloured = re.findall(
        r'<span class="tnpo-tok[^"]*" data-value="[^"]*" title="[^"]*" '
        r'style="--bg-clip:#[0-9a-f]{6}',
        dom,
    )
    expected = sum(int(np.sum(np.abs(t.scores["influence"]) >= 0.05)) for t in tables)
    assert len(coloured) == expected > 0
    assert dom.count('class="tnpo-tok tnpo-fact"') == sum(sum(t.fact) for t in tables) > 0
    assert "Influence &lt;test&gt;" in dom and all(f"#{t.index} · " in dom for t in tables)
    # 2. the screenshot shows the colormap's red (fact tokens, +1) and blue (-0.6) backgrounds
    shot = tmp_path / "heatmaps.png"
    _headless(
        binary,
        url,
        f"--screenshot={shot}",
        "--window-size=1100,900",
        profile=tmp_path / "profile-shot",
    )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, ARTIFACTS / "heatmaps.png")
    shutil.copy(page, ARTIFACTS / "heatmaps.html")
    import matplotlib.image

    rgb = matplotlib.image.imread(shot)[..., :3]
    red_hex, blue_hex = (
        render.position_colour(1.0),
        render.position_colour(-(0.6**render.DEFAULT_GAMMA)),
    )  # c = 1
    for hexcol in (red_hex, blue_hex):
        want = np.array(matplotlib.colors.to_rgb(hexcol))
        close = np.abs(rgb - want).max(-1) < 0.04
        assert close.sum() > 200, f"few pixels of {hexcol} in the screenshot ({close.sum()})"


# ------------------------------------------------------------------- dashboard, progress, errors


def _fake_runs(root: Path) -> Path:
    """A pipeline-like runs folder: target and retain evaluations, two evaluated forget runs (one
    with a training log), and a folder that is not a run."""

    def metrics(name: str, role: str, fq: float | None, mu: float) -> Path:
        d = root / name / "eval"
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(
            json.dumps(
                {
                    "aggregates": {
                        "forget_quality": fq,
                        "model_utility": mu,
                        "forget_fact_recall": mu / 2,
                    },
                    "identity": {"role": role},
                }
            )
        )
        return d.parent

    metrics("target", "target", 1e-4, 0.8)
    metrics("retain", "retain", 1.0, 0.7)
    npo = metrics("npo_gd", "run", 2e-4, 0.75)
    metrics("influence_gd", "run", None, 0.78)
    (npo / "log.jsonl").write_text(
        "".join(
            json.dumps({"step": s, "loss": 1.0 / s, "forget/NPO": 2.0 / s}) + "\n"
            for s in (1, 2, 3)
        )
    )
    (root / "notebooks").mkdir()
    return root


def test_dashboard_html_sorts_picks_runs_and_embeds_figures(tmp_path):
    from npo_lib.errors import ReportError
    from npo_lib.viz import dashboard as D

    root = _fake_runs(tmp_path / "runs" / "demo")
    views = D.run_views(root)
    assert [v.name for v in views][:2] == ["target", "retain"] and len(views) == 4
    by_mu = D.sort_views(views, "model_utility", descending=True)
    assert [v.row["model_utility"] for v in by_mu] == [0.8, 0.78, 0.75, 0.7]
    assert D.sort_views(views, "forget_quality")[-1].name == "influence_gd"  # no value: last
    page = D.write_dashboard_html(root, tmp_path / "dash.html").read_text()
    assert page.count("<tr data-run=") == 4 and page.count("<section data-run=") == 4
    assert page.count("data:image/png;base64,") == 2  # the FQ-MU scatter and npo_gd's loss terms
    assert '<option value="npo_gd" selected>' in page  # the run with a training log is shown first
    assert "no influence files" in page and "<script>" in page
    with pytest.raises(ReportError, match="no evaluated runs in"):
        D.find_runs(root / "notebooks")
    # npo report --html writes the same file
    from npo_lib.cli import main

    assert (
        main(
            [
                "report",
                *(str(root / n) for n in ("target", "npo_gd")),
                "--csv",
                str(tmp_path / "r.csv"),
                "--html",
                str(tmp_path / "r.html"),
            ]
        )
        == 0
    )
    assert (tmp_path / "r.html").read_text().count("<tr data-run=") == 2


def test_dashboard_widgets_follow_the_sort_and_the_run(tmp_path, world, influence_dir):
    import ipywidgets as W

    from npo_lib.config import load_config, save_config
    from npo_lib.viz.dashboard import RunDashboard

    root = _fake_runs(tmp_path / "runs")
    tok, _, _ = world
    cfg = load_config(
        overrides={
            "model_path": tok.name_or_path,
            "data_path": str(Path(tok.name_or_path).parent / "data"),
            "influence_dir": str(influence_dir),
            "forget_loss": "INFLUENCE+GD",
        }
    )
    save_config(cfg, root / "influence_gd" / "config.yaml")
    dash = RunDashboard(root)
    assert (
        dash.run.value == "npo_gd"
        and dash.loss.value[:4] == b"\x89PNG"
        and dash.scatter.value[:4] == b"\x89PNG"
    )
    assert "no influence files" in dash.tokens.children[0].value
    dash.sort_by.value, dash.descending.value = "model_utility", True
    assert (
        dash.table.value.index(">target<")
        < dash.table.value.index("influence_gd")
        < dash.table.value.index("npo_gd")
    )
    dash.run.value = "influence_gd"  # its token explorer, from its config's influence files
    assert dash.loss.layout.display == "none" and "no training log" in dash.loss_note.value
    assert isinstance(dash.tokens.children[1], W.VBox) and "tnpo-tok" in dash.explorer.html.value


def test_line_progress_prints_a_few_whole_lines(capsys):
    import time as _time

    from npo_lib.utils import progress as P

    bar = P.LineProgress(total=400, desc="influence", delay=0, mininterval=0)
    for _ in range(400):
        bar.update(1)
    bar.close()
    out = capsys.readouterr().out
    assert "\r" not in out
    lines = out.splitlines()
    assert 4 <= len(lines) <= 6 and lines[0].startswith("influence:") and "400/400" in lines[-1]
    for _ in P.LineProgress(range(50), desc="quick"):  # under `delay` seconds: nothing at all
        pass
    assert capsys.readouterr().out == ""
    t0 = _time.perf_counter()
    assert P.use_progress("lines") == "lines"
    try:
        from npo_lib.objectives import reference

        assert reference.tqdm is P.LineProgress  # the library's already imported bars follow
        import tqdm.auto

        assert tqdm.auto.tqdm is P.LineProgress
    finally:
        P.use_progress("bar")
    assert tqdm.auto.tqdm is not P.LineProgress and _time.perf_counter() - t0 < 30
    with pytest.raises(ValueError, match="valid: auto, bar, lines, off"):
        P.progress_mode("fancy")


def test_a_user_error_in_a_kernel_is_one_line_a_bug_keeps_its_traceback():
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.utils.capture import capture_output

    from npo_lib.workflow.notebook import brief_user_errors

    shell = InteractiveShell.instance()
    try:
        assert brief_user_errors()
        with capture_output() as cap:
            res = shell.run_cell(
                "from npo_lib.workflow.notebook import config_from_namespace\n"
                "config_from_namespace({'lr': -1.0, 'num_epoch': 2})"
            )
        assert res.error_in_exec is not None and type(res.error_in_exec).__name__ == "ConfigError"
        shown = [re.sub(r"\x1b\[[0-9;]*m", "", ln) for ln in cap.stdout.splitlines() if ln.strip()]
        assert len(shown) <= 2 and any(
            ln.startswith("ConfigError: notebook parameters:") and "num_epoch" in ln for ln in shown
        ), shown
        assert not any(
            "Traceback" in ln or "site-packages" in ln or "npo_lib/" in ln for ln in shown
        ), shown
        with capture_output() as cap:
            shell.run_cell("def f():\n    return 1 / 0\nf()")
        bug = re.sub(r"\x1b\[[0-9;]*m", "", cap.stdout)
        assert "ZeroDivisionError" in bug and "return 1 / 0" in bug  # a bug shows where it happened
    finally:
        shell.set_custom_exc((), None)
        InteractiveShell.clear_instance()
