"""The shape of the package: small modules and functions, the notebooks shipped inside the
wheel, the registry the CLI shows, and code that speaks of the project only."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "npo_lib"
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 500, 60


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_modules_and_functions_stay_small():
    too_long = []
    for path in _modules():
        text = path.read_text(encoding="utf-8")
        if text.count("\n") > MAX_MODULE_LINES:
            too_long.append(f"{path.relative_to(ROOT)}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    too_long.append(
                        f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {n} lines"
                    )
    assert not too_long, too_long


# Words of how the project was made rather than of the project. Spaces are written \s so that
# this file does not match itself; "seed" alone is a random seed, and pytest's
# scope="session" a fixture's lifetime.
PROCESS_WORDS = re.compile(
    r"reference\.md|reference\s(sheet|section)|the\sbrief|the\slead\b|\b(the|this)\sissue\b"
    r"|\.\./shared|notes\sfiles?\b|the\sseed\sscripts?|the\sseed's|build\smachines?\b"
    r"|(?<!scope=[\"'])\bsessions?\b|\blent\b|other\sagents?\b",
    re.IGNORECASE,
)


def _project_files() -> list[Path]:
    """Code, docs, params and build files: everything a reader of the repository reads."""
    files = [
        *_modules(),
        *PACKAGE.glob("notebooks/*.ipynb"),
        *ROOT.glob("tools/*.py"),
        *ROOT.glob("tests/*.py"),
        *(p for p in ROOT.glob("bench/*") if p.is_file()),
        *(p for p in ROOT.glob("params/**/*") if p.is_file()),
        *(p for p in ROOT.glob("docs/**/*") if p.suffix in (".md", ".csv")),
        *(ROOT / name for name in ("README.md", "pyproject.toml", "Makefile", "environment.yml")),
        ROOT / ".ci" / "run",
    ]
    return sorted(p for p in files if p.is_file())


def test_code_and_docs_speak_of_the_project_only():
    """No citation of files outside the repository or of how the code was written: the code,
    the docs, the params and the build files speak of equations, papers, commands and files."""
    hits = [
        f"{f.relative_to(ROOT)}:{i}"
        for f in _project_files()
        for i, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1)
        if PROCESS_WORDS.search(line)
    ]
    assert not hits, hits


def test_npo_losses_prints_every_registered_term_with_its_equation(capsys):
    from npo_lib.cli import main
    from npo_lib.objectives.registry import FORGET_TERMS, REGULARIZERS

    assert main(["losses"]) == 0
    out = capsys.readouterr().out
    for term in [*FORGET_TERMS.values(), *REGULARIZERS.values()]:
        assert term.doc and any(
            line.split()[0] == term.name and term.doc in line
            for line in out.splitlines()
            if line.strip()
        ), term.name


def test_print_config_shows_every_key_with_its_help():
    import dataclasses

    import yaml

    from npo_lib.config import Config, annotated_yaml, load_config

    text = annotated_yaml(load_config(["LoRA.r=8"]))
    assert yaml.safe_load(text)["LoRA"]["r"] == 8  # still YAML: a params file
    for f in dataclasses.fields(Config):
        assert f.metadata.get("help"), f"Config.{f.name} has no help text"
        assert f"{f.name}:" in text and f.metadata["help"] in text


def test_a_user_error_is_one_line_with_exit_code_2(mini_world, tmp_path, capsys):
    """A corrupted data file: the file and line, no traceback (the CLI's rule for every
    UserError)."""
    import shutil

    from npo_lib.cli import main

    data = tmp_path / "data"
    shutil.copytree(mini_world["data_path"], data)
    lines = (data / "forget10.json").read_text().splitlines()
    lines[2] = lines[2][:40]  # a line cut in the middle
    (data / "forget10.json").write_text("\n".join(lines) + "\n")
    code = main(
        [
            "forget",
            f"data_path={data}",
            f"model_path={mini_world['model_path']}",
            f"save_dir={tmp_path / 'run'}",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("npo forget: ") and "forget10.json, line 3: not valid JSON" in err[0]


@pytest.mark.slow
def test_the_installed_wheel_finds_every_notebook(tmp_path):
    """After a plain (non-editable) install the notebooks and params files come from the package
    itself."""
    wheels, target = tmp_path / "wheels", tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheels),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    wheel = next(wheels.glob("npo_lib-*.whl"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    probe = (
        "import npo_lib, pathlib; from npo_lib.workflow.steps import NOTEBOOKS, notebook_path; "
        "from npo_lib.config.sources import params_path; "
        "paths = [notebook_path(n) for n in NOTEBOOKS]; "
        "paths += [params_path(n) for n in ('demo', 'tiny_forget', 'npo_gd')]; "
        "paths.append(paths[-1].parent / 'ds' / 'zero2.json'); "
        "assert all(p.is_file() for p in paths), paths; "
        "print(pathlib.Path(npo_lib.__file__).parent); print(*paths)"
    )
    r = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
    )
    assert r.returncode == 0, r.stderr[-2000:]
    package_dir, *notebooks = r.stdout.split()
    assert Path(package_dir).is_relative_to(target)  # the installed copy, not the checkout
    assert all(Path(p).is_relative_to(target) for p in notebooks)
