"""The notebooks as a researcher uses them, in a real browser (slow).

A small executed pipeline (random 2-layer Llama of ``mini_world``: influence, NPO+GD and
INFLUENCE+GD, their evaluations, the token visualisation) and the executed dashboard notebook are
opened in JupyterLab, started on 127.0.0.1 with a free port and a token in the pipeline's folder.
Playwright drives Debian's Chromium through ``executable_path`` (no browser download): the saved
explorer view renders before any cell runs; after Run All the live explorer follows the example,
the score, the threshold. The static dashboard (``npo report --html``) and the heatmap page open
from files. A forget notebook executed with ``eval.during`` on opens in a JupyterLab of its own,
showing its live trajectory figure (``TNPO_SAVE_DOC_FIGURE=1`` also copies that screenshot to
``docs/trajectory_live.png``). Screenshots of each step go to ``test-artifacts/browser/`` (or
``$TNPO_TEST_ARTIFACTS/browser``). Skips, saying why, without Chromium or playwright.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("TNPO_TEST_ARTIFACTS") or ROOT / "test-artifacts") / "browser"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# the network is closed: no first-run, sync, component or background requests
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WHITE_MARGIN = 0.08  # a colour counts as visibly non-white when a channel is this far below 1


def _chromium() -> str:
    binary = next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)
    if binary is None:
        pytest.skip(
            f"no Chromium on PATH (looked for {', '.join(CHROMIUM_NAMES)}); "
            "`apt-get install chromium` (.ci/run does)"
        )
    return binary


def _rgb(css: str) -> tuple[float, ...] | None:
    """'rgb(r, g, b)' / 'rgba(r, g, b, a)' -> (r, g, b) in [0, 1]; None when transparent."""
    nums = [float(x) for x in css[css.index("(") + 1 : css.index(")")].split(",")]
    if len(nums) == 4 and nums[3] == 0:
        return None
    return tuple(x / 255 for x in nums[:3])


def _visible(css: str) -> bool:
    rgb = _rgb(css)
    return rgb is not None and 1.0 - min(rgb) > WHITE_MARGIN


@pytest.fixture(scope="module")
def browser() -> Iterator:
    binary = _chromium()
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install -e .[dev])"
    )
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=binary, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


def jupyter_home(tmp: Path) -> pytest.MonkeyPatch:
    """Jupyter's data, config and runtime folders under ``tmp`` (the lab server's too), and
    ``tmp`` the working folder; undone by the returned patch's ``undo()``."""
    mp = pytest.MonkeyPatch()
    for name in ("data", "config", "runtime"):
        mp.setenv(f"JUPYTER_{name.upper()}_DIR", str(tmp / f"jupyter-{name}"))
    mp.chdir(tmp)
    return mp


@pytest.fixture(scope="module")
def pipeline(mini_world, tmp_path_factory) -> Iterator[Path]:
    """``runs/small`` of an executed pipeline and an executed dashboard notebook, trusted in a
    Jupyter data folder of its own (``$JUPYTER_DATA_DIR``, the lab server's too)."""
    from npo_lib.workflow.pipeline import run_pipeline
    from npo_lib.workflow.steps import Step, notebook_path, run_steps

    _chromium()
    tmp = tmp_path_factory.mktemp("browser")
    mp = jupyter_home(tmp)
    spec = tmp / "small.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "name": "small",
                "config": {
                    "model_path": mini_world["model_path"],
                    "data_path": mini_world["data_path"],
                    "split": "forget10",
                    "task_id": 1,
                    "batch_size": 4,
                    "num_epochs": 1,
                    "lr": 1e-3,
                    "warmup_epochs": 0,
                },
                "methods": {
                    "npo_gd": {"forget_loss": "NPO+GD"},
                    "influence_gd": {"forget_loss": "INFLUENCE+GD"},
                },
                "runs_dir": str(tmp / "runs"),
            }
        )
    )
    res = run_pipeline(spec, stream=False)
    assert res["ok"], [s for s in res["steps"] if s["status"] == "failed"]
    root = tmp / "runs" / "small"
    assert res["dashboard"] == str(
        (root / "dashboard.html").resolve()
    )  # npo run writes the static dashboard
    dash = Step(
        "dashboard",
        notebook_path("dashboard"),
        {"config_files": [], "runs_dir": str(root), "html_file": str(root / "dashboard.html")},
        root / "notebooks" / "06-dashboard.ipynb",
    )
    (done,) = run_steps([dash], stream=False, say=lambda *_: None)
    assert done.status == "done", done.error
    yield root
    mp.undo()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(pipeline) -> Iterator[str]:
    """JupyterLab over the pipeline's folder; yields its base URL with the token, stops it after."""
    with _lab_server(pipeline) as url:
        yield url


