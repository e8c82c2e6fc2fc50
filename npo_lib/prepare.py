"""``npo prepare``: make the embedded default (benchmark, tokenizer, target and retain models).

1. generate the synthetic fictitious-author benchmark (R-TOFU file layout, with ``fact_spans``);
2. train a byte-level BPE tokenizer on its text;
3. initialise one Llama-architecture model from a ``LlamaConfig`` (saved as ``base``);
4. fine-tune ``target`` on all training data and ``retain`` on everything except the forget
   split / task, both from ``base``, through :func:`npo_lib.finetune.finetune` (HF ``Trainer``);
5. check memorisation by greedy decoding: the target must state the forget facts, the retain
   model must not, yet keep the retain facts.

Every artefact is written to a temporary folder and renamed into the cache only when complete,
so an interrupted prepare never leaves a half-written model that a later run would reuse.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from npo_lib.benchmark import generate_benchmark
from npo_lib.config import Config, save_config
from npo_lib.embedded import EmbeddedPaths, embedded_paths

TRAIN_EXTRA_SETS = ("real_authors_perturbed", "world_facts_perturbed")  # in every training set
# Memorisation bars the issue sets for the embedded default (printed and checked).
TARGET_FORGET_MIN, RETAIN_FORGET_MAX, RETAIN_RETAIN_MIN = 0.90, 0.20, 0.90


@dataclass
class PrepareSummary:
    """What ``npo prepare`` made and measured; also written as ``prepare_summary.json``."""

    paths: dict[str, str]
    n_train_target: int
    n_train_retain: int
    n_forget: int
    n_retain_eval: int
    recall: dict[str, dict[str, float]]  # model -> set -> fact recall of greedy answers
    seconds: dict[str, float] = field(default_factory=dict)
    reused: list[str] = field(default_factory=list)

    @property
    def passed(self) -> dict[str, bool]:
        r = self.recall
        return {
            f"target forget recall >= {TARGET_FORGET_MIN:.0%}": r["target"]["forget"] >= TARGET_FORGET_MIN,
            f"retain forget recall <= {RETAIN_FORGET_MAX:.0%}": r["retain"]["forget"] <= RETAIN_FORGET_MAX,
            f"retain retain recall >= {RETAIN_RETAIN_MIN:.0%}": r["retain"]["retain"] >= RETAIN_RETAIN_MIN,
        }

    def raise_if_failed(self) -> None:
        """Fail (naming the missed bars) when the models do not memorise as unlearning needs."""
        missed = [name for name, ok in self.passed.items() if not ok]
        if missed:
            raise RuntimeError(f"prepare: memorisation bars missed: {'; '.join(missed)}\n{self.table()}")

    def table(self) -> str:
        lines = [
            f"{'model':<8} {'forget fact recall':>19} {'retain fact recall':>19}",
            *(
                f"{m:<8} {self.recall[m]['forget']:>18.1%} {self.recall[m]['retain']:>18.1%}"
                for m in ("target", "retain")
            ),
        ]
        lines += [f"[{'ok' if ok else 'FAIL'}] {name}" for name, ok in self.passed.items()]
        return "\n".join(lines)


def _atomic_dir(final: Path) -> Path:
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def _commit(tmp: Path, final: Path) -> None:
    if final.exists():  # another process finished first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
        return
    os.replace(tmp, final)


def ensure_benchmark(cfg: Config, paths: EmbeddedPaths) -> bool:
    """Generate the benchmark unless present; returns True when it was reused."""
    if (paths.benchmark / "meta.json").is_file():
        return True
    tmp = _atomic_dir(paths.benchmark)
    generate_benchmark(cfg.benchmark, tmp)
    _commit(tmp, paths.benchmark)
    return False


def _benchmark_texts(bench: Path) -> list[str]:
    texts: list[str] = []
    for f in sorted(bench.glob("*.json*")):
        if f.name == "meta.json":
            continue
        for line in f.read_text().splitlines():
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                rec = line
            if isinstance(rec, str):
                texts.append(rec)
            else:
                for k in ("question", "answer", "cot", "paraphrased_answer", "paraphrased_question", "idk_cot"):
                    if isinstance(rec.get(k), str):
                        texts.append(rec[k])
                texts.extend(rec.get("perturbed_answer") or [])
    return texts


def ensure_tokenizer(cfg: Config, paths: EmbeddedPaths):
    from transformers import AutoTokenizer

    from npo_lib.tokenizer import train_tokenizer

    if not (paths.tokenizer / "tokenizer.json").is_file():
        tmp = _atomic_dir(paths.tokenizer)
        train_tokenizer(_benchmark_texts(paths.benchmark), cfg.tiny.vocab_size, tmp)
        _commit(tmp, paths.tokenizer)
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
    tmp = _atomic_dir(paths.base)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    _commit(tmp, paths.base)


def _train_records(cfg: Config, data_path: str, *, exclude_forget: bool) -> list[dict]:
    from npo_lib.data import load_file, load_forget

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


def ensure_finetuned(cfg: Config, paths: EmbeddedPaths, final: Path, records: list[dict], tokenizer, desc: str) -> float | None:
    """Fine-tune ``base`` on ``records`` (view 1) into ``final``; None when reused, else seconds."""
    from transformers import AutoModelForCausalLM

    from npo_lib.data import encode_records
    from npo_lib.families import get_family
    from npo_lib.finetune import finetune

    if (final / "config.json").is_file():
        return None
    tags = get_family("tiny").tags
    examples = encode_records(records, "full", tokenizer, tags, cfg.max_length)
    examples += encode_records(zerothink_copies(records, cfg.tiny.zerothink_fraction), "full", tokenizer, tags, cfg.max_length)
    model = AutoModelForCausalLM.from_pretrained(str(paths.base), attn_implementation="sdpa")
    t = cfg.tiny
    res = finetune(
        model,
        examples,
        pad_token_id=tokenizer.pad_token_id,
        lr=t.lr,
        epochs=t.epochs,
        batch_size=t.batch_size,
        seed=t.seed,
        desc=desc,
    )
    tmp = _atomic_dir(final)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "finetune.json").write_text(json.dumps({**asdict(res), "n_examples": len(examples)}, indent=2))
    _commit(tmp, final)
    return res.seconds


def fact_recall_of(model_dir: Path, records: list[dict], tokenizer, *, max_new_tokens: int = 96) -> float:
    """Fact recall of the saved model's greedy answers on ``records``."""
    from transformers import AutoModelForCausalLM

    from npo_lib.families import get_family
    from npo_lib.generation import greedy_fact_recall

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), attn_implementation="sdpa")
    return greedy_fact_recall(model, tokenizer, records, get_family("tiny").tags, max_new_tokens=max_new_tokens, progress=True)


