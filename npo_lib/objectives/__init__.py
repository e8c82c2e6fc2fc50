"""Objectives: token statistics (:mod:`.primitives`), one module per objective under
:mod:`.losses` (its loss function, its hyperparameter group, its registration), the registry of
terms (:mod:`.catalog`) and their composition (:mod:`.registry`), and the cached reference."""
