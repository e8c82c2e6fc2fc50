"""Token influence: exactness against the per-token autograd loop, preconditioners, module sets,
scorers, the influence files and their reuse, the entry points; AUROC on the real tiny models."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from npo_lib.commands.influence import (
    auroc_table,
    check_influence_config,
    format_auroc_table,
    load_inputs,
    load_scoring_model,
    run_influence,
)
from npo_lib.config import load_config
from npo_lib.errors import ConfigError
from npo_lib.influence.direction import (
    autograd_token_scores,
    differential_direction,
    score_rows,
    token_nll,
)
from npo_lib.influence.ground_truth import auroc, fact_token_mask
from npo_lib.influence.modules import module_params, tracked_modules
from npo_lib.influence.preconditioners import EKFAC, KFAC, PRECONDITIONERS, DiagonalFisher
from npo_lib.influence.scorers import SCORERS, ScoreContext, compute_token_scores

ROOT = Path(__file__).resolve().parents[1]


def _cfg(world, *over: str, folder: Path | None = None):
    return load_config(
        [
            f"model_path={world['model_path']}",
            f"data_path={world['data_path']}",
            "split=forget10",
            "task_id=1",
            *([f"influence_dir={folder}"] if folder else []),
            *over,
        ]
    )


@pytest.fixture(scope="module")
def f64(mini_world):
    """The random mini model in float64 with its forget split and retain sample."""
    cfg = _cfg(mini_world, "influence.dtype=float64")
    inputs = load_inputs(cfg)
    return cfg, inputs, load_scoring_model(cfg, inputs.model_path)


def _rel_err(rows, refs) -> float:
    """max |s - s_ref| / max |s_ref| over every token of the compared examples."""
    diff = max(float((r - ref).abs().max()) for r, ref in zip(rows, refs))
    return diff / max(float(ref.abs().max()) for ref in refs)


# ----------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("method", ["jvp", "fd"])
@pytest.mark.parametrize("preconditioner", list(PRECONDITIONERS))
def test_row_scores_equal_the_per_token_autograd_loop(f64, preconditioner, method):
    """s_it = vᵀ ∇ℓ_it from one JVP (or two forwards) per batch = one backward per token,
    float64."""
    cfg, inputs, model = f64
    modules = tracked_modules(model, "all_linear")
    v = differential_direction(
        model,
        modules,
        inputs.forget,
        inputs.retain,
        lam=1.0,
        preconditioner=PRECONDITIONERS[preconditioner](cfg.influence.damping),
        pad_token_id=0,
    )
    rows = score_rows(model, v, inputs.forget, method=method, batch_size=3)
    refs = [autograd_token_scores(model, v, ex) for ex in inputs.forget[:2]]
    assert [len(r) for r in rows[:2]] == [len(r) for r in refs]
    err = _rel_err(rows[:2], refs)
    print(f"{preconditioner} {method}: relative error {err:.1e}")
    assert err < (1e-10 if method == "jvp" else 1e-4)


def test_float32_scores_agree_with_the_float64_loop(mini_world, f64):
    """The default dtype (float32) and damping: JVP and finite-difference rows stay close to the
    float64 per-token loop for the same direction."""
    _, inputs, model64 = f64
    cfg = _cfg(mini_world)
    model = load_scoring_model(cfg, inputs.model_path)
    v = differential_direction(
        model64,
        tracked_modules(model64, "all_linear"),
        inputs.forget,
        inputs.retain,
        preconditioner=PRECONDITIONERS[cfg.influence.preconditioner](cfg.influence.damping),
    )
    refs = [autograd_token_scores(model64, v, ex) for ex in inputs.forget[:2]]
    v32 = {n: t.float() for n, t in v.items()}
    for method, tol in (("jvp", 1e-4), ("fd", 1e-2)):
        err = _rel_err(score_rows(model, v32, inputs.forget[:2], method=method), refs)
        print(f"float32 {method}: relative error {err:.1e}")
        assert err < tol


def test_direction_is_the_autograd_gradient_difference(f64):
    """P = I: v = ḡ_forget − λ ḡ_retain, ḡ the mean over sequences of ∇ mean_t ℓ_it."""
    cfg, inputs, model = f64
    modules = tracked_modules(model, "mlp")
    v = differential_direction(model, modules, inputs.forget, inputs.retain, lam=0.5, batch_size=3)
    params = module_params(modules)

    def mean_grad(examples):
        total = {n: torch.zeros_like(p) for n, p in params.items()}
        for ex in examples:  # one sequence at a time: no padding involved
            from npo_lib.data.dataset import ViewCollator

            batch = ViewCollator(0).pad([ex])
            nll = token_nll(model, batch)
            loss = nll.sum() / (batch["labels"][:, 1:] != -100).sum()
            for n, g in zip(params, torch.autograd.grad(loss, list(params.values()))):
                total[n] += g / len(examples)
        return total

    for p in model.parameters():
        p.requires_grad_(True)
    gf, gr = mean_grad(inputs.forget), mean_grad(inputs.retain)
    for n in params:
        torch.testing.assert_close(v[n], gf[n] - 0.5 * gr[n], rtol=1e-10, atol=1e-12)


def _per_example_grads(model, modules, examples):
    from npo_lib.data.dataset import ViewCollator

    W = [m.weight for m in modules.values()]
    out = []
    for ex in examples:
        batch = ViewCollator(0).pad([ex])
        nll = token_nll(model, batch)
        loss = nll.sum() / (batch["labels"][:, 1:] != -100).sum()
        out.append(torch.autograd.grad(loss, W))
    return out


def test_preconditioners_match_their_dense_definitions(f64):
    """Diagonal: E_i[G_i²] from per-example autograd; K-FAC / EK-FAC: the solve equals the dense
    (Q_S ⊗ Q_A) diag(Λ + damping) (Q_S ⊗ Q_A)ᵀ inverse, and EK-FAC's Λ = E_i[(Q_Sᵀ G_i Q_A)²]."""
    cfg, inputs, model = f64
    modules = {
        n: m
        for n, m in tracked_modules(model, "all_linear").items()
        if n.endswith("layers.1.self_attn.o_proj")
    }
    name = next(iter(modules))
    examples = [*inputs.forget, *inputs.retain]
    for p in model.parameters():
        p.requires_grad_(True)
    grads = [g[0] for g in _per_example_grads(model, modules, examples)]  # per example (out, in)
    G = torch.stack(grads)  # (N, out, in)
    g = torch.randn_like(G[0])

    diag = DiagonalFisher(0.1)
    differential_direction(
        model, modules, inputs.forget, inputs.retain, preconditioner=diag, batch_size=3
    )
    F = (G**2).mean(0)
    torch.testing.assert_close(diag.fisher[name], F, rtol=1e-9, atol=1e-14)
    torch.testing.assert_close(diag.solve(name, g), g / (F + 0.1 * F.mean()), rtol=1e-9, atol=1e-12)

    for cls in (KFAC, EKFAC):
        pre = cls(0.1)
        differential_direction(
            model, modules, inputs.forget, inputs.retain, preconditioner=pre, batch_size=3
        )
        QS, QA = pre.basis[name]
        if cls is EKFAC:
            lam = ((QS.T @ G @ QA) ** 2).mean(0)
            torch.testing.assert_close(pre.eig[name], lam, rtol=1e-9, atol=1e-14)
        eig = pre.eig[name] + 0.1 * pre.eig[name].mean()
        Q = torch.kron(QS, QA)  # vec(QS R QAᵀ) = (QS ⊗ QA) vec(R), row-major vec
        P = Q @ torch.diag(eig.flatten()) @ Q.T
        dense = torch.linalg.solve(P, g.flatten()).view_as(g)
        torch.testing.assert_close(pre.solve(name, g), dense, rtol=1e-7, atol=1e-9)


