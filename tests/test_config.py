"""Config merging (defaults < params files < overrides) and every error it can report."""

from __future__ import annotations

import pytest

from npo_lib.config import Config, load_config, save_config
from npo_lib.embedded.paths import resolve_model_path
from npo_lib.errors import ConfigError
from npo_lib.models.families import FAMILIES, get_family
from npo_lib.models.loading import load_model


def test_defaults_come_from_the_schema():
    cfg = load_config()
    assert isinstance(cfg, Config)
    assert cfg.model_family == "tiny" and cfg.forget_loss == "NPO+GD" and cfg.LoRA.r == 0
    assert cfg.benchmark.n_authors > 0 and cfg.tiny.hidden_size > 0


def test_merge_order_files_then_overrides(tmp_path):
    a = tmp_path / "a.yaml"
    a.write_text("lr: 2.0e-5\nnum_epochs: 3\nLoRA:\n  r: 4\n")
    b = tmp_path / "b.yaml"
    b.write_text("num_epochs: 7\nsplit: forget05\n")
    cfg = load_config([str(a), str(b), "LoRA.r=8", "lr=1e-4", "task_id=null"])
    assert cfg.lr == pytest.approx(1e-4)  # command line beats files ('1e-4' parsed as float)
    assert cfg.num_epochs == 7  # later file beats earlier file
    assert cfg.split == "forget05" and cfg.LoRA.r == 8 and cfg.LoRA.alpha == 32
    assert cfg.task_id is None
    # API form: files and a dotted mapping (notebook parameters)
    cfg2 = load_config(files=[a], overrides={"LoRA.dropout": 0.0, "beta": 0.2})
    assert cfg2.LoRA.r == 4 and cfg2.LoRA.dropout == 0.0 and cfg2.beta == 0.2


def test_unknown_key_names_key_and_closest():
    with pytest.raises(ConfigError) as e:
        load_config(["learning_rate=1e-5"])
    assert "learning_rate" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_config(["num_epoch=3"])
    assert "'num_epoch'" in str(e.value) and "num_epochs" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_config(["LoRA.rank=8"])
    assert "LoRA.rank" in str(e.value) and "LoRA.r" in str(e.value)


def test_unknown_key_in_params_file_names_file(tmp_path):
    p = tmp_path / "x.yaml"
    p.write_text("forget_los: NPO\n")
    with pytest.raises(ConfigError) as e:
        load_config([str(p)])
    assert str(p) in str(e.value) and "forget_loss" in str(e.value)


def test_wrong_type_names_key_value_and_type():
    with pytest.raises(ConfigError) as e:
        load_config(["lr=fast"])
    msg = str(e.value)
    assert "'lr'" in msg and "fast" in msg and "float" in msg
    with pytest.raises(ConfigError) as e:
        load_config(["LoRA.r=big"])
    assert "LoRA.r" in str(e.value) and "int" in str(e.value)


