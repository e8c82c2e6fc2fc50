"""One short GPU check: NPO+GD forget steps and the influence step on random Llamas, no network.

Every section runs in its own process (its own peak memory; an OOM or a CUDA error cannot spoil
the next one) through npo_lib's real code, on a randomly initialised Llama built from a
``LlamaConfig`` directly on the device (bf16 weights, PyTorch sdpa attention):

* ``lora``: NPO+GD with LoRA (``models.lora.apply_lora``) through ``UnlearningTrainer`` / HF
  Trainer;
* ``full``: NPO+GD, every weight trained (pure bf16 weights and fused AdamW, as ``npo forget``
  does on a GPU);
* ``influence``: the differential direction and the exact per-token JVP scores
  (``influence.scorers.compute_token_scores``) on a few sequences of ~128 target tokens, in the
  scoring dtype the module supports (float32, ``npo_eager`` attention: fused SDPA has no JVP);
* ``zero3``: ``run_forget`` under ``deepspeed --num_gpus 1`` with ``params/ds/zero3.json`` on a
  model saved to a temp folder and the embedded benchmark (traces joined to ~seq-len tokens).

Each training section first times the cached reference log-probs (``ensure_reference``, one
forward-only pass), then trains ``--warmup`` steps and times ``--steps`` more: tokens/s counts
every position of both views (forget and retain, prompt and padding included), measured between
the ends of consecutive optimizer steps after ``torch.cuda.synchronize``. MFU = FLOPs/token ×
tokens/s / peak bf16 dense FLOPS of the device (looked up by name, ``--peak-tflops`` overrides):

* forward only (reference log-probs): 2N;  full training: 6N;
* LoRA training: 4N + 6·N_lora (forward 2N, input gradients 2N, weight gradients only for the
  adapters: frozen weights get none, so 6N would overstate the work);
* influence direction, per token of forget and retain: 2N + 2·N_lin + 2·N_S: the forward,
  activation gradients through every Linear (N_lin, lm_head included: ``mean_gradients``
  backpropagates to the input embeddings) and the tracked weights' gradients Σ_t δ aᵀ (N_S);
* influence JVP, per forget token: 2N + 2·N_down + 2·N_S: the primal forward, the tangent W·dx
  through the Linears from the first tracked block up (N_down, lm_head included) and dW·x for
  the tracked weights. The step row counts both passes per forget token.

N counts every parameter of the base model (the 6N convention): for the untied 8B shape the input
embedding (6.5 % of N) does no matmul, so MFU reads a little high; attention's T² terms
(~2-3 % at T=512) and gradient-checkpointing recomputation are not counted.

Shapes (``--shape`` is the largest tried): ``8b`` Llama-3-8B, ``3b`` Llama-3.2-3B, ``1b``
Llama-3.2-1B, ``tiny`` for CPU smoke runs. Each section starts at the largest shape its memory
estimate admits and falls back to the next smaller one on an out-of-memory error. The ZeRO-3
section uses ``--zero3-shape`` (1b): ZeRO-3 on one GPU keeps fp32 master weights and Adam
states (16 bytes/param: 128 GB for 8B), and CPU offload needs DeepSpeed's JIT-built CPU Adam and
~10 s per 8B step, beyond this check's time.

    bash bench/gpu_check.sh                                 # on the GPU machine
    python bench/gpu_check.py --device cpu --shape tiny     # CPU smoke run of every section

A global time budget (``--budget``, 450 s) skips the sections that no longer fit; the summary
table is printed and written as JSON (``--json``, default ``$OUT/gpu_check.json`` or a temp file).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # npo_lib from the working tree (not installed on the GPU machine)
    sys.path.insert(0, str(ROOT))

SECTIONS = ("lora", "full", "influence", "zero3")
GIB = 2**30

# Peak dense bf16 tensor-core FLOPS by device-name fragment, first match wins.
PEAK_BF16: tuple[tuple[str, float], ...] = (
    ("H200", 989e12),
    ("GH200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM / HBM3
    ("A100", 312e12),
    ("L40S", 362e12),
)


@dataclass(frozen=True)
class Shape:
    """A Llama architecture; ``n_params`` counts every weight (embedding and norms included)."""

    name: str
    like: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied: bool

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def layer_linear(self) -> int:
        """Linear weights of one decoder block: q, k, v, o and the gated MLP."""
        h, kv = self.hidden, self.kv_heads * self.head_dim
        return 2 * h * h + 2 * h * kv + 3 * h * self.intermediate

    @property
    def n_params(self) -> int:
        embed = self.vocab * self.hidden
        return (
            embed * (1 if self.tied else 2)
            + self.layers * (self.layer_linear + 2 * self.hidden)
            + self.hidden
        )

    def config(self, vocab: int | None = None, **ids: int):
        from transformers import LlamaConfig

        return LlamaConfig(
            vocab_size=vocab or self.vocab,
            hidden_size=self.hidden,
            intermediate_size=self.intermediate,
            num_hidden_layers=self.layers,
            num_attention_heads=self.heads,
            num_key_value_heads=self.kv_heads,
            max_position_embeddings=8192 if self.vocab > 100_000 else 1024,
            rope_theta=500_000.0,
            tie_word_embeddings=self.tied,
            **ids,
        )


SHAPES: dict[str, Shape] = {
    s.name: s
    for s in [
        Shape("8b", "Llama-3-8B", 4096, 32, 32, 8, 14336, 128256, tied=False),
        Shape("3b", "Llama-3.2-3B", 3072, 28, 24, 8, 8192, 128256, tied=True),
        Shape("1b", "Llama-3.2-1B", 2048, 16, 32, 8, 8192, 128256, tied=True),
        Shape("tiny", "CPU smoke", 64, 2, 4, 2, 128, 1024, tied=False),
    ]
}
LADDER = tuple(SHAPES)  # largest first


# ----------------------------------------------------------------------------- shared helpers


def lookup_peak_flops(name: str) -> float | None:
    return next((v for key, v in PEAK_BF16 if key.lower() in name.lower()), None)


def gradient_checkpointing(a: argparse.Namespace, shape: Shape) -> bool:
    """``--gc auto``: on at 1B and up (the llama3 families' default), off for tiny (its
    family's)."""
    return shape.name != "tiny" if a.gc == "auto" else a.gc == "on"


def memory_estimate(section: str, shape: Shape, a: argparse.Namespace) -> float:
    """Bytes a section needs on the device, roughly (picks the starting shape; OOM falls back)."""
    n, bt = shape.n_params, a.batch_size * a.seq_len  # tokens of one view per step
    logits = 2 * bt * shape.vocab * 16  # both views: bf16 logits, fp32 log-softmax and their grads
    per_layer = 2 * bt * shape.hidden * 2 * (2 if gradient_checkpointing(a, shape) else 20)
    act = logits + shape.layers * per_layer + 2 * GIB
    if section == "full":
        return 8 * n + act  # bf16 weights, grads, AdamW m and v
    if section == "lora":
        return 2 * n + act
    if section == "zero3":
        return 16 * n + act  # bf16 weights and grads, fp32 master weights and Adam states
    # influence: float32 weights, at least one tracked block (5 copies), fp32 logits of a few rows
    return (
        4 * n
        + 5 * 4 * shape.layer_linear
        + 2 * a.influence_seqs * (a.influence_tokens + 32) * shape.vocab * 16
        + 2 * GIB
    )


def shapes_for(section: str, a: argparse.Namespace, total_mem: float | None) -> list[Shape]:
    """Ladder from the largest shape <= ``--shape`` (``--zero3-shape`` for zero3) that fits."""
    top = a.zero3_shape if section == "zero3" else a.shape
    top = LADDER[max(LADDER.index(top), LADDER.index(a.shape))]  # never above --shape
    ladder = [SHAPES[s] for s in LADDER[LADDER.index(top) :]]
    if total_mem:
        fitting = [s for s in ladder if memory_estimate(section, s, a) <= 0.92 * total_mem]
        ladder = fitting or ladder[-1:]
    return ladder


def synthetic_example(rng: random.Random, prompt: int, target: int, vocab: int) -> dict[str, Any]:
    """An encoded view (as ``data.encode_view`` makes them): random ids, the prompt masked."""
    ids = [rng.randrange(8, vocab) for _ in range(prompt + target)]
    return {"input_ids": ids, "labels": [-100] * prompt + ids[prompt:], "prompt_len": prompt}


def build_model(
    shape: Shape, device: str, dtype, attn: str, seed: int = 0, vocab: int | None = None, **ids: int
):
    """A random-init Llama allocated directly on ``device`` in ``dtype`` (never on the CPU
    first)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(
            shape.config(vocab, **ids), dtype=dtype, attn_implementation=attn
        )
    return model


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def reset_peak(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device: str) -> float:
    """Peak memory of this process: max allocated on the GPU, max RSS on the CPU."""
    import resource

    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / GIB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB


def row(
    section: str,
    shape: Shape,
    *,
    tokens: int,
    seconds: float,
    flops_per_token: float,
    formula: str,
    n_params: int,
    dtype: str,
    peak: float,
    peak_flops: float | None,
    **extra: Any,
) -> dict[str, Any]:
    tps = tokens / seconds if seconds > 0 else float("nan")
    mfu = flops_per_token * tps / peak_flops if peak_flops else None
    return {
        "section": section,
        "shape": shape.name,
        "n_params": n_params,
        "dtype": dtype,
        "tokens": tokens,
        "seconds": round(seconds, 4),
        "tokens_per_s": round(tps, 1),
        "formula": formula,
        "flops_per_token": flops_per_token,
        "mfu": None if mfu is None else round(mfu, 4),
        "peak_mem_gib": round(peak, 2),
        "status": "ok",
        **extra,
    }


def device_of(a: argparse.Namespace) -> str:
    import torch

    if a.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if a.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda but torch.cuda.is_available() is False")
    return a.device


def count(n: float) -> str:
    """2.1B / 436M / 74k: parameter counts at any scale."""
    for unit, div in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:.0f}"


def say(msg: str) -> None:
    print(f"[gpu_check] {msg}", flush=True)


# ---------------------------------------------------------------------------- sections (child side)


def section_probe(a: argparse.Namespace) -> dict[str, Any]:
    """Device, memory and package versions (a child, so the parent holds no CUDA context)."""
    import importlib

    import torch

    device = device_of(a)
    info: dict[str, Any] = {
        "device": device,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }
    for pkg in ("transformers", "peft", "accelerate", "deepspeed", "flash_attn"):
        try:
            info[pkg] = importlib.import_module(pkg).__version__
        except Exception as e:  # not installed, or fails to import without a GPU toolchain
            info[pkg] = (
                None if isinstance(e, ModuleNotFoundError) else f"import error: {type(e).__name__}"
            )
    if device == "cuda":
        p = torch.cuda.get_device_properties(0)
        info.update(
            name=p.name,
            total_mem=p.total_memory,
            bf16=torch.cuda.is_bf16_supported(),
            capability=f"{p.major}.{p.minor}",
            gpus=torch.cuda.device_count(),
        )
    else:
        info.update(name=f"cpu ({os.cpu_count()} cores)", total_mem=None, bf16=False)
    return info


def _train_timer(device: str, warmup: int, steps: int):
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Synchronised time at the end of every optimizer step; stops after warmup + steps."""

        def __init__(self) -> None:
            self.ends: list[float] = []
            self.tokens: list[int] = []  # tokens seen by the end of each step (zero3 counts them)

        def on_step_end(self, args, state, control, **kwargs):
            sync(device)
            self.ends.append(time.perf_counter())
            self.tokens.append(TOKEN_COUNT[0])
            say(
                f"  step {state.global_step}: "
                f"{self.ends[-1] - (self.ends[-2] if len(self.ends) > 1 else self.t0):.3f} s"
            )
            if len(self.ends) >= warmup + steps:
                control.should_training_stop = True
            return control

        def on_train_begin(self, args, state, control, **kwargs):
            sync(device)
            self.t0 = time.perf_counter()

        def timed(self) -> tuple[float, int, int]:
            """(seconds, steps, tokens) from the end of the last warmup step to the last step."""
            k = warmup - 1
            if len(self.ends) <= warmup:
                raise RuntimeError(
                    f"only {len(self.ends)} steps ran; need more than --warmup={warmup}"
                )
            return (
                self.ends[-1] - self.ends[k],
                len(self.ends) - warmup,
                self.tokens[-1] - self.tokens[k],
            )

    return StepTimer()


TOKEN_COUNT = [0]  # tokens (input positions) of every view the forget steps forwarded


def section_forget(
    a: argparse.Namespace, shape: Shape, lora: bool, peak_flops: float | None
) -> list[dict[str, Any]]:
    """NPO+GD through UnlearningTrainer: cached reference log-probs, then timed optimizer steps."""
    import torch
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from npo_lib.config import load_config
    from npo_lib.data.dataset import ViewCollator
    from npo_lib.models.lora import apply_lora
    from npo_lib.objectives.registry import LossHyper, parse_loss
    from npo_lib.training.arguments import TrainSettings, training_arguments
    from npo_lib.training.trainer import UnlearningTrainer

    device = device_of(a)
    gc = gradient_checkpointing(a, shape)
    steps = a.warmup + a.steps
    n = a.batch_size * steps  # one epoch = the steps we run
    out = Path(tempfile.mkdtemp(prefix="gpu_check_forget_", dir=a.workdir))
    cfg = load_config(
        [
            "forget_loss=NPO+GD",
            f"batch_size={a.batch_size}",
            "lr=1e-5",
            "warmup_epochs=0",
            "num_epochs=1",
            f"LoRA.r={a.lora_r if lora else 0}",
            f"gradient_checkpointing={str(gc).lower()}",
            f"save_dir={out}",
            f"cache_dir={out / 'cache'}",
            f"max_length={a.seq_len}",
        ]
    )
    spec = parse_loss(cfg.forget_loss)
    args = training_arguments(cfg, out, n, gc, TrainSettings.for_forget(cfg))
    args = dataclasses.replace(
        args,
        max_steps=steps,
        save_strategy="no",
        logging_steps=steps,
        use_cpu=device == "cpu",
        disable_tqdm=True,
    )
    dtype = (
        torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    )  # families.resolve_dtype("auto")
    say(
        f"{'lora' if lora else 'full'}: building {shape.name} ({shape.like}, "
        f"{count(shape.n_params)}) on {device} in {str(dtype).removeprefix('torch.')}, sdpa, "
        f"gradient checkpointing {'on' if gc else 'off'}"
    )
    t0 = time.perf_counter()
    model = build_model(shape, device, dtype, "sdpa")
    n_params = sum(p.numel() for p in model.parameters())
    n_lora = 0
    if lora:
        model = apply_lora(model, cfg.LoRA)
        n_lora = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if gc:
        model.config.use_cache = False
    sync(device)
    say(
        f"  model ready in {time.perf_counter() - t0:.1f} s: {count(n_params)} params"
        + (f", LoRA r={a.lora_r}: {count(n_lora)} trainable" if lora else "")
    )

    rng = random.Random(0)
    prompt = min(32, a.seq_len // 4)
    items = [
        {
            "index": i,
            "full": synthetic_example(rng, prompt, a.seq_len - prompt, shape.vocab),
            "retain": synthetic_example(rng, prompt, a.seq_len - prompt, shape.vocab),
        }
        for i in range(n)
    ]
    timer = _train_timer(device, a.warmup, a.steps)
    trainer = UnlearningTrainer(
        model=model,
        args=args,
        train_dataset=items,
        data_collator=ViewCollator(pad_token_id=0),
        callbacks=[timer],
        loss_spec=spec,
        hyper=LossHyper.from_config(cfg),
        reference_fingerprint="gpu_check",
    )
    for cb in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(cb)
    orig = UnlearningTrainer.compute_loss

    def counting(self, model, inputs, *args, **kwargs):
        TOKEN_COUNT[0] += sum(inputs[v]["input_ids"].numel() for v in spec.views)
        return orig(self, model, inputs, *args, **kwargs)

    UnlearningTrainer.compute_loss = counting
    name = "lora" if lora else "full"
    rows = []

    reset_peak(device)
    sync(device)
    t0 = time.perf_counter()
    trainer.ensure_reference(
        trainer.model
    )  # the cached p_ref: one no-grad pass over the forget view
    sync(device)
    ref_s = time.perf_counter() - t0
    rows.append(
        row(
            f"{name}/reference",
            shape,
            tokens=n * a.seq_len,
            seconds=ref_s,
            flops_per_token=2 * n_params,
            formula="2N (forward only)",
            n_params=n_params,
            dtype=str(dtype).removeprefix("torch."),
            peak=peak_gib(device),
            peak_flops=peak_flops,
            note="compute_reference_logprobs, no grad",
        )
    )
    say(f"  reference log-probs: {n} sequences in {ref_s:.2f} s")

    probe_w = None if lora else model.get_decoder().layers[0].mlp.down_proj.weight
    before = (
        None if probe_w is None else probe_w.detach().clone()
    )  # did the updates survive the weight dtype?
    train_out = trainer.train()
    seconds, timed_steps, tokens = timer.timed()
    assert tokens == timed_steps * 2 * a.batch_size * a.seq_len, (
        "token count does not match the batches"
    )
    loss = float(train_out.training_loss)
    if not math.isfinite(loss):
        raise RuntimeError(f"non-finite training loss {loss}")
    note = (
        f"{timed_steps} timed steps after {a.warmup} warmup, "
        f"B={a.batch_size} x T={a.seq_len} x 2 views, loss {loss:.4f}"
    )
    if lora:
        moved = max(
            float(p.detach().abs().max())
            for n_, p in trainer.model.named_parameters()
            if "lora_B" in n_
        )
        if moved == 0:
            raise RuntimeError(
                "LoRA B matrices are still zero after training: no gradient reached the adapters"
            )
        note += f", max |lora_B| {moved:.1e}"
        flops, formula = 4 * n_params + 6 * n_lora, "4N + 6N_lora"
    else:
        changed = float((probe_w.detach() != before).float().mean())
        note += (
            f", block-0 down_proj weights changed by the {timed_steps + a.warmup} steps "
            f"at lr 1e-5: {changed:.1%}"
        )
        flops, formula = 6 * n_params, "6N"
    rows.append(
        row(
            f"{name}/NPO+GD",
            shape,
            tokens=tokens,
            seconds=seconds,
            flops_per_token=flops,
            formula=formula,
            n_params=n_params,
            dtype=str(dtype).removeprefix("torch."),
            peak=peak_gib(device),
            peak_flops=peak_flops,
            gradient_checkpointing=gc,
            step_s=round(seconds / timed_steps, 4),
            lora_params=n_lora or None,
            note=note,
        )
    )
    return rows


def _influence_modules(
    a: argparse.Namespace, shape: Shape, device: str, bytes_per: int
) -> tuple[str, int]:
    """``--influence-modules auto``: all_linear when 5 copies of θ_S fit, else as many last
    blocks as fit.

    The direction holds the forget and retain gradient sums and their means at once (4 copies of
    θ_S in the scoring dtype, 5 in the previous mean_gradients), plus each tracked layer's input
    and output gradient of one batch (the hooks).
    """
    import torch

    if a.influence_modules != "auto":
        return a.influence_modules, a.influence_last_n
    if device != "cuda":
        return "all_linear", shape.layers
    free = (
        torch.cuda.mem_get_info()[0]
        - 2 * a.influence_seqs * (a.influence_tokens + 32) * shape.vocab * 16
        - 2 * GIB
    )
    kv = shape.kv_heads * shape.head_dim
    io = 9 * shape.hidden + 2 * kv + 3 * shape.intermediate  # Σ (in + out) over a block's Linears
    captured = (
        2 * a.influence_seqs * (a.influence_tokens + 32) * io * bytes_per
    )  # hooks' a and δ of one batch
    per_layer = 5 * bytes_per * shape.layer_linear + captured
    fit = int(0.85 * free // per_layer)
    if fit >= shape.layers:
        return "all_linear", shape.layers
    return "last_n", max(1, fit)


def _downstream_params(model, modules: dict) -> int:
    """Linear weights at or after the first tracked decoder block, lm_head included (N_down);
    every Linear (N_lin) for ``modules={}``."""
    import re

    from torch import nn

    layer = re.compile(r"(?:^|\.)layers\.(\d+)\.")
    first = min((int(m.group(1)) for n in modules if (m := layer.search(n))), default=0)
    total = 0
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and "lora_" not in name:
            hit = layer.search(name)
            if hit is None or int(hit.group(1)) >= first:
                total += m.weight.numel()
    return total


def section_influence(
    a: argparse.Namespace, shape: Shape, peak_flops: float | None
) -> list[dict[str, Any]]:
    """Direction v = P⁻¹(ḡ_forget − λ ḡ_retain) and exact JVP scores through npo_lib.influence."""
    import torch

    from npo_lib.config import InfluenceConfig
    from npo_lib.influence.direction import differential_direction, score_rows
    from npo_lib.influence.modules import module_params, tracked_modules
    from npo_lib.influence.preconditioners import PRECONDITIONERS
    from npo_lib.influence.scorers import ScoreContext, compute_token_scores
    from npo_lib.models.attention import precise_norms, register_precise_attention

    device = device_of(a)
    dtype = getattr(torch, a.influence_dtype)
    attention = (
        register_precise_attention()
    )  # "npo_eager": plain softmax in the model dtype, has a JVP
    say(
        f"influence: building {shape.name} ({shape.like}) on {device} in {a.influence_dtype}, "
        f"attention {attention}"
    )
    t0 = time.perf_counter()
    model = build_model(shape, device, dtype, attention)
    precise_norms(model)  # as run.influence.load_scoring_model does
    model.eval()
    n_params = sum(p.numel() for p in model.parameters())
    sync(device)
    modules_kind, last_n = _influence_modules(a, shape, device, dtype.itemsize)
    say(
        f"  model ready in {time.perf_counter() - t0:.1f} s; tracked modules: {modules_kind}"
        + (
            f" (last {last_n} of {shape.layers} blocks: all_linear does not fit)"
            if modules_kind == "last_n"
            else ""
        )
    )
    icfg = InfluenceConfig(
        scorer="differential",
        preconditioner=a.influence_preconditioner,
        modules=modules_kind,
        last_n_layers=last_n,
        method="jvp",
        batch_size=a.influence_seqs,
        dtype=a.influence_dtype if a.influence_dtype in ("float32", "float64") else "float32",
    )
    rng = random.Random(1)
    prompt = 32
    forget = [
        synthetic_example(rng, prompt, a.influence_tokens, shape.vocab)
        for _ in range(a.influence_seqs)
    ]
    retain = [
        synthetic_example(rng, prompt, a.influence_tokens, shape.vocab)
        for _ in range(a.influence_seqs)
    ]
    ctx = ScoreContext(model, forget, retain, icfg, pad_token_id=0)

    reset_peak(device)
    sync(device)
    t0 = time.perf_counter()
    rows = compute_token_scores(ctx)  # warmup through the entry point `npo influence` uses
    sync(device)
    say(f"  warmup compute_token_scores: {time.perf_counter() - t0:.2f} s")
    if len(rows) != len(forget) or any(r.numel() != a.influence_tokens for r in rows):
        raise RuntimeError(
            f"score rows have lengths {[r.numel() for r in rows]}, "
            f"expected {a.influence_tokens} each"
        )
    if not all(bool(torch.isfinite(r).all()) for r in rows):
        raise RuntimeError("non-finite influence scores")

    modules = tracked_modules(model, icfg.modules, icfg.last_n_layers)
    n_s = sum(t.numel() for t in module_params(modules).values())
    n_down, n_lin = _downstream_params(model, modules), _downstream_params(model, {})
    per_dir = 2 * n_params + 2 * n_lin + 2 * n_s
    per_jvp = 2 * n_params + 2 * n_down + 2 * n_s
    seq = prompt + a.influence_tokens
    dir_s, jvp_s = [], []
    for _ in range(
        a.influence_repeats
    ):  # the two calls inside the differential scorer, timed apart
        sync(device)
        t0 = time.perf_counter()
        v = differential_direction(
            model,
            modules,
            forget,
            retain,
            lam=icfg.lam,
            preconditioner=PRECONDITIONERS[icfg.preconditioner](icfg.damping),
            batch_size=icfg.batch_size,
            pad_token_id=0,
        )
        sync(device)
        t1 = time.perf_counter()
        score_rows(model, v, forget, method="jvp", batch_size=icfg.batch_size, pad_token_id=0)
        sync(device)
        dir_s.append(t1 - t0)
        jvp_s.append(time.perf_counter() - t1)
        del v
    d, j = min(dir_s), min(jvp_s)
    dir_tokens, jvp_tokens = 2 * a.influence_seqs * seq, a.influence_seqs * seq
    peak = peak_gib(device)
    common = dict(
        n_params=n_params,
        dtype=a.influence_dtype,
        peak=peak,
        peak_flops=peak_flops,
        tracked=f"{modules_kind}" + (f"({last_n})" if modules_kind == "last_n" else ""),
        tracked_params=n_s,
        downstream_params=n_down,
        linear_params=n_lin,
    )
    note = (
        f"{a.influence_seqs} forget + {a.influence_seqs} retain seqs of "
        f"{prompt}+{a.influence_tokens} tokens, preconditioner {icfg.preconditioner}, "
        f"N_S={count(n_s)}, N_down={count(n_down)}, N_lin={count(n_lin)}, "
        f"fastest of {a.influence_repeats}"
    )
    return [
        row(
            "influence/direction",
            shape,
            tokens=dir_tokens,
            seconds=d,
            flops_per_token=per_dir,
            formula="2N+2N_lin+2N_S",
            note="forward+backward over forget and retain; "
            + note
            + (
                "; float32 matmuls (TF32 off, as npo influence runs)"
                if a.influence_dtype == "float32"
                else ""
            ),
            **common,
        ),
        row(
            "influence/jvp",
            shape,
            tokens=jvp_tokens,
            seconds=j,
            flops_per_token=per_jvp,
            formula="2N+2N_down+2N_S",
            note="forward-mode scores of every forget token",
            **common,
        ),
        row(
            "influence/step",
            shape,
            tokens=jvp_tokens,
            seconds=d + j,
            flops_per_token=(dir_tokens * per_dir + jvp_tokens * per_jvp) / jvp_tokens,
            formula="2 x dir + jvp",
            note="direction + scores; tokens = positions of the forget sequences",
            **common,
        ),
    ]


def _zero3_world(
    a: argparse.Namespace, shape: Shape, device: str, work: Path
) -> tuple[Path, Path, int]:
    """Benchmark files with traces joined to ~seq-len tokens, and a saved random model +
    tokenizer."""
    import torch

    from npo_lib.commands.prepare import ensure_benchmark, ensure_tokenizer
    from npo_lib.commands.resolve import resolve
    from npo_lib.config import load_config
    from npo_lib.data.records import read_records
    from npo_lib.embedded.paths import embedded_paths

    cfg = load_config([f"cache_dir={work / 'cache'}"])
    paths = embedded_paths(cfg)
    res = resolve(cfg, "prepare")  # the benchmark plug-in the config names
    ensure_benchmark(res, paths)
    tok = ensure_tokenizer(res, paths)
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    for name in ("forget10", "full"):
        records = read_records(paths.benchmark / f"{name}.json")
        per = sum(len(tok(r["cot"])["input_ids"]) for r in records[:20]) / 20
        k = max(1, math.ceil(a.seq_len / max(per, 1.0)))
        with (data / f"{name}.json").open("w") as f:
            for i, r in enumerate(records):
                cot = " ".join(records[(i + j) % len(records)]["cot"] for j in range(k))
                rec = {
                    key: v for key, v in r.items() if key not in ("fact", "fact_spans")
                }  # no fact-recall generation
                f.write(json.dumps({**rec, "cot": cot}) + "\n")
    model_dir = work / "model"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = build_model(
        shape,
        device,
        dtype,
        "sdpa",
        vocab=max(shape.vocab, len(tok)),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    n_params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return data, model_dir, n_params


def section_zero3(
    a: argparse.Namespace, shape: Shape, peak_flops: float | None
) -> list[dict[str, Any]]:
    """run_forget with params/ds/zero3.json under
    ``python -m deepspeed.launcher.runner --num_gpus 1``."""
    import importlib.util

    if importlib.util.find_spec("deepspeed") is None:
        return [
            {
                "section": "zero3/NPO+GD",
                "shape": shape.name,
                "status": "skipped",
                "note": "deepspeed is not installed (pip install deepspeed)",
            }
        ]
    device = device_of(a)
    work = Path(tempfile.mkdtemp(prefix="gpu_check_zero3_", dir=a.workdir))
    t0 = time.perf_counter()
    data, model_dir, n_params = _zero3_world(a, shape, device, work)
    say(
        f"zero3: benchmark, tokenizer and {shape.name} model ({count(n_params)}) saved in "
        f"{time.perf_counter() - t0:.1f} s"
    )
    result = work / "worker.json"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "deepspeed.launcher.runner",
        "--num_gpus",
        "1",
        "--master_port",
        str(port),
        "--no_local_rank",
        str(Path(__file__).resolve()),
        "--section",
        "zero3-worker",
        "--shape",
        shape.name,
        "--result",
        str(result),
        "--model-path",
        str(model_dir),
        "--data-path",
        str(data),
        "--workdir",
        str(work),
        *_passthrough(a),
    ]
    say("  " + " ".join(cmd[:9]) + " ...")
    rc = _run(cmd, timeout=max(5.0, a.deadline - time.time()))
    if rc != 0 or not result.is_file():
        raise RuntimeError(f"the DeepSpeed run failed (exit code {rc}); its output is above")
    w = json.loads(result.read_text())
    return [
        row(
            "zero3/NPO+GD",
            shape,
            tokens=w["tokens"],
            seconds=w["seconds"],
            flops_per_token=6 * n_params,
            formula="6N",
            n_params=n_params,
            dtype=w["dtype"],
            peak=w["peak_gib"],
            peak_flops=peak_flops,
            step_s=round(w["seconds"] / w["steps"], 4),
            gradient_checkpointing=w["gc"],
            note=f"run_forget + params/ds/zero3.json, 1 rank, {w['steps']} timed steps after "
            f"{a.warmup} warmup (the first holds the reference pass), B={a.batch_size}, "
            f"benchmark traces joined to <= {a.seq_len} tokens (padding counted), "
            f"loss {w['loss']:.4f}",
        )
    ]


def zero3_worker(a: argparse.Namespace) -> None:
    """Inside the DeepSpeed launcher: run_forget on the saved model, timing its optimizer steps."""
    import torch

    from npo_lib.commands.forget import run_forget
    from npo_lib.config import load_config
    from npo_lib.training.trainer import UnlearningTrainer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    shape = SHAPES[a.shape]
    gc = gradient_checkpointing(a, shape)
    cfg = load_config(
        [
            "model_family=tiny",
            f"model_path={a.model_path}",
            f"data_path={a.data_path}",
            f"save_dir={a.workdir}/run",
            "forget_loss=NPO+GD",
            "split=forget10",
            "task_id=1",
            f"batch_size={a.batch_size}",
            "num_epochs=100",  # the timer stops it
            "lr=1e-5",
            "warmup_epochs=0",
            f"logging_steps={a.warmup + a.steps}",
            "save_steps=1000000",
            f"max_length={a.seq_len}",
            f"gradient_checkpointing={str(gc).lower()}",
            f"ds_config={ROOT / 'params' / 'ds' / 'zero3.json'}",
            f"cache_dir={a.workdir}/cache",
        ]
    )
    orig = UnlearningTrainer.compute_loss

    def counting(self, model, inputs, *args, **kwargs):
        TOKEN_COUNT[0] += sum(inputs[v]["input_ids"].numel() for v in self.loss_spec.views)
        return orig(self, model, inputs, *args, **kwargs)

    UnlearningTrainer.compute_loss = counting
    timer = _train_timer(device, a.warmup, a.steps)
    res = run_forget(cfg, callbacks=[timer], progress=False)
    seconds, steps, tokens = timer.timed()
    if int(os.environ.get("RANK", "0")) == 0:
        Path(a.result).write_text(
            json.dumps(
                {
                    "seconds": seconds,
                    "steps": steps,
                    "tokens": tokens,
                    "peak_gib": peak_gib(device),
                    "loss": res["train_loss"],
                    "dtype": "bfloat16" if device == "cuda" else "float32",
                    "gc": gc,
                    "world_size": res["world_size"],
                }
            )
        )


# ----------------------------------------------------------------------------- parent side


def _passthrough(a: argparse.Namespace) -> list[str]:
    """The measurement options, for a child process."""
    keys = (
        "device",
        "batch_size",
        "seq_len",
        "warmup",
        "steps",
        "lora_r",
        "gc",
        "influence_seqs",
        "influence_tokens",
        "influence_modules",
        "influence_last_n",
        "influence_preconditioner",
        "influence_dtype",
        "influence_repeats",
        "peak_tflops",
        "deadline",
    )
    out = []
    for k in keys:
        v = getattr(a, k)
        if v is not None:
            out += [f"--{k.replace('_', '-')}", str(v)]
    return out


def _run(cmd: list[str], timeout: float) -> int | str:
    """Run ``cmd`` in its own process group (output shown live); on timeout end that group."""
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "TQDM_DISABLE": "1",
        "TRANSFORMERS_VERBOSITY": "error",
        "TOKENIZERS_PARALLELISM": "false",
    }
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True)
    try:
        return proc.wait(timeout=timeout)
    except (subprocess.TimeoutExpired, KeyboardInterrupt) as e:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=10)
                break
            except (ProcessLookupError, subprocess.TimeoutExpired):
                continue
        if isinstance(e, KeyboardInterrupt):
            raise
        return "timeout"


