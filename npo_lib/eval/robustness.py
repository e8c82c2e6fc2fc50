"""Attacks a forgetting claim must survive (``eval.robustness=[...]``, ``robustness`` in
metrics.json).

Unlearning is known to be shallow: knowledge a method hid can come back after a few relearning
steps (Lynch et al. 2024, arXiv:2402.16835; Hu et al. 2024, arXiv:2406.13356), after weight
quantization (Zhang et al. 2024, "Catastrophic failure of LLM unlearning via quantization",
arXiv:2410.16454), or under sampled rather than greedy decoding. Each attack runs on a copy of the
evaluated model (the model and its folder stay as they are; the copy is discarded) and reports
what the forget set's probe gives before and after.

The probe of a set: memorisation of greedy answers (fact recall where records name their
``fact``, else ROUGE-L recall), ROUGE-L recall, Prob (exp −L̄ of the answer after an empty think
block) and the truth ratio (closer_to_1 aggregate, the forget set's). ``format_shift`` asks the
forget questions in other formats instead (fill-in-the-blank, multiple choice).

Each attack declares, next to its function (:data:`ATTACKS`), the report columns its result
fills (:class:`AttackColumn`) and whether it probes the forget set before and after (the study
reads those); ``npo report``, the dashboard and ``npo study`` read them from there.
"""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from tqdm.auto import tqdm

from npo_lib.config import EvalConfig
from npo_lib.data.dataset import ViewCollator
from npo_lib.data.views import encode_records
from npo_lib.eval import metrics as M
from npo_lib.eval.compute import EvalData, answer_prompt, generation_prompts
from npo_lib.eval.generation import greedy_generate, sample_generate
from npo_lib.eval.registry import DIRECTIONS
from npo_lib.eval.scoring import score_targets
from npo_lib.models.families import ChatTags
from npo_lib.objectives.terms import finetune_loss

LEAK_ROUGE_THRESHOLD = 0.5  # without fact fields: a sample "states" the answer at ROUGE-L >= 0.5
PROBE_RECALL = "fact_recall"  # the probe's memorisation where records name their fact


@dataclass
class AttackContext:
    """What every attack reads: the model under test, its tokenizer and tags, the data, options."""

    model: Any
    tokenizer: Any
    tags: ChatTags
    data: EvalData
    options: EvalConfig
    max_length: int | None
    progress: bool = True
    plain: dict[str, Any] = field(
        default_factory=dict
    )  # probes of the unattacked model, shared by the attacks


def plain_forget_probe(ctx: AttackContext) -> dict[str, float | None]:
    """The forget set's probe of the model under test, computed once per evaluation (quant8 and
    quant4 both compare against it)."""
    if "forget" not in ctx.plain:
        ctx.plain["forget"] = probe(ctx, ctx.model, ctx.data.sets["forget"])
    return ctx.plain["forget"]


def _has_facts(records: Sequence[Mapping[str, Any]]) -> bool:
    return bool(records) and all(isinstance(r.get("fact"), str) for r in records)


def greedy_answers(
    ctx: AttackContext, model: Any, records: Sequence[Mapping[str, Any]]
) -> list[str]:
    """The greedy answers (after the trace) of ``model`` to ``records``' questions."""
    tags = ctx.tags
    prompts = [generation_prompts(r, tags, ctx.tokenizer)["default"] for r in records]
    gens = greedy_generate(
        model,
        ctx.tokenizer,
        prompts,
        max_new_tokens=ctx.options.max_new_tokens,
        batch_size=ctx.options.gen_batch_size,
        add_special_tokens=not tags.use_tokenizer_template,
        progress=False,
    )
    return [tags.split_trace(g)[1] for g in gens]


def candidate_nll(
    ctx: AttackContext, model: Any, records: Sequence[Mapping[str, Any]], cands: list[list[str]]
) -> list[list[float]]:
    """Mean token NLL of each candidate answer after each record's answer-view prompt."""
    tags, tok = ctx.tags, ctx.tokenizer
    scores = score_targets(
        model,
        tok,
        [answer_prompt(r, tags, tok) for r in records],
        cands,
        batch_size=ctx.options.batch_size,
        add_special_tokens=not tags.use_tokenizer_template,
        max_length=ctx.max_length,
        progress=False,
    )
    return [[s.nll for s in row] for row in scores]


