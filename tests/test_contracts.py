"""The import contracts are real: each layer of the package breaks the contract when it imports
upward, and a private name imported across modules breaks its own, relative imports too."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"  # installed with the dev extra

# (module that gains the import, the import, the line lint-imports prints for it)
VIOLATIONS = [
    ("training/trainer.py", "from npo_lib.commands import forget", "npo_lib.training is not"),
    ("commands/folders.py", "from npo_lib.viz import report", "npo_lib.commands is not"),
    ("viz/render.py", "from npo_lib.workflow import steps", "npo_lib.viz is not"),
    ("workflow/executors.py", "from npo_lib.study import frontier", "npo_lib.workflow is not"),
    ("study/figures.py", "from npo_lib import cli", "npo_lib.study is not"),
    ("objectives/terms.py", "from npo_lib.training import trainer", "npo_lib.objectives is not"),
    ("viz/tables.py", "from .render import _private_helper", "private name _private_helper"),
]


def _lint(tree: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=tree,
        env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def package_copy(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "npo_lib", tmp_path / "npo_lib", ignore=shutil.ignore_patterns("*.pyc"))
    shutil.copytree(ROOT / "tools", tmp_path / "tools", ignore=shutil.ignore_patterns("*.pyc"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    return tmp_path


def test_every_layer_breaks_the_contract_when_it_imports_upward(package_copy: Path):
    clean = _lint(package_copy)
    assert clean.returncode == 0 and "2 kept, 0 broken" in clean.stdout, clean.stdout[-2000:]
    for module, line, _ in VIOLATIONS:
        with open(package_copy / "npo_lib" / module, "a", encoding="utf-8") as f:
            f.write(f"\n{line}  # noqa\n")
    broken = _lint(package_copy)
    assert broken.returncode != 0
    missing = [module for module, _, said in VIOLATIONS if said not in broken.stdout]
    assert not missing, broken.stdout[-3000:]
