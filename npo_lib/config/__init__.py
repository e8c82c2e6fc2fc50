"""The configuration: one schema of every default (:mod:`.schema`, its groups by concept, the
objectives' hyperparameter groups and their flat aliases: :mod:`.groups`) and where values come
from (:mod:`.sources`: params files, ``key=value`` overrides, notebook parameters)."""

from npo_lib.config.groups import config_aliases, resolve_aliases, with_alias_keys
from npo_lib.config.schema import (
    BenchmarkConfig,
    Config,
    EvalConfig,
    FinetuneConfig,
    InfluenceConfig,
    LoRAConfig,
    MuseStandinConfig,
    PlanConfig,
    SelectionConfig,
    StudyConfig,
    TinyModelConfig,
    WmdpStandinConfig,
)
from npo_lib.config.sources import (
    annotated_yaml,
    check_keys,
    load_config,
    nest_keys,
    parse_overrides,
    read_params_file,
    save_config,
    split_args,
    to_yaml,
)
from npo_lib.errors import ConfigError

__all__ = [
    "BenchmarkConfig",
    "Config",
    "ConfigError",
    "EvalConfig",
    "FinetuneConfig",
    "InfluenceConfig",
    "LoRAConfig",
    "MuseStandinConfig",
    "PlanConfig",
    "SelectionConfig",
    "StudyConfig",
    "TinyModelConfig",
    "WmdpStandinConfig",
    "annotated_yaml",
    "check_keys",
    "config_aliases",
    "load_config",
    "nest_keys",
    "parse_overrides",
    "read_params_file",
    "resolve_aliases",
    "save_config",
    "split_args",
    "to_yaml",
    "with_alias_keys",
]
