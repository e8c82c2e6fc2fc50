"""How the schema's dataclasses declare a field: its default and help text (:func:`opt`), a
nested group (:func:`group`), and the one-line check of a value (:func:`need`).

A field's range can be declared beside it with :func:`npo_lib.utils.params.hp` (``ge=0``, ...),
which is :func:`opt` with bounds, a flat alias and checks by :class:`~npo_lib.utils.params.Params`.
"""

from __future__ import annotations

from dataclasses import field
from typing import Any

from npo_lib.errors import ConfigError
from npo_lib.utils.params import hp


def opt(default: Any, help: str) -> Any:
    """A leaf field with its help text (a list default is copied per instance)."""
    return hp(default, help)


def group(cls: type, help: str) -> Any:
    """A nested group of fields (a dataclass of its own)."""
    return field(default_factory=cls, metadata={"help": help})


def need(ok: bool, message: str) -> None:
    """Fail with ``message`` (a ConfigError) unless ``ok``."""
    if not ok:
        raise ConfigError(message)
