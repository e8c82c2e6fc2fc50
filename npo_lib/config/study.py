"""Comparing methods: `npo study` and where `npo sweep` runs its grid points."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from npo_lib.config.fields import need, opt


@dataclass
class StudyConfig:
    """How `npo study` compares the methods of a finished sweep."""

    group_by: list[str] = opt(
        ["forget_loss", "lr", "num_epochs"],
        "config keys of a setting; the seed varies inside a group",
    )
    mu_fraction: float = opt(0.95, "utility floor as a fraction of the target's model utility")
    strict_fraction: float = opt(
        0.98, "the second, stricter utility level, as a fraction of the target's"
    )
    method_keys: list[str] = opt(
        [
            "forget_loss",
            "selection.method",
            "selection.budget",
            "selection.p",
            "selection.k",
            "selection.seed",
            "influence.scorer",
            "influence.preconditioner",
        ],
        "config keys that name a method (selection.* / influence.* only for objectives reading "
        "token weights; keys at their default are left out)",
    )
    strength_keys: list[str] = opt(
        ["lr", "num_epochs", "forget_coeff"],
        "config keys a method's frontier is swept over (its strength)",
    )
    benchmark_keys: list[str] = opt(
        ["benchmark.n_authors", "benchmark.seed"], "config keys that tell benchmarks apart"
    )
    claim: str = opt("INFLUENCE+GD", "the method the verdict is about")
    rivals: list[str] = opt(
        ["NPO+GD", "TNPO+GD", "WGA+GD", "SatImp+GD"], "the methods it must beat at matched utility"
    )
    attacks: list[str] = opt(
        ["relearn", "quant4"],
        "robustness columns: forget fact recall after these attacks (eval.robustness) at the "
        "matched setting",
    )
    seeds: list[int] = opt(
        [0, 1, 2], "--extend: every seed for points near the floor (the first seed alone scouts)"
    )
    near: float = opt(
        0.01, "--extend: points within this model utility of the floor get every seed"
    )
    limits: list[float] = opt(
        [3.2e-3, 40, 8.0], "--extend: largest value of each strength key, in strength_keys' order"
    )
    factor: float = opt(2.0, "--extend: each step multiplies a strength key by this")

    def __post_init__(self) -> None:
        need(
            bool(self.group_by),
            "study.group_by must name at least one config key, e.g. [forget_loss]",
        )
        need(
            0 < self.mu_fraction <= 1,
            f"study.mu_fraction must be in (0, 1], got {self.mu_fraction}",
        )
        need(
            0 < self.strict_fraction <= 1,
            f"study.strict_fraction must be in (0, 1], got {self.strict_fraction}",
        )
        need(
            len(self.limits) == len(self.strength_keys),
            f"study.limits needs one value per strength key ({', '.join(self.strength_keys)})",
        )
        need(
            bool(self.seeds) and self.near >= 0 and self.factor > 1,
            f"study: need seeds, near >= 0, factor > 1; got seeds={self.seeds}, near={self.near}, "
            f"factor={self.factor}",
        )


SWEEP_EXECUTORS = ("thread", "local", "slurm")


@dataclass
class SweepExecutorConfig:
    """Where `npo sweep` runs its grid points (the sweep file's ``executor:`` block): threads of
    this process, submitit jobs on this machine (one process per point, its own GPUs), or a
    SLURM job array through submitit (one array task per point)."""

    kind: str = opt(
        "thread",
        "thread (today's pool), local (submitit processes) or slurm (submitit job array); "
        "--executor overrides",
    )
    gpus_per_run: int = opt(
        1, "GPUs each point gets (CUDA_VISIBLE_DEVICES locally, --gpus-per-node on SLURM); 0 = none"
    )
    partition: str | None = opt(
        None, "SLURM partition (sbatch --partition); None = the cluster's default"
    )
    account: str | None = opt(None, "SLURM account (sbatch --account)")
    qos: str | None = opt(None, "SLURM quality of service (sbatch --qos)")
    cpus_per_run: int = opt(8, "CPU cores per point (sbatch --cpus-per-task)")
    mem_gb: int = opt(64, "memory per point in GB (sbatch --mem)")
    timeout_min: int = opt(
        24 * 60,
        "wall-clock limit per point in minutes (sbatch --time); a timed-out point is requeued",
    )
    array_parallelism: int = opt(
        8, "points of the job array running at once (sbatch --array=...%N)"
    )
    max_requeues: int = opt(
        3, "times a pre-empted or timed-out point is requeued before it counts as failed"
    )
    setup: list[str] = opt(
        [],
        "shell lines run in the sbatch script before the job (module load ..., source "
        ".venv/bin/activate)",
    )
    extra_sbatch: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "further sbatch flags, e.g. {constraint: a100, exclusive: true}"},
    )
    folder: str | None = opt(None, "where submitit keeps job pickles and logs; None = <sweep>/jobs")

    def __post_init__(self) -> None:
        need(
            self.kind in SWEEP_EXECUTORS,
            f"executor.kind must be one of {', '.join(SWEEP_EXECUTORS)}, got {self.kind!r}",
        )
        need(self.gpus_per_run >= 0, f"executor.gpus_per_run must be >= 0, got {self.gpus_per_run}")
        for name in ("cpus_per_run", "mem_gb", "timeout_min", "array_parallelism"):
            need(
                getattr(self, name) >= 1, f"executor.{name} must be >= 1, got {getattr(self, name)}"
            )
        need(self.max_requeues >= 0, f"executor.max_requeues must be >= 0, got {self.max_requeues}")
