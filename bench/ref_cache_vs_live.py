"""Cached reference log-probs vs a live reference model (open-unlearning's way), one run.

Same model, data and seed; each mode runs in its own process so peak memory is its own:

* cached: NPO's p_ref enters only through log-probs of the fixed forget targets, computed once
  before training (npo_lib's UnlearningTrainer);
* live: a frozen second copy of the model runs a forward on every forget batch.

Each side runs ``--repeats`` times, the sides interleaved; the fastest run of each counts.
Prints the epoch-time ratio (ideal 4/3 for NPO: one reference forward saved per forward +
backward; 7/6 for NPO+GD), the step-1 losses (must agree within 1e-5) and peak memory (CPU:
max RSS; GPU: max allocated), whose gap should be at least the model's weights.

    python bench/ref_cache_vs_live.py [--hidden 512 --layers 8] [--cache DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.timing import interleaved, ratio_cell  # noqa: E402


def make_world(cache: Path, hidden: int, layers: int) -> tuple[str, str]:
    """The embedded benchmark + tokenizer (no fine-tuning needed) and a random Llama of that
    size."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from npo_lib.commands.prepare import ensure_benchmark, ensure_tokenizer
    from npo_lib.commands.resolve import resolve
    from npo_lib.config import load_config
    from npo_lib.embedded.paths import embedded_paths

    cfg = load_config([f"cache_dir={cache}"])
    paths = embedded_paths(cfg)
    res = resolve(cfg, "prepare")  # the benchmark plug-in the config names
    ensure_benchmark(res, paths)
    tok = ensure_tokenizer(res, paths)
    model_dir = cache / f"bench-llama-h{hidden}-l{layers}"
    if not (model_dir / "config.json").is_file():
        torch.manual_seed(0)
        config = LlamaConfig(
            vocab_size=len(tok),
            hidden_size=hidden,
            intermediate_size=hidden * 3,
            num_hidden_layers=layers,
            num_attention_heads=max(1, hidden // 64),
            num_key_value_heads=max(1, hidden // 64),
            max_position_embeddings=512,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
        LlamaForCausalLM(config).save_pretrained(model_dir)
        tok.save_pretrained(model_dir)
    return str(model_dir), str(paths.benchmark)


def live_reference() -> None:
    """NPO's log p_ref from a frozen copy's forward on every forget batch (open-unlearning's
    way) instead of the cache: the two reference inputs fetched through the frozen model."""
    import dataclasses

    from npo_lib.objectives.primitives import token_logprobs
    from npo_lib.training.inputs import INPUTS

    frozen = INPUTS["ref_forget_logits"]  # loads the frozen copy before training

    def token_logp(b) -> torch.Tensor:
        logits = b.frozen(b.spec.forget.view).logits
        return token_logprobs(logits, b.forget["labels"])[0]  # (B, T-1)

    for name, fetch in (
        ("ref_token_logp", token_logp),
        ("ref_seq_logp", lambda b: token_logp(b).sum(-1)),
    ):
        INPUTS[name] = dataclasses.replace(INPUTS[name], fetch=fetch, prepare=frozen.prepare)


def run_mode(mode: str, loss: str, model_path: str, data_path: str, out: Path) -> dict:
    """One epoch of ``loss`` with the reference ``mode``; returns times, losses, peak memory."""
    from npo_lib.commands.forget import run_forget
    from npo_lib.config import load_config

    cfg = load_config(
        [
            f"model_path={model_path}",
            f"data_path={data_path}",
            f"save_dir={out}",
            f"forget_loss={loss}",
            "num_epochs=3",
            f"batch_size={os.environ.get('BENCH_BATCH', '20')}",
            "lr=1e-4",
            "warmup_epochs=0",
            "logging_steps=1",
            "dtype=float32",
        ]
    )
    cuda = torch.cuda.is_available()
    if mode == "live":
        live_reference()
    from transformers import TrainerCallback

    class Probe(TrainerCallback):
        """Epoch wall time (reference pass included) and peak memory, up to the end of training."""

        epochs: list[float] = []

        def on_train_begin(self, *a, **k):
            self.t0 = time.perf_counter()

        def on_epoch_begin(self, *a, **k):
            self.e0 = time.perf_counter()

        def on_epoch_end(self, *a, **k):
            self.epochs.append(time.perf_counter() - self.e0)

        def on_train_end(self, *a, **k):
            self.seconds = time.perf_counter() - self.t0
            self.peak = (
                torch.cuda.max_memory_allocated()
                if cuda
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            )

    probe = Probe()
    res = run_forget(cfg, callbacks=[probe], progress=False)
    rows = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r and "train_runtime" not in r]
    return {
        "mode": mode,
        "loss": loss,
        "train_seconds": probe.seconds,
        "epoch_seconds": probe.epochs,
        "step1_loss": steps[0]["loss"],
        "peak_bytes": probe.peak,
        "steps": res["steps"],
    }


def child(mode: str, loss: str, model_path: str, data_path: str) -> tuple[float, dict]:
    """One mode in its own process (peak memory its own): steady-state epoch seconds, result."""
    r = subprocess.run(
        [sys.executable, __file__, "--child", mode, loss, model_path, data_path],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    if r.returncode:
        raise RuntimeError(f"{mode} {loss} failed:\n{r.stderr[-3000:]}")
    result = json.loads(r.stdout.strip().splitlines()[-1])
    return sum(result["epoch_seconds"][1:]), result


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument(
        "--batch-size",
        type=int,
        default=20,
        help="per-step batch (more tokens per step: less optimizer overhead)",
    )
    ap.add_argument(
        "--repeats", type=int, default=3, help="runs per side, interleaved (fastest counts)"
    )
    ap.add_argument(
        "--cache", type=Path, default=None, help="TNPO cache folder (default: a temp dir)"
    )
    ap.add_argument(
        "--child", nargs=4, metavar=("MODE", "LOSS", "MODEL", "DATA"), help=argparse.SUPPRESS
    )
    args = ap.parse_args()
    os.environ["BENCH_BATCH"] = str(args.batch_size)
    if args.child:
        mode, loss, model_path, data_path = args.child
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(run_mode(mode, loss, model_path, data_path, Path(tmp) / "run")))
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache or Path(tmp)
        model_path, data_path = make_world(cache, args.hidden, args.layers)
        n_params = sum(
            p.numel()
            for p in __import__("safetensors.torch")
            .torch.load_file(f"{model_path}/model.safetensors")
            .values()
        )
        weights = n_params * 4
        print(
            f"model: random Llama hidden={args.hidden} layers={args.layers}, "
            f"{n_params / 1e6:.1f}M params ({weights / 2**20:.0f} MiB fp32)"
        )
        print(
            "device: "
            + (
                "cuda " + torch.cuda.get_device_name()
                if torch.cuda.is_available()
                else f"cpu, {os.cpu_count()} cores"
            )
        )
        results = {}
        for loss in ("NPO", "NPO+GD"):
            sides = {
                mode: lambda mode=mode, loss=loss: child(mode, loss, model_path, data_path)
                for mode in ("live", "cached")
            }
            results[loss] = interleaved(sides, args.repeats)
        ok = True
        print(
            "epoch: epochs 2-3 of 3 (steady state: the cache is built), fastest of "
            f"{args.repeats} interleaved runs per side (+ spread: slowest / fastest - 1); "
            "epoch x: the ratio of fastest times [range over the repeats]; "
            "total x: all three epochs, the cached run's one-time reference pass included"
        )
        print(
            f"{'loss':<8} {'live':>14} {'cached':>14} {'epoch x':>18} {'target':>7} "
            f"{'total x':>8} "
            f"{'step-1 |d|':>10} {'live MiB':>9} {'cached MiB':>11} {'saved MiB':>10}"
        )
        for loss, target in (("NPO", 1.25), ("NPO+GD", 1.1)):
            live_t, cached_t = results[loss]["live"], results[loss]["cached"]
            live, cached = live_t.best, cached_t.best
            ratio = live_t.fastest / cached_t.fastest
            total = live["train_seconds"] / cached["train_seconds"]
            diff = abs(live["step1_loss"] - cached["step1_loss"])
            saved = live["peak_bytes"] - cached["peak_bytes"]
            ok &= ratio >= target and diff <= 1e-5 and saved >= weights
            print(
                f"{loss:<8} {live_t.cell():>14} {cached_t.cell():>14} "
                f"{ratio_cell(live_t, cached_t):>18} "
                f"{target:>6.2f}x {total:>7.2f}x {diff:>10.1e} {live['peak_bytes'] / 2**20:>9.0f} "
                f"{cached['peak_bytes'] / 2**20:>11.0f} {saved / 2**20:>10.0f}"
            )
        print(f"load average {os.getloadavg()[0]:.1f}")
        print(f"weights: {weights / 2**20:.0f} MiB; all targets met: {ok}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
