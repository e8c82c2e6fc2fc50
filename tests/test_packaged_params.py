"""The params files ship inside the package: a packaged file by name (`npo run demo`, `npo forget
npo_gd`), a pipeline's params files relative to it, and (slow) the packaged demo run from an
installed wheel, outside the checkout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from npo_lib.config import load_config
from npo_lib.config.sources import PARAMS_DIR, params_path
from npo_lib.errors import ConfigError
from npo_lib.workflow.pipeline import PipelineSpec
from npo_lib.workflow.steps import read_spec

ROOT = Path(__file__).resolve().parents[1]


def test_the_params_folder_at_the_root_is_the_packaged_one():
    assert (ROOT / "params").resolve() == PARAMS_DIR.resolve() == (ROOT / "npo_lib" / "params")
    assert (PARAMS_DIR / "demo.yaml").is_file() and (PARAMS_DIR / "ds" / "zero2.json").is_file()


def test_a_packaged_params_file_by_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert params_path("npo_gd") == params_path("npo_gd.yaml") == PARAMS_DIR / "npo_gd.yaml"
    assert load_config(["npo_gd", "tiny_forget"]).forget_loss == "NPO+GD"
    # a file that exists is taken as a path first
    (tmp_path / "npo_gd.yaml").write_text("forget_loss: GA+GD\n")
    assert load_config(["npo_gd.yaml"]).forget_loss == "GA+GD"
    assert load_config(["npo_gd"]).forget_loss == "NPO+GD"
    with pytest.raises(ConfigError, match=r"params file not found: nope \(.*: .*demo.*npo_gd"):
        load_config(["nope"])


def test_npo_run_demo_reads_the_packaged_pipeline_and_its_neighbours(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny_forget.yaml").write_text("lr: 0.5\n")  # not the one demo.yaml means
    spec = read_spec("demo", PipelineSpec)
    assert spec.name == "demo" and spec.params == [str(PARAMS_DIR.resolve() / "tiny_forget.yaml")]


def test_a_pipelines_params_files_are_relative_to_it_then_to_the_current_folder(
    tmp_path, monkeypatch
):
    own = tmp_path / "exp"
    own.mkdir()
    (own / "base.yaml").write_text("lr: 1.0e-3\n")
    (tmp_path / "here.yaml").write_text("num_epochs: 2\n")
    spec = own / "p.yaml"
    body = {"name": "p", "params": ["base.yaml", "here.yaml", "npo_gd"], "methods": {}}
    spec.write_text(yaml.safe_dump(body))
    monkeypatch.chdir(tmp_path)
    params = read_spec(spec, PipelineSpec).params
    assert params == [
        str((own / "base.yaml").resolve()),
        str((tmp_path / "here.yaml").resolve()),
        str((PARAMS_DIR / "npo_gd.yaml").resolve()),
    ]
    spec.write_text(yaml.safe_dump({**body, "params": ["missing.yaml"]}))
    with pytest.raises(ConfigError, match=r"p\.yaml: params file not found: missing\.yaml"):
        read_spec(spec, PipelineSpec)


@pytest.mark.slow
def test_the_packaged_demo_runs_from_an_installed_wheel_outside_the_checkout(
    prepared_embedded, tmp_path
):
    """`pip install` of the wheel (into a folder of its own, beside the installed dependencies),
    then `npo run demo` in an empty folder; the prepared embedded cache skips the training."""
    cfg, _ = prepared_embedded
    wheels, target, work = tmp_path / "wheels", tmp_path / "site", tmp_path / "work"
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    build = [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(ROOT)]
    subprocess.run(build, check=True, capture_output=True, timeout=300)
    wheel = next(wheels.glob("npo_lib-*.whl"))
    install = [*pip, "install", "--no-deps", "--target", str(target), str(wheel)]
    subprocess.run(install, check=True, capture_output=True, timeout=300)
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target), "TNPO_CACHE": str(cfg.cache_path)}
    probe = "import npo_lib; print(npo_lib.__file__)"
    where = subprocess.run([sys.executable, "-c", probe], cwd=work, env=env, capture_output=True)
    assert Path(where.stdout.decode().strip()).is_relative_to(target)  # not the checkout
    r = subprocess.run(
        [sys.executable, "-m", "npo_lib", "run", "demo"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    root = work / "runs" / "demo"
    assert (root / "report.md").is_file() and (root / "heatmaps.html").is_file()
    assert r.stderr == "" and "pipeline demo: ok" in r.stdout
    # the kernels read the packaged params file of the installed copy
    params = yaml.safe_load((root / "notebooks" / "03-forget-npo_gd.params.yaml").read_text())
    assert params["config_files"] == [str((target / "npo_lib/params/tiny_forget.yaml").resolve())]