@contextlib.contextmanager
def _lab_server(pipeline: Path) -> Iterator[str]:
    """JupyterLab over ``pipeline`` (its root folder): ``base|token``, stopped on exit."""
    port, token = _free_port(), secrets.token_hex(16)
    bindir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}
    cmd = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={pipeline}",
        "--LabApp.news_url=",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.extension_manager=readonly",
        "--allow-root",
    ]
    log = open(pipeline.parent / "jupyterlab.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=pipeline)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(
                        "jupyter lab did not start: "
                        f"{(pipeline.parent / 'jupyterlab.log').read_text()[-2000:]}"
                    ) from None
                time.sleep(1)
        yield f"{base}|{token}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=False)


COLOURED = (
    "els => els.filter(e => getComputedStyle(e).backgroundColor !== 'rgba(0, 0, 0, 0)').length"
)


def _explorer_state(out) -> dict:
    """What the explorer output shows: the question header, the coloured tokens, the hovers."""
    toks = out.locator(".tnpo-tok")
    return {
        "question": out.locator(".tnpo-q").first.inner_text(),
        "coloured": toks.evaluate_all(COLOURED),
        "titles": toks.evaluate_all("els => els.map(e => e.title)"),
        "backgrounds": toks.evaluate_all(
            "els => els.map(e => getComputedStyle(e).backgroundColor)"
        ),
    }


def _open_notebook(browser, lab: str, name: str):
    base, token = lab.split("|")
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(120_000)
    page.goto(
        f"{base}/lab/tree/notebooks/{name}?reset&token={token}"
    )  # reset: only this notebook open
    page.wait_for_selector(".jp-Notebook", state="visible")
    no_news = page.get_by_role(
        "button", name="No", exact=True
    )  # "get notified about Jupyter news?"
    if no_news.count():
        no_news.first.click()
    return page