def run_child(a: argparse.Namespace, section: str, shape: str, work: Path) -> dict[str, Any]:
    result = work / f"{section}-{shape}.json"
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--section",
        section,
        "--shape",
        shape,
        "--result",
        str(result),
        "--zero3-shape",
        a.zero3_shape,
        "--workdir",
        str(work),
        *_passthrough(a),
    ]
    rc = _run(cmd, timeout=max(1.0, a.deadline - time.time()))
    if result.is_file():
        return json.loads(result.read_text())
    if rc == "timeout":
        return {"status": "timeout", "error": "time budget reached while the section ran"}
    return {
        "status": "error",
        "error": f"the section's process exited with code {rc} (output above)",
    }


def fmt_table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'section':<22} {'shape':<5} {'dtype':<9} {'tokens/s':>10} {'MFU':>6} "
        f"{'FLOPs/token':<22} {'peak GiB':>8}  status"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        tps = f"{r['tokens_per_s']:.0f}" if r.get("tokens_per_s") is not None else "-"
        mfu = (
            f"{r['mfu']:.1%}"
            if r.get("mfu") is not None
            else ("n/a" if r.get("tokens_per_s") else "-")
        )
        peak = f"{r['peak_mem_gib']:.1f}" if r.get("peak_mem_gib") is not None else "-"
        status = r["status"] + (f": {r['note']}" if r["status"] != "ok" and r.get("note") else "")
        lines.append(
            f"{r['section']:<22} {r.get('shape', '-'):<5} {r.get('dtype', '-'):<9} "
            f"{tps:>10} {mfu:>6} "
            f"{r.get('formula', '-'):<22} {peak:>8}  {status}"
        )
    return "\n".join(lines)


