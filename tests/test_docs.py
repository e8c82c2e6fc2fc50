"""The documentation matches the code: every command line of the README and of docs/ parses and
resolves its config, every file, key and module it names exists, and the generated reference
pages are current.

A command line is a line of a ``bash`` / ``sh`` / ``shell`` / ``console`` code block (``$ ``
lines only in a console block; ``\\`` continues a line, ``#`` starts a comment) that runs ``npo``,
``python -m npo_lib[.entry]`` or a launcher (``torchrun``, ``deepspeed``) with ``-m`` /
``--module npo_lib[.entry]``. It runs in-process through :func:`npo_lib.cli.main`:

- a command that takes a config (``npo prepare|finetune|forget|eval|influence``) runs with
  ``--print-config``, so its params files, keys, values and registry names are checked and
  nothing else happens;
- any other command (``npo run|sweep|launch|study|report|losses``) is parsed by the CLI's own
  parser, then runs with ``--help``; its files under the repository's folders must exist and
  its ``key=value`` / ``-p KEY VALUE`` keys must be config keys.

Placeholders (``<run>``, ``runs/*/``, ``...``, ``DIR``, ``PLAN.yaml``) are not checked as values:
a ``key=<placeholder>`` keeps its key check, a placeholder file or folder is left out.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import io
import json
import re
import shlex
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import NamedTuple, get_type_hints

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md"), ROOT / "bench" / "README.md"])
SHELL_BLOCKS = {"bash", "sh", "shell", "console"}
REPO_DIRS = ("params/", "notebooks/", "npo_lib/", "bench/", "tools/", "tests/", "docs/")
ENTRY_POINTS = {  # python -m npo_lib.<module> -> npo <command>
    "npo_lib": None,
    "npo_lib.forget": "forget",
    "npo_lib.finetune": "finetune",
    "npo_lib.compute_influence": "influence",
}
SEPARATORS = {"&&", "||", ";", "|", "&"}
PLACEHOLDER = re.compile(r"<[^>]*>|\*|\.\.\.|(^|/)[A-Z][A-Z0-9_]*(\.[a-z]+)?(/|$)")
SUFFIXES = {
    "md",
    "csv",
    "png",
    "yaml",
    "yml",
    "json",
    "jsonl",
    "py",
    "ipynb",
    "html",
    "safetensors",
}


class Command(NamedTuple):
    where: str  # file:line
    line: str  # the logical line as written (continuations joined)
    argv: list[str]  # the npo command's arguments, subcommand first


# ----------------------------------------------------------------------------- finding commands


def _shell_lines(path: Path) -> list[tuple[int, str]]:
    """(first line number, logical line) of every shell code block line of a markdown file."""
    out, block, pending, start = [], None, "", 0
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        fence = re.match(r"^\s*```\s*([\w-]*)", raw)
        if fence:
            block = None if block is not None else fence.group(1).lower()
            continue
        if block not in SHELL_BLOCKS:
            continue
        line = raw.strip()
        if block == "console":
            if not line.startswith("$ ") and not pending:
                continue  # output
            line = line.removeprefix("$ ")
        if not pending:
            start = n
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        out.append((start, pending + line))
        pending = ""
    return out


def _segments(line: str) -> list[list[str]]:
    """The simple commands of a shell line: comments dropped, split at ``&&``, ``;``, ``|``, ``&``,
    redirections removed."""
    line = re.sub(r"<([\w.-]*)>", "\x00\\1\x01", line)  # placeholders are not redirections
    lexer = shlex.shlex(line, posix=True, punctuation_chars="&|;<>")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    segments, current, skip = [], [], False
    for tok in lexer:
        if skip:
            skip = False
        elif tok in SEPARATORS:
            segments.append(current)
            current = []
        elif set(tok) <= set("<>&"):  # > >> 2>&1 <
            skip = not tok.endswith("&")
            if current and current[-1].isdigit():
                current.pop()  # the 2 of 2>
            skip = skip or tok == ">&"
        else:
            current.append(tok.replace("\x00", "<").replace("\x01", ">"))
    segments.append(current)
    return [s for s in segments if s]


def _npo_argv(tokens: list[str]) -> list[str] | None:
    """The ``npo`` arguments of one simple command, or None when it runs something else."""
    while tokens and (tokens[0] in ("nohup", "time", "env") or re.match(r"^\w+=", tokens[0])):
        tokens = tokens[1:]
    if not tokens:
        return None
    if tokens[0] == "npo":
        return tokens[1:]
    for i, tok in enumerate(tokens[:-1]):
        if tok in ("-m", "--module") and tokens[i + 1].split(".")[0] == "npo_lib":
            module = tokens[i + 1]
            if module not in ENTRY_POINTS:
                return ["<not an entry point: python -m " + module + ">"]
            sub = ENTRY_POINTS[module]
            return ([sub] if sub else []) + tokens[i + 2 :]
    return None


def doc_commands() -> list[Command]:
    found = []
    for path in DOCS:
        for n, line in _shell_lines(path):
            for seg in _segments(line):
                argv = _npo_argv(seg)
                if argv is not None:
                    found.append(Command(f"{path.relative_to(ROOT)}:{n}", line, argv))
    return found


COMMANDS = doc_commands()

# ----------------------------------------------------------------------------- checking them


def _placeholder(arg: str) -> bool:
    return bool(PLACEHOLDER.search(arg))


def _run_cli(argv: list[str]) -> tuple[int, str]:
    """``npo_lib.cli.main(argv)`` in this process: its exit code and what it printed to stderr."""
    from npo_lib.cli import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse: --help (0) or a bad flag (2)
            code = e.code if isinstance(e.code, int) else 1
    return code, err.getvalue().strip()


def _parse(argv: list[str]) -> str | None:
    """The CLI parser's complaint about ``argv`` (unknown flag, bad choice), else None."""
    from npo_lib.cli import build_parser

    err = io.StringIO()
    with redirect_stderr(err), redirect_stdout(io.StringIO()):
        try:
            build_parser().parse_args(argv)
        except SystemExit as e:
            return err.getvalue().strip() or f"exit {e.code}"
    return None