def test_token_explorer_in_jupyterlab_saved_view_then_live(browser, lab, pipeline):
    page = _open_notebook(browser, lab, "05-token_visualization.ipynb")
    # 1. without running anything: the saved widget view, not its text repr
    out = page.locator(".jp-OutputArea-output:has(.widget-dropdown)").first
    out.wait_for(state="visible")
    assert page.get_by_text("VBox(children=").count() == 0
    out.scroll_into_view_if_needed()
    saved = _explorer_state(out)
    assert saved["coloured"] > 0 and saved["question"].startswith("#")
    _shot(page, "1-explorer-saved-view")

    # 2. run all cells with the kernel; the explorer is live again
    assert out.locator(".jupyter-widgets-disconnected").count() > 0  # drawn from the saved state
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.locator('.lm-Menu-item[data-command="runmenu:run-all"]').click()
    page.wait_for_function(  # every code cell ran, and the explorer is a live widget again
        "() => { const p = [...document.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')]"
        ".map(e => e.textContent);"
        " return p.length > 0 && p.every(t => /\\[\\d+\\]/.test(t))"
        " && document.querySelector('.jp-OutputArea-output .widget-dropdown') !== null"
        " && document.querySelector('.jupyter-widgets-disconnected') === null; }",
        timeout=600_000,
    )
    out = page.locator(".jp-OutputArea-output:has(.widget-dropdown)").first
    out.wait_for(state="visible")
    out.scroll_into_view_if_needed()
    first = _explorer_state(out)
    assert first["question"] == saved["question"] and first["coloured"] > 0
    _shot(page, "2-explorer-after-run-all")

    # 3. another example
    out.locator(".widget-dropdown select").select_option(index=1)
    page.wait_for_function(
        "q => document.querySelector('.tnpo-q')"
        " && document.querySelector('.tnpo-q').innerText !== q",
        arg=first["question"],
    )
    second = _explorer_state(out)
    assert second["question"] != first["question"] and second["titles"] != first["titles"]
    _shot(page, "3-explorer-example-1")

    # 4. the score: selection weight, then Δ log-prob (the hover says which, with the raw value)
    for label, prefix in (
        ("selection weight", "selection weight: "),
        ("Δ log p", "Δ log p (unlearned − target): "),
    ):
        out.locator(".widget-toggle-buttons button", has_text=label).first.click()
        page.wait_for_function(
            "p => [...document.querySelectorAll('.tnpo-tok')].every(e => e.title.startsWith(p))",
            arg=prefix,
        )
        state = _explorer_state(out)
        assert all(t.startswith(prefix) for t in state["titles"])
        _shot(page, "4-explorer-" + label.split()[0].replace("Δ", "delta"))
    before = _explorer_state(out)

    # 5. the threshold slider: half its range leaves fewer tokens coloured
    readout = out.locator(".widget-slider .widget-readout").first
    top = float(
        out.locator(".widget-slider").first.evaluate(
            "e => e.querySelector('.noUi-handle').getAttribute('aria-valuemax')"
        )
    )
    readout.click()
    page.keyboard.press("Control+A")
    page.keyboard.type(f"{top / 2:.6g}")
    page.keyboard.press("Enter")
    page.wait_for_function(
        f"() => ({COLOURED})([...document.querySelectorAll('.jp-OutputArea-output .tnpo-tok')])"
        f" < {before['coloured']}"
    )
    after = _explorer_state(out)
    assert (
        0 <= after["coloured"] < before["coloured"] and after["titles"] == before["titles"]
    )  # same tokens, fewer coloured
    _shot(page, "5-explorer-threshold")

    # 6. the rank view: the example's top |value| token at the colormap's end
    out.locator(".widget-toggle-buttons button", has_text="rank").first.click()
    page.keyboard.press("Escape")
    page.wait_for_function("() => document.querySelector('.tnpo-scale-rank') !== null")
    _shot(page, "6-explorer-rank")
    page.close()


def test_dashboard_notebook_in_jupyterlab_and_its_static_html(browser, lab, pipeline):
    page = _open_notebook(browser, lab, "06-dashboard.ipynb")
    table = page.locator(".jp-OutputArea-output .tnpo-report").first
    table.wait_for(state="visible")  # the saved view, without running a cell
    assert table.locator("tbody tr").count() == 2  # the small pipeline evaluates its two methods
    page.locator(".jp-OutputArea-output img").first.wait_for(state="visible")
    _shot(page, "7-dashboard-notebook")
    page.close()

    html_file = pipeline / "dashboard.html"
    page = browser.new_page(viewport={"width": 1300, "height": 1000})
    page.goto(html_file.as_uri())
    rows = lambda: page.locator(".tnpo-report tbody tr td:first-child").all_inner_texts()  # noqa: E731
    names = rows()
    assert sorted(names) == ["influence_gd", "npo_gd"]
    assert page.evaluate("() => [...document.images].every(i => i.complete && i.naturalWidth > 0)")
    page.locator(".tnpo-report th", has_text="run").click()  # sort by name, descending first
    assert rows() == sorted(names, reverse=True)
    page.locator(".tnpo-report th", has_text="run").click()
    assert rows() == sorted(names)
    page.select_option("#tnpo-run", "influence_gd")
    visible = page.locator("section[data-run]:not([hidden])")
    assert visible.count() == 1 and visible.get_attribute("data-run") == "influence_gd"
    assert (
        visible.locator(".tnpo-tok").count() > 0 and visible.locator("img.tnpo-loss").count() == 1
    )
    _shot(page, "8-dashboard-html")
    shutil.copy(html_file, ARTIFACTS / "dashboard.html")
    page.close()