def prepare(cfg: Config, *, progress: bool = True) -> PrepareSummary:
    """Make (or reuse) every embedded artefact for ``cfg`` and measure memorisation."""
    from npo_lib.data import load_eval_set, load_forget

    if cfg.model_family != "tiny" or cfg.data_path or cfg.model_path:
        raise ValueError("npo prepare builds the embedded default: use model_family=tiny without data_path/model_path")
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

    target_records = _train_records(cfg, data_path, exclude_forget=False)
    retain_records = _train_records(cfg, data_path, exclude_forget=True)
    for name, final, records in (("target", paths.target, target_records), ("retain", paths.retain, retain_records)):
        say(f"{name:<10} {final}")
        secs = ensure_finetuned(cfg, paths, final, records, tokenizer, name)
        if secs is None:
            reused.append(name)
        else:
            seconds[f"finetune_{name}"] = secs

    summary_file = paths.retain / "prepare_summary.json"
    forget = load_forget(data_path, cfg.split, cfg.task_id)
    retain_eval = load_eval_set(data_path, "retain_perturbed")
    if summary_file.is_file():
        recall = json.loads(summary_file.read_text())["recall"]
        reused.append("memorisation check")
    else:
        t1 = time.perf_counter()
        recall = {
            m: {"forget": fact_recall_of(d, forget, tokenizer), "retain": fact_recall_of(d, retain_eval, tokenizer)}
            for m, d in (("target", paths.target), ("retain", paths.retain))
        }
        seconds["memorisation_check"] = time.perf_counter() - t1
    seconds["total"] = time.perf_counter() - t0
    summary = PrepareSummary(
        paths={k: str(v) for k, v in asdict(paths).items()},
        n_train_target=len(target_records),
        n_train_retain=len(retain_records),
        n_forget=len(forget),
        n_retain_eval=len(retain_eval),
        recall=recall,
        seconds=seconds,
        reused=reused,
    )
    if not summary_file.is_file():
        summary_file.write_text(json.dumps({**asdict(summary), "passed": summary.passed}, indent=2))
        save_config(cfg, paths.retain / "prepare_config.yaml")
    return summary
