"""``npo prepare``: make the embedded default (benchmark, tokenizer, target and retain models).

1. generate the synthetic fictitious-author benchmark (R-TOFU file layout, with ``fact_spans``);
2. train a byte-level BPE tokenizer on its text;
3. initialise one Llama-architecture model from a ``LlamaConfig`` (saved as ``base``);
4. fine-tune ``target`` on all training data and ``retain`` on everything except the forget
   split / task, both from ``base``, through :func:`npo_lib.run.finetune.finetune` (HF ``Trainer``),
   each until its fact-recall bars hold (checked every ``tiny.check_every`` epochs, at most
   ``tiny.max_epochs``);
5. check every bar of :class:`MemorisationBars` on the saved models: the target must state the
   forget facts, the retain model must not, yet keep the retain facts, and the target's forget
   truth ratios must differ from the retain model's (forget quality).

Every artefact is written to a temporary folder and renamed into the cache only when complete,
so an interrupted prepare never leaves a half-written model that a later run would reuse.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from npo_lib.config import Config, save_config
from npo_lib.data.sources import load_eval_set, load_file, load_forget, load_perturbed
from npo_lib.data.views import encode_records
from npo_lib.embedded.benchmark import generate_benchmark
from npo_lib.embedded.paths import EmbeddedPaths, embedded_paths
from npo_lib.embedded.tokenizer import corpus_texts, train_tokenizer
from npo_lib.errors import BarError, ConfigError
from npo_lib.eval import metrics as M
from npo_lib.eval.compute import forget_truth_ratio
from npo_lib.eval.generation import greedy_fact_recall
from npo_lib.models.families import get_family
from npo_lib.run.checks import check_config
from npo_lib.run.finetune import FinetuneResult, RecallBar, RecallStop, finetune
from npo_lib.utils.io import atomic_dir, atomic_write_json
from npo_lib.utils.machine import machine_info

TRAIN_EXTRA_SETS = ("real_authors_perturbed", "world_facts_perturbed")  # in every training set


@dataclass(frozen=True)
class MemorisationBars:
    """What the embedded models must reach for unlearning to be measurable, checked at the end
    of ``npo prepare``. Fine-tuning stops once the recall bars hold (:class:`RecallStop`)."""

    target_forget_recall: float = 0.975  # the target states >= 39 of 40 forget facts
    target_retain_recall: float = 0.95  # ... and >= 38 of 40 retain-set facts
    retain_forget_recall: float = 0.10  # the retain model states <= 4 of 40 forget facts
    retain_retain_recall: float = 0.95  # ... yet >= 38 of 40 retain-set facts
    target_forget_quality: float = 0.01  # KS p-value of the target's forget truth ratios vs the retain model's


BARS = MemorisationBars()


class PrepareError(BarError):
    """A memorisation bar was missed; the message names the bar, the value and what to raise."""


@dataclass
class PrepareSummary:
    """What ``npo prepare`` made and measured; also written as ``prepare_summary.json``."""

    paths: dict[str, str]
    n_train_target: int
    n_train_retain: int
    n_forget: int
    n_retain_eval: int
    recall: dict[str, dict[str, float]]  # model -> set -> fact recall of greedy answers
    forget_quality: dict[str, float] = field(default_factory=dict)  # model -> KS p-value vs the retain model
    epochs: dict[str, int | None] = field(default_factory=dict)  # model -> epochs trained (None: not recorded)
    max_epochs: int = 0  # the epoch budget (tiny.max_epochs)
    seconds: dict[str, float] = field(default_factory=dict)
    reused: list[str] = field(default_factory=list)
    machine: dict[str, str] = field(default_factory=dict)  # CPU capability, torch version, threads

    def bars(self) -> list[tuple[str, float, str, float, str]]:
        """(bar, measured, comparison, limit, what to change when it fails) of every bar."""
        r, fq, b = self.recall, self.forget_quality, BARS
        budget = f"raise tiny.max_epochs (now {self.max_epochs})"
        return [
            ("target forget fact recall", r["target"]["forget"], ">=", b.target_forget_recall, budget),
            ("target retain fact recall", r["target"]["retain"], ">=", b.target_retain_recall, budget),
            ("retain-model forget fact recall", r["retain"]["forget"], "<=", b.retain_forget_recall,
             "the retain model states facts it never saw: check the benchmark's forget / retain split"),
            ("retain-model retain fact recall", r["retain"]["retain"], ">=", b.retain_retain_recall, budget),
            ("target forget quality", fq.get("target", float("nan")), "<", b.target_forget_quality,
             "raise tiny.patience (keep training after the recall bars hold) or tiny.zerothink_fraction"),
        ]

    @property
    def passed(self) -> dict[str, bool]:
        ops = {">=": lambda v, lim: v >= lim, "<=": lambda v, lim: v <= lim, "<": lambda v, lim: v < lim}
        return {f"{name} {op} {_fmt(name, lim)}": ops[op](v, lim) for name, v, op, lim, _ in self.bars()}

    def failures(self) -> list[str]:
        """One line per missed bar: the bar, the measured value and the setting to change."""
        return [
            f"{name} {_fmt(name, v)} missed the bar {op} {_fmt(name, lim)}: {fix}"
            for (name, v, op, lim, fix), ok in zip(self.bars(), self.passed.values(), strict=True)
            if not ok
        ]

    def raise_if_failed(self) -> None:
        """Fail (naming the missed bars) when the models do not memorise as unlearning needs."""
        missed = self.failures()
        if missed:
            raise PrepareError("prepare: " + "; ".join(missed))

    def table(self) -> str:
        lines = [
            f"{'model':<8} {'forget fact recall':>19} {'retain fact recall':>19} {'forget quality':>15} {'epochs':>7}",
            *(
                f"{m:<8} {self.recall[m]['forget']:>18.1%} {self.recall[m]['retain']:>18.1%} "
                f"{self.forget_quality.get(m, float('nan')):>15.3g} {self.epochs.get(m) or '-':>7}"
                for m in ("target", "retain")
            ),
        ]
        lines += [f"[{'ok' if ok else 'FAIL'}] {name}" for name, ok in self.passed.items()]
        if self.machine:
            lines.append("machine: " + ", ".join(f"{k} {v}" for k, v in self.machine.items()))
        return "\n".join(lines)


def _fmt(name: str, value: float) -> str:
    return f"{value:.3g}" if "quality" in name else f"{value:.1%}"


def ensure_benchmark(cfg: Config, paths: EmbeddedPaths) -> bool:
    """Generate the benchmark unless present; returns True when it was reused."""
    if (paths.benchmark / "meta.json").is_file():
        return True
    with atomic_dir(paths.benchmark) as tmp:
        generate_benchmark(cfg.benchmark, tmp)
    return False


def ensure_tokenizer(cfg: Config, paths: EmbeddedPaths):
    from transformers import AutoTokenizer

    if not (paths.tokenizer / "tokenizer.json").is_file():
        with atomic_dir(paths.tokenizer) as tmp:
            train_tokenizer(corpus_texts(paths.benchmark), cfg.tiny.vocab_size, tmp)
    return AutoTokenizer.from_pretrained(str(paths.tokenizer))


def ensure_base(cfg: Config, paths: EmbeddedPaths, tokenizer) -> None:
    """One random initialisation shared by target and retain (as TOFU's share one base model)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if (paths.base / "config.json").is_file():
        return
    t = cfg.tiny
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=t.hidden_size,
        intermediate_size=t.intermediate_size,
        num_hidden_layers=t.num_hidden_layers,
        num_attention_heads=t.num_attention_heads,
        num_key_value_heads=t.num_key_value_heads,
        max_position_embeddings=t.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(t.seed)
    model = LlamaForCausalLM(config)
    with atomic_dir(paths.base) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


def _train_records(cfg: Config, data_path: str, *, exclude_forget: bool) -> list[dict]:
    records = list(load_file(data_path, "full"))
    if exclude_forget:
        forget_q = {r["question"] for r in load_forget(data_path, cfg.split, cfg.task_id)}
        records = [r for r in records if r["question"] not in forget_q]
    for name in TRAIN_EXTRA_SETS:
        records.extend(load_file(data_path, name))
    return records


def zerothink_copies(records: list[dict], fraction: float) -> list[dict]:
    """Copies of every ``round(1/fraction)``-th record with an empty trace (ZeroThink form).

    Why: TOFU's Prob and truth ratio score an answer right after an empty think block (reference
    section 3). A model only ever trained with traces finds that context out of distribution, so
    its truth ratios barely separate known from unknown facts (forget quality 0.014 for a target
    that recalls every fact). Training on both forms, as R1-style models see answers with and
    without reasoning, makes teacher-forced scores reflect what the model knows.
    """
    if fraction <= 0:
        return []
    step = max(1, round(1 / fraction))
    return [{**r, "cot": ""} for r in records[::step] if r.get("cot")]


def ensure_finetuned(
    cfg: Config, paths: EmbeddedPaths, final: Path, records: list[dict], tokenizer, desc: str,
    bars: list[RecallBar], *, progress: bool = True,
) -> FinetuneResult | None:
    """Fine-tune ``base`` on ``records`` (view 1) into ``final`` until the recall ``bars`` hold
    (at most ``tiny.max_epochs``); None when the model was already there."""
    from transformers import AutoModelForCausalLM

    if (final / "config.json").is_file():
        return None
    tags = get_family("tiny").tags
    examples = encode_records(records, "full", tokenizer, tags, cfg.max_length)
    examples += encode_records(zerothink_copies(records, cfg.tiny.zerothink_fraction), "full", tokenizer, tags, cfg.max_length)
    model = AutoModelForCausalLM.from_pretrained(str(paths.base), attn_implementation="sdpa")
    t = cfg.tiny
    stop = RecallStop(bars, tokenizer, tags, check_every=t.check_every, patience=t.patience, progress=progress)
    res = finetune(
        model,
        examples,
        pad_token_id=tokenizer.pad_token_id,
        lr=t.lr,
        epochs=t.max_epochs,
        batch_size=t.batch_size,
        seed=t.seed,
        stop=stop,
        desc=desc,
        progress=progress,
    )
    record = {**asdict(res), "n_examples": len(examples), "max_epochs": t.max_epochs, "machine": machine_info()}
    with atomic_dir(final) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        atomic_write_json(tmp / "finetune.json", record)
    return res


def _trained_epochs(model_dir: Path) -> int | None:
    f = model_dir / "finetune.json"
    return json.loads(f.read_text()).get("epochs") if f.is_file() else None


def memorisation(model_dir: Path, tokenizer, sets: dict[str, list[dict]], perturbed: list[dict]) -> tuple[dict[str, float], dict]:
    """Greedy fact recall of the saved model on each of ``sets``, and its per-item forget truth
    ratios on ``perturbed`` (TOFU's scoring: the answer after an empty think block)."""
    from transformers import AutoModelForCausalLM

    tags = get_family("tiny").tags
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), attn_implementation="sdpa").eval()
    recall = {name: greedy_fact_recall(model, tokenizer, recs, tags) for name, recs in sets.items()}
    return recall, forget_truth_ratio(model, tokenizer, tags, perturbed)


