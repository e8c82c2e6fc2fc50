"""tnpo: NPO and influence-guided token-level unlearning for LLMs (TOFU / R-TOFU).

Light at import: heavy modules (torch, transformers) load only when a step needs them.
"""

from npo_lib.config import Config, ConfigError, load_config

__all__ = ["Config", "ConfigError", "load_config"]
__version__ = "0.1.0"
