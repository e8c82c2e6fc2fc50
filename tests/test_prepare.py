"""`npo prepare` end to end on a small benchmark, and the CLI's fail-fast config errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from npo_lib.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def _npo(*args: str, env_cache: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "npo_lib", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "TNPO_CACHE": str(env_cache), "HOME": str(env_cache)},
        timeout=300,
    )


def test_cli_prints_resolved_config(tmp_path):
    r = _npo("prepare", "--print-config", "params/tiny_quick.yaml", "LoRA.r=8", env_cache=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "n_authors: 20" in r.stdout and "r: 8" in r.stdout


def test_cli_bad_key_fails_before_any_work(tmp_path):
    r = _npo("prepare", "num_epoch=3", env_cache=tmp_path)
    assert r.returncode == 2
    assert "unknown key 'num_epoch'" in r.stderr and "num_epochs" in r.stderr
    assert not any(tmp_path.iterdir()), "nothing may be written before the config is valid"
    r = _npo("prepare", "params/missing.yaml", env_cache=tmp_path)
    assert r.returncode == 2 and "params/missing.yaml" in r.stderr


@pytest.mark.slow
def test_prepare_memorises_and_is_reused(prepared_embedded):
    from npo_lib.commands.prepare import prepare
    from npo_lib.embedded.paths import resolve_model_path
    from npo_lib.models.loading import load_model, load_tokenizer

    cfg, s = prepared_embedded
    print(s.table())
    assert s.n_forget == 40 and s.n_retain_eval == 40
    # the bars, whatever epoch this machine's kernels reached them at
    assert s.recall["target"]["forget"] >= 0.975 and s.recall["target"]["retain"] >= 0.95
    assert s.recall["retain"]["forget"] <= 0.10 and s.recall["retain"]["retain"] >= 0.95
    assert s.forget_quality["target"] < 0.01 and s.forget_quality["retain"] == 1.0
    assert all(s.passed.values()) and not s.failures()
    # training stopped once the recall bars held, within the budget, and says when
    for model in ("target", "retain"):
        record = json.loads(
            (Path(s.paths[model]).parent / "result.json").read_text()
        )  # the `npo finetune` run
        assert (
            record["stopped_early"] and record["epochs"] == s.epochs[model] <= cfg.tiny.max_epochs
        )
        assert record["checks"][-1]["passed"] and not any(
            c["passed"] for c in record["checks"][:-1]
        )
        assert record["machine"]["cpu_capability"]
    saved = json.loads((Path(s.paths["retain"]).parent / "prepare_summary.json").read_text())
    assert saved["recall"] == s.recall and saved["forget_quality"] == s.forget_quality

    # Saved in Hugging Face format and loaded through the same path a hub model takes.
    assert resolve_model_path(cfg) == s.paths["target"]
    model, tok = (
        load_model(cfg, s.paths["target"], device="cpu"),
        load_tokenizer(cfg, s.paths["target"]),
    )
    assert model.config.model_type == "llama" and tok("x").input_ids[0] == tok.bos_token_id
    assert (Path(s.paths["target"]) / "model.safetensors").is_file()

    # A second prepare reuses every artefact (keyed by settings) and trains nothing.
    again = prepare(cfg, progress=False)
    assert {"benchmark", "target", "retain", "memorisation check"} <= set(again.reused)
    assert "finetune_target" not in again.seconds
    assert again.recall == s.recall and again.epochs == s.epochs
    # Another forget task gets its own retain model; the target is shared.
    other = load_config([f"cache_dir={cfg.cache_dir}", "task_id=2"])
    from npo_lib.embedded.paths import embedded_paths

    assert embedded_paths(other).target == embedded_paths(cfg).target
    assert embedded_paths(other).retain != embedded_paths(cfg).retain


def test_a_missed_bar_names_the_bar_the_value_and_what_to_raise():
    from npo_lib.commands.prepare import PrepareError, PrepareSummary

    s = PrepareSummary(
        paths={},
        n_train_target=1,
        n_train_retain=1,
        n_forget=40,
        n_retain_eval=40,
        recall={
            "target": {"forget": 0.875, "retain": 0.975},
            "retain": {"forget": 0.0, "retain": 1.0},
        },
        forget_quality={"target": 0.02, "retain": 1.0},
        max_epochs=40,
    )
    assert [ok for ok in s.passed.values()] == [False, True, True, True, False]
    with pytest.raises(PrepareError) as e:
        s.raise_if_failed()
    msg = str(e.value)
    assert "\n" not in msg
    assert (
        "target forget fact recall 87.5% missed the bar >= 97.5%: raise tiny.max_epochs (now 40)"
        in msg
    )
    assert "target forget quality 0.02 missed the bar < 0.01" in msg and "finetune.patience" in msg


@pytest.mark.slow
def test_cli_prepare_with_too_small_a_budget_exits_2_with_one_line(tmp_path):
    r = _npo("prepare", "params/tiny_quick.yaml", "tiny.max_epochs=2", env_cache=tmp_path)
    assert r.returncode == 2, r.stderr[-2000:]
    err = [line for line in r.stderr.splitlines() if line.startswith("npo prepare:")]
    assert (
        len(err) == 1 and "missed the bar" in err[0] and "raise tiny.max_epochs (now 2)" in err[0]
    )
    assert "Traceback" not in r.stderr
    assert "[FAIL] target forget fact recall" in r.stdout  # the table of every bar comes first
