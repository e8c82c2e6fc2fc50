"""The method study: the first grid's table (seeds, floor, claim) and the fair study (frontier
readings, outputs, old sweeps, the adaptive search's sweep files, the study plan, the notebook)."""

from __future__ import annotations

import csv
import json

import pytest
import yaml

from npo_lib.study.study import best_per_method, claim_text, collect, markdown


def _run(root, name, loss, lr, seed, fq, mu):
    d = root / name
    (d / "eval").mkdir(parents=True)
    (d / "config.yaml").write_text(
        yaml.safe_dump({"forget_loss": loss, "lr": lr, "num_epochs": 5, "seed": seed})
    )
    agg = {
        "forget_quality": fq,
        "model_utility": mu,
        "forget_fact_recall": 0.1,
        "retain_fact_recall": 0.9,
        "privleak": -5.0,
    }
    (d / "eval" / "metrics.json").write_text(json.dumps({"aggregates": agg}))
    return d


def test_settings_average_seeds_and_the_claim_respects_the_utility_floor(tmp_path):
    runs = [
        _run(tmp_path, "a0", "NPO+GD", 1e-4, 0, 0.02, 0.80),
        _run(tmp_path, "a1", "NPO+GD", 1e-4, 1, 0.04, 0.82),
        _run(tmp_path, "b0", "NPO+GD", 3e-4, 0, 0.50, 0.40),  # forgets more but loses utility
        _run(tmp_path, "c0", "INFLUENCE+GD", 1e-4, 0, 0.10, 0.84),
        _run(tmp_path, "c1", "INFLUENCE+GD", 1e-4, 1, 0.20, 0.86),
    ]
    (tmp_path / "unevaluated").mkdir()
    settings = collect([*runs, tmp_path / "unevaluated"], ("forget_loss", "lr", "num_epochs"))
    assert [s.key for s in settings] == [
        ("NPO+GD", 1e-4, 5),
        ("NPO+GD", 3e-4, 5),
        ("INFLUENCE+GD", 1e-4, 5),
    ]
    npo = settings[0]
    assert npo.mean("forget_quality") == pytest.approx(0.03) and npo.std(
        "forget_quality"
    ) == pytest.approx(0.0141421, rel=1e-4)
    best = best_per_method(settings, mu_floor=0.95 * 0.85)
    assert best["NPO+GD"] is npo  # the 3e-4 setting is below the floor
    assert "holds" in claim_text(best) and "0.15 vs 0.03" in claim_text(best)
    assert "does not hold" in claim_text({"INFLUENCE+GD": npo, "NPO+GD": settings[2]})
    assert "not testable" in claim_text(best_per_method(settings, mu_floor=0.99))
    text = markdown(
        settings,
        ("forget_loss", "lr", "num_epochs"),
        {"target": {"model_utility": 0.85, "forget_quality": 1e-5}},
        0.95,
    )
    assert "| target |" in text and "0.03 ± 0.014" in text and "Claim" in text


# ----------------------------------------------------------------------------- the fair study

REFS = {
    "target": {
        "model_utility": 0.80,
        "forget_quality": 1e-4,
        "retain_fact_recall": 0.90,
        "forget_fact_recall": 0.95,
    },
    "retain": {
        "model_utility": 0.82,
        "forget_quality": 1.0,
        "retain_fact_recall": 0.95,
        "forget_fact_recall": 0.05,
    },
}


def _fair_run(root, loss, lr, seed, fq, mu, selection=None, relearn_after=0.5, ks=None):
    cfg = {"forget_loss": loss, "lr": lr, "num_epochs": 5, "seed": seed, "forget_coeff": 1.0}
    if selection:
        cfg["selection"] = selection
    name = "_".join(
        f"{k}-{v}"
        for k, v in [("loss", loss), *(selection or {}).items(), ("lr", lr), ("seed", seed)]
    )
    d = root / name
    (d / "eval").mkdir(parents=True)
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    agg = {
        "forget_quality": fq,
        "model_utility": mu,
        "forget_fact_recall": 1.0 - mu,
        "retain_fact_recall": mu + 0.1,
        "privleak": -5.0,
    }
    rob = {
        "relearn": {"before": {"fact_recall": 0.1}, "after": {"fact_recall": relearn_after}},
        "quant4": {"before": {"fact_recall": 0.1}, "after": {"fact_recall": 0.2}},
    }
    metrics = {"aggregates": agg, "robustness": rob}
    if ks is not None:  # the KS statistic behind forget quality, on 36 forget items
        metrics = {**metrics, "counts": {"forget": 36}}
        agg["forget_ks_stat"] = ks
    (d / "eval" / "metrics.json").write_text(json.dumps(metrics))
    return d


