"""`npo plan`'s estimate against the measured peak of a forget run on a prepared tiny model (CPU).

"Measured peak" on CPU: PyTorch's CPU allocator has no statistics, so the bytes glibc's malloc
holds in use (``mallinfo2``: ``uordblks + hblkhd``, every arena and every mmap'd block, which is
where every CPU tensor lives) are sampled after every module's forward, after every parameter's
gradient accumulates, around each optimizer step and every millisecond by a thread; the peak
minus the in-use bytes just before the run (after a warm-up run, so imports and caches are
already paid) is the run's measured peak. It includes what the estimate leaves out (the dataset,
the trainer's objects, the reference cache), while the estimate adds every part at once (the
gradients grow as the activations are freed): the ratio is measured / estimated.

The estimate is ``npo plan``'s for the same config, at float32 (the CPU dtype) and at the longest
padded batch the run saw (``max_length`` is an upper bound a run on short QA never reaches).

    PYTHONPATH=. python bench/plan_memory.py [--batch 32] [--steps 2]
    PYTHONPATH=. python bench/plan_memory.py --docs   # rewrite docs/memory.md's 8B table
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import tempfile
import threading
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MIB = 2**20


class MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


LIBC = ctypes.CDLL("libc.so.6")
LIBC.mallinfo2.restype = MallInfo2


def in_use() -> int:
    """Bytes glibc's malloc holds in use: small blocks in every arena plus mmap'd blocks."""
    info = LIBC.mallinfo2()
    return int(info.uordblks + info.hblkhd)


class PeakMeter:
    """The peak of :func:`in_use` over a run: hooks on the model and a sampling thread."""

    def __init__(self) -> None:
        self.peak = 0
        self.longest = 0  # the longest padded batch seen (tokens per row)
        self.batch = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def sample(self, *_: Any, **__: Any) -> None:
        self.peak = max(self.peak, in_use())

    def _poll(self) -> None:
        while not self._stop.wait(0.001):
            self.sample()

    def attach(self, model: Any) -> None:
        """Sample after every module's forward and every parameter's gradient."""
        import torch

        for module in model.modules():
            module.register_forward_hook(self.sample)
        for p in model.parameters():
            if p.requires_grad:
                p.register_post_accumulate_grad_hook(self.sample)

        def shapes(_module: Any, args: tuple, kwargs: dict) -> None:
            ids = kwargs.get("input_ids", args[0] if args else None)
            if ids is not None and torch.is_grad_enabled():  # training forwards only
                self.batch = max(self.batch, ids.shape[0])
                self.longest = max(self.longest, ids.shape[1])

        model.register_forward_pre_hook(shapes, with_kwargs=True)

    def __enter__(self) -> PeakMeter:
        self.base = in_use()
        self.peak = self.base
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def callback(meter: PeakMeter) -> Any:
    """A TrainerCallback that attaches ``meter`` to the model and samples around each step."""
    from transformers import TrainerCallback

    class Meter(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kw):
            meter.attach(model)

        def on_pre_optimizer_step(self, args, state, control, **kw):
            meter.sample()

        def on_optimizer_step(self, args, state, control, **kw):
            meter.sample()

    return Meter()


def measure(overrides: list[str], steps: int) -> dict[str, Any]:
    """One forget run of the tiny model with ``overrides``: measured peak and the estimate."""
    from npo_lib.commands.forget import run_forget
    from npo_lib.commands.plan import plan_run
    from npo_lib.commands.resolve import resolve
    from npo_lib.config import load_config
    from npo_lib.models.memory import GIB, Shape, estimate

    with tempfile.TemporaryDirectory() as tmp:
        args = [f"save_dir={tmp}/run", "dtype=float32", f"max_steps={steps}", *overrides]
        res = resolve(load_config(args), "forget")
        meter = PeakMeter()
        with meter:
            run_forget(res, callbacks=[callback(meter)], progress=False)
        measured = meter.peak - meter.base
    plan = plan_run(res.cfg, res.family, res.spec, res.model_path, "forget")
    setup = dataclasses.replace(plan.setup, length=meter.longest, batch=meter.batch)
    est = estimate(Shape.read(plan.model), setup)
    return {
        "run": " ".join(overrides),
        "tokens": f"{meter.batch} x {meter.longest}",
        "estimate_mib": est.total / MIB,
        "measured_mib": measured / MIB,
        "ratio": measured / est.total,
        "parts_mib": {k: v * GIB / MIB for k, v in est.gib().items()},
    }


RUNS = {
    "full": ["forget_loss=NPO+GD"],
    "lora": ["forget_loss=NPO+GD", "LoRA.r=8"],
    "full-kl": ["forget_loss=NPO+KL"],
}


def comparison(batch: int, steps: int) -> list[dict[str, Any]]:
    """Every run of :data:`RUNS` at ``batch``, after one warm-up run."""
    measure([f"batch_size={batch}", *RUNS["full"]], 1)  # imports, allocator arenas, caches
    return [measure([f"batch_size={batch}", *over], steps) for over in RUNS.values()]


def print_table(rows: list[dict[str, Any]]) -> None:
    print("| run | batch x tokens | estimate MiB | measured MiB | measured / estimate |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['run']} | {r['tokens']} | {r['estimate_mib']:.1f} | {r['measured_mib']:.1f} "
            f"| {r['ratio']:.2f} |"
        )
    for r in rows:
        parts = ", ".join(f"{k} {v:.1f}" for k, v in r["parts_mib"].items())
        print(f"  {r['run']}: {parts}")


def write_docs() -> None:
    """Rewrite the generated block of docs/memory.md."""
    from npo_lib.commands.plan_table import replace_block

    page = ROOT / "docs" / "memory.md"
    page.write_text(replace_block(page.read_text(encoding="utf-8")), encoding="utf-8")
    print(f"wrote {page}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--docs", action="store_true", help="rewrite docs/memory.md's table")
    opts = parser.parse_args()
    if opts.docs:
        write_docs()
        return
    print_table(comparison(opts.batch, opts.steps))


if __name__ == "__main__":
    main()
