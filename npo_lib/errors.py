"""The errors a user can cause, each shown by the ``npo`` command as one line with exit code 2.

Every one names what is wrong: the key, the file and line, the value, the bar. A traceback is
kept for bugs: any exception that is not a :class:`UserError`.
"""

from __future__ import annotations


class UserError(Exception):
    """Something the user can fix (a setting, a file, a folder, a bar the models missed)."""


class ConfigError(UserError, ValueError):
    """A configuration source is invalid (unknown key, wrong type, bad value, missing file)."""


class DataError(UserError, ValueError):
    """A data file or record is missing or malformed, or a view cannot be built from it."""


class EvalError(UserError, ValueError):
    """An evaluation cannot run as asked (tokenizer/model mismatch, no output folder, ...)."""


class ReportError(UserError, ValueError):
    """A run folder has no readable results."""


class BarError(UserError, RuntimeError):
    """A model missed a bar it must reach (memorisation of the embedded default, ...)."""
