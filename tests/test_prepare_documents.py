"""`npo prepare benchmark=muse|wmdp`: the document benchmarks' stand-ins, tokenizer and tiny
models through their plug-ins, held to the plug-ins' own bars; TOFU's cache folders unchanged."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from npo_lib.config import load_config
from npo_lib.embedded.paths import embedded_paths

ROOT = Path(__file__).resolve().parents[1]

# The default config's TOFU folders, as they were before the document benchmarks had keys: a
# change here would orphan every prepared TOFU model.
TOFU_BENCHMARK, TOFU_MODELS = "3ae2c7888722", "20f2d09392f8"


def test_tofu_embedded_paths_are_unchanged_by_the_document_benchmarks_keys(tmp_path, monkeypatch):
    monkeypatch.delenv("TNPO_CACHE", raising=False)
    base = embedded_paths(load_config([f"cache_dir={tmp_path}"]))
    assert base.benchmark == tmp_path / "benchmark" / TOFU_BENCHMARK
    assert base.target_run == tmp_path / "tiny" / TOFU_MODELS / "target"
    assert base.retain_run.name == "retain-forget10-task1" and base.marker == "meta.json"
    other = load_config(
        [f"cache_dir={tmp_path}", "benchmark.muse.n_forget=4", "benchmark.wmdp.n_forget_docs=2"]
    )
    assert embedded_paths(other) == base


def test_each_document_standin_has_its_own_folders_keyed_by_its_settings(tmp_path):
    tofu = embedded_paths(load_config([f"cache_dir={tmp_path}"]))
    muse = embedded_paths(load_config([f"cache_dir={tmp_path}", "benchmark=muse"]))
    wmdp = embedded_paths(load_config([f"cache_dir={tmp_path}", "benchmark=wmdp"]))
    assert muse.benchmark.name.startswith("muse-") and wmdp.benchmark.name.startswith("wmdp-")
    assert len({tofu.base, muse.base, wmdp.base}) == 3
    smaller = load_config([f"cache_dir={tmp_path}", "benchmark=muse", "benchmark.muse.n_forget=4"])
    assert embedded_paths(smaller).benchmark != muse.benchmark
    assert wmdp.marker == "wmdp-creatures.jsonl"


def test_prepare_on_a_folder_lacking_muse_files_fails_in_one_line_before_any_model(tmp_path):
    folder = tmp_path / "data"
    (folder / "raw").mkdir(parents=True)
    (folder / "raw" / "forget.json").write_text("[]")
    r = subprocess.run(
        [sys.executable, "-m", "npo_lib", "prepare", "benchmark=muse", f"data_path={folder}"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "TNPO_CACHE": str(tmp_path / "c"), "HOME": str(tmp_path)},
        timeout=120,
    )
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "is not a MUSE folder" in lines[0], r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "c").exists()


def test_document_format_records_are_on_the_standin_only(tmp_path, tokenizer):
    from npo_lib.benchmarks import get_benchmark

    cfg = load_config(["benchmark=muse", "benchmark.muse.n_forget=4", "benchmark.muse.n_retain=4"])
    muse = get_benchmark("muse")
    folder = muse.generate(cfg.benchmark, tmp_path / "muse")
    target = muse.load_records(str(folder), "train_target", cfg, tokenizer)
    retain = muse.load_records(str(folder), "train_retain", cfg, tokenizer)
    sources = {r["source"] for r in target}
    assert {"knowmem/forget_qa", "knowmem/retain2_qa", "raw/forget"} <= sources
    assert "knowmem/forget_qa" not in {r["source"] for r in retain}
    assert all(r["text"].endswith("\n\n") for r in target if r["source"].startswith("knowmem"))
    (folder / "raw" / "forget_facts.json").unlink()  # published data: no evaluation questions
    assert not any(
        r["source"].startswith("knowmem")
        for r in muse.load_records(str(folder), "train_target", cfg, tokenizer)
    )


# the demos' settings (params/muse_demo.yaml, wmdp_demo.yaml): the default stand-ins, 8 pieces
# per step, the tiny models' context
SMALL = {
    "muse": ["tiny.batch_size=8", "max_length=256"],
    "wmdp": ["tiny.batch_size=8", "max_length=256"],
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SMALL))
def test_prepare_document_benchmark_holds_its_plugins_bars(name, tmp_path):
    from npo_lib.benchmarks import get_benchmark
    from npo_lib.commands.prepare import prepare

    cfg = load_config([f"cache_dir={tmp_path}", f"benchmark={name}", *SMALL[name]])
    s = prepare(cfg, progress=False)
    print(s.table())
    assert all(s.passed.values()) and not s.failures()
    check = get_benchmark(name).check
    assert [b["name"] for b in s.metric_bars] == [b.name for b in check.bars]
    assert "fact recall" not in s.table()
    if name == "wmdp":
        assert s.recall["target"]["wmdp_acc"] >= 0.9 and s.recall["retain"]["wmdp_acc"] <= 0.45
    else:
        target, retain = s.recall["target"], s.recall["retain"]
        assert target["muse_knowmem_forget"] >= 0.8 > 0.35 >= retain["muse_knowmem_forget"]
    saved = json.loads((Path(s.paths["retain"]).parent / "prepare_summary.json").read_text())
    assert saved["recall"] == s.recall and all(saved["passed"].values())
    assert set(saved["passed"]) == set(s.passed)