def _fair_sweep(root):
    """Two points per seed around MU 0.76 = 0.95 x 0.80: NPO+GD reads 10^-2.5, INFLUENCE+GD 0.1
    (geometric means over seeds: each seed's FQ is scaled by 10^(0.01 (seed - 1)))."""
    for s in range(3):
        j = 10 ** (0.01 * (s - 1))
        _fair_run(root, "NPO+GD", 1e-4, s, 1e-3 * j, 0.80)
        _fair_run(root, "NPO+GD", 2e-4, s, 1e-2 * j, 0.72, relearn_after=0.8)
        _fair_run(root, "INFLUENCE+GD", 1e-4, s, 1e-2 * j, 0.80)
        _fair_run(root, "INFLUENCE+GD", 2e-4, s, 1.0 * j, 0.72, relearn_after=0.3)
        _fair_run(root, "INFLUENCE+GD", 1e-4, s, 1e-3 * j, 0.80, selection={"method": "random"})
        _fair_run(root, "INFLUENCE+GD", 2e-4, s, 1e-2 * j, 0.72, selection={"method": "random"})


def test_fair_study_reads_frontiers_and_writes_every_output(tmp_path):
    from npo_lib.config import StudyConfig
    from npo_lib.study.study import write_study

    _fair_sweep(tmp_path / "sweep")
    for s in range(3):  # p = 100 % and TNPO: the same loss, so the same runs
        for loss, sel in (("TNPO+GD", None), ("INFLUENCE+GD", {"p": 100.0})):
            _fair_run(
                tmp_path / "sweep",
                loss,
                1e-4,
                s,
                1e-3 * 10 ** (0.01 * (s - 1)),
                0.80,
                selection=sel,
            )
            _fair_run(
                tmp_path / "sweep",
                loss,
                2e-4,
                s,
                1e-2 * 10 ** (0.01 * (s - 1)),
                0.72,
                selection=sel,
            )
    (tmp_path / "sweep" / "status.json").write_text(
        json.dumps(
            {
                "_setup": {"status": "done"},
                "a": {"status": "done", "seconds": 50.0},
                "b": {"status": "done", "seconds": 70.0},
                "c": {"status": "failed", "seconds": 5.0},
            }
        )
    )
    res = write_study(
        tmp_path / "sweep", tmp_path / "out", StudyConfig(), references=lambda runs, root: REFS
    )
    assert "2 runs, 60 s per run" in res["markdown"]
    (b,) = res["studies"]
    infl, npo, rnd = b.row("INFLUENCE+GD"), b.row("NPO+GD"), b.row("INFLUENCE+GD random")
    assert infl.readings[("fq_mu", 0.95)].mean == pytest.approx(0.1)
    assert npo.readings[("fq_mu", 0.95)].mean == pytest.approx(10**-2.5)
    assert rnd is not None and infl.setting == (
        ("lr", 1e-4),
        ("num_epochs", 5),
        ("forget_coeff", 1.0),
    )
    assert infl.robust["relearn"][1].mean == pytest.approx(0.5)  # at the matched setting (lr 1e-4)
    text = (tmp_path / "out" / "study.md").read_text()
    assert (
        "## embedded (n_authors 40, seed 0)" in text
        and "### Selection controls of INFLUENCE+GD" in text
    )
    assert "higher than NPO+GD, TNPO+GD with non-overlapping 95 % intervals" in text
    assert "WGA+GD (not run)" in text and "vs random" in text
    assert (
        "forgetting comes back (recall +0.1 or more) for INFLUENCE+GD, INFLUENCE+GD random, "
        "INFLUENCE+GD p=100, NPO+GD, TNPO+GD"
    ) in text  # 0.1 -> 0.5
    assert (
        "Check: at p = 100 % INFLUENCE+GD reads 0.0032 [0.0031, 0.0032], "
        "TNPO+GD 0.0032 [0.0031, 0.0032]" in text
    )
    rows = list(csv.DictReader((tmp_path / "out" / "study.csv").open()))
    fq = {
        r["method"]: float(r["mean"])
        for r in rows
        if r["quantity"] == "forget_quality" and r["at"].startswith("model_utility >= 0.95")
    }
    assert fq["INFLUENCE+GD"] == pytest.approx(0.1) and fq["INFLUENCE+GD random"] == pytest.approx(
        10**-2.5
    )
    for png in ("study_frontier.png", "study_selection.png"):
        assert (tmp_path / "out" / png).stat().st_size > 10_000
    with pytest.raises(ValueError, match="exists"):
        write_study(
            tmp_path / "sweep",
            tmp_path / "out",
            StudyConfig(),
            references=lambda runs, root: REFS,
            overwrite=False,
        )


