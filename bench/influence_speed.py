"""Token-influence speed, one run, same model and data (the embedded target and forget split).

1. One row of exact scores s_it = vᵀ ∇ℓ_it at 128 target tokens: forward-mode JVP (and the
   two-forward finite difference) against the per-token autograd loop (128 backwards). Target:
   JVP >= 30x faster.
2. The whole influence step (direction from the forget split and an equal-size retain sample,
   then the scores of every forget token) against one training epoch over the forget split
   (`npo forget`, forget_loss=NPO, the same batch size; steady-state epochs). Target: identity
   and diagonal preconditioners <= 4x; EK-FAC's ratio reported beside them.

The model is the embedded target when `npo prepare` made it, else the untrained base model of
the same architecture (speed does not depend on the weights). Influence runs in float32, the
default ``influence.dtype``; model loading is outside every timing. Each time is the fastest of
its repeats (load from other processes only adds time), influence and training interleaved.

    python bench/influence_speed.py [--threads 1] [--batch-size 8] [--model-path DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TOKENS = 128  # target tokens of the row compared with the per-token loop


def world(cache: str | None, model_path: str | None) -> tuple[object, str]:
    """(config, model folder): the prepared target, else the random base (made in seconds)."""
    from npo_lib.commands.prepare import ensure_base, ensure_benchmark, ensure_tokenizer
    from npo_lib.commands.resolve import resolve
    from npo_lib.config import load_config
    from npo_lib.embedded.paths import embedded_paths

    cfg = load_config([f"cache_dir={cache}"] if cache else [])
    paths = embedded_paths(cfg)
    if model_path:
        return cfg, model_path
    if (paths.target / "config.json").is_file():
        return cfg, str(paths.target)
    res = resolve(cfg, "prepare")  # the benchmark plug-in the config names
    ensure_benchmark(res, paths)
    ensure_base(cfg, paths, ensure_tokenizer(res, paths))
    return cfg, str(paths.base)


def long_example(inputs, cfg) -> dict:
    """One forget question whose target is cut to exactly TOKENS tokens (several traces joined)."""
    from npo_lib.data.views import encode_view

    records = inputs.dataset.forget
    cot = " ".join(r["cot"] for r in records)
    rec = {**records[0], "cot": cot}
    head = encode_view(rec, "full", inputs.tokenizer, inputs.tags, 10_000)
    ex = encode_view(rec, "full", inputs.tokenizer, inputs.tags, head["prompt_len"] + TOKENS)
    assert sum(t != -100 for t in ex["labels"]) == TOKENS, "not enough forget text for the long row"
    return ex


def timed(fn, repeats: int) -> tuple[float, object]:
    """Fastest of ``repeats`` calls (other load on the machine only adds time), and the result."""
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def training_epoch(cfg, model_path: str, batch_size: int, epochs: int = 4) -> float:
    """Fastest steady-state epoch (2 to ``epochs``) of `npo forget` with NPO on the forget split."""
    from transformers import TrainerCallback

    from npo_lib.commands.forget import run_forget
    from npo_lib.config import load_config

    class Epochs(TrainerCallback):
        seconds: list[float] = []

        def on_epoch_begin(self, *a, **k):
            self.t0 = time.perf_counter()

        def on_epoch_end(self, *a, **k):
            self.seconds.append(time.perf_counter() - self.t0)

    probe = Epochs()
    with tempfile.TemporaryDirectory() as tmp:
        run_cfg = load_config(
            [
                f"cache_dir={cfg.cache_dir}",
                f"model_path={model_path}",
                f"save_dir={tmp}/run",
                "forget_loss=NPO",
                f"num_epochs={epochs}",
                f"batch_size={batch_size}",
                "lr=1e-4",
                "warmup_epochs=0",
                "dtype=float32",
                "logging_steps=1000",
            ]
        )
        run_forget(run_cfg, callbacks=[probe], progress=False)
    return min(probe.seconds[1:])


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (1: stable timings on a shared machine)",
    )
    ap.add_argument("--batch-size", type=int, default=8, help="training and influence batch size")
    ap.add_argument(
        "--repeats",
        type=int,
        default=2,
        help="repeats of each influence timing per round (fastest kept)",
    )
    ap.add_argument("--cache", help="TNPO cache folder (default: the usual one)")
    ap.add_argument(
        "--model-path", help="model folder (default: the embedded target, else the random base)"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from npo_lib.commands.influence import load_inputs, load_scoring_model, score_context
    from npo_lib.influence.direction import (
        autograd_token_scores,
        differential_direction,
        score_rows,
    )
    from npo_lib.influence.modules import tracked_modules
    from npo_lib.influence.scorers import compute_token_scores

    base, model_path = world(args.cache, args.model_path)
    cfg = dataclasses.replace(
        base,
        model_path=model_path,
        influence=dataclasses.replace(base.influence, batch_size=args.batch_size),
    )
    inputs = load_inputs(cfg)
    model = load_scoring_model(cfg, model_path)
    n_params = sum(p.numel() for p in model.parameters())
    device = (
        torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"cpu, {args.threads} thread(s) of {os.cpu_count()} cores"
    )
    print(
        f"model: {model_path} ({n_params / 1e6:.2f}M params), "
        f"influence dtype {cfg.influence.dtype}; device: {device}"
    )
    print(
        f"data: {cfg.split} task {cfg.task_id}: {len(inputs.forget)} forget examples, "
        f"{sum(len(ex['input_ids']) - ex['prompt_len'] for ex in inputs.forget)} target tokens; "
        f"retain sample {len(inputs.retain)}; batch size {args.batch_size}"
    )

    # 1. one row at 128 target tokens
    ex = long_example(inputs, cfg)
    v = differential_direction(
        model,
        tracked_modules(model, cfg.influence.modules),
        inputs.forget,
        inputs.retain,
        pad_token_id=inputs.tokenizer.pad_token_id,
    )
    loop_s, ref = timed(lambda: autograd_token_scores(model, v, ex), 2)
    jvp_s, jvp = timed(lambda: score_rows(model, v, [ex], method="jvp")[0], 5)
    fd_s, fd = timed(lambda: score_rows(model, v, [ex], method="fd")[0], 5)
    rel = lambda r: float((r - ref).abs().max() / ref.abs().max())  # noqa: E731
    print(f"\n1. one row of {TOKENS} target tokens (identity direction)")
    print(f"   per-token autograd loop {loop_s * 1e3:8.1f} ms")
    print(
        f"   JVP                     {jvp_s * 1e3:8.1f} ms   {loop_s / jvp_s:6.1f}x faster   "
        f"max rel diff {rel(jvp):.1e}"
    )
    print(
        f"   finite difference       {fd_s * 1e3:8.1f} ms   {loop_s / fd_s:6.1f}x faster   "
        f"max rel diff {rel(fd):.1e}"
    )
    jvp_ok = loop_s / jvp_s >= 30

    # 2. the influence step vs a training epoch, interleaved
    # (influence, training, influence, training)
    steps: dict[str, float] = {}
    epoch = float("inf")
    for _ in range(2):
        for pre in ("identity", "diagonal", "ekfac"):
            c = dataclasses.replace(
                cfg,
                influence=dataclasses.replace(
                    cfg.influence, scorer="differential", preconditioner=pre
                ),
            )
            s, _ = timed(
                lambda c=c: compute_token_scores(score_context(c, model, inputs, False)),
                args.repeats,
            )
            steps[pre] = min(s, steps.get(pre, float("inf")))
        epoch = min(epoch, training_epoch(cfg, model_path, args.batch_size))
    print(
        f"\n2. influence step (direction from {len(inputs.forget)} forget + "
        f"{len(inputs.retain)} retain, "
        f"JVP scores of the forget split) vs one training epoch (NPO, forget split): {epoch:.2f} s"
    )
    ok = jvp_ok
    for pre, s in steps.items():
        target = "<= 4x" if pre != "ekfac" else "reported"
        if pre != "ekfac":
            ok &= s / epoch <= 4
        print(f"   {pre:<9} {s:6.2f} s   {s / epoch:5.2f}x an epoch   (target {target})")
    print(
        f"\nJVP vs loop: {loop_s / jvp_s:.1f}x (target >= 30x); "
        f"identity {steps['identity'] / epoch:.2f}x, "
        f"diagonal {steps['diagonal'] / epoch:.2f}x (target <= 4x), "
        f"ekfac {steps['ekfac'] / epoch:.2f}x an epoch; "
        f"all targets met: {ok}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
