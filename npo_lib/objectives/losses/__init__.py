"""One module per objective: its loss function(s), its hyperparameter group and their
registration. Importing this package imports every module in it, so a new objective is one new
file here (nothing else to edit): the registry, the config schema, ``npo losses`` and the
trainer find it. GA and NPO, which others build on, are imported first, then every other
module in name order (the order ``npo losses`` lists them); none imports torch at import time.
"""

from __future__ import annotations

import importlib
import pkgutil

FIRST = ("ga", "npo")
MODULES = tuple(
    importlib.import_module(f"{__name__}.{name}").__name__
    for name in sorted(
        (m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")),
        key=lambda name: (FIRST.index(name) if name in FIRST else len(FIRST), name),
    )
)