def test_an_interval_within_one_ks_step_is_marked_and_separates_nothing(tmp_path):
    """Every INFLUENCE+GD seed reads the same p-value (0.71, D = 4/36): its interval is one value,
    so the table marks it † with D beside it and the verdict does not call it separated."""
    from npo_lib.config import StudyConfig
    from npo_lib.study.study import write_study

    for s in range(3):
        j = 10 ** (0.01 * (s - 1))
        _fair_run(tmp_path / "sweep", "NPO+GD", 1e-4, s, 1e-3 * j, 0.80, ks=0.5 + s / 20)
        _fair_run(tmp_path / "sweep", "NPO+GD", 2e-4, s, 1e-2 * j, 0.72, ks=0.4 + s / 20)
        _fair_run(tmp_path / "sweep", "INFLUENCE+GD", 1e-4, s, 0.71, 0.80, ks=4 / 36)
        _fair_run(tmp_path / "sweep", "INFLUENCE+GD", 2e-4, s, 0.71, 0.72, ks=4 / 36)
    res = write_study(
        tmp_path / "sweep", tmp_path / "out", StudyConfig(), references=lambda runs, root: REFS
    )
    (b,) = res["studies"]
    infl, npo = b.row("INFLUENCE+GD"), b.row("NPO+GD")
    assert infl.ks[0.95].one_step and infl.ks[0.95].step == pytest.approx(1 / 36)
    assert not npo.ks[0.95].one_step and npo.ks[0.95].d.mean == pytest.approx(0.5)
    text = res["markdown"]
    assert "| INFLUENCE+GD | 0.71 [0.71, 0.71] † (D 0.111) |" in text
    assert "| NPO+GD | 0.0032 [0.0031, 0.0032] (D 0.500) |" in text
    assert "† Within one KS step" in text and "(1/36 here: 1/n for n forget items)" in text
    assert "higher than NPO+GD, but not separated by more than one KS step" in text
    assert "non-overlapping" not in text
    rows = list(csv.DictReader((tmp_path / "out" / "study.csv").open()))
    d = [r for r in rows if r["quantity"] == "forget_ks_stat" and r["method"] == "INFLUENCE+GD"]
    assert float(d[0]["mean"]) == pytest.approx(4 / 36)


def test_a_study_goes_beside_its_sweep_and_never_replaces_an_earlier_one_silently(tmp_path):
    import argparse

    from npo_lib.config import StudyConfig
    from npo_lib.errors import ReportError
    from npo_lib.study.command import add_study_arguments
    from npo_lib.study.study import write_study

    opts = argparse.ArgumentParser()
    add_study_arguments(opts)
    parsed = opts.parse_args(["runs/x"])
    assert parsed.out is None and not parsed.overwrite  # no default into the checkout's docs/
    _fair_sweep(tmp_path / "sweep")
    refs = {"references": lambda runs, root: REFS}
    res = write_study(tmp_path / "sweep", None, StudyConfig(), **refs)
    assert res["md"] == str(tmp_path / "sweep" / "study" / "study.md")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "study_frontier.png").write_bytes(b"an earlier study's figure")
    for out in (tmp_path / "sweep" / "study", tmp_path / "out"):  # any output file is refused
        with pytest.raises(ReportError, match=r"study\S*\.\S+ exists: pass --overwrite") as e:
            write_study(tmp_path / "sweep", out, StudyConfig(), **refs)
        assert "\n" not in str(e.value) and str(out) in str(e.value)
    assert (tmp_path / "out" / "study_frontier.png").read_bytes() == b"an earlier study's figure"
    assert not (tmp_path / "out" / "study.md").exists()  # refused before writing anything
    write_study(tmp_path / "sweep", tmp_path / "out", StudyConfig(), overwrite=True, **refs)
    assert (tmp_path / "out" / "study_frontier.png").stat().st_size > 10_000


