"""A config is checked and resolved once where it enters: one family lookup and one config check
per run, and a model folder that cannot load fails in one line before any model loads."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from npo_lib.commands.resolve import Resolved, resolve
from npo_lib.config import load_config
from npo_lib.errors import ConfigError


def _world_args(world, run: Path, *over: str) -> list[str]:
    return [
        f"model_path={world['model_path']}",
        f"data_path={world['data_path']}",
        f"save_dir={run}",
        "split=forget10",
        "task_id=1",
        "batch_size=2",
        "num_epochs=1",
        "lr=1e-3",
        "warmup_epochs=0",
        *over,
    ]


def _count_calls(monkeypatch, module_name: str, name: str) -> list[tuple]:
    """Wrap ``module_name.name`` and every binding of it in a loaded ``npo_lib`` module (a
    ``from ... import name`` copies the function into the importing module); returns the list
    of calls' arguments, filled as they happen."""
    import importlib

    target = getattr(importlib.import_module(module_name), name)
    calls: list[tuple] = []

    def wrapper(*args, **kwargs):
        calls.append(args)
        return target(*args, **kwargs)

    for mod in list(sys.modules.values()):
        if getattr(mod, "__name__", "").startswith("npo_lib") and (
            getattr(mod, name, None) is target
        ):
            monkeypatch.setattr(mod, name, wrapper)
    return calls


def _no_model_loads(monkeypatch) -> None:
    from npo_lib.models.loading import ModelLoader

    def refuse(*a, **k):
        raise AssertionError("a model or tokenizer was loaded")

    monkeypatch.setattr(ModelLoader, "model", refuse)
    monkeypatch.setattr(ModelLoader, "tokenizer", refuse)


def test_a_forget_run_looks_up_its_family_and_checks_its_config_once(
    mini_world, tmp_path, monkeypatch
):
    """Through the CLI, with a frozen reference model (KL) and the fact-recall report: every
    part of the run that needs the family's tags or attention reads them from the Resolved."""
    import npo_lib.cli
    import npo_lib.commands.forget
    import npo_lib.influence.files
    import npo_lib.training.trainer  # noqa: F401  (loaded before the wrappers go in)

    families = _count_calls(monkeypatch, "npo_lib.models.families", "get_family")
    checks = _count_calls(monkeypatch, "npo_lib.commands.checks", "check_config")
    run = tmp_path / "run"
    args = _world_args(mini_world, run, "forget_loss=NPO+KL")
    assert npo_lib.cli.main(["forget", *args]) == 0
    assert (run / "result.json").is_file()
    assert len(families) == 1 and len(checks) == 1, (families, checks)
    # a command given a bare Config resolves it once at its top
    families.clear()
    checks.clear()
    npo_lib.commands.forget.run_forget(
        load_config([*_world_args(mini_world, tmp_path / "again", "forget_loss=NPO")]),
        progress=False,
    )
    assert len(families) == 1 and len(checks) == 1, (families, checks)


def _bad_folders(mini_world, tmp_path: Path) -> dict[str, tuple[Path, list[str]]]:
    """Folders that cannot load, with what the error must name."""
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README.md").write_text("no model here")
    no_tok = tmp_path / "no_tokenizer"
    no_tok.mkdir()
    for f in Path(mini_world["model_path"]).iterdir():
        if f.name in ("config.json", "model.safetensors"):
            shutil.copy(f, no_tok / f.name)
    return {
        "empty": (empty, ["config.json", "safetensors", "tokenizer"]),
        "no_tokenizer": (no_tok, ["tokenizer"]),
        "missing": (tmp_path / "nowhere", ["folder not found"]),
    }


@pytest.mark.parametrize("command", ["influence", "forget", "finetune", "eval"])
def test_a_model_folder_that_cannot_load_fails_in_one_line(
    mini_world, tmp_path, monkeypatch, capsys, command
):
    from npo_lib.cli import main

    _no_model_loads(monkeypatch)
    data = f"data_path={mini_world['data_path']}"
    for name, (folder, named) in _bad_folders(mini_world, tmp_path).items():
        capsys.readouterr()
        assert main([command, f"model_path={folder}", data, f"save_dir={tmp_path / 'r'}"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, (name, err)
        assert err[0].startswith(f"npo {command}: model_path") and str(folder) in err[0]
        assert all(word in err[0] for word in named), (name, err[0])
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("command", ["influence", "eval"])
def test_a_retain_model_folder_that_cannot_load_fails_in_one_line(
    mini_world, tmp_path, monkeypatch, capsys, command
):
    from npo_lib.cli import main

    _no_model_loads(monkeypatch)
    folder, named = _bad_folders(mini_world, tmp_path)["no_tokenizer"]
    args = [
        f"model_path={mini_world['model_path']}",
        f"data_path={mini_world['data_path']}",
        f"retain_model_path={folder}",
        f"save_dir={tmp_path / 'r'}",
    ]
    assert main([command, *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"retain_model_path={folder} is not a model folder" in err[0]
    assert "tokenizer" in err[0] and "config.json" not in err[0]


def test_prepare_refuses_a_model_path_in_one_line(mini_world, monkeypatch, capsys):
    from npo_lib.cli import main

    _no_model_loads(monkeypatch)
    assert main(["prepare", f"model_path={mini_world['model_path']}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "npo prepare makes the tiny models" in err[0]


def test_resolved_holds_what_the_commands_read(mini_world, tmp_path):
    cfg = load_config(_world_args(mini_world, tmp_path / "run", "forget_loss=NPO+GD"))
    res = resolve(cfg, "forget")
    assert res.model_path == mini_world["model_path"] and res.data_path == mini_world["data_path"]
    assert res.family.name == "tiny" and res.tags == res.family.tags
    assert res.spec.name == "NPO+GD" and res.run_dir == tmp_path / "run"
    assert res.influence_dir == tmp_path / "influence" and res.embedded is None
    with pytest.raises(AttributeError):
        res.model_path = "elsewhere"  # frozen: every layer below sees the same values
    ft = resolve(cfg, "finetune")
    assert ft.run_dir == tmp_path / "run" and ft.command == "finetune"
    # eval on another model: the config's own model is not needed
    other = resolve(
        load_config([f"data_path={mini_world['data_path']}", f"cache_dir={tmp_path}"]),
        "eval",
        model_path=mini_world["model_path"],
    )
    assert other.model_path == mini_world["model_path"] and other.retain_model_path is None
    assert "not prepared" in other.no_retain and other.embedded is not None
    with pytest.raises(ConfigError, match="model_family 'gpt5' is unknown"):
        resolve(load_config(["model_family=gpt5"]), "forget")


def test_a_notebooks_first_cell_resolves_and_can_run_again(mini_world, tmp_path):
    from npo_lib.workflow.notebook import run_from_namespace

    ns = {
        "config_files": [],
        "model_path": mini_world["model_path"],
        "data_path": mini_world["data_path"],
        "save_dir": str(tmp_path / "run"),
    }
    run = run_from_namespace(ns, "forget", ["config_files"], [])
    assert isinstance(run, Resolved) and run.model_path == mini_world["model_path"]
    ns.update(run=run, cfg=run.cfg)  # the first cell's own variables, when it runs again
    assert run_from_namespace(ns, "forget", ["config_files"], []) == run
    with pytest.raises(ConfigError, match=r"notebook parameters: model_path=.* lacks"):
        run_from_namespace({**ns, "model_path": str(tmp_path)}, "forget", ["config_files"], [])
