"""Benchmark plug-ins (:mod:`.registry`): TOFU / R-TOFU (:mod:`.tofu`), the default, MUSE
(:mod:`.muse`) and WMDP (:mod:`.wmdp`).

Importing the package registers every shipped benchmark.
"""

from npo_lib.benchmarks import muse as muse
from npo_lib.benchmarks import tofu as tofu
from npo_lib.benchmarks import wmdp as wmdp
from npo_lib.benchmarks.registry import (
    BENCHMARK_PLUGINS,
    Benchmark,
    check_data_folder,
    get_benchmark,
    list_benchmark_plugins,
)

__all__ = [
    "BENCHMARK_PLUGINS",
    "Benchmark",
    "check_data_folder",
    "get_benchmark",
    "list_benchmark_plugins",
]