def probe(
    ctx: AttackContext, model: Any, records: Sequence[Mapping[str, Any]]
) -> dict[str, float | None]:
    """Memorisation, ROUGE-L, Prob and truth ratio of ``model`` on ``records``."""
    answers = greedy_answers(ctx, model, records)
    refs = [r["answer"] for r in records]
    out: dict[str, float | None] = {"rouge": M.rouge_l_recall(answers, refs)["agg_value"]}
    out[PROBE_RECALL] = (
        M.fact_recall(answers, [r["fact"] for r in records])["agg_value"]
        if _has_facts(records)
        else None
    )
    cands = [
        [
            r["answer"],
            r.get("paraphrased_answer") or r["answer"],
            *(r.get("perturbed_answer") or []),
        ]
        for r in records
    ]
    nll = candidate_nll(ctx, model, records, cands)
    out["prob"] = M.answer_prob([n[0] for n in nll])["agg_value"]
    with_wrong = [n for n in nll if len(n) > 2]
    out["truth_ratio"] = (
        M.truth_ratio(
            [n[1] for n in with_wrong], [n[2:] for n in with_wrong], aggregate="closer_to_1"
        )["agg_value"]
        if with_wrong
        else None
    )
    return out


# ----------------------------------------------------------------------------- relearning


def relearn_split(
    records: Sequence[Mapping[str, Any]], fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """(held, rest) indices of the forget set: a seeded ``fraction`` of its questions to relearn
    on, the rest to measure on (the same split for every model of a data set)."""
    order = list(range(len(records)))
    random.Random(f"relearn:{seed}").shuffle(order)
    n = min(len(order) - 1, max(1, round(fraction * len(order))))
    return sorted(order[:n]), sorted(order[n:])


def relearn_attack(ctx: AttackContext) -> dict[str, Any]:
    """Fine-tune a copy for ``relearn_steps`` steps on the held part of the forget set (the full
    view, plain NLL, AdamW at ``relearn_lr``), then probe the other part before and after."""
    opt, forget = ctx.options, ctx.data.sets["forget"]
    held, rest = relearn_split(forget, opt.relearn_fraction, opt.attack_seed)
    measured = [forget[i] for i in rest]
    before = probe(ctx, ctx.model, measured)
    torch.manual_seed(opt.attack_seed)
    attacked = copy.deepcopy(ctx.model).train()
    examples = encode_records(
        [forget[i] for i in held], "full", ctx.tokenizer, ctx.tags, ctx.max_length
    )
    collate = ViewCollator(pad_token_id=ctx.tokenizer.pad_token_id)
    optim = torch.optim.AdamW(
        [p for p in attacked.parameters() if p.requires_grad], lr=opt.relearn_lr, weight_decay=0.0
    )
    bs = min(opt.relearn_batch_size, len(examples))
    losses = []
    for step in tqdm(
        range(opt.relearn_steps), desc="relearn attack", disable=not ctx.progress, leave=False
    ):
        rows = [examples[(step * bs + j) % len(examples)] for j in range(bs)]
        batch = {k: v.to(attacked.device) for k, v in collate(rows).items()}
        loss = finetune_loss(
            attacked(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
            batch["labels"],
        )
        optim.zero_grad()
        loss.backward()
        optim.step()
        losses.append(loss.item())
    attacked.eval()
    after = probe(ctx, attacked, measured)
    del attacked, optim
    return {
        "held": len(held),
        "measured": len(rest),
        "steps": opt.relearn_steps,
        "lr": opt.relearn_lr,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "before": before,
        "after": after,
    }


# ----------------------------------------------------------------------------- quantization


@torch.no_grad()
def rtn_quantize_(model: torch.nn.Module, bits: int, group_size: int) -> int:
    """Round-to-nearest, symmetric, group-wise weight quantization of every ``nn.Linear`` but the
    output head, in place (fake quantization: the weights keep their dtype, on the int grid
    q·s with s = max|w| / (2^(b−1) − 1) per group of ``group_size`` input columns). Returns the
    number of layers quantized."""
    qmax = 2 ** (bits - 1) - 1
    n = 0
    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    for module in model.modules():
        if not isinstance(module, torch.nn.Linear) or module is out_emb:
            continue
        w = module.weight
        rows, cols = w.shape
        g = (
            group_size if cols % group_size == 0 else cols
        )  # a width the groups do not divide: per row
        x = w.float().reshape(rows, cols // g, g)
        scale = (x.abs().amax(-1, keepdim=True) / qmax).clamp_min(1e-12)
        w.copy_(
            ((x / scale).round().clamp(-qmax - 1, qmax) * scale).reshape(rows, cols).to(w.dtype)
        )
        n += 1
    return n


def _quant_attack(bits: int) -> Callable[[AttackContext], dict[str, Any]]:
    def attack(ctx: AttackContext) -> dict[str, Any]:
        forget = ctx.data.sets["forget"]
        attacked = copy.deepcopy(ctx.model)
        layers = rtn_quantize_(attacked, bits, ctx.options.quant_group_size)
        after = probe(ctx, attacked, forget)
        del attacked
        return {
            "bits": bits,
            "group_size": ctx.options.quant_group_size,
            "layers": layers,
            "before": plain_forget_probe(ctx),
            "after": after,
        }

    attack.__doc__ = (
        f"{bits}-bit round-to-nearest weight quantization of the linear layers, then the forget "
        "probe."
    )
    return attack


# ----------------------------------------------------------------------------- sampling


def leak_at_k(ctx: AttackContext) -> dict[str, Any]:
    """Share of forget questions where any of k samples at temperature T states the answer
    (its fact; ROUGE-L recall >= 0.5 without facts), next to the greedy share."""
    opt, tags, forget = ctx.options, ctx.tags, ctx.data.sets["forget"]
    prompts = [generation_prompts(r, tags, ctx.tokenizer)["default"] for r in forget]
    samples = sample_generate(
        ctx.model,
        ctx.tokenizer,
        prompts,
        k=opt.leak_k,
        temperature=opt.leak_temperature,
        seed=opt.attack_seed,
        max_new_tokens=opt.max_new_tokens,
        batch_size=opt.gen_batch_size,
        add_special_tokens=not tags.use_tokenizer_template,
        progress=ctx.progress,
    )
    facts = _has_facts(forget)

    def states(text: str, r: Mapping[str, Any]) -> bool:
        answer = tags.split_trace(text)[1]
        if facts:
            return M.fact_recall([answer], [r["fact"]])["agg_value"] > 0
        return M.rouge_l_recall_one(answer, r["answer"]) >= LEAK_ROUGE_THRESHOLD

    hits = [any(states(s, r) for s in ss) for ss, r in zip(samples, forget, strict=True)]
    per_sample = [
        sum(states(s, r) for s in ss) / len(ss) for ss, r in zip(samples, forget, strict=True)
    ]
    return {
        "k": opt.leak_k,
        "temperature": opt.leak_temperature,
        "criterion": "fact" if facts else f"rouge>={LEAK_ROUGE_THRESHOLD}",
        "leak_at_k": sum(hits) / max(len(hits), 1),
        "mean_sample_rate": sum(per_sample) / max(len(per_sample), 1),
    }


# ----------------------------------------------------------------------------- format shift


def blank_question(record: Mapping[str, Any]) -> str | None:
    """The answer as a fill-in-the-blank question (its fact replaced by ____), None without a
    fact the answer states."""
    fact, answer = record.get("fact"), record["answer"]
    if not isinstance(fact, str) or fact.lower() not in answer.lower():
        return None
    at = answer.lower().index(fact.lower())
    return f"Fill in the blank: {answer[:at]}____{answer[at + len(fact) :]}"


def choice_question(record: Mapping[str, Any], options: Sequence[str]) -> str:
    """The question followed by its options, one of which is the answer."""
    return f"{record['question']} Choose one of: " + " | ".join(options)


def _option_accuracy(
    ctx: AttackContext, records: Sequence[Mapping[str, Any]], options: Sequence[Sequence[str]]
) -> float:
    """Share of records whose answer (option 0 before shuffling) has the lowest mean NLL."""
    nll = candidate_nll(ctx, ctx.model, records, [list(o) for o in options])
    right = [min(range(len(row)), key=row.__getitem__) == 0 for row in nll]
    return sum(right) / max(len(right), 1)


def format_shift(ctx: AttackContext) -> dict[str, Any]:
    """The forget questions in other formats: fill-in-the-blank (greedy fact recall of the
    answers) and multiple choice (the answer among up to 3 perturbed ones, listed in the
    question in a seeded order; accuracy of the most likely option, next to the same choice
    asked plainly)."""
    forget = ctx.data.sets["forget"]
    out: dict[str, Any] = {}
    blanks = [(r, q) for r in forget if (q := blank_question(r)) is not None]
    if blanks:
        answers = greedy_answers(ctx, ctx.model, [{**r, "question": q} for r, q in blanks])
        out["fill_in_blank"] = {
            "items": len(blanks),
            PROBE_RECALL: M.fact_recall(answers, [r["fact"] for r, _ in blanks])["agg_value"],
        }
    else:
        out["fill_in_blank"] = {"items": 0, "note": "no record names a fact its answer states"}
    mc = [r for r in forget if r.get("perturbed_answer")]
    if mc:
        rng = random.Random(f"format-shift:{ctx.options.attack_seed}")
        options = [[r["answer"], *r["perturbed_answer"][:3]] for r in mc]
        shown = [rng.sample(o, len(o)) for o in options]
        shifted = [{**r, "question": choice_question(r, s)} for r, s in zip(mc, shown, strict=True)]
        out["multiple_choice"] = {
            "items": len(mc),
            "options": max(len(o) for o in options),
            "accuracy": _option_accuracy(ctx, shifted, options),
            "plain_accuracy": _option_accuracy(ctx, mc, options),
        }
    return out


# ----------------------------------------------------------------------------- registry

RECALL = "recall"  # a column path step: the probe's fact recall, else its ROUGE (no facts)


@dataclass(frozen=True)
class AttackColumn:
    """A number of an attack's result as the report shows it: ``path`` leads into the result
    (:data:`RECALL` reads a probe's memorisation); ``attack`` is filled in by
    :func:`attack_columns`. The numbers are the forget set's: lower is better by default."""

    title: str
    path: tuple[str, ...]
    fmt: str = "{:.1%}"
    direction: str = "lower"
    attack: str = ""
    doc: str = ""  # what the number is (default: the attack's line)

    @property
    def key(self) -> str:
        """``<attack>.<path>`` (``relearn.after.recall``): the report CSV's column."""
        return ".".join((self.attack, *self.path))

    @property
    def label(self) -> str:
        """The title with its direction's arrow."""
        return f"{self.title} {DIRECTIONS[self.direction].arrow}"

    def value(self, robustness: Mapping[str, Any] | None) -> float | None:
        """The number in a metrics.json's ``robustness`` (None when the attack did not run)."""
        v: Any = (robustness or {}).get(self.attack)
        for step in self.path:
            if not isinstance(v, Mapping):
                return None
            if step == RECALL:
                v = v.get(PROBE_RECALL) if v.get(PROBE_RECALL) is not None else v.get("rouge")
            else:
                v = v.get(step)
        return v if isinstance(v, (int, float)) else None

    def format(self, value: float | None) -> str:
        return "–" if value is None else self.fmt.format(value)


@dataclass(frozen=True)
class Attack:
    """An attack: its function, a line saying what it does, its report columns, and whether its
    result holds the forget probe ``before`` and ``after`` (``probes``: the study reads the
    fact recall there at each method's matched setting)."""

    name: str
    fn: Callable[[AttackContext], dict[str, Any]]
    doc: str
    columns: tuple[AttackColumn, ...] = ()
    probes: bool = False


def _registry(*attacks: Attack) -> dict[str, Attack]:
    return {a.name: a for a in attacks}


_AFTER = ("after", RECALL)  # the forget probe after the attack

ATTACKS: dict[str, Attack] = _registry(
    Attack(
        "relearn",
        relearn_attack,
        "relearn on a held share of the forget questions (eval.relearn_fraction), probe the rest",
        (
            AttackColumn("relearn: held-out recall before", ("before", RECALL)),
            AttackColumn("after relearning", _AFTER),
        ),
        probes=True,
    ),
    Attack(
        "quant8",
        _quant_attack(8),
        "8-bit round-to-nearest weights (linear layers), forget probe",
        (AttackColumn("quant8 recall", _AFTER),),
        probes=True,
    ),
    Attack(
        "quant4",
        _quant_attack(4),
        "4-bit round-to-nearest weights (linear layers), forget probe",
        (AttackColumn("quant4 recall", _AFTER),),
        probes=True,
    ),
    Attack(
        "leak_at_k",
        leak_at_k,
        "k samples at temperature T per forget question: any states the fact",
        (AttackColumn("leak@k", ("leak_at_k",)),),
    ),
    Attack(
        "format_shift",
        format_shift,
        "forget questions as fill-in-the-blank and multiple choice",
        (
            AttackColumn("fill-in-blank recall", ("fill_in_blank", PROBE_RECALL)),
            AttackColumn("multiple choice", ("multiple_choice", "accuracy")),
        ),
    ),
)


def attack_columns(names: Iterable[str] | None = None) -> list[AttackColumn]:
    """The report columns of every attack (or of ``names``), in :data:`ATTACKS` order."""
    chosen = set(ATTACKS if names is None else names)
    return [
        replace(c, attack=a.name, doc=c.doc or a.doc)
        for a in ATTACKS.values()
        if a.name in chosen
        for c in a.columns
    ]


def probing_attacks() -> tuple[str, ...]:
    """The attacks whose result holds the forget probe before and after (the study's columns)."""
    return tuple(a.name for a in ATTACKS.values() if a.probes)


def list_attacks() -> list[dict[str, Any]]:
    """Every registered attack as plain data (a docs page, a help string)."""
    return [
        {
            "name": a.name,
            "doc": a.doc,
            "probes": a.probes,
            "columns": [
                {"key": c.key, "title": c.title, "format": c.fmt, "direction": c.direction}
                for c in attack_columns([a.name])
            ],
        }
        for a in ATTACKS.values()
    ]


def run_attacks(ctx: AttackContext, names: Sequence[str]) -> dict[str, Any]:
    """Each named attack's result (``eval.robustness``), with its seconds."""
    out: dict[str, Any] = {}
    for name in tqdm(list(names), desc="robustness", disable=not ctx.progress, leave=False):
        t0 = time.perf_counter()
        out[name] = {**ATTACKS[name].fn(ctx), "seconds": time.perf_counter() - t0}
    return out