def test_old_sweeps_without_attacks_or_selection_still_report(tmp_path):
    from npo_lib.config import StudyConfig
    from npo_lib.study.study import write_study

    for s in range(2):
        _run(tmp_path / "old", f"a{s}", "NPO+GD", 1e-4, s, 0.02, 0.80)
        _run(tmp_path / "old", f"b{s}", "NPO+GD", 3e-4, s, 0.50, 0.70)
    res = write_study(
        tmp_path / "old", tmp_path / "out", StudyConfig(), references=lambda runs, root: REFS
    )
    assert (
        "| NPO+GD |" in res["markdown"]
        and "No verdict: the sweep has no INFLUENCE+GD runs." in res["markdown"]
    )
    assert "selection" not in res  # no selection variants: no controls figure
    res = write_study(
        tmp_path / "old", tmp_path / "out2", StudyConfig(), references=lambda runs, root: {}
    )
    assert "No verdict" in res["markdown"]


# ----------------------------------------------------------------------------- another benchmark

MUSE_REFS = {
    "target": {
        "muse_knowmem_retain": 0.80,
        "muse_knowmem_forget": 0.90,
        "muse_verbmem_forget": 0.7,
    },
    "retain": {
        "muse_knowmem_retain": 0.78,
        "muse_knowmem_forget": 0.30,
        "muse_verbmem_forget": 0.2,
    },
}


def _muse_run(root, loss, lr, seed, knowmem_forget, knowmem_retain, selection=None):
    """A forget run on the MUSE-like stand-in: MUSE's aggregates only (no forget quality)."""
    cfg = {"benchmark": {"name": "muse"}, "forget_loss": loss, "lr": lr, "num_epochs": 5}
    cfg.update(
        {"seed": seed, "forget_coeff": 1.0, **({"selection": selection} if selection else {})}
    )
    tags = [("loss", loss), *(selection or {}).items(), ("lr", lr), ("seed", seed)]
    d = root / "_".join(f"{k}-{v}" for k, v in tags)
    (d / "eval").mkdir(parents=True)
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    agg = {
        "muse_knowmem_forget": knowmem_forget,
        "muse_knowmem_retain": knowmem_retain,
        "muse_verbmem_forget": knowmem_forget - 0.1,
    }
    (d / "eval" / "metrics.json").write_text(json.dumps({"aggregates": agg}))


def test_a_muse_study_reads_knowmem_at_matched_knowmem_retain_lower_is_better(tmp_path):
    """On MUSE the floor is 0.95 x the target's KnowMem retain (0.76) and lower KnowMem forget
    is better: INFLUENCE+GD reads 0.40 there, NPO+GD 0.70 (halfway between each method's two
    points, seeds +-0.01), so INFLUENCE+GD is the better one, matched at lr 1e-4 (of the two
    settings that keep the floor, the one of lower KnowMem forget); no KS reading, no † mark."""
    from npo_lib.config import StudyConfig
    from npo_lib.study.adaptive import Axis, propose_next
    from npo_lib.study.study import write_study

    for s in range(3):
        j = 0.01 * (s - 1)
        _muse_run(tmp_path / "sweep", "NPO+GD", 1e-4, s, 0.80 + j, 0.80)
        _muse_run(tmp_path / "sweep", "NPO+GD", 2e-4, s, 0.60 + j, 0.72)
        _muse_run(tmp_path / "sweep", "INFLUENCE+GD", 5e-5, s, 0.85, 0.85)  # keeps, forgets less
        _muse_run(tmp_path / "sweep", "INFLUENCE+GD", 1e-4, s, 0.50 + j, 0.80)
        _muse_run(tmp_path / "sweep", "INFLUENCE+GD", 2e-4, s, 0.30 + j, 0.72)
        _muse_run(tmp_path / "sweep", "INFLUENCE+GD", 1e-4, s, 0.90, 0.70, {"method": "random"})
    study = StudyConfig(attacks=[])
    res = write_study(
        tmp_path / "sweep", tmp_path / "out", study, references=lambda runs, root: MUSE_REFS
    )
    (b,) = res["studies"]
    assert b.headline.name == "knowmem" and b.levels[("knowmem", 0.95)] == pytest.approx(0.76)
    infl, npo, rnd = b.row("INFLUENCE+GD"), b.row("NPO+GD"), b.row("INFLUENCE+GD random")
    assert infl.readings[("knowmem", 0.95)].mean == pytest.approx(0.40)
    assert npo.readings[("knowmem", 0.95)].mean == pytest.approx(0.70)
    assert infl.setting == (("lr", 1e-4), ("num_epochs", 5), ("forget_coeff", 1.0))
    assert rnd.readings[("knowmem", 0.95)].status == "not reached" and not infl.ks
    text = res["markdown"]
    assert "## MUSE stand-in (seed 0)" in text and "| KnowMem-F ↓ @ 0.95 KnowMem-R |" in text
    assert "| INFLUENCE+GD | 0.40 [0.39, 0.41] | 0.46 [0.45, 0.47] | 0.30" in text
    assert "KnowMem forget is 0.40 [0.39, 0.41]; lower than NPO+GD with non-overlapping" in text
    assert "vs random not reached: not comparable" in text and "After the attacks" not in text
    assert "†" not in text and "(D " not in text and "model utility" not in text
    rows = list(csv.DictReader((tmp_path / "out" / "study.csv").open()))
    assert {r["quantity"] for r in rows} == {"muse_knowmem_forget", "muse_verbmem_forget"}
    # the search reads the floor on KnowMem retain (TOFU's model utility: no runs to read)
    first = [r for r in b.results if r.method == "NPO+GD" and r.seed == 0]
    props = propose_next(first, 0.76, (Axis("lr"),), [0, 1, 2], near=0.01, pair=b.headline)
    assert {dict(p.setting)["lr"] for p in props} == {1e-4, 2e-4, 0.000141421}
    assert propose_next(first, 0.76, (Axis("lr"),), [0, 1, 2]) == []


