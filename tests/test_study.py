"""The method-comparison table: grouping seeds, the utility floor, the claim check."""

from __future__ import annotations

import json

import pytest
import yaml

from npo_lib.run.study import best_per_method, claim_text, collect, markdown


def _run(root, name, loss, lr, seed, fq, mu):
    d = root / name
    (d / "eval").mkdir(parents=True)
    (d / "config.yaml").write_text(yaml.safe_dump({"forget_loss": loss, "lr": lr, "num_epochs": 5, "seed": seed}))
    agg = {"forget_quality": fq, "model_utility": mu, "forget_fact_recall": 0.1, "retain_fact_recall": 0.9, "privleak": -5.0}
    (d / "eval" / "metrics.json").write_text(json.dumps({"aggregates": agg}))
    return d


def test_settings_average_seeds_and_the_claim_respects_the_utility_floor(tmp_path):
    runs = [
        _run(tmp_path, "a0", "NPO+GD", 1e-4, 0, 0.02, 0.80), _run(tmp_path, "a1", "NPO+GD", 1e-4, 1, 0.04, 0.82),
        _run(tmp_path, "b0", "NPO+GD", 3e-4, 0, 0.50, 0.40),  # forgets more but loses utility
        _run(tmp_path, "c0", "INFLUENCE+GD", 1e-4, 0, 0.10, 0.84), _run(tmp_path, "c1", "INFLUENCE+GD", 1e-4, 1, 0.20, 0.86),
    ]
    (tmp_path / "unevaluated").mkdir()
    settings = collect([*runs, tmp_path / "unevaluated"], ("forget_loss", "lr", "num_epochs"))
    assert [s.key for s in settings] == [("NPO+GD", 1e-4, 5), ("NPO+GD", 3e-4, 5), ("INFLUENCE+GD", 1e-4, 5)]
    npo = settings[0]
    assert npo.mean("forget_quality") == pytest.approx(0.03) and npo.std("forget_quality") == pytest.approx(0.0141421, rel=1e-4)
    best = best_per_method(settings, mu_floor=0.95 * 0.85)
    assert best["NPO+GD"] is npo  # the 3e-4 setting is below the floor
    assert "holds" in claim_text(best) and "0.15 vs 0.03" in claim_text(best)
    assert "does not hold" in claim_text({"INFLUENCE+GD": npo, "NPO+GD": settings[2]})
    assert "not testable" in claim_text(best_per_method(settings, mu_floor=0.99))
    text = markdown(settings, ("forget_loss", "lr", "num_epochs"), {"target": {"model_utility": 0.85, "forget_quality": 1e-5}}, 0.95)
    assert "| target |" in text and "0.03 ± 0.014" in text and "Claim" in text
