"""tnpo: NPO and influence-guided token-level unlearning for LLMs (TOFU / R-TOFU).

Light at import: heavy modules (torch, transformers) load only when a step needs them.
"""

# every objective registers its hyperparameter group first: the config schema is built from them
import npo_lib.objectives.losses  # noqa: F401, I001  (before npo_lib.config; imports no torch)
from npo_lib.config import Config, ConfigError, load_config

__all__ = ["Config", "ConfigError", "load_config"]
__version__ = "0.1.0"
