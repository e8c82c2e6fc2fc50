"""What a number was measured on: the CPU kernel path torch picked, its version, the threads.

Other CPUs round differently (an AVX-512 GEMM sums in another order than an AVX2 one), so a
figure names the kernel path it came from. ``ATEN_CPU_CAPABILITY`` (ATen's vector kernels),
``ONEDNN_MAX_CPU_ISA`` (oneDNN) and ``MKL_ENABLE_INSTRUCTIONS`` (MKL's GEMMs) select lower paths
than the CPU offers; the ones set are reported with the rest.
"""

from __future__ import annotations

import os
import platform

KERNEL_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def machine_info() -> dict[str, str]:
    """``{"cpu_capability", "torch", "threads", "cpu"}`` plus any kernel-path variable that is
    set."""
    import torch

    info = {
        "cpu_capability": str(torch.backends.cpu.get_cpu_capability()),
        "torch": torch.__version__,
        "threads": str(torch.get_num_threads()),
        "cpu": platform.processor() or platform.machine(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    info.update({k: os.environ[k] for k in KERNEL_ENV if os.environ.get(k)})
    return info


def machine_line(info: dict[str, str] | None = None) -> str:
    """One line for a report: ``CPU kernels AVX512, torch 2.13.0+cpu, 2 threads``."""
    i = info or machine_info()
    extra = "".join(f", {k}={i[k]}" for k in KERNEL_ENV if k in i)
    gpu = f", GPU {i['gpu']}" if "gpu" in i else ""
    return (
        f"CPU kernels {i['cpu_capability']}, torch {i['torch']}, {i['threads']} threads{gpu}{extra}"
    )
