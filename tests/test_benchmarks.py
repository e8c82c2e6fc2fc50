"""Benchmark plug-ins: selected by name before any model loads, each declaring its layout,
training kind, metrics and headline pair in one registry entry."""

from __future__ import annotations

import pytest

from npo_lib.benchmarks import BENCHMARK_PLUGINS, check_data_folder, get_benchmark
from npo_lib.commands.resolve import resolve
from npo_lib.config.sources import load_config
from npo_lib.errors import ConfigError
from npo_lib.eval.registry import metric


def test_benchmark_name_shorthand_and_default():
    assert load_config([]).benchmark.name == "tofu"
    assert load_config(["benchmark=tofu"]).benchmark.name == "tofu"
    cfg = load_config(["benchmark.name=tofu", "benchmark.n_authors=12"])
    assert (cfg.benchmark.name, cfg.benchmark.n_authors) == ("tofu", 12)


def test_an_unknown_benchmark_fails_in_one_line_naming_the_valid_ones(tmp_path):
    cfg = load_config(["benchmark=nope", f"cache_dir={tmp_path}"])
    with pytest.raises(ConfigError) as e:
        resolve(cfg, "prepare")
    msg = str(e.value)
    assert "\n" not in msg and "'nope'" in msg and "tofu" in msg


def test_every_plugin_declares_a_headline_pair_from_the_metric_registry():
    for b in BENCHMARK_PLUGINS.values():
        head = b.metrics.headline
        assert metric(head.forget).direction in ("higher", "lower")
        assert metric(head.utility).direction == "higher"
        assert set(b.required) <= set(b.layout)
        assert all(metric(k) for k in b.metric_keys)


def test_a_folder_missing_a_required_file_is_named(tmp_path):
    with_required = [b for b in BENCHMARK_PLUGINS.values() if b.required]
    if not with_required:
        pytest.skip("no registered benchmark declares required files")
    b = with_required[0]
    (tmp_path / "other.json").write_text("[]")
    with pytest.raises(ConfigError) as e:
        check_data_folder(b, tmp_path)
    assert b.layout[b.required[0]] in str(e.value) and "other.json" in str(e.value)


def test_tofu_is_the_default_plugin_and_writes_its_standin(tmp_path):
    tofu = get_benchmark("tofu")
    assert tofu.training == "qa" and tofu.metrics.headline.forget == "forget_quality"
    cfg = load_config(["benchmark.n_authors=8", "benchmark.n_holdout_authors=1"])
    out = tofu.generate(cfg.benchmark, tmp_path / "tofu")
    assert (out / "meta.json").is_file() and tofu.file(out, "full").is_file()