def parent(a: argparse.Namespace) -> int:
    start = time.time()
    a.deadline = start + a.budget
    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    a.workdir = str(work)
    out_json = (
        Path(a.json)
        if a.json
        else Path(os.environ["OUT"]) / "gpu_check.json"
        if os.environ.get("OUT")
        else work / "gpu_check.json"
    )
    sections = [s.strip() for s in a.sections.split(",") if s.strip()]
    bad = [s for s in sections if s not in SECTIONS]
    if bad:
        raise SystemExit(f"unknown section(s) {', '.join(bad)}; valid: {', '.join(SECTIONS)}")

    probe = run_child(a, "probe", a.shape, work)
    if probe.get("status") != "ok":
        say(f"probe failed: {probe.get('error')}")
        return 1
    info = probe["info"]
    peak = (
        a.peak_tflops * 1e12
        if a.peak_tflops
        else lookup_peak_flops(info["name"])
        if info["device"] == "cuda"
        else None
    )
    say(
        f"device: {info['name']}, {info['total_mem'] / GIB:.1f} GiB"
        if info["total_mem"]
        else f"device: {info['name']}"
    )
    say(
        "versions: "
        + ", ".join(
            f"{k} {info.get(k)}"
            for k in (
                "torch",
                "cuda",
                "transformers",
                "peft",
                "accelerate",
                "deepspeed",
                "flash_attn",
            )
        )
    )
    say(
        f"peak bf16 dense: {peak / 1e12:g} TFLOPS"
        if peak
        else "peak bf16 dense: unknown peak (MFU not computed; pass --peak-tflops)"
    )
    if info["device"] == "cuda" and not info.get("bf16"):
        say("warning: this GPU has no bf16: the forget sections run in float32")

    rows: list[dict[str, Any]] = []
    for section in sections:
        left = a.deadline - time.time()
        ladder = shapes_for(section, a, info.get("total_mem"))
        if section == "zero3" and not info.get("deepspeed"):
            rows.append(
                {
                    "section": "zero3/NPO+GD",
                    "shape": ladder[0].name,
                    "status": "skipped",
                    "note": "deepspeed is not installed (pip install deepspeed)"
                    if info.get("deepspeed") is None
                    else f"deepspeed does not import: {info['deepspeed']}",
                }
            )
            say(f"--- zero3: skipped, {rows[-1]['note']}")
            continue
        if left < a.min_section_s:
            rows.append(
                {
                    "section": section,
                    "shape": ladder[0].name,
                    "status": "skipped",
                    "note": f"time budget ({a.budget:.0f} s) reached, {left:.0f} s left",
                }
            )
            say(f"--- {section}: skipped, {left:.0f} s of the budget left")
            continue
        for i, shape in enumerate(ladder):
            est = memory_estimate(section, shape, a) / GIB
            say(
                f"--- {section} on {shape.name} ({shape.like}; estimated {est:.0f} GiB), "
                f"{a.deadline - time.time():.0f} s of the budget left"
            )
            t0 = time.time()
            res = run_child(a, section, shape.name, work)
            say(f"--- {section} {res.get('status')} in {time.time() - t0:.0f} s")
            if res.get("status") == "ok":
                rows.extend(res["rows"])
                break
            smaller = ladder[i + 1] if i + 1 < len(ladder) else None
            if (
                res.get("status") == "oom"
                and smaller is not None
                and a.deadline - time.time() > a.min_section_s
            ):
                say(f"    out of memory on {shape.name}: trying {smaller.name}")
                rows.append(
                    {
                        "section": section,
                        "shape": shape.name,
                        "status": "oom",
                        "note": f"fell back to {smaller.name}",
                    }
                )
                continue
            rows.append(
                {
                    "section": section,
                    "shape": shape.name,
                    "status": res.get("status", "error"),
                    "note": (res.get("error") or "").strip().splitlines()[-1][:160]
                    if res.get("error")
                    else "",
                }
            )
            break

    elapsed = time.time() - start
    print()
    print(
        f"GPU check on {info['name']} ({elapsed:.0f} s; "
        f"MFU against {peak / 1e12:g} TFLOPS bf16 dense)"
        if peak
        else f"GPU check on {info['name']} ({elapsed:.0f} s; unknown peak: no MFU)"
    )
    print(fmt_table(rows))
    report = {
        "device": info,
        "peak_flops": peak,
        "elapsed_s": round(elapsed, 1),
        "budget_s": a.budget,
        "args": {k: v for k, v in vars(a).items() if k not in ("deadline", "workdir")},
        "rows": rows,
    }
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(report, indent=2))
    print(f"\nwritten: {out_json}")
    return 0 if all(r["status"] in ("ok", "skipped", "oom") for r in rows) else 1