def _sweep_run(root, point, mu, fq=0.01):
    from npo_lib.workflow.sweep import point_name

    d = root / point_name(point)
    (d / "eval").mkdir(parents=True)
    (d / "config.yaml").write_text(yaml.safe_dump({"forget_coeff": 1.0, "num_epochs": 5, **point}))
    agg = {
        "forget_quality": fq,
        "model_utility": mu,
        "forget_fact_recall": 0.2,
        "retain_fact_recall": 0.9,
    }
    (d / "eval" / "metrics.json").write_text(json.dumps({"aggregates": agg}))


def test_extend_writes_the_next_points_as_sweep_files_that_reuse_run_folders(tmp_path):
    from npo_lib.config import StudyConfig
    from npo_lib.study.plan import extend_sweep
    from npo_lib.workflow.sweep import SweepSpec, grid_points, point_name, read_spec

    spec_file = tmp_path / "s.yaml"
    spec_file.write_text(
        yaml.safe_dump(
            {
                "name": "s",
                "runs_dir": str(tmp_path / "runs"),
                "setup": [],
                "grid": {
                    "forget_loss": ["NPO+GD"],
                    "lr": [1e-4, 2e-4],
                    "num_epochs": [5],
                    "seed": [0],
                },
            }
        )
    )
    root = tmp_path / "runs" / "s"
    _sweep_run(root, {"forget_loss": "NPO+GD", "lr": 1e-4, "num_epochs": 5, "seed": 0}, 0.80)
    _sweep_run(root, {"forget_loss": "NPO+GD", "lr": 2e-4, "num_epochs": 5, "seed": 0}, 0.78)
    _sweep_run(
        root, {"forget_loss": "GA+GD", "lr": 2e-4, "num_epochs": 5, "seed": 0}, 0.50
    )  # not this sweep's
    _sweep_run(
        root,
        {
            "forget_loss": "NPO+GD",
            "lr": 8e-4,
            "num_epochs": 5,
            "seed": 0,
            "selection.method": "random",
        },
        0.5,
    )  # nor this
    study = StudyConfig(seeds=[0, 1, 2])
    res = extend_sweep(spec_file, tmp_path / "next", study, references=lambda runs, root: REFS)
    assert res["floor"] == pytest.approx(0.76)
    got = {tuple(p["setting"].items()): p["seeds"] for p in res["proposals"]}
    assert got == {  # floor not crossed: scout from the strongest setting (lr 2e-4) along each axis
        (("lr", 4e-4), ("num_epochs", 5), ("forget_coeff", 1.0)): [0],
        (("lr", 2e-4), ("num_epochs", 10), ("forget_coeff", 1.0)): [0],
        (("lr", 2e-4), ("num_epochs", 5), ("forget_coeff", 2.0)): [0],
    }
    assert [p.name for p in sorted((tmp_path / "next").iterdir())] == [
        "s-next-01.yaml"
    ]  # the round in one file
    spec = read_spec(tmp_path / "next" / "s-next-01.yaml", SweepSpec)
    assert spec.name == "s" and spec.grid[2] == {
        "forget_loss": ["NPO+GD"],
        "lr": [2e-4],
        "num_epochs": [5],
        "seed": [0],
        "forget_coeff": [2.0],
    }
    assert len(grid_points(spec.grid)) == 3
    # round two: lr 4e-4 crosses the floor; the settings around it get every seed in folders
    # named as the grid's own points, the wide gap is split (geometric mean of the lrs)
    _sweep_run(root, {"forget_loss": "NPO+GD", "lr": 4e-4, "num_epochs": 5, "seed": 0}, 0.70)
    res = extend_sweep(spec_file, tmp_path / "next", study, references=lambda runs, root: REFS)
    runs = {r for p in res["proposals"] for r in p["runs"]}
    base = read_spec(spec_file, SweepSpec)
    assert {
        point_name({**pt, "seed": 1}) for pt in grid_points(base.grid) if pt["lr"] == 2e-4
    } <= runs
    assert "forget_loss-NPO+GD_lr-0.000282843_num_epochs-5_seed-0" in runs
    assert res["files"] == [
        str(tmp_path / "next" / "s-next-02.yaml")
    ]  # numbering continues, nothing overwritten


