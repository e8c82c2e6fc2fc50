"""``npo prepare``: the tiny models of the embedded default, for the generated benchmark or for
the user's own data folder (``data_path=DIR``).

1. the data: generate the stand-in of ``benchmark.name`` through its plug-in (TOFU's
   fictitious authors in R-TOFU and TOFU file names, with ``fact_spans``; the MUSE-like news
   articles; the WMDP-like creatures and islands), or take the folder;
2. train a byte-level BPE tokenizer on its text (the plug-in's ``texts``);
3. initialise one Llama-architecture model from a ``LlamaConfig`` (``base``), shared by both;
4. fine-tune ``target`` and ``retain`` from ``base`` through
   :func:`npo_lib.commands.finetune.run_finetune` (``npo finetune``, the tiny recipe of
   ``tiny.*``), each until its memorisation bars hold (checked every ``finetune.check_every``
   epochs, at most ``tiny.max_epochs``);
5. check every bar of :class:`MemorisationBars` on the saved models: the target must state the
   forget facts, the retain model must not, yet keep the retain facts, and the target's forget
   truth ratios must differ from the retain model's (forget quality). A document benchmark
   (MUSE, WMDP) declares its own bars on its own metrics instead
   (:class:`npo_lib.benchmarks.checks.MetricCheck`): the target high on the forget set, the
   retain model low, both high on the retain / utility set; they are its stop criterion too.

Everything is cached under folders keyed by what made it (the data's fingerprint, ``tiny.*``);
an interrupted prepare resumes its fine-tuning from the last checkpoint. The bars are enforced
on the generated benchmark; on a user's folder they are reported.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from npo_lib.commands.finetune import finished, run_finetune
from npo_lib.commands.folders import finetune_dir
from npo_lib.commands.resolve import Resolved, as_resolved
from npo_lib.config import Config
from npo_lib.data.sources import load_eval_set, load_perturbed
from npo_lib.embedded.paths import EmbeddedPaths
from npo_lib.embedded.tokenizer import train_tokenizer
from npo_lib.errors import BarError, ConfigError, DataError
from npo_lib.eval import metrics as M
from npo_lib.eval.compute import forget_truth_ratio
from npo_lib.utils.io import atomic_dir, atomic_write_json, read_json
from npo_lib.utils.machine import machine_info

EXTRA_SETS = (
    "real_authors_perturbed",
    "world_facts_perturbed",
)  # a random-init model must learn them too
CHECK_MAX_NEW_TOKENS = (
    96  # greedy tokens per check: the generated traces are short (others: max_length)
)
TINY_LOGGING_STEPS = (
    10  # a log line every 10 steps (every step costs ~15 % of a tiny model's training time)
)


@dataclass(frozen=True)
class MemorisationBars:
    """What the embedded models must reach for unlearning to be measurable, checked at the end
    of ``npo prepare``. Fine-tuning stops once the memorisation bars hold."""

    target_forget_recall: float = 0.975  # the target states >= 39 of 40 forget facts
    target_retain_recall: float = 0.95  # ... and >= 38 of 40 retain-set facts
    retain_forget_recall: float = 0.10  # the retain model states <= 4 of 40 forget facts
    retain_retain_recall: float = 0.95  # ... yet >= 38 of 40 retain-set facts
    target_forget_quality: float = (
        0.01  # KS p-value of the target's forget truth ratios vs the retain model's
    )


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
    recall: dict[
        str, dict[str, float]
    ]  # model -> set -> memorisation (fact recall, or ROUGE-L recall)
    measure: str = (
        "fact_recall"  # what recall holds: fact_recall, or rouge_l_recall on data without facts
    )
    forget_quality: dict[str, float | None] = field(
        default_factory=dict
    )  # model -> KS p-value vs the retain model
    epochs: dict[str, int | None] = field(default_factory=dict)  # model -> epochs trained
    max_epochs: int = 0  # the epoch budget (tiny.max_epochs)
    enforced: bool = True  # the bars are enforced (the generated benchmark), else reported
    seconds: dict[str, float] = field(default_factory=dict)
    reused: list[str] = field(default_factory=list)
    machine: dict[str, str] = field(default_factory=dict)  # CPU capability, torch version, threads
    # a document benchmark's bars (name, model, key, op, limit, fix); recall holds its metrics
    metric_bars: list[dict[str, Any]] = field(default_factory=list)
    # model -> its training records in the words of the plug-in's training kind
    trained_on: dict[str, str] = field(default_factory=dict)
    forget_set: str = ""  # the forget set the memorisation checks read, in words

    def counts_line(self) -> str:
        """What each model was trained on and which forget set was checked, in one line."""
        on = {
            role: self.trained_on.get(role) or f"{n} records"
            for role, n in (("target", self.n_train_target), ("retain", self.n_train_retain))
        }
        forget = self.forget_set or f"{self.n_forget} forget records checked"
        return f"target trained on {on['target']}, retain on {on['retain']}; {forget}"

    def bars(self) -> list[tuple[str, float, str, float, str]]:
        """(bar, measured, comparison, limit, what to change when it fails) of every bar."""
        if self.metric_bars:
            return [
                (b["name"], self.recall[b["model"]][b["key"]], b["op"], b["limit"], b["fix"])
                for b in self.metric_bars
            ]
        r, fq, b = self.recall, self.forget_quality, BARS
        budget = f"raise tiny.max_epochs (now {self.max_epochs})"
        what = "fact recall" if self.measure == "fact_recall" else "ROUGE-L recall"
        target_fq = fq.get("target")
        return [
            (f"target forget {what}", r["target"]["forget"], ">=", b.target_forget_recall, budget),
            (f"target retain {what}", r["target"]["retain"], ">=", b.target_retain_recall, budget),
            (
                f"retain-model forget {what}",
                r["retain"]["forget"],
                "<=",
                b.retain_forget_recall,
                "the retain model states facts it never saw: check the benchmark's forget / "
                "retain split",
            ),
            (
                f"retain-model retain {what}",
                r["retain"]["retain"],
                ">=",
                b.retain_retain_recall,
                budget,
            ),
            (
                "target forget quality",
                float("nan") if target_fq is None else target_fq,
                "<",
                b.target_forget_quality,
                "raise finetune.patience (keep training after the recall bars hold) or "
                "tiny.zerothink_fraction",
            ),
        ]

    @property
    def passed(self) -> dict[str, bool]:
        ops = {
            ">=": lambda v, lim: v >= lim,
            "<=": lambda v, lim: v <= lim,
            "<": lambda v, lim: v < lim,
        }
        return {
            f"{name} {op} {_fmt(name, lim)}": ops[op](v, lim) for name, v, op, lim, _ in self.bars()
        }

    def failures(self) -> list[str]:
        """One line per missed bar: the bar, the measured value and the setting to change."""
        return [
            f"{name} {_fmt(name, v)} missed the bar {op} {_fmt(name, lim)}: {fix}"
            for (name, v, op, lim, fix), ok in zip(self.bars(), self.passed.values(), strict=True)
            if not ok
        ]

    def raise_if_failed(self) -> None:
        """Fail (naming the missed bars) when the models do not memorise as unlearning needs;
        on the user's own data (``enforced`` false) the bars are reported only."""
        missed = self.failures()
        if missed and self.enforced:
            raise PrepareError("prepare: " + "; ".join(missed))

    def rows(self) -> list[str]:
        """The measured table: one row per model."""
        if self.metric_bars:
            keys = list(dict.fromkeys(b["key"] for b in self.metric_bars))
            return [
                f"{'model':<8} " + " ".join(f"{k:>20}" for k in keys) + f" {'epochs':>7}",
                *(
                    f"{m:<8} "
                    + " ".join(f"{self.recall[m][k]:>20.1%}" for k in keys)
                    + f" {self.epochs.get(m) or '-':>7}"
                    for m in ("target", "retain")
                ),
            ]
        what = "fact recall" if self.measure == "fact_recall" else "ROUGE-L"
        return [
            f"{'model':<8} {'forget ' + what:>19} {'retain ' + what:>19} "
            f"{'forget quality':>15} {'epochs':>7}",
            *(
                f"{m:<8} {self.recall[m]['forget']:>18.1%} {self.recall[m]['retain']:>18.1%} "
                f"{_g(self.forget_quality.get(m)):>15} {self.epochs.get(m) or '-':>7}"
                for m in ("target", "retain")
            ),
        ]

    def table(self) -> str:
        lines = self.rows()
        mark = (
            ("ok", "FAIL")
            if self.enforced
            else ("ok", "below (reported, not enforced on your data)")
        )
        lines += [f"[{mark[0] if ok else mark[1]}] {name}" for name, ok in self.passed.items()]
        if self.machine:
            lines.append("machine: " + ", ".join(f"{k} {v}" for k, v in self.machine.items()))
        return "\n".join(lines)