def child(a: argparse.Namespace) -> int:
    """One section in this process; its result (or error) goes to ``--result`` as JSON."""
    if (
        a.section == "zero3-worker"
    ):  # inside the DeepSpeed launcher: errors end the run with their traceback
        zero3_worker(a)
        return 0
    out: dict[str, Any] = {"section": a.section, "shape": a.shape}
    try:
        if a.section == "probe":
            out.update(status="ok", info=section_probe(a))
        else:
            import torch

            device = device_of(a)
            name = torch.cuda.get_device_name() if device == "cuda" else ""
            peak = (
                a.peak_tflops * 1e12
                if a.peak_tflops
                else lookup_peak_flops(name)
                if device == "cuda"
                else None
            )
            shape = SHAPES[a.shape]
            if a.section in ("lora", "full"):
                rows = section_forget(a, shape, a.section == "lora", peak)
            elif a.section == "influence":
                rows = section_influence(a, shape, peak)
            else:
                rows = section_zero3(a, shape, peak)
            out.update(status="ok", rows=rows)
    except Exception as e:
        import torch

        oom_type = getattr(
            torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError
        )  # torch < 2.5: only the latter
        oom = isinstance(e, oom_type) or "out of memory" in str(e).lower()
        traceback.print_exc()
        out.update(status="oom" if oom else "error", error=f"{type(e).__name__}: {e}")
    if a.result:
        Path(a.result).write_text(json.dumps(out, indent=2))
    return 0 if out["status"] == "ok" else 1


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    ap.add_argument(
        "--shape",
        choices=LADDER,
        default="8b",
        help="largest shape tried (each section falls back from it)",
    )
    ap.add_argument(
        "--zero3-shape",
        choices=LADDER,
        default="1b",
        help="shape of the ZeRO-3 section (saved to disk)",
    )
    ap.add_argument(
        "--sections", default=",".join(SECTIONS), help=f"comma list of {', '.join(SECTIONS)}"
    )
    ap.add_argument(
        "--budget", type=float, default=450.0, help="seconds for every section together (7.5 min)"
    )
    ap.add_argument(
        "--min-section-s",
        type=float,
        default=30.0,
        help="skip a section when fewer seconds are left",
    )
    ap.add_argument(
        "--batch-size", type=int, default=None, help="sequences per view per step (GPU 4, CPU 2)"
    )
    ap.add_argument(
        "--seq-len", type=int, default=None, help="tokens per sequence (GPU 512, CPU 64)"
    )
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps (GPU 2, CPU 1); >= 1")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (GPU 5, CPU 2)")
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument(
        "--gc",
        choices=("auto", "on", "off"),
        default="auto",
        help="gradient checkpointing (auto: on from 1b)",
    )
    ap.add_argument(
        "--influence-seqs",
        type=int,
        default=4,
        help="forget (and retain) sequences of the influence step",
    )
    ap.add_argument(
        "--influence-tokens", type=int, default=128, help="target tokens per influence sequence"
    )
    ap.add_argument(
        "--influence-modules",
        choices=("auto", "all_linear", "mlp", "last_n"),
        default="auto",
        help="tracked θ_S (auto: all_linear when it fits, else the last blocks that fit)",
    )
    ap.add_argument(
        "--influence-last-n", type=int, default=4, help="blocks for --influence-modules last_n"
    )
    ap.add_argument(
        "--influence-preconditioner",
        choices=("identity", "diagonal", "kfac", "ekfac"),
        default="identity",
    )
    ap.add_argument(
        "--influence-dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="scoring dtype (InfluenceConfig allows float32 / float64; bfloat16 is outside it)",
    )
    ap.add_argument(
        "--influence-repeats",
        type=int,
        default=None,
        help="timed influence steps, fastest kept (GPU 3, CPU 1)",
    )
    ap.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="peak bf16 dense TFLOPS (overrides the name lookup)",
    )
    ap.add_argument(
        "--json", default=None, help="summary JSON (default $OUT/gpu_check.json, else a temp file)"
    )
    ap.add_argument("--section", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--result", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--model-path", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--data-path", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--deadline", type=float, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    cpu = a.device == "cpu" or a.shape == "tiny"
    for key, gpu_default, cpu_default in (
        ("batch_size", 4, 2),
        ("seq_len", 512, 64),
        ("warmup", 2, 1),
        ("steps", 5, 2),
        ("influence_repeats", 3, 1),
    ):
        if getattr(a, key) is None:
            setattr(a, key, cpu_default if cpu else gpu_default)
    if a.warmup < 1 or a.steps < 1:
        raise SystemExit(
            "--warmup and --steps must be >= 1 (timing starts at the end of the last warmup step)"
        )
    if a.section:
        a.deadline = a.deadline or time.time() + a.budget
        return child(a)
    return parent(a)


if __name__ == "__main__":
    sys.exit(main())