# ----------------------------------------------------------------------------- modules and scorers


def test_tracked_module_sets(f64):
    cfg, inputs, model = f64
    per_layer = 7  # q, k, v, o, gate, up, down
    assert len(tracked_modules(model, "all_linear")) == 2 * per_layer
    assert (
        all(".mlp." in n for n in tracked_modules(model, "mlp"))
        and len(tracked_modules(model, "mlp")) == 6
    )
    last = tracked_modules(model, "last_n", last_n_layers=1)
    assert len(last) == per_layer and all(".layers.1." in n for n in last)
    assert "lm_head" not in " ".join(tracked_modules(model, "all_linear"))
    with pytest.raises(ValueError, match="LoRA"):
        tracked_modules(model, "lora")


def test_lora_modules_score_exactly(mini_world):
    """modules=lora tracks lora_A / lora_B only; the JVP rows still match the autograd loop."""
    cfg = _cfg(
        mini_world,
        "influence.dtype=float64",
        "influence.modules=lora",
        "LoRA.r=2",
        "influence.preconditioner=diagonal",
    )
    inputs = load_inputs(cfg)
    model = load_scoring_model(cfg, inputs.model_path)
    modules = tracked_modules(model, "lora")
    assert modules and all(".lora_A." in n or ".lora_B." in n for n in modules)
    ctx = ScoreContext(model, inputs.forget, inputs.retain, cfg.influence)
    rows = compute_token_scores(ctx)
    assert ctx.info["tracked_modules"] == len(modules)
    v = differential_direction(
        model,
        modules,
        inputs.forget,
        inputs.retain,
        preconditioner=DiagonalFisher(cfg.influence.damping),
    )
    assert _rel_err(rows[:1], [autograd_token_scores(model, v, inputs.forget[0])]) < 1e-10


