"""Unlearning and token influence on a document benchmark (the MUSE-like stand-in): forget and
influence read the plug-in's records, an objective needing QA inputs is refused before any model
loads, and the heatmap page shows document pieces by source, paged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from npo_lib.benchmarks import get_benchmark
from npo_lib.config import load_config
from npo_lib.errors import ConfigError

MUSE_SMALL = [
    "benchmark=muse",
    "benchmark.muse.n_forget=4",
    "benchmark.muse.n_retain=4",
    "benchmark.muse.n_holdout=4",
]


@pytest.fixture(scope="module")
def doc_world(tmp_path_factory, tokenizer, make_untrained_llama) -> dict[str, str]:
    """The MUSE-like stand-in and an untrained two-block Llama over the test tokenizer, saved:
    the code paths on documents, not the numbers."""
    root = tmp_path_factory.mktemp("doc_world")
    folder = get_benchmark("muse").generate(load_config(MUSE_SMALL).benchmark, root / "muse")
    model_dir = root / "model"
    model = make_untrained_llama(tokenizer, heads=2, max_positions=256)
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return {"model_path": str(model_dir), "data_path": str(folder), "root": str(root)}


def _cfg(world: dict[str, str], *over: str):
    return load_config(
        [
            *MUSE_SMALL,
            f"model_path={world['model_path']}",
            f"retain_model_path={world['model_path']}",
            f"data_path={world['data_path']}",
            "max_length=96",
            "batch_size=8",
            *over,
        ]
    )


@pytest.mark.parametrize("loss", ["IDK1+GD", "NPO3", "GA+GD", "IDK2"])
def test_an_objective_needing_qa_inputs_is_refused_on_documents_before_any_model_loads(
    loss, tmp_path
):
    from npo_lib.commands.forget import check_forget_config

    cfg = load_config([*MUSE_SMALL, f"forget_loss={loss}", f"save_dir={tmp_path / 'run'}"])
    if loss == "GA+GD":  # the document views: this one passes the check
        with pytest.raises(ConfigError) as e:  # and stops later, at the missing model or data
            check_forget_config(cfg)
        assert "question-answer" not in str(e.value)
        return
    with pytest.raises(ConfigError) as e:
        check_forget_config(cfg)
    msg = str(e.value)
    assert "\n" not in msg and loss in msg and "benchmark muse" in msg, msg


def test_npo_gd_unlearns_the_muse_standin_pieces(doc_world, tmp_path):
    from safetensors.torch import load_file

    from npo_lib.commands.forget import run_forget
    from npo_lib.commands.resolve import resolve

    run = tmp_path / "run"
    over = ("forget_loss=NPO+GD", f"save_dir={run}", "num_epochs=1", "lr=1e-2", "warmup_epochs=0")
    cfg = _cfg(doc_world, *over)
    res = resolve(cfg, "forget")
    tok = res.loader.tokenizer(res.require_model())
    forget, retain = res.records("forget", tok), res.records("retain", tok)
    out = run_forget(cfg, progress=False)
    assert out["n_forget"] == len(forget) and out["steps"] >= 1
    assert retain and {r["source"] for r in retain} == {"raw/retain1"}  # MUSE's retain pool
    log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if "loss" in x]
    assert any("reg/GD" in row for row in log)
    before = load_file(str(Path(doc_world["model_path"]) / "model.safetensors"))
    after = load_file(str(run / "model" / "model.safetensors"))
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed


@pytest.fixture(scope="module")
def doc_influence(doc_world) -> dict:
    """``npo influence`` (differential scorer, diagonal P) on the stand-in's forget pieces."""
    from npo_lib.commands.influence import run_influence

    folder = Path(doc_world["root"]) / "influence"
    cfg = _cfg(doc_world, f"influence_dir={folder}", "influence.preconditioner=diagonal")
    return {"cfg": cfg, "folder": folder, "summary": run_influence(cfg, progress=False)}


def test_influence_scores_every_target_token_of_every_piece(doc_world, doc_influence):
    from npo_lib.commands.influence import INFLUENCE_VIEW, load_inputs
    from npo_lib.data.views import encode_view
    from npo_lib.influence.files import read_influence_files

    cfg, folder, summary = doc_influence["cfg"], doc_influence["folder"], doc_influence["summary"]
    scores, lengths, rows, meta = read_influence_files(folder)
    inputs = load_inputs(cfg, with_retain_sample=True)
    pieces = inputs.dataset.forget
    assert len(rows) == len(pieces) == summary["n_examples"] > 4  # articles cut into pieces
    for i, piece in enumerate(pieces):
        enc = inputs.dataset[i][INFLUENCE_VIEW]
        assert int(lengths[i]) == len(enc["input_ids"]) - 1  # every token after BOS
        assert rows[i]["target"] == piece["text"] and rows[i]["source"] == "raw/forget"
        assert "question" not in rows[i]
    assert summary["n_tokens"] == int(lengths.sum()) and torch.isfinite(scores).all()
    assert summary["auroc"] is not None and 0.0 <= meta["auroc"] <= 1.0  # the stand-in's spans
    # the differential scorer's retain gradient comes from the plug-in's retain pool
    pool = load_inputs(cfg).retain  # as the scorer draws it
    plugin = [
        encode_view(r, "retain", inputs.tokenizer, inputs.tags, cfg.max_length)["input_ids"]
        for r in get_benchmark("muse").load_records(
            doc_world["data_path"], "retain", cfg, inputs.tokenizer
        )
    ]
    assert pool and all(e["input_ids"] in plugin for e in pool)


def test_heatmap_page_of_a_document_run_pages_and_names_each_pieces_source(doc_influence, tmp_path):
    from npo_lib.viz.render import write_heatmap_page
    from npo_lib.viz.run_tables import token_tables

    cfg, folder = doc_influence["cfg"], doc_influence["folder"]
    tables = token_tables(cfg, folder, progress=False)
    assert all(t.source.startswith("raw/forget") and not t.question for t in tables)
    page = write_heatmap_page(tables, tmp_path / "h.html", ["influence", "weight"], page_size=4)
    text = page.read_text()
    n_pages = -(-len(tables) // 4)
    assert n_pages > 1 and text.count('name="tnpo-page"') == n_pages
    assert 'class="tnpo-page" data-page="1"' in text and "raw/forget" in text
    assert text.count('class="tnpo-top"') == len(tables)  # each piece lists its top tokens
    assert 'href="#tnpo-t0-' in text and 'id="tnpo-t0-' in text  # which jump to the tokens