def _fmt(name: str, value: float) -> str:
    return f"{value:.3g}" if "quality" in name else f"{value:.1%}"


def _g(value: float | None) -> str:
    return "–" if value is None else f"{value:.3g}"


# ----------------------------------------------------------------------------- artefacts


def ensure_benchmark(res: Resolved, paths: EmbeddedPaths) -> bool:
    """Generate the plug-in's stand-in unless present; returns True when it was reused."""
    if (paths.benchmark / paths.marker).is_file():
        return True
    with atomic_dir(paths.benchmark) as tmp:
        res.benchmark.generate(res.cfg.benchmark, tmp)
    return False


def ensure_tokenizer(res: Resolved, paths: EmbeddedPaths):
    """The byte-level BPE of the data's text (the plug-in's ``texts``; trained once)."""
    from transformers import AutoTokenizer

    if not (paths.tokenizer / "tokenizer.json").is_file():
        with atomic_dir(paths.tokenizer) as tmp:
            texts = res.benchmark.texts(str(paths.benchmark))
            train_tokenizer(texts, res.cfg.tiny.vocab_size, tmp)
    return AutoTokenizer.from_pretrained(str(paths.tokenizer))


def ensure_base(cfg: Config, paths: EmbeddedPaths, tokenizer: Any) -> None:
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


