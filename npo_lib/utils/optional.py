"""Optional dependencies: import one, or fail naming the extra that installs it."""

from __future__ import annotations

import importlib
from typing import Any


def require(module: str, extra: str = "notebooks") -> Any:
    """``importlib.import_module(module)``, or an ImportError naming
    ``pip install -e '.[extra]'``."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"{module} is needed here: pip install -e '.[{extra}]'") from e