def prepare(cfg: Config, *, progress: bool = True) -> PrepareSummary:
    """Make (or reuse) every embedded artefact for ``cfg`` and measure memorisation.

    Target and retain model train until their recall bars hold (:data:`BARS`); the summary then
    measures every bar on the saved models, forget quality included. Call
    :meth:`PrepareSummary.raise_if_failed` to turn a missed bar into an error.
    """
    check_config(cfg)
    if cfg.model_family != "tiny" or cfg.data_path or cfg.model_path:
        raise ConfigError("npo prepare builds the embedded default: use model_family=tiny without data_path/model_path")
    t0 = time.perf_counter()
    paths = embedded_paths(cfg)
    reused: list[str] = []
    seconds: dict[str, float] = {}
    say = print if progress else (lambda *a, **k: None)

    if ensure_benchmark(cfg, paths):
        reused.append("benchmark")
    data_path = str(paths.benchmark)
    say(f"benchmark  {paths.benchmark}")
    tokenizer = ensure_tokenizer(cfg, paths)
    ensure_base(cfg, paths, tokenizer)

    forget = load_forget(data_path, cfg.split, cfg.task_id)
    retain_eval = load_eval_set(data_path, "retain_perturbed")
    target_records = _train_records(cfg, data_path, exclude_forget=False)
    retain_records = _train_records(cfg, data_path, exclude_forget=True)
    plan = (
        ("target", paths.target, target_records,
         [RecallBar("forget", forget, BARS.target_forget_recall), RecallBar("retain", retain_eval, BARS.target_retain_recall)]),
        ("retain", paths.retain, retain_records, [RecallBar("retain", retain_eval, BARS.retain_retain_recall)]),
    )
    for name, final, records, bars in plan:
        say(f"{name:<10} {final}")
        res = ensure_finetuned(cfg, paths, final, records, tokenizer, name, bars, progress=progress)
        if res is None:
            reused.append(name)
        else:
            seconds[f"finetune_{name}"] = res.seconds

    summary_file = paths.retain / "prepare_summary.json"
    if summary_file.is_file():
        saved = json.loads(summary_file.read_text())
        recall, fq = saved["recall"], saved["forget_quality"]
        reused.append("memorisation check")
    else:
        t1 = time.perf_counter()
        perturbed = load_perturbed(data_path, cfg.split, cfg.task_id)
        sets = {"forget": forget, "retain": retain_eval}
        recall, tr = {}, {}
        for m, d in (("target", paths.target), ("retain", paths.retain)):
            recall[m], tr[m] = memorisation(d, tokenizer, sets, perturbed)
        fq = {m: M.forget_quality(tr[m], tr["retain"])["agg_value"] for m in tr}
        seconds["memorisation_check"] = time.perf_counter() - t1
    seconds["total"] = time.perf_counter() - t0
    summary = PrepareSummary(
        paths={k: str(v) for k, v in asdict(paths).items()},
        n_train_target=len(target_records),
        n_train_retain=len(retain_records),
        n_forget=len(forget),
        n_retain_eval=len(retain_eval),
        recall=recall,
        forget_quality=fq,
        epochs={m: _trained_epochs(Path(getattr(paths, m))) for m in ("target", "retain")},
        max_epochs=cfg.tiny.max_epochs,
        seconds=seconds,
        reused=reused,
        machine=machine_info(),
    )
    if not summary_file.is_file():
        atomic_write_json(summary_file, {**asdict(summary), "passed": summary.passed})
        save_config(cfg, paths.retain / "prepare_config.yaml")
    return summary
