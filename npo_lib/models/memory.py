"""Peak GPU memory of a training or influence run, estimated from a model's ``config.json`` alone.

Nothing loads: the sizes a decoder-only transformer's memory depends on (hidden size d, layers
L, heads H and KV heads K of width h_d, MLP width I, vocabulary V, tied embeddings, biases) give
exact parameter counts, and a run's setup (dtype, LoRA rank, ZeRO stage, world size, batch and
length, checkpointing, reference model) gives the bytes of each part. Parts, per device:

    weights      P · b_w                          (ZeRO-3: / N)
    gradients    P_t · b_t                        (no DeepSpeed; b_t = dtype of the trainable)
    optimizer    2 · P_t · b_t                    (torch AdamW: two moments in the param dtype)
    ZeRO states  P_t · (2 + 4 + 4 + 8) / N_s      (DeepSpeed bf16: 16-bit and fp32 gradients, fp32
                                                   master, fp32 moments; N_s = N from stage 2 on,
                                                   the optimizer's 12 bytes only / N at stage 1;
                                                   stage 3: no 16-bit gradient, 16 / N)
    gathered     4 · P_layer                      (ZeRO-3: the largest module, fetched whole)
    activations  n_f · B · T · b_a · (L · e + 2d)        without checkpointing
                 n_f · B · T · b_a · (L · d + e + 2d)    with it (each block's input kept, one
                                                        block recomputed at a time)
    logits       n_f · B · T · V · (b_a + 4 + 4)  (logits, their fp32 log-softmax kept for the
                                                   backward, its fp32 gradient)
    reference    P · b_w (live copy; ZeRO-3: / N) + n_r · B · T · V · b_a (its logits)

P is every parameter, P_t the trainable ones (LoRA: r · (in + out) per adapted Linear), b_w the
weight dtype's bytes, n_f the training forwards per step (the objective's views), n_r the
reference forwards. The per-token, per-block activation count e (elements kept for the
backward, FlashAttention / SDPA: no T² term) is

    e = 4 d (two norms' inputs and outputs) + 2 H h_d (queries, attention output)
        + 2 K h_d (keys, values) + 4 I (gate, up, SiLU(gate), their product)
        [+ (1 + 1 / b_a) · (5 d + H h_d + I) under LoRA with dropout: each adapter's dropped-out
        input and its mask]

i.e. about 20.5 d for Llama-3-8B. DeepSpeed's own estimators
(``deepspeed.runtime.zero.stage_1_and_2.estimate_zero2_model_states_mem_needs`` and
``deepspeed.runtime.zero.stage3.estimate_zero3_model_states_mem_needs``, what their ``*_all_cold``
printers call) give the same model states for full fine-tuning: 2 P + 18 P / N (stage 2) and
4 P_layer + 18 P / N (stage 3, weights included); the tests hold this module to them and to
``accelerate.utils.calculate_maximum_sizes``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GIB = 2**30
CONFIGS_DIR = Path(__file__).with_name("configs")  # config.json of hub families (package data)


@dataclass(frozen=True)
class Shape:
    """The sizes of a decoder-only transformer (Llama, Mistral, Qwen2) that memory depends on."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    source: str = ""  # where the sizes were read

    @classmethod
    def from_config(cls, config: Mapping[str, Any], source: str = "") -> Shape:
        """The sizes of a ``config.json`` (its ``text_config`` when nested)."""
        c = config.get("text_config") or config
        heads = int(c["num_attention_heads"])
        hidden = int(c["hidden_size"])
        qwen = str(c.get("model_type", "")).startswith("qwen2")  # q, k, v biases, no flag
        attention_bias = bool(c.get("attention_bias", False))
        return cls(
            hidden=hidden,
            layers=int(c["num_hidden_layers"]),
            heads=heads,
            kv_heads=int(c.get("num_key_value_heads") or heads),
            head_dim=int(c.get("head_dim") or hidden // heads),
            intermediate=int(c["intermediate_size"]),
            vocab=int(c["vocab_size"]),
            tied=bool(c.get("tie_word_embeddings", False)),
            qkv_bias=attention_bias or qwen,
            o_bias=attention_bias,
            mlp_bias=bool(c.get("mlp_bias", False)),
            source=source,
        )

    @classmethod
    def read(cls, path: str | Path) -> Shape:
        """The sizes of the ``config.json`` at ``path`` (a file, or a model folder)."""
        p = Path(path)
        p = p / "config.json" if p.is_dir() else p
        return cls.from_config(json.loads(p.read_text(encoding="utf-8")), str(p))

    def linears(self) -> list[tuple[str, int, int, bool]]:
        """(name, in, out, bias) of each Linear of one decoder block."""
        d, i = self.hidden, self.intermediate
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        return [
            ("self_attn.q_proj", d, q, self.qkv_bias),
            ("self_attn.k_proj", d, kv, self.qkv_bias),
            ("self_attn.v_proj", d, kv, self.qkv_bias),
            ("self_attn.o_proj", q, d, self.o_bias),
            ("mlp.gate_proj", d, i, self.mlp_bias),
            ("mlp.up_proj", d, i, self.mlp_bias),
            ("mlp.down_proj", i, d, self.mlp_bias),
        ]

    @property
    def block_params(self) -> int:
        """One decoder block: Σ in · out (+ out) over its Linears, and two RMSNorm weights."""
        return sum(n_in * n_out + (n_out if b else 0) for _, n_in, n_out, b in self.linears()) + (
            2 * self.hidden
        )

    @property
    def n_params(self) -> int:
        """P = V d (embedding) + L · block + d (final norm) + V d (output, unless tied)."""
        head = 0 if self.tied else self.vocab * self.hidden
        return self.vocab * self.hidden + self.layers * self.block_params + self.hidden + head

    @property
    def largest_module(self) -> int:
        """The largest single module's parameters (the embedding, else one block's largest
        Linear): what ZeRO-3 gathers whole."""
        linear = max(n_in * n_out for _, n_in, n_out, _ in self.linears())
        return max(self.vocab * self.hidden, linear)

    def lora_params(self, r: int) -> int:
        """P_t under LoRA of rank r on every Linear but the output: Σ r · (in + out)."""
        return self.layers * sum(r * (n_in + n_out) for _, n_in, n_out, _ in self.linears())

    def block_activations(self, *, lora_dropout: bool = False, act_bytes: int = 2) -> float:
        """e, elements kept per token and block for the backward (see the module's equation)."""
        d, q = self.hidden, self.heads * self.head_dim
        e = 4 * d + 2 * q + 2 * self.kv_heads * self.head_dim + 4 * self.intermediate
        if lora_dropout:
            e += (1 + 1 / act_bytes) * (5 * d + q + self.intermediate)
        return e


def family_config(hub_id: str) -> Path | None:
    """The shipped ``config.json`` of a hub model (npo_lib/models/configs/), if there is one."""
    for path in sorted(CONFIGS_DIR.glob("*.json")):
        if json.loads(path.read_text(encoding="utf-8")).get("hub_id") == hub_id:
            return path
    return None


REFERENCES = ("none", "cached", "adapter_off", "live")  # how a run reads p_ref


@dataclass(frozen=True)
class Setup:
    """What a run does with the model, as far as memory goes."""

    batch: int = 4
    length: int = 512
    weight_bytes: int = 2  # bf16 on a GPU
    lora_r: int = 0
    lora_dropout: bool = True
    zero_stage: int | None = None  # None: no DeepSpeed (torch AdamW in the param dtype)
    gpus: int = 1
    checkpointing: bool = False
    forwards: int = 1  # training forwards per step (the objective's views)
    reference: str = "none"
    reference_forwards: int = 0
    train: bool = True  # False: forward / backward without an optimizer (influence)


@dataclass
class Estimate:
    """The parts of a run's peak memory per device, in bytes, and the assumptions behind them."""

    parts: dict[str, float]
    notes: list[str] = field(default_factory=list)
    params: int = 0
    trainable: int = 0

    @property
    def total(self) -> float:
        return sum(self.parts.values())

    @property
    def largest(self) -> str:
        return max(self.parts, key=lambda k: self.parts[k])

    def gib(self) -> dict[str, float]:
        return {k: v / GIB for k, v in self.parts.items()}


def model_states(shape: Shape, s: Setup) -> tuple[dict[str, float], int]:
    """Weights, gradients and optimizer states per device, and P_t.

    No DeepSpeed: torch AdamW keeps gradients and two moments in each trainable parameter's
    dtype (peft makes LoRA adapters fp32: 4 bytes). DeepSpeed (bf16): 2 + 4 + 4 + 8 bytes per
    trainable parameter, partitioned over N from stage 1 (optimizer) / 2 (gradients)."""
    p = shape.n_params
    trainable = shape.lora_params(s.lora_r) if s.lora_r > 0 else p
    adapters = trainable if s.lora_r > 0 else 0
    n = max(1, s.gpus)
    stage = s.zero_stage
    frozen = (p * s.weight_bytes) / (n if stage == 3 else 1)
    parts: dict[str, float] = {"weights": frozen}
    if not s.train:
        return parts, 0
    if stage is None:
        b_t = 4 if s.lora_r > 0 else s.weight_bytes
        parts["weights"] += adapters * b_t
        parts["gradients"] = trainable * b_t
        parts["optimizer states"] = 2 * trainable * b_t
        return parts, trainable
    parts["weights"] += adapters * 2 / (n if stage == 3 else 1)
    # stage 3 reduce-scatters each module's 16-bit gradient as it is made (DeepSpeed's
    # estimator counts the fp32 partition only)
    parts["gradients"] = trainable * (4 if stage == 3 else 2 + 4) / (n if stage >= 2 else 1)
    parts["optimizer states"] = trainable * (4 + 8) / (n if stage >= 1 else 1)
    if stage == 3:
        parts["gathered module (ZeRO-3)"] = 4 * shape.largest_module
    return parts, trainable


def activation_parts(shape: Shape, s: Setup) -> dict[str, float]:
    """Activations kept for the backward and the logits, per device (equations above)."""
    tokens = s.batch * s.length
    b_a = s.weight_bytes
    e = shape.block_activations(lora_dropout=s.lora_r > 0 and s.lora_dropout, act_bytes=b_a)
    d = shape.hidden
    if not s.train:  # no optimizer: a backward through the tracked modules still keeps them
        per_token = shape.layers * e + 2 * d
    elif s.checkpointing:
        per_token = shape.layers * d + e + 2 * d
    else:
        per_token = shape.layers * e + 2 * d
    return {
        "activations": s.forwards * tokens * b_a * per_token,
        "logits": s.forwards * tokens * shape.vocab * (b_a + 4 + 4),
    }


def estimate(shape: Shape, s: Setup) -> Estimate:
    """Every part of the peak memory per device of ``s`` on a model of ``shape``."""
    parts, trainable = model_states(shape, s)
    parts.update(activation_parts(shape, s))
    notes = []
    if s.reference == "live":
        parts["reference model"] = (
            shape.n_params * s.weight_bytes / (s.gpus if s.zero_stage == 3 else 1)
            + s.reference_forwards * s.batch * s.length * shape.vocab * s.weight_bytes
        )
        notes.append("reference: a frozen copy of the model in memory (live)")
    elif s.reference == "adapter_off":
        parts["reference model"] = (
            s.reference_forwards * s.batch * s.length * shape.vocab * s.weight_bytes
        )
        notes.append("reference: the LoRA base with the adapter off (no second copy)")
    elif s.reference == "cached":
        notes.append("reference: log p_ref cached once before training (no second model)")
    return Estimate(parts, notes, shape.n_params, trainable)


def kfac_factors(modules: list[tuple[int, int, bool]], preconditioner: str) -> float:
    """Bytes of a preconditioner's factors over Linear modules (in, out, bias), float64 as
    :mod:`npo_lib.influence.preconditioners` keeps them; in' = in + 1 with a bias.

        kfac / ekfac: A (in' × in') and S (out × out), their eigenbases Q_A, Q_S, and the
                      eigenvalues Λ (out × in'): 8 · (2 in'² + 2 out² + out · in')
        diagonal:     the Fisher diagonal, 8 · out · in'
    """
    total = 0.0
    for n_in, n_out, bias in modules:
        i = n_in + (1 if bias else 0)
        if preconditioner in ("kfac", "ekfac"):
            total += 8 * (2 * i * i + 2 * n_out * n_out + n_out * i)
        elif preconditioner == "diagonal":
            total += 8 * n_out * i
    return total


def tracked_linears(shape: Shape, which: str, last_n: int = 1, lora_r: int = 0) -> list:
    """(in, out, bias) of the Linear layers ``influence.modules`` tracks (as
    :func:`npo_lib.influence.modules.tracked_modules` chooses them)."""
    block = shape.linears()
    if which == "lora":
        one = [(n_in, lora_r, False) for _, n_in, _, _ in block]
        one += [(lora_r, n_out, False) for _, _, n_out, _ in block]
        return one * shape.layers
    if which == "mlp":
        block = [x for x in block if x[0].startswith("mlp.")]
    layers = min(last_n, shape.layers) if which == "last_n" else shape.layers
    return [(n_in, n_out, b) for _, n_in, n_out, b in block] * layers


def format_table(est: Estimate, budget_gib: float | None = None) -> str:
    """The parts and the total in GiB, one per line, and whether they fit ``budget_gib``."""
    width = max(len(k) for k in [*est.parts, "total"])
    lines = [f"{'part':<{width}}  {'GiB':>9}"]
    lines += [f"{k:<{width}}  {v:9.3f}" for k, v in est.gib().items()]
    lines.append(f"{'total':<{width}}  {est.total / GIB:9.3f}")
    if budget_gib is not None:
        verdict = "fits" if est.total / GIB <= budget_gib else "does not fit"
        lines.append(f"{verdict} in {budget_gib:g} GiB per GPU")
    return "\n".join(lines)