def test_a_grid_list_is_the_union_of_its_grids_and_a_round_merges_into_one_sweep(tmp_path):
    from npo_lib.errors import ConfigError
    from npo_lib.study.plan import merge_round
    from npo_lib.workflow.sweep import grid_points, point_name

    pts = grid_points(
        [
            {"forget_loss": ["NPO+GD"], "lr": [1e-4, 2e-4]},
            {"forget_loss": ["NPO+GD"], "lr": [2e-4]},
            {"forget_loss": ["GA+GD"], "lr": [1e-4], "forget_coeff": [2.0]},
        ]
    )
    assert [point_name(p) for p in pts] == [
        "forget_loss-NPO+GD_lr-0.0001",
        "forget_loss-NPO+GD_lr-0.0002",
        "forget_loss-GA+GD_lr-0.0001_forget_coeff-2",
    ]  # each point once, in order
    with pytest.raises(ConfigError, match="entry 1"):
        grid_points([{"lr": [1e-4]}, ["lr"]])
    same = {"name": "s", "runs_dir": "runs", "config": {"eval": {"robustness": ["relearn"]}}}
    for i, (body, grid) in enumerate(
        [
            (same, {"lr": [1e-4]}),
            (same, [{"lr": [2e-4]}, {"lr": [4e-4]}]),
            ({**same, "name": "other"}, {"lr": [1e-4]}),
        ]
    ):
        (tmp_path / f"f{i}.yaml").write_text(yaml.safe_dump({**body, "grid": grid}))
    out = merge_round([tmp_path / f"f{i}.yaml" for i in range(3)], tmp_path / "round-01.yaml")
    assert [f.name for f in out] == ["round-01.yaml", "round-01-1.yaml"]
    merged = yaml.safe_load(out[0].read_text())
    assert (
        merged["name"] == "s"
        and merged["config"] == same["config"]
        and merged["grid"] == [{"lr": [1e-4]}, {"lr": [2e-4]}, {"lr": [4e-4]}]
    )
    assert yaml.safe_load(out[1].read_text())["name"] == "other"


