"""`npo plan`: the GPU memory budget a run is planned against, before any model loads."""

from __future__ import annotations

from dataclasses import dataclass

from npo_lib.config.fields import need, opt

PLAN_REFERENCES = ("auto", "cached", "live")
DEFAULT_GPU_MEMORY_GB = 80.0  # an A100 / H100 80 GB


@dataclass
class PlanConfig:
    """The per-GPU budget and the device count a run's peak memory is compared with.

    ``npo forget`` refuses a run whose estimate exceeds the budget only when a GPU is present or
    ``gpu_memory_gb`` was set; ``force`` runs it anyway."""

    gpu_memory_gb: float | None = opt(
        None,
        "memory per GPU in GiB; None = 80 for `npo plan`, and no refusal by `npo forget` on a "
        "machine without a GPU",
    )
    gpus: int = opt(
        0, "GPUs the run shards over; 0 = the launcher's WORLD_SIZE, else 1 (ZeRO partitions)"
    )
    model_config: str | None = opt(
        None,
        "a config.json to size the model from; None = the model folder's, else the one shipped "
        "for the family's hub id (npo_lib/models/configs/)",
    )
    reference: str = opt(
        "auto",
        "how the reference p_ref is held: auto (what the objective does), cached (log-probs "
        "once), live (a frozen copy)",
    )
    force: bool = opt(False, "run `npo forget` even when the estimate does not fit")

    def __post_init__(self) -> None:
        need(
            self.gpu_memory_gb is None or self.gpu_memory_gb > 0,
            f"plan.gpu_memory_gb must be > 0, got {self.gpu_memory_gb}",
        )
        need(self.gpus >= 0, f"plan.gpus must be >= 0, got {self.gpus}")
        need(
            self.reference in PLAN_REFERENCES,
            f"plan.reference '{self.reference}' is unknown; valid: {', '.join(PLAN_REFERENCES)}",
        )

    @property
    def budget_gb(self) -> float:
        """The budget `npo plan` compares with (the default 80 when unset)."""
        return DEFAULT_GPU_MEMORY_GB if self.gpu_memory_gb is None else self.gpu_memory_gb