def test_missing_params_file_names_path(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config([str(missing)])


def test_value_checks_before_any_model_loads():
    from npo_lib.commands.checks import check_config

    with pytest.raises(ConfigError, match="model_family 'llama9'.*valid"):
        check_config(load_config(["model_family=llama9"]))
    with pytest.raises(ConfigError, match="forget_loss|unknown part 'NPX'"):
        check_config(load_config(["forget_loss=NPX+GD"]))
    with pytest.raises(
        ConfigError, match="influence.scorer 'magic' is unknown; valid: differential"
    ):
        check_config(load_config(["influence.scorer=magic"]))
    with pytest.raises(ConfigError, match="selection.method 'best' is unknown"):
        check_config(load_config(["selection.method=best"]))
    with pytest.raises(ConfigError, match="lr must be > 0"):
        load_config(["lr=0"])
    with pytest.raises(ConfigError, match="ds_config file not found"):
        load_config(["ds_config=/no/such.json"])


def test_resolved_config_roundtrips(tmp_path):
    cfg = load_config(["lr=3e-5", "LoRA.r=16", "model_family=llama3-8b"])
    path = save_config(cfg, tmp_path / "run" / "config.yaml")
    again = load_config([str(path)])
    assert again == cfg


def test_family_registry():
    for name in ("tiny", "llama2-7b", "llama3-8b", "llama3.2-1b", "qwen2.5-7b"):
        assert name in FAMILIES
    assert get_family("llama3-8b").hub_id == "deepseek-ai/DeepSeek-R1-Distill-Llama-8B"
    assert get_family("llama3-8b").tags.thinks and not get_family("llama2-7b").tags.thinks
    with pytest.raises(ConfigError, match="valid: tiny"):
        get_family("gpt5")


def test_hub_model_offline_says_pass_model_path(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(
        huggingface_hub.constants, "HF_HUB_OFFLINE", True
    )  # read at import: no network retries
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    cfg = load_config(["model_family=llama3.2-1b"])
    assert resolve_model_path(cfg) == "meta-llama/Llama-3.2-1B-Instruct"
    with pytest.raises(ConfigError, match="model_path="):
        load_model(cfg, resolve_model_path(cfg), device="cpu")


def test_missing_local_model_path_and_unprepared_tiny(tmp_path):
    with pytest.raises(ConfigError, match="model_path folder not found"):
        resolve_model_path(load_config([f"model_path={tmp_path / 'none'}"]))
    with pytest.raises(ConfigError, match="npo prepare"):
        resolve_model_path(load_config([f"cache_dir={tmp_path}"]))


# ----------------------------------------------------------------------------- objective groups


def test_objective_hyperparameters_are_groups_with_their_flat_keys(tmp_path):
    """Each objective's group (``satimp.beta1``) and the flat key researchers type
    (``satimp_beta1``) are one setting: in params files, on the command line, as keywords and
    attributes; a key and its alias in one source are refused."""
    import dataclasses

    grouped = load_config(["satimp.beta1=3", "rmu.layer=2", "npo.beta=0.5", "simnpo.delta=1"])
    flat = load_config(["satimp_beta1=3", "rmu_layer=2", "beta=0.5", "delta=1"])
    assert grouped == flat and flat.satimp.beta1 == 3.0 and flat.rmu.layer == 2
    assert flat.satimp_beta1 == 3.0 and flat.beta == 0.5 and flat.delta == 1.0
    p = tmp_path / "p.yaml"
    p.write_text("wga_beta: 2.0\nrmu_trainable_modules: [mlp]\nundial:\n  beta: 3.0\n")
    cfg = load_config([str(p)])
    assert (cfg.wga.beta, cfg.rmu.trainable_modules, cfg.undial_beta) == (2.0, ["mlp"], 3.0)
    assert Config(beta=0.2).npo.beta == 0.2
    assert dataclasses.replace(Config(), rmu_alpha=3.0).rmu.alpha == 3.0
    assert dataclasses.replace(Config(satimp_beta2=2.0), satimp_beta1=1.0).satimp.beta2 == 2.0
    with pytest.raises(ConfigError, match="'beta' is another name of 'npo.beta'"):
        load_config(["beta=0.2", "npo.beta=0.3"])
    with pytest.raises(ConfigError, match="satimp_beta1"):  # a typo of an alias: suggested
        load_config(["satimp_beta=1"])
    with pytest.raises(ConfigError, match="'beta' \\('npo.beta'\\) got 'fast'"):
        load_config(["beta=fast"])


def test_ranges_come_from_the_groups():
    with pytest.raises(ConfigError, match="beta must be > 0, got 0"):
        load_config(["beta=0"])
    with pytest.raises(ConfigError, match="wga_beta must be >= 0"):
        load_config(["wga.beta=-1"])
    with pytest.raises(ConfigError, match="set SimNPO's gamma or delta"):
        load_config(["gamma=0.5", "simnpo.delta=1"])
    with pytest.raises(ConfigError, match="rmu_layer: 2.5 is neither a block index"):
        load_config(["rmu_layer=2.5"])


def test_flat_keys_of_an_old_run_folder_still_load(tmp_path):
    """A config.yaml written before the groups (flat keys) loads to the same config."""
    old = tmp_path / "config.yaml"
    old.write_text("beta: 1.0\nrmu_layer: 2\nsatimp_beta1: 4.0\nrmu_trainable_layers: [1, 2]\n")
    cfg = load_config([str(old)])
    assert cfg == load_config(
        ["npo.beta=1", "rmu.layer=2", "satimp.beta1=4", "rmu_trainable_layers=[1,2]"]
    )
    again = load_config([str(save_config(cfg, tmp_path / "new.yaml"))])
    assert again == cfg and "npo:" in (tmp_path / "new.yaml").read_text()


def test_every_objective_params_file_loads():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "params"
    files = [*root.glob("*_gd.yaml"), root / "rmu_act.yaml", *root.glob("tiny_*.yaml")]
    assert len(files) >= 10
    for f in files:
        load_config([str(root / "tiny_forget.yaml"), str(f)])
    rmu = load_config([str(root / "rmu_gd.yaml")])
    assert (rmu.rmu.layer, rmu.rmu.steering_coeff) == (2, 100.0)


def test_the_study_finds_settings_by_their_flat_keys():
    from npo_lib.config import with_alias_keys

    nested = {"lr": 1e-3, "rmu": {"layer": 2.0}, "npo": {"beta": 0.1}}
    flat = with_alias_keys(nested, Config)
    assert flat["rmu_layer"] == 2.0 and flat["beta"] == 0.1 and flat["rmu"] == {"layer": 2.0}
    assert with_alias_keys({"rmu_layer": 3}, Config) == {"rmu_layer": 3}  # an old flat config
    from npo_lib.study.study import config_defaults

    assert config_defaults()["rmu_layer"] == 7 / 32 and config_defaults()["rmu.layer"] == 7 / 32


def test_print_config_shows_each_objective_group_with_help_range_and_flat_key():
    import yaml

    from npo_lib.config import annotated_yaml

    text = annotated_yaml(load_config(["satimp_beta1=3"]))
    assert yaml.safe_load(text)["satimp"]["beta1"] == 3.0
    line = next(x for x in text.splitlines() if x.strip().startswith("beta1:"))
    assert "saturation exponent" in line and ">= 0" in line and "flat key satimp_beta1" in line
    for key in ("npo:", "simnpo:", "wga:", "satimp:", "undial:", "rmu:"):
        assert f"\n{key}  # " in text, key