def test_heatmap_page_default_scale_colours_every_examples_top_token(browser, pipeline):
    page = browser.new_page(viewport={"width": 1300, "height": 1000})
    page.goto((pipeline / "heatmaps.html").as_uri())
    rows = page.evaluate(
        """() => [...document.querySelectorAll('.tnpo-example')].map(ex => {
            const row = name => [
                ...ex.querySelectorAll(`.tnpo-row[data-score="${name}"] .tnpo-tok`)
            ].map(t => ({
                v: parseFloat(t.dataset.value),
                bg: getComputedStyle(t).backgroundColor,
                title: t.title,
            }));
            return {influence: row('influence'), weight: row('weight')};
        })"""
    )
    assert len(rows) >= 3
    for i, ex in enumerate(rows):
        top = max(ex["influence"], key=lambda t: abs(t["v"]))
        assert _visible(top["bg"]), (
            f"example {i}: its top token ({top['title']}) is {top['bg']} under the default scale"
        )
        assert f"{top['v']:.4g}"[:4].lstrip("-") in top["title"]  # the raw value on hover
        trained = [t for t in ex["weight"] if t["v"] > 0]
        assert [
            t for t in ex["weight"] if _rgb(t["bg"]) is not None
        ] == trained  # coloured = trained on
    _shot(page, "9-heatmaps-default")
    # the rank view and the compact mode are CSS toggles of the same page
    page.locator("label[for=tnpo-scale-rank]").click()
    ranked = page.evaluate(
        "() => getComputedStyle(document.querySelector('.tnpo-tok[style]')).backgroundColor"
    )
    assert _rgb(ranked) is not None
    page.locator("label[for=tnpo-compact]").click()
    heights = page.evaluate(
        "() => [...document.querySelectorAll('.tnpo-example')]"
        ".map(e => e.getBoundingClientRect().height)"
    )
    line = page.evaluate(
        "() => parseFloat(getComputedStyle(document.querySelector('.tnpo-tokens')).lineHeight)"
    )
    assert max(heights) < 2 * line, (max(heights), line)
    _shot(page, "10-heatmaps-rank-compact")
    page.close()


def test_executed_notebooks_hold_results_not_progress_dumps(pipeline):
    """Under papermill the bars are plain lines: no carriage returns, no stale '0%|' reprs of
    closed widgets, no widget state of progress bars; each notebook stays small."""
    sizes = {}
    for nb_file in sorted((pipeline / "notebooks").glob("*.ipynb")):
        nb = json.loads(nb_file.read_text())
        sizes[nb_file.name] = nb_file.stat().st_size / 1024
        for cell in nb["cells"]:
            for o in cell.get("outputs", []):
                text = "".join(o.get("text", "")) + "".join(o.get("data", {}).get("text/plain", ""))
                assert "\r" not in text and "0%|" not in text, (nb_file.name, text[:200])
        state = (
            nb["metadata"]
            .get("widgets", {})
            .get("application/vnd.jupyter.widget-state+json", {})
            .get("state", {})
        )
        assert not [m for m in state.values() if m.get("model_name") == "FloatProgressModel"], (
            nb_file.name
        )
    print("executed notebook sizes (KiB):", {k: round(v, 1) for k, v in sizes.items()})
    assert max(sizes.values()) < 400, sizes


def test_a_bad_value_typed_in_jupyterlab_fails_in_one_line(browser, lab, pipeline):
    page = _open_notebook(browser, lab, "06-dashboard.ipynb")
    params = page.locator(
        ".jp-CodeCell", has_text="html_file = None"
    ).first  # the tagged parameters cell
    params.locator(".cm-content").click()
    page.keyboard.press("Control+End")
    page.keyboard.type("\nnum_epoch = 2")
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.locator('.lm-Menu-item[data-command="runmenu:run-all"]').click()
    error = page.locator(
        ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']",
        has_text="ConfigError",
    ).first
    error.wait_for(state="visible", timeout=300_000)
    text = error.inner_text()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert any(
        ln.startswith("ConfigError: notebook parameters:") and "num_epoch" in ln for ln in lines
    ), text
    assert "Traceback" not in text and "site-packages" not in text and len(lines) <= 2, text
    error.scroll_into_view_if_needed()
    _shot(page, "11-bad-value-one-line")
    page.close()


# ----------------------------------------------------------------------------- live trajectory