def test_gradient_dot_is_the_forget_gradient_and_contrast_of_a_model_with_itself_is_zero(
    mini_world, f64
):
    cfg, inputs, model = f64
    gd = compute_token_scores(
        ScoreContext(
            model,
            inputs.forget,
            inputs.retain,
            dataclasses.replace(cfg.influence, scorer="gradient_dot"),
        )
    )
    ident = dataclasses.replace(
        cfg.influence, scorer="differential", preconditioner="identity", lam=0.0
    )
    diff = compute_token_scores(ScoreContext(model, inputs.forget, inputs.retain, ident))
    for a, b in zip(gd, diff):
        torch.testing.assert_close(a, b)
    contrast = compute_token_scores(
        ScoreContext(
            model,
            inputs.forget,
            inputs.retain,
            dataclasses.replace(cfg.influence, scorer="contrast"),
            retain_model=lambda: model,
        )
    )
    assert all(torch.all(r == 0) for r in contrast) and [len(r) for r in contrast] == [
        len(r) for r in gd
    ]


def test_kronfluence_scores_are_labelled_and_aligned(f64):
    pytest.importorskip(
        "kronfluence", reason="kronfluence not installed (optional: pip install kronfluence)"
    )
    cfg, inputs, model = f64
    rows = compute_token_scores(
        ScoreContext(
            model,
            inputs.forget,
            inputs.retain,
            dataclasses.replace(cfg.influence, scorer="kronfluence"),
        )
    )
    assert [len(r) for r in rows] == [sum(t != -100 for t in ex["labels"]) for ex in inputs.forget]
    assert all(torch.isfinite(r).all() for r in rows)
    assert "NOT the directional derivative" in SCORERS["kronfluence"].quantity


# ----------------------------------------------------------------------------- ground truth


def test_fact_mask_marks_the_fact_tokens(f64):
    cfg, inputs, model = f64
    for rec, ex in zip(inputs.dataset.forget, inputs.forget):
        mask = fact_token_mask(rec, ex["target_offsets"], "full", inputs.tags)
        target = inputs.tokenizer.decode([t for t in ex["labels"] if t != -100])
        assert len(mask) == len(ex["target_offsets"]) and 0 < sum(mask) < len(mask)
        picked = "".join(
            inputs.tokenizer.decode([t])
            for t, m in zip([t for t in ex["labels"] if t != -100], mask)
            if m
        )
        assert rec["fact"].replace(" ", "") in picked.replace(" ", "") and rec["fact"] in target


def test_auroc_rank_definition():
    assert auroc([0.1, 0.2, 0.9, 0.8], [0, 0, 1, 1]) == 1.0
    assert auroc([0.9, 0.8, 0.1, 0.2], [0, 0, 1, 1]) == 0.0
    assert auroc([1.0, 1.0, 1.0, 1.0], [0, 1, 0, 1]) == 0.5
    assert auroc([0.3, 0.1, 0.2, 0.4], [1, 0, 0, 1]) == 1.0
    assert auroc([0.3, 0.2], [1, 1]) != auroc([0.3, 0.2], [1, 1])  # nan: one class only


# ------------------------------------------------------------------- files, reuse, entry points


def test_config_errors_come_before_any_model_loads(mini_world, tmp_path, monkeypatch):
    from npo_lib.models.loading import ModelLoader

    def no_model(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(ModelLoader, "model", no_model)
    for bad, msg in [
        ("influence.scorer=foo", "influence.scorer 'foo' is unknown; valid: differential"),
        ("influence.preconditioner=kfc", "valid: identity, diagonal, kfac, ekfac"),
        ("influence.method=bwd", "influence.method"),
        ("influence.damping=0", "influence.damping must be > 0"),
        ("influence.lam=-1", "lam >= 0"),
        ("influence.modules=attn", "valid: all_linear, mlp, last_n, lora"),
    ]:
        with pytest.raises(ConfigError, match=msg):
            check_influence_config(_cfg(mini_world, bad))
    with pytest.raises(ConfigError, match="LoRA.r > 0"):
        run_influence(
            _cfg(mini_world, "influence.modules=lora", folder=tmp_path / "a"), progress=False
        )
    with pytest.raises(
        ConfigError, match="retain model"
    ):  # model_path given: no embedded retain model
        run_influence(
            _cfg(mini_world, "influence.scorer=contrast", folder=tmp_path / "b"), progress=False
        )
    with pytest.raises(ConfigError, match="not found"):
        run_influence(
            _cfg(
                mini_world,
                "influence.scorer=contrast",
                "retain_model_path=/nope",
                folder=tmp_path / "c",
            ),
            progress=False,
        )
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "kronfluence" else real(name, *a),
    )
    with pytest.raises(ConfigError, match="optional package kronfluence, which is not installed"):
        run_influence(
            _cfg(mini_world, "influence.scorer=kronfluence", folder=tmp_path / "d"), progress=False
        )
    assert not any(tmp_path.iterdir())