def test_run_study_sweeps_extends_until_the_floor_is_bracketed_and_resumes(tmp_path, monkeypatch):
    """The driver on a stand-in sweep whose utility falls with lr: it scouts until the floor is
    crossed, gives the settings at the floor every seed, writes the study, and a second call
    runs nothing new."""
    from npo_lib.config import StudyConfig
    from npo_lib.study.plan import run_study
    from npo_lib.workflow.sweep import SweepSpec, grid_points, point_name, read_spec

    monkeypatch.chdir(tmp_path)
    (tmp_path / "plan.yaml").write_text(
        yaml.safe_dump(
            {
                "name": "st",
                "runs_dir": "runs",
                "setup": [],
                "seeds": [0],
                "blocks": {"npo": {"forget_loss": ["NPO+GD"], "lr": [1e-4], "num_epochs": [5]}},
            }
        )
    )
    ran: list[str] = []

    def sweep(file, parallel=None):
        spec = read_spec(file, SweepSpec)
        status = {}
        for pt in grid_points(spec.grid):
            name = point_name(pt)
            if (tmp_path / "runs" / spec.name / name).exists():
                status[name] = {"status": "skipped", "seconds": 0.0}
                continue
            ran.append(name)
            mu = 0.84 - 250 * pt["lr"] + 0.001 * pt["seed"]
            _sweep_run(tmp_path / "runs" / spec.name, pt, mu)
            status[name] = {"status": "done", "seconds": 30.0}
        return {"name": spec.name, "status": status, "seconds": 15.0 * len(status)}

    study = StudyConfig(seeds=[0, 1, 2], limits=[3.2e-3, 40, 8.0])
    attacked: list[str] = []
    res = run_study(
        tmp_path / "plan.yaml",
        study,
        out=tmp_path / "out",
        sweep=sweep,
        write=lambda roots, out, st, **kw: {"roots": [str(r) for r in roots]},
        attack=lambda root, st, **kw: (
            attacked.append(str(root)) or {"done": 3, "skipped": 0, "failed": []}
        ),
        references=lambda runs, root: REFS,  # no target model to evaluate
    )
    assert attacked == ["runs/st-default"]
    assert res["roots"] == ["runs/st-default"] and res["timing"]["st-default"]["runs"] == len(ran)
    assert (
        "forget_loss-NPO+GD_lr-0.0004_num_epochs-5_seed-0" in ran
    )  # scouted past the floor (0.76)
    assert {f"forget_loss-NPO+GD_lr-0.0004_num_epochs-5_seed-{s}" for s in (1, 2)} <= set(
        ran
    )  # every seed there
    assert len(ran) == len(set(ran))  # no run twice
    n = len(ran)
    run_study(
        tmp_path / "plan.yaml",
        study,
        sweep=sweep,
        write=lambda roots, out, st, **kw: {},
        attack=lambda root, st, **kw: {"done": 0, "skipped": 3, "failed": []},
        references=lambda runs, root: REFS,
    )
    assert len(ran) == n  # resumed: nothing new to run
    (tmp_path / "runs" / "st-study").mkdir()  # the plan's default folder holds a study
    (tmp_path / "runs" / "st-study" / "study.md").write_text("an earlier study")
    with pytest.raises(ValueError, match=r"runs/st-study/study.md exists: pass --overwrite"):
        run_study(tmp_path / "plan.yaml", study, sweep=lambda *a, **kw: ran.append("again"))
    assert len(ran) == n  # refused before anything ran


def test_the_attacks_run_at_the_matched_setting_only_into_the_runs_attacks_folder(
    tmp_path, monkeypatch
):
    from npo_lib.config import StudyConfig
    from npo_lib.study.plan import matched_attack_steps
    from npo_lib.workflow.sweep import SweepSpec, read_spec, sweep_steps

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "s-plan").mkdir(parents=True)
    body = {
        "name": "s",
        "runs_dir": "runs",
        "setup": [],
        "grid": {"forget_loss": ["NPO+GD"], "lr": [1e-4, 2e-4, 4e-4], "seed": [0, 1]},
    }
    (tmp_path / "runs" / "s-plan" / "s.yaml").write_text(yaml.safe_dump(body))
    for lr, mu in (
        (1e-4, 0.80),
        (2e-4, 0.78),
        (4e-4, 0.70),
    ):  # floor 0.76: lr 2e-4 is the matched setting
        for seed in (0, 1):
            _sweep_run(
                tmp_path / "runs" / "s", {"forget_loss": "NPO+GD", "lr": lr, "seed": seed}, mu
            )
    steps = matched_attack_steps(
        tmp_path / "runs" / "s",
        StudyConfig(strength_keys=["lr"], limits=[1e-2]),
        references=lambda r, root: REFS,
    )
    names = [st[-1].name for st in steps]
    assert names == [f"forget_loss-NPO+GD_lr-0.0002_seed-{s}: attacks" for s in (0, 1)]
    _, runs, _ = sweep_steps(read_spec(tmp_path / "runs" / "s-plan" / "s.yaml", SweepSpec))
    forget, attack = steps[0][-2], steps[0][-1]
    assert (
        forget.key == runs["forget_loss-NPO+GD_lr-0.0002_seed-0"][0].key
    )  # the run's own forget step: not trained again
    assert attack.params["eval"] == {"robustness": ["relearn", "quant4"]}
    assert attack.params["eval_out_dir"] == str(
        tmp_path / "runs" / "s" / "forget_loss-NPO+GD_lr-0.0002_seed-0" / "attacks"
    )
    assert (
        attack.output.parts[-3:] == ("attacks", "notebooks", "evaluation.ipynb")
        and not attack.is_current()
    )
    # the study reads the attacks from there, the run's own aggregates stay
    from npo_lib.study.study import load_results, run_folders

    attacked = tmp_path / "runs" / "s" / "forget_loss-NPO+GD_lr-0.0002_seed-0" / "attacks" / "eval"
    attacked.mkdir(parents=True)
    attacked.joinpath("metrics.json").write_text(
        json.dumps(
            {
                "aggregates": {"model_utility": 0.1},
                "robustness": {
                    "relearn": {"before": {"fact_recall": 0.2}, "after": {"fact_recall": 0.6}}
                },
            }
        )
    )
    (res,) = [
        r
        for rs in load_results(run_folders(tmp_path / "runs" / "s"), StudyConfig()).values()
        for r in rs
        if r.name == "forget_loss-NPO+GD_lr-0.0002_seed-0"
    ]
    assert res.get("relearn.after.fact_recall") == 0.6 and res.get("model_utility") == 0.78