def _missing_files(args: list[str]) -> list[str]:
    """Arguments naming a path in one of the repository's folders that is not there."""
    return [
        a
        for a in args
        if a.startswith(REPO_DIRS) and not _placeholder(a) and not (ROOT / a).exists()
    ]


def _key_problems(keys: list[str]) -> list[str]:
    """Keys that are not config keys (checked by the schema, as ``npo`` checks them)."""
    from npo_lib.config import Config, check_keys, parse_overrides
    from npo_lib.errors import ConfigError

    problems = []
    for key in keys:
        try:
            check_keys(parse_overrides([f"{key}=0"]), Config, "docs")
        except ConfigError as e:
            problems.append(str(e))
    return problems


def _notebook_parameters(name: str) -> set[str]:
    """The names a notebook's ``parameters`` cell declares."""
    path = ROOT / "notebooks" / (name if name.endswith(".ipynb") else f"{name}.ipynb")
    if not path.is_file():
        return set()
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    source = "".join(
        "".join(c["source"]) for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])
    )
    return set(re.findall(r"^(\w+)\s*[:=]", source, re.MULTILINE))


def check_config_command(argv: list[str]) -> list[str]:
    """Run with ``--print-config``: files, keys, values and registry names are checked."""
    kept, keys = [], []
    for a in argv[1:]:
        key, eq, value = a.partition("=")
        if eq and not a.startswith("-") and _placeholder(value):
            keys.append(key)  # the value is a placeholder: check the key only
        elif not (eq or a.startswith("-")) and _placeholder(a):
            continue  # a placeholder file
        else:
            kept.append(a)
    problems = _missing_files(kept) + _key_problems(keys)
    code, err = _run_cli([argv[0], *kept, "--print-config"])
    if code != 0:
        problems.append(f"exit {code}: {err}")
    return problems


def check_other_command(argv: list[str]) -> list[str]:
    """Parse with the CLI's parser, check files and keys, then run ``--help``."""
    problems = _missing_files(argv[1:])
    if (complaint := _parse(argv)) is not None:
        problems.append(complaint)
    keys = [a.partition("=")[0] for a in argv[1:] if "=" in a and not a.startswith("-")]
    problems += _key_problems(keys)
    if argv[0] == "launch":
        notebook = next((a for a in argv[1:] if not a.startswith("-") and not a.isdigit()), "")
        names = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a in ("-p", "--parameter")]
        own = _notebook_parameters(Path(notebook).name)
        problems += _key_problems([k for k in names if k not in own])
    code, err = _run_cli([argv[0], "--help"])
    if code != 0:
        problems.append(f"--help: exit {code}: {err}")
    return problems


def _config_commands() -> set[str]:
    from npo_lib.cli import COMMANDS as CONFIG_COMMANDS

    return set(CONFIG_COMMANDS)


# ----------------------------------------------------------------------------- tests


def test_the_docs_hold_commands_to_check():
    where = {c.where.split(":")[0] for c in COMMANDS}
    assert len(COMMANDS) >= 20 and len(where) >= 8, sorted(where)