def test_files_feed_the_influence_loss_and_are_reused_or_refused(mini_world, tmp_path, monkeypatch):
    import npo_lib.commands.influence as compute_influence
    from npo_lib.influence.files import read_influence_files

    folder = tmp_path / "influence"
    cfg = _cfg(
        mini_world,
        "influence.preconditioner=diagonal",
        "forget_loss=INFLUENCE+GD",
        "selection.method=top_k",
        "selection.k=3",
        folder=folder,
    )
    res = run_influence(cfg, progress=False)
    assert res["reused"] is False and res["n_examples"] == 4 and 0.0 <= res["auroc"] <= 1.0
    scores, lengths, tokens, meta = read_influence_files(folder)
    assert meta["scorer"] == "differential" and meta["preconditioner"] == "diagonal"
    assert {"model", "model_fingerprint", "data_hash", "parameters", "quantity"} <= set(meta)
    assert meta["parameters"]["lam"] == 1.0 and meta["parameters"]["method"] == "jvp"
    assert int(lengths.sum()) == res["n_tokens"] and scores.shape[0] == 4

    # INFLUENCE reads them: weights on the selected target tokens
    from npo_lib.data.dataset import UnlearningDataset
    from npo_lib.influence.files import load_token_weights

    inputs = load_inputs(cfg)
    w = load_token_weights(
        cfg,
        folder,
        UnlearningDataset.from_files(
            inputs.data_path, "forget10", 1, inputs.tokenizer, inputs.tags
        ),
        "full",
    )
    assert w.shape[0] == 4 and (w.sum(1) >= 3).all()

    # same settings: reused without loading a model; other settings: refused, then replaced on
    # overwrite
    def no_model(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(compute_influence, "load_scoring_model", no_model)
    again = run_influence(cfg, progress=False)
    assert again["reused"] is True and again["n_tokens"] == res["n_tokens"]
    other = _cfg(mini_world, "influence.preconditioner=ekfac", folder=folder)
    with pytest.raises(ConfigError, match="overwrite=true") as e:
        run_influence(other, progress=False)
    assert "preconditioner" in str(e.value)
    monkeypatch.undo()
    replaced = run_influence(dataclasses.replace(other, overwrite=True), progress=False)
    assert (
        replaced["reused"] is False
        and json.loads((folder / "meta.json").read_text())["preconditioner"] == "ekfac"
    )


def test_npo_influence_cli_and_module_entry(mini_world, tmp_path):
    from npo_lib.cli import main

    folder = tmp_path / "cli"
    args = [
        f"model_path={mini_world['model_path']}",
        f"data_path={mini_world['data_path']}",
        f"influence_dir={folder}",
        "influence.preconditioner=identity",
    ]
    assert main(["influence", *args]) == 0 and (folder / "scores.safetensors").is_file()
    assert main(["influence", *args, "influence.scorer=nope"]) == 2
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "npo_lib.compute_influence",
            *args[:-1],
            f"influence_dir={tmp_path / 'mod'}",
            "influence.method=fd",
            "influence.preconditioner=kfac",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((tmp_path / "mod" / "meta.json").read_text())["parameters"]["method"] == "fd"


def test_check_returns_the_forget_runs_influence_folder(mini_world, tmp_path):
    from npo_lib.commands.folders import influence_files

    cfg = _cfg(mini_world, f"save_dir={tmp_path / 'runs' / 'x'}")
    folder = check_influence_config(cfg).influence_dir
    assert folder == influence_files(cfg) == tmp_path / "runs" / "influence"


# ----------------------------------------------------------------------------- real tiny models


@pytest.mark.slow
def test_default_scorer_finds_the_fact_tokens(prepared_embedded):
    """Ground truth of the embedded benchmark: the default scorer's AUROC against the fact-token
    mask over the forget split is at least 0.85; prints every scorer x preconditioner."""
    cfg, _ = prepared_embedded
    rows = auroc_table(cfg, progress=False)
    print("\n" + format_auroc_table(rows))
    default = next(
        r
        for r in rows
        if r["scorer"] == cfg.influence.scorer
        and r["preconditioner"] == cfg.influence.preconditioner
    )
    assert default["auroc"] >= 0.85
    assert all(
        r["auroc"] is not None for r in rows if r["scorer"] != "kronfluence" or not r["note"]
    )
