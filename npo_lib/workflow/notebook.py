"""What the parameterised notebooks share: their config from papermill's injected variables.

papermill (``-f params.yaml`` / ``-p key value``) injects each parameter as a variable after the
cell tagged ``parameters``. The notebooks declare only their own non-config parameters there
(``config_files``, output folders, ...); every ``npo_lib.config.Config`` key keeps its single
default in the schema. :func:`config_from_namespace` collects the injected config keys, merges
them over the params files and fails, naming the variable, for one that is not a config key;
:func:`run_from_namespace` also resolves the config once for the notebook's command (model,
data and retain model folders, family, objective, run folders), and the command takes that.
"""

from __future__ import annotations

import inspect
import os
import types
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from npo_lib.commands.checks import check_config
from npo_lib.commands.resolve import Resolved, resolve
from npo_lib.config import Config, load_config
from npo_lib.errors import ConfigError, UserError
from npo_lib.utils.progress import use_progress

# Names IPython itself puts into a kernel's namespace.
_KERNEL_NAMES = frozenset({"In", "Out", "get_ipython", "exit", "quit", "open"})


def injected_parameters(ns: Mapping[str, Any], declared: Iterable[str] = ()) -> dict[str, Any]:
    """Plain-data variables of a notebook namespace: papermill's injected parameters.

    Skips private names, IPython's own, the notebook's ``declared`` parameters, modules,
    functions and classes (the notebook's imports), and a config or run a first cell already
    made (so that cell can run again).
    """
    skip = _KERNEL_NAMES | set(declared)
    out = {}
    for name, value in ns.items():
        if name.startswith("_") or name in skip:
            continue
        if (
            isinstance(value, types.ModuleType | Config | Resolved)
            or inspect.isroutine(value)
            or inspect.isclass(value)
        ):
            continue
        out[name] = value
    return out


def config_from_namespace(
    ns: Mapping[str, Any], declared: Sequence[str] = (), config_files: Sequence[str] = ()
) -> Config:
    """The run's ``Config``: schema defaults < ``config_files`` < injected config keys.

    A variable that is neither declared by the notebook nor a config key is a typo in the
    params file or ``-p``: it fails with the closest valid keys, before any model loads.

    In a kernel it also sets up the notebook: user errors show as one line
    (:func:`brief_user_errors`) and progress as a widget bar, or as plain lines under papermill
    (:func:`npo_lib.utils.progress.use_progress`).
    """
    brief_user_errors()
    use_progress("auto")
    values = injected_parameters(ns, declared)
    try:
        cfg = load_config(files=list(config_files), overrides=values)
        check_config(cfg)
        return cfg
    except ConfigError as e:
        raise _parameter_error(e, declared) from e


def run_from_namespace(
    ns: Mapping[str, Any],
    command: str,
    declared: Sequence[str] = (),
    config_files: Sequence[str] = (),
    *,
    model_path: str | None = None,
) -> Resolved:
    """The run of a command's notebook: its config (as :func:`config_from_namespace` merges it)
    checked and resolved once for ``command`` (``forget``, ``eval``, ...), on ``model_path``
    when given. The notebook passes it to the command, which resolves nothing again."""
    brief_user_errors()
    use_progress("auto")
    values = injected_parameters(ns, declared)
    try:
        cfg = load_config(files=list(config_files), overrides=values)
        return resolve(cfg, command, model_path=model_path)
    except ConfigError as e:
        raise _parameter_error(e, declared) from e


def _parameter_error(e: ConfigError, declared: Sequence[str]) -> ConfigError:
    own = ", ".join(declared) or "none"
    return ConfigError(f"notebook parameters: {e} (the notebook's own parameters: {own})")


def _one_line(
    shell: Any, etype: type, value: BaseException, tb: Any, tb_offset: int | None = None
) -> list[str]:
    shell.showtraceback((etype, value, tb), exception_only=True)  # "ConfigError: <message>"
    return []


def brief_user_errors() -> bool:
    """In an IPython kernel, show a :class:`~npo_lib.errors.UserError` (a bad key, file or value)
    as its one-line message instead of a traceback through the library; ``%tb`` still shows the
    whole traceback. Bugs (any other exception) keep theirs. Returns whether a kernel was found.

    Papermill reads the same error (name and message) and stops at that cell, as before.
    """
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    if shell is None:
        return False
    shell.set_custom_exc((UserError,), _one_line)
    return True


def trust_notebook(path: str | os.PathLike) -> bool:
    """Sign an executed notebook in this user's Jupyter trust database (``jupyter trust``).

    JupyterLab draws a saved widget view (the explorer, the dashboard) only in a trusted notebook;
    untrusted, it shows the widget's text repr. The notebooks ``npo`` executes are its own output,
    so it trusts them. Returns False where the database cannot be written (the notebook is
    unchanged either way).
    """
    import nbformat
    from nbformat.sign import NotebookNotary

    try:
        NotebookNotary().sign(nbformat.read(path, as_version=4))
    except (OSError, ValueError) as e:
        print(f"could not trust {path}: {e}")
        return False
    return True


def show_table(rows: Sequence[Mapping[str, Any]] | Mapping[str, Any], floatfmt: str = ".4g") -> Any:
    """A list of dicts (or one dict) as a markdown table, displayed inline in Jupyter."""
    from IPython.display import Markdown

    if isinstance(rows, Mapping):
        rows = [{"key": k, "value": v} for k, v in rows.items()]
    if not rows:
        return Markdown("_(empty)_")
    cols = list(dict.fromkeys(k for r in rows for k in r))

    def fmt(v: Any) -> str:
        return format(v, floatfmt) if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return Markdown("\n".join(lines))