def test_the_fair_study_plan_loads_and_every_point_passes_the_config_checks(tmp_path):
    from npo_lib.study.plan import StudyPlan, plan_study, plan_sweeps
    from npo_lib.workflow.sweep import SweepSpec, grid_points, read_spec

    plan = read_spec("params/study_fair.yaml", StudyPlan)
    files = plan_study("params/study_fair.yaml", tmp_path)  # checks every point's config
    sweeps = plan_sweeps(plan)
    assert (
        len(files) == len(sweeps) == 2 * 6 + 4
    )  # two benchmarks x 6 blocks, the other scorers on the default one
    contrast = sweeps["study_fair-default-scorer_contrast"]
    assert contrast["name"] == "study_fair-default-scorer_contrast" and contrast["config"][
        "influence"
    ] == {"scorer": "contrast"}
    assert (
        sweeps["study_fair-b60-controls"]["name"] == "study_fair-b60"
    )  # shares the benchmark's folder
    methods, points = set(), 0
    for f in files:
        spec = read_spec(f, SweepSpec)
        for pt in grid_points(spec.grid):
            points += 1
            methods.add((pt["forget_loss"], pt.get("selection.method"), pt.get("selection.p")))
    assert {m[0] for m in methods} >= {
        "NPO+GD",
        "SimNPO+GD",
        "TNPO+GD",
        "GA+GD",
        "IDK3+GD",
        "WGA+GD",
        "SatImp+GD",
        "UNDIAL+GD",
        "INFLUENCE+GD",
    }
    assert {m[1] for m in methods} >= {"random", "oracle", "inverse", "top_k"}
    assert {m[2] for m in methods} >= {5, 20, 50, 100}
    b60 = plan_sweeps(plan)["study_fair-b60-baselines"]["config"]
    assert (
        b60["benchmark"] == {"n_authors": 60, "seed": 1} and "eval" not in b60
    )  # the attacks run at the matched settings only
    assert plan.study == {"strength_keys": ["lr"], "limits": [6.4e-3], "near": 0.02}
    with pytest.raises(ValueError, match="exists"):
        plan_study("params/study_fair.yaml", tmp_path)
    assert set(plan_sweeps(plan, ["claim"], ["b60"])) == {"study_fair-b60-claim"}
    with pytest.raises(ValueError, match="unknown benchmark 'b61'; valid: default, b60"):
        plan_sweeps(plan, None, ["b61"])


@pytest.mark.slow
def test_study_notebook_renders_a_finished_sweep(tmp_path):
    """The notebook, headless under papermill, renders study.md and both figures."""
    import nbformat

    from npo_lib.workflow.steps import NOTEBOOKS_DIR, Step, run_steps

    _fair_sweep(tmp_path / "sweep")
    (tmp_path / "refs.json").write_text(json.dumps(REFS))
    step = Step(
        "study",
        NOTEBOOKS_DIR / "study.ipynb",
        {
            "config_files": [],
            "sweep_dirs": [str(tmp_path / "sweep")],
            "study_out": str(tmp_path / "out"),
            "references_json": str(tmp_path / "refs.json"),
        },
        tmp_path / "nb" / "study.ipynb",
    )
    (res,) = run_steps([step], stream=False)
    assert res.status == "done", res.error
    assert (tmp_path / "out" / "study_selection.png").is_file() and "Verdict" in (
        tmp_path / "out" / "study.md"
    ).read_text()
    executed = nbformat.read(step.output, as_version=4)
    assert any(
        o.get("output_type") == "display_data" and "image/png" in o.get("data", {})
        for c in executed.cells
        if c.cell_type == "code"
        for o in c.outputs
    )