def tiny_finetune_config(cfg: Config, paths: EmbeddedPaths, role: str, data_path: str) -> Config:
    """The `npo finetune` config of one tiny model: ``tiny.*``'s recipe (lr, budget, batch,
    seed, ZeroThink copies; 5 % warm-up, no weight decay), the extra sets the data has, and the
    memorisation bars as the stop criterion."""
    t = cfg.tiny
    extras = [name for name in EXTRA_SETS if _has_set(data_path, name)]
    retain_bar = BARS.target_retain_recall if role == "target" else BARS.retain_retain_recall
    ft = dataclasses.replace(
        cfg.finetune,
        model=role,
        lr=t.lr,
        num_epochs=t.max_epochs,
        batch_size=t.batch_size,
        effective_batch_size=t.batch_size,
        warmup_epochs=0.05 * t.max_epochs,
        weight_decay=0.0,
        zerothink_fraction=t.zerothink_fraction,
        extra_sets=extras,
        stop_loss=None,
        stop_forget_recall=BARS.target_forget_recall,
        stop_retain_recall=retain_bar,
    )
    run = paths.target_run if role == "target" else paths.retain_run
    return dataclasses.replace(
        cfg,
        model_path=str(paths.base),
        data_path=data_path,
        save_dir=str(run),
        resume=True,
        overwrite=False,
        seed=t.seed,
        finetune=ft,
        LoRA=dataclasses.replace(cfg.LoRA, r=0),
        ds_config=None,
        save_steps=0,
        report_to="none",
        logging_steps=TINY_LOGGING_STEPS,
    )


def _has_set(data_path: str, name: str) -> bool:
    try:
        load_eval_set(data_path, name)
    except DataError:
        return False
    return True


def finetune_run(res: Resolved, paths: EmbeddedPaths, role: str, data_path: str) -> Resolved:
    """The resolved `npo finetune` run of one tiny model: its config
    (:func:`tiny_finetune_config`) from the base model on ``data_path``; the family and
    objective are the prepare run's."""
    cfg = tiny_finetune_config(res.cfg, paths, role, data_path)
    return dataclasses.replace(
        res,
        cfg=cfg,
        command="finetune",
        model_path=str(paths.base),
        data_path=data_path,
        run_dir=finetune_dir(cfg),
    )


def ensure_finetuned(
    res: Resolved, paths: EmbeddedPaths, role: str, data_path: str, *, progress: bool = True
) -> dict:
    """The finished fine-tuning run of ``role`` (trained now unless the cache has it); its
    checkpoints are dropped once the model is saved (the cache keeps the model)."""
    cfg = res.cfg
    run = paths.target_run if role == "target" else paths.retain_run
    done = finished(run)
    if done is not None and (run / "model" / "config.json").is_file():
        done["reused"] = True
        return done
    # a user's traces may be long (R-TOFU's run to hundreds of tokens): decode up to max_length
    new_tokens = (
        CHECK_MAX_NEW_TOKENS
        if cfg.data_path is None
        else min(cfg.max_length, cfg.tiny.max_position_embeddings)
    )
    result = run_finetune(
        finetune_run(res, paths, role, data_path),
        progress=progress,
        check_max_new_tokens=new_tokens,
    )
    shutil.rmtree(run / "checkpoints", ignore_errors=True)
    return result


def truth_ratios(res: Resolved, model_dir: Path, perturbed: list[dict]) -> dict:
    """The saved model's per-item forget truth ratios (TOFU's scoring: after an empty think
    block)."""
    model = res.loader.model(str(model_dir)).eval()
    return forget_truth_ratio(model, res.loader.tokenizer(str(model_dir)), res.tags, perturbed)