DOC_FIGURE = ROOT / "docs" / "trajectory_live.png"
SAVE_DOC_FIGURE = "TNPO_SAVE_DOC_FIGURE"  # =1: the screenshot below also replaces DOC_FIGURE


@pytest.fixture(scope="module")
def live_forget(mini_world, tmp_path_factory) -> Iterator[Path]:
    """A folder holding ``notebooks/forget-live.ipynb``: the forget notebook executed (papermill,
    as `npo run` executes it) with ``eval.during.every_steps=1`` on the mini world, the model
    itself standing in as the retain model so forget quality is measured at each point."""
    from npo_lib.workflow.steps import Step, notebook_path, run_steps

    _chromium()
    tmp = tmp_path_factory.mktemp("live")
    mp = jupyter_home(tmp)
    params = {
        "config_files": [],
        "model_path": mini_world["model_path"],
        "data_path": mini_world["data_path"],
        "retain_model_path": mini_world["model_path"],
        "save_dir": str(tmp / "runs" / "npo_live"),
        "cache_dir": str(tmp / "cache"),
        "split": "forget10",
        "task_id": 1,
        "batch_size": 2,
        "num_epochs": 2,
        "lr": 1e-3,
        "warmup_epochs": 0,
        "logging_steps": 1,
        "forget_loss": "NPO+GD",
        "eval": {"max_new_tokens": 6, "during": {"every_steps": 1}},
    }
    step = Step("forget", notebook_path("forget"), params, tmp / "notebooks" / "forget-live.ipynb")
    (done,) = run_steps([step], stream=False, say=lambda *_: None)
    assert done.status == "done", done.error
    yield tmp
    mp.undo()


def _outputs_of(nb_file: Path, code: str) -> list[dict]:
    """The outputs of the first code cell whose source holds ``code``."""
    cells = json.loads(nb_file.read_text())["cells"]
    return next(c["outputs"] for c in cells if code in "".join(c["source"]))


def test_live_trajectory_plot_in_the_executed_forget_notebook(browser, live_forget, tmp_path):
    nb_file = live_forget / "notebooks" / "forget-live.ipynb"
    points = [
        json.loads(x)
        for x in (live_forget / "runs" / "npo_live" / "trajectory.jsonl").read_text().splitlines()
    ]
    assert [p["step"] for p in points] == [0, 1, 2, 3, 4]
    log = [
        json.loads(x)
        for x in (live_forget / "runs" / "npo_live" / "log.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3, 4]  # the loss logs at the points
    pngs = [o for o in _outputs_of(nb_file, "LiveTrajectory") if "image/png" in o.get("data", {})]
    assert len(pngs) == 1  # one display, updated in place at each point: the final figure stays
    with _lab_server(live_forget) as url:
        page = _open_notebook(browser, url, nb_file.name)
        cell = page.locator(".jp-CodeCell", has_text="LiveTrajectory").first
        figure = cell.locator(".jp-OutputArea-output img").first
        figure.wait_for(state="visible")
        figure.scroll_into_view_if_needed()
        size = figure.evaluate("i => [i.complete, i.naturalWidth, i.naturalHeight]")
        assert size[0] and size[1] > 600 and size[2] > 200, size  # two panels side by side
        shot = tmp_path / "trajectory_live.png"
        figure.screenshot(path=str(shot))
        assert shot.stat().st_size > 10_000
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, ARTIFACTS / "12-trajectory-live.png")
        if os.environ.get(SAVE_DOC_FIGURE) == "1":  # docs/notebooks.md: how the figure is made
            shutil.copy(shot, DOC_FIGURE)
        page.close()


def test_forget_notebooks_without_eval_during_draw_no_trajectory(pipeline):
    """The pipeline trains without ``eval.during``: its forget notebooks show no live figure."""
    forgets = [
        f
        for f in sorted((pipeline / "notebooks").glob("*.ipynb"))
        if "LiveTrajectory" in f.read_text()
    ]
    assert len(forgets) == 2
    for nb_file in forgets:
        outs = _outputs_of(nb_file, "LiveTrajectory")
        assert not [o for o in outs if "image/png" in o.get("data", {})], nb_file.name
    assert not list(pipeline.rglob("trajectory.jsonl"))