@pytest.mark.parametrize("cmd", COMMANDS, ids=[c.where for c in COMMANDS])
def test_every_documented_command_runs(cmd: Command):
    argv = cmd.argv
    assert argv and not argv[0].startswith("<not"), f"{cmd.where}: {cmd.line}: {argv}"
    check = check_config_command if argv[0] in _config_commands() else check_other_command
    problems = check(argv)
    assert not problems, f"{cmd.where}: {cmd.line}\n" + "\n".join(problems)


def _backticked() -> list[tuple[str, str]]:
    """(file:line, text) of every inline code span of the docs."""
    out = []
    for path in DOCS:
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            out += [(f"{path.relative_to(ROOT)}:{n}", m) for m in re.findall(r"`([^`]+)`", line)]
    return out


def test_every_config_key_named_in_the_docs_exists():
    """A dotted key of a config group (``influence.method``, ``eval.leak_k``) is a schema key."""
    from npo_lib.config.schema import Config, SweepExecutorConfig

    hints = get_type_hints(Config)
    groups = {name for name, tp in hints.items() if dataclasses.is_dataclass(tp)}
    executor = {f.name for f in dataclasses.fields(SweepExecutorConfig)}
    pattern = re.compile(r"(?<![\w./-])(" + "|".join(sorted(groups)) + r"|executor)\.(\w+)\b")
    bad = []
    for where, span in _backticked():
        for group, name in pattern.findall(span):
            if name in SUFFIXES:  # a file name: study.md
                continue
            if group == "executor":
                ok = name in executor
            elif dataclasses.is_dataclass(get_type_hints(hints[group]).get(name)):
                ok = True  # a nested group: benchmark.muse
            else:
                ok = not _key_problems([f"{group}.{name}"])
            if not ok:
                bad.append(f"{where}: {group}.{name}")
    assert not bad, bad


def _expand(path: str) -> list[str]:
    """``params/{a,b}_gd.yaml`` -> ``params/a_gd.yaml``, ``params/b_gd.yaml``."""
    m = re.search(r"\{([^{}]*)\}", path)
    if not m:
        return [path]
    return [p for alt in m.group(1).split(",") for p in _expand(path.replace(m.group(0), alt, 1))]


def test_every_repository_path_named_in_the_docs_exists():
    pattern = re.compile(r"(?<![\w./-])((?:" + "|".join(REPO_DIRS) + r")[\w./{},*-]*)")
    bad = []
    for where, span in _backticked():
        for raw in pattern.findall(span):
            for path in _expand(raw.rstrip(".,")):
                if "*" in path or "<" in path:
                    found = "*" not in path or any(ROOT.glob(path))
                else:
                    found = (ROOT / path).exists()
                if not found:
                    bad.append(f"{where}: {path}")
    assert not bad, bad


def _resolves(dotted: str) -> bool:
    """``npo_lib.a.b.name``: the longest importable module, then attributes."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        module = ".".join(parts[:i])
        if module == "npo_lib.__main__":
            return True
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if found:
            obj = importlib.import_module(module)
            for attr in parts[i:]:
                if not hasattr(obj, attr):
                    return False
                obj = getattr(obj, attr)
            return True
    return False


def test_every_module_and_name_in_the_docs_exists():
    """``npo_lib.x.y`` names a module, or a name inside one, that exists (no module path of the
    package before its reorganisation into layers; file paths are the test above)."""
    bad = []
    for where, span in _backticked():
        for dotted in re.findall(r"\bnpo_lib(?:\.\w+)+", span):
            if not _resolves(dotted):
                bad.append(f"{where}: {dotted}")
    assert not bad, bad


def test_reference_pages_are_current():
    from tools.reference import stale_pages

    stale = stale_pages()
    assert not stale, f"stale: {', '.join(stale)}; run `python -m tools.reference`"


def _anchors(path: Path) -> set[str]:
    """GitHub's anchors of a markdown file's headings: lower case, punctuation dropped, spaces
    to dashes."""
    heads = re.findall(r"^#+\s+(.*)$", path.read_text(encoding="utf-8"), re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


def test_every_relative_link_resolves():
    bad = []
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"^[a-z]+:", target):
                continue  # a URL
            file, _, anchor = target.partition("#")
            dest = (path.parent / file).resolve() if file else path
            if (
                not dest.exists()
                or anchor
                and dest.suffix == ".md"
                and anchor not in _anchors(dest)
            ):
                bad.append(f"{path.relative_to(ROOT)}: {target}")
    assert not bad, bad