# ----------------------------------------------------------------------------- prepare


def prepare(run: Config | Resolved, *, progress: bool = True) -> PrepareSummary:
    """Make (or reuse) every embedded artefact for the config and measure every bar; ``run``
    is the config or, resolved where it entered, the :class:`Resolved` run."""
    res = as_resolved(run, "prepare")
    cfg, paths = res.cfg, res.embedded
    if paths is None or cfg.model_path:
        raise ConfigError(
            "npo prepare makes the tiny models: use model_family=tiny without model_path "
            "(data_path=DIR makes them on your own data; `npo finetune` fine-tunes a hub model)"
        )
    t0 = time.perf_counter()
    generated = cfg.data_path is None
    say = print if progress else (lambda *a, **k: None)
    reused = ["benchmark"] if generated and ensure_benchmark(res, paths) else []
    data_path = str(paths.benchmark)
    say(f"data       {paths.benchmark}")
    ensure_base(cfg, paths, ensure_tokenizer(res, paths))
    results, seconds = {}, {}
    for role in ("target", "retain"):
        say(f"{role:<10} {paths.target_run if role == 'target' else paths.retain_run}")
        results[role] = ensure_finetuned(res, paths, role, data_path, progress=progress)
        if results[role].get("reused"):
            reused.append(role)
        else:
            seconds[f"finetune_{role}"] = results[role].get("train_seconds", 0.0)
    summary_file = paths.retain_run / "prepare_summary.json"
    saved = read_json(summary_file) if not {"target", "retain"} - set(reused) else None
    if saved is not None:
        fq = saved["forget_quality"]
        reused.append("memorisation check")
    else:
        t1 = time.perf_counter()
        fq = _forget_quality(res, paths, data_path)
        seconds["memorisation_check"] = time.perf_counter() - t1
    seconds["total"] = time.perf_counter() - t0
    summary = _summary(res, paths, results, fq, seconds, reused)
    if saved is None:
        atomic_write_json(summary_file, {**asdict(summary), "passed": summary.passed})
    return summary


def _summary(
    res: Resolved,
    paths: EmbeddedPaths,
    results: dict[str, dict],
    fq: dict[str, float | None],
    seconds: dict[str, float],
    reused: list[str],
) -> PrepareSummary:
    """The summary of both fine-tuning results and the forget quality (a document benchmark: its
    metrics, under its plug-in's bars)."""
    cfg, check = res.cfg, res.benchmark.check
    report = {role: results[role].get("memorisation", {}) for role in results}
    measure = f"{res.benchmark.name} metrics" if check else "fact_recall"
    if report["target"] and not check:
        measure = next(iter(report["target"]["forget"]))
    counts = results["target"]["check_sets"]
    kind = res.benchmark.kind
    return PrepareSummary(
        paths={
            "data": str(paths.benchmark),
            "tokenizer": str(paths.tokenizer),
            "base": str(paths.base),
            "target": str(paths.target),
            "retain": str(paths.retain),
        },
        n_train_target=results["target"]["n_records"],
        n_train_retain=results["retain"]["n_records"],
        n_forget=counts["forget"],
        n_retain_eval=counts["retain"],
        recall={
            role: {name: next(iter(v.values())) for name, v in report[role].items()}
            for role in report
        },
        measure=measure,
        forget_quality=fq,
        epochs={role: results[role].get("epochs") for role in results},
        max_epochs=cfg.tiny.max_epochs,
        enforced=cfg.data_path is None,
        seconds=seconds,
        reused=reused,
        machine=machine_info(),
        metric_bars=[asdict(b) | {"name": b.name} for b in check.bars] if check else [],
        # a target / retain run reused from before this field lacks it: counts_line's fallback
        trained_on={r: results[r]["trained_on"] for r in results if "trained_on" in results[r]},
        forget_set=kind.forget_set.format(split=cfg.split, task_id=cfg.task_id, n=counts["forget"]),
    )


def _forget_quality(res: Resolved, paths: EmbeddedPaths, data_path: str) -> dict[str, float | None]:
    """Forget quality of both models against the retain model (None without perturbed answers)."""
    cfg = res.cfg
    try:  # a document benchmark has no perturbed answers: its bars are on its own metrics
        perturbed = (
            load_perturbed(data_path, cfg.split, cfg.task_id) if not res.benchmark.check else None
        )
    except DataError:
        perturbed = None
    if perturbed is None:
        return {"target": None, "retain": None}
    tr = {role: truth_ratios(res, getattr(paths, role), perturbed) for role in ("target", "retain")}
    return {role: M.forget_quality(tr[role], tr["retain"])["agg_value"] for role in tr}
