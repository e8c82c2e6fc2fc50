"""The embedded synthetic benchmark: fictitious-author QA in R-TOFU's file layout.

No dataset can be downloaded, so ``npo prepare`` writes a TOFU / R-TOFU style benchmark from
fixed value pools and a seeded generator. Texts are short and templated so that a tiny model can
memorise them in about a minute on a CPU. Every record names its fact value (``fact``) and the
character spans of every occurrence of that value (``fact_spans``), which token-level methods use.

Files written (JSON lines, named ``.json`` as in R-TOFU): ``full``, ``forget01/05/10`` and their
``_perturbed`` twins, TOFU's ``retain99/95/90`` (full minus every task of the split) and
``holdout01/05/10`` (holdout authors, as many as one task has), ``retain_perturbed``, ``holdout``
(every holdout author), ``real_authors_perturbed``, ``world_facts_perturbed``; plus
``idontknow.jsonl`` (plain text), ``idkcot.jsonl`` (JSON strings aligned with ``forget01.json``)
and ``meta.json``.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from npo_lib.config import BenchmarkConfig
from npo_lib.embedded.pools import (
    ATTRIBUTE_POOLS,
    ATTRIBUTES,
    AWARDS,
    BIRTH_YEARS,
    BOOK_TITLES,
    CITIES,
    FEMALE_FIRST,
    FORGET_SPLITS,
    GENERATOR_VERSION,
    GENRES,
    IDONTKNOW,
    LANGUAGES,
    LAST_NAMES,
    MALE_FIRST,
    MAX_AUTHORS,
    MAX_PERTURBED,
    N_REAL_PERTURBED,
    OCCUPATIONS,
    PRONOUNS,
    PUBLISHERS,
    REAL_AUTHORS,
    TEMPLATES,
    WORLD_FACTS,
    WORLD_POOLS,
)
from npo_lib.errors import ConfigError
from npo_lib.utils.hashing import fingerprint
from npo_lib.utils.io import atomic_write_json, write_jsonl


def check_benchmark_config(cfg: BenchmarkConfig) -> None:
    """The bounds the value pools set: enough names, titles and wrong values for every author."""

    def need(name: str, lo: int, hi: int | None) -> None:
        value = getattr(cfg, name)
        if value < lo or (hi is not None and value > hi):
            bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
            raise ConfigError(f"benchmark.{name} must be {bound}, got {value}")

    need("n_authors", 1, MAX_AUTHORS)
    need("questions_per_author", 1, len(ATTRIBUTES))
    need("n_holdout_authors", 0, MAX_AUTHORS - cfg.n_authors)
    need("n_retain_eval_authors", 0, cfg.n_authors - 1)
    need("n_perturbed", 1, MAX_PERTURBED)
    pool = cfg.n_authors - cfg.n_retain_eval_authors
    for split, frac in FORGET_SPLITS.items():
        k = authors_per_task(cfg.n_authors, frac)
        if pool < k:
            raise ConfigError(
                f"benchmark.n_retain_eval_authors={cfg.n_retain_eval_authors} leaves {pool} "
                f"forgettable authors, fewer than the {k} per task of {split} "
                f"(n_authors={cfg.n_authors})"
            )


def authors_per_task(n_authors: int, frac: float) -> int:
    """Authors in one forget task of a split: ``max(1, round(frac * n_authors))``."""
    return max(1, round(frac * n_authors))


# benchmark.* keys that are not the TOFU generator's: the plug-in's name, the other stand-ins
OTHER_BENCHMARK_KEYS = ("name", "muse", "wmdp")


def benchmark_fingerprint(cfg: BenchmarkConfig) -> str:
    """Short stable hash of the generator's settings and GENERATOR_VERSION: the benchmark's
    cache key (the plug-in's ``name`` is not a generator setting: it is left out)."""
    settings = {k: v for k, v in asdict(cfg).items() if k not in OTHER_BENCHMARK_KEYS}
    return fingerprint({"version": GENERATOR_VERSION, "config": settings}, length=12)


# ---------------------------------------------------------------------------------------------
# Text helpers
# ---------------------------------------------------------------------------------------------


def find_spans(text: str, value: str) -> list[list[int]]:
    """[start, end] of every non-overlapping occurrence of ``value`` in ``text``."""
    spans, start = [], text.find(value)
    while start >= 0 and value:
        spans.append([start, start + len(value)])
        start = text.find(value, start + len(value))
    return spans


def _whole(text: str, start: int, end: int) -> bool:
    """True when text[start:end] is not glued to a letter or digit on either side."""
    return (start == 0 or not text[start - 1].isalnum()) and (
        end == len(text) or not text[end].isalnum()
    )


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeio" else "a"


def _fact_spans(rec: dict[str, Any], always: Iterable[str], maybe: Iterable[str]) -> dict:
    """Spans of ``rec['fact']`` in the ``always`` fields, plus ``maybe`` fields where present."""
    out = {f: find_spans(rec[f], rec["fact"]) for f in always}
    for f in maybe:
        spans = find_spans(rec[f], rec["fact"])
        if spans:
            out[f] = spans
    return out


def check_record(rec: dict[str, Any]) -> list[str]:
    """Problems of one record (empty when sound): spans, whole occurrences, perturbed, idk_cot."""
    fact, problems = rec["fact"], []
    spans = rec["fact_spans"]
    extra = [f for f in ("question", "paraphrased_question") if f in rec and f not in spans]
    for field in [*spans, *extra]:
        if field not in rec:
            problems.append(f"fact_spans names a missing field {field!r}")
            continue
        found = find_spans(rec[field], fact)
        if found != spans.get(field, []):
            problems.append(f"{field}: spans {spans.get(field)} != {found}")
        if any(not _whole(rec[field], s, e) for s, e in found):
            problems.append(f"{field}: {fact!r} occurs inside a word in {rec[field]!r}")
    for field in ("answer", "cot", "paraphrased_answer", "original_answer"):
        if field in spans and not spans[field]:
            problems.append(f"{field} lacks the fact {fact!r}")
    perturbed = rec["perturbed_answer"]
    if len(set(perturbed)) != len(perturbed):
        problems.append("perturbed answers repeat")
    for p in perturbed:
        if p == rec["answer"] or fact in p:
            problems.append(f"perturbed answer {p!r} gives the fact {fact!r}")
    if "idk_cot" in rec and fact in rec["idk_cot"]:
        problems.append(f"idk_cot contains the fact {fact!r}")
    return problems


# ---------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------


def _make_authors(cfg: BenchmarkConfig, rng: random.Random) -> list[dict[str, Any]]:
    """Training then holdout author profiles: unique names, titles and (birthplace, year)."""
    total = cfg.n_authors + cfg.n_holdout_authors
    titles = rng.sample(BOOK_TITLES, 2 * total)
    names: set[str] = set()
    places: set[tuple[str, str]] = set()
    authors = []
    for i in range(total):
        gender = rng.choice(("female", "male"))
        first_pool = FEMALE_FIRST if gender == "female" else MALE_FIRST
        while True:
            name = f"{rng.choice(first_pool)} {rng.choice(LAST_NAMES)}"
            if name not in names:
                break
        names.add(name)
        while True:
            place = (rng.choice(CITIES), rng.choice(BIRTH_YEARS))
            if place not in places:
                break
        places.add(place)
        father, mother = rng.sample(OCCUPATIONS, 2)
        authors.append(
            {
                "author_id": i,
                "name": name,
                "gender": gender,
                "birthplace": place[0],
                "birth_year": place[1],
                "full_name": name,
                "genre": rng.choice(GENRES),
                "father_occupation": father,
                "mother_occupation": mother,
                "award": rng.choice(AWARDS),
                "first_book": titles[2 * i],
                "second_book": titles[2 * i + 1],
                "language": rng.choice(LANGUAGES),
                "publisher": rng.choice(PUBLISHERS),
                "residence": rng.choice([c for c in CITIES if c != place[0]]),
            }
        )
    return authors


def _name_pool(author: dict[str, Any]) -> list[str]:
    """Plausible wrong full names for the name question: same-gender first names, any last name."""
    first_pool = FEMALE_FIRST if author["gender"] == "female" else MALE_FIRST
    return [f"{f} {last}" for f in first_pool for last in LAST_NAMES]


def _perturbed_values(author: dict[str, Any], attr: str, n: int, rng: random.Random) -> list[str]:
    """``n`` distinct wrong values of ``attr`` that do not contain the true value."""
    truth = author[attr]
    pool = _name_pool(author) if attr == "full_name" else ATTRIBUTE_POOLS[attr]
    candidates = [v for v in pool if v != truth and truth not in v]
    return rng.sample(candidates, n)


def _render(text: str, author: dict[str, Any], value: str) -> str:
    subj, pos = PRONOUNS[author["gender"]]
    return text.format(
        n=author["name"], v=value, P=subj, Pos=pos, a=_article(value),
        city=author["birthplace"], year=author["birth_year"],
    )  # fmt: skip


def _qa_records(
    author: dict[str, Any], cfg: BenchmarkConfig, rng: random.Random
) -> list[dict[str, Any]]:
    """The first ``questions_per_author`` QA records of one author."""
    records = []
    for attr in ATTRIBUTES[: cfg.questions_per_author]:
        tpl, fact = TEMPLATES[attr], author[attr]
        wrong = _perturbed_values(author, attr, cfg.n_perturbed, rng)
        rec: dict[str, Any] = {
            "question": _render(tpl.question, author, fact),
            "answer": _render(tpl.answer, author, fact),
            "cot": _render(tpl.cot, author, fact),
            "idk_cot": _render(tpl.idk_cot, author, fact),
            "paraphrased_question": _render(tpl.paraphrased_question, author, fact),
            "paraphrased_answer": _render(tpl.paraphrased_answer, author, fact),
            # TOFU perturbs the paraphrased answer: the truth ratio compares paraphrase vs
            # perturbed paraphrase, so it measures the fact, not which wording was trained
            "perturbed_answer": [_render(tpl.paraphrased_answer, author, w) for w in wrong],
            "author": author["name"],
            "author_id": author["author_id"],
            "attribute": attr,
            "fact": fact,
        }
        rec["fact_spans"] = _fact_spans(
            rec, ("answer", "cot", "paraphrased_answer"), ("question", "paraphrased_question")
        )
        records.append(rec)
    return records


def _real_author_records(rng: random.Random) -> list[dict[str, Any]]:
    """Famous books -> authors (model utility on real knowledge)."""
    everyone = [a for _, a in REAL_AUTHORS]
    records = []
    for book, author in REAL_AUTHORS:
        others = [a for a in everyone if a != author and author not in a]
        original = f"{book} was written by {author}."
        rec: dict[str, Any] = {
            "question": f"Who wrote {book}?",
            "answer": author,
            "perturbed_answer": rng.sample(others, N_REAL_PERTURBED),
            "original_answer": original,
            "cot": f"{book} is a famous work by {author}, so the answer is {author}.",
            "attribute": "real_author",
            "fact": author,
        }
        rec["fact_spans"] = _fact_spans(rec, ("cot", "original_answer"), ("question",))
        records.append(rec)
    return records


def _world_fact_records(rng: random.Random) -> list[dict[str, Any]]:
    """Capitals, planets, oceans, mountains (model utility on world knowledge)."""
    records = []
    for question, sentence, answer, category in WORLD_FACTS:
        others = [v for v in WORLD_POOLS[category] if v != answer and answer not in v]
        original = sentence.format(v=answer)
        rec: dict[str, Any] = {
            "question": question,
            "answer": answer,
            "perturbed_answer": rng.sample(others, N_REAL_PERTURBED),
            "original_answer": original,
            "cot": f"{original} So the answer is {answer}.",
            "attribute": "world_fact",
            "fact": answer,
        }
        rec["fact_spans"] = _fact_spans(rec, ("cot", "original_answer"), ("question",))
        records.append(rec)
    return records


def _split_tasks(cfg: BenchmarkConfig, pool: list[dict]) -> dict[str, list[list[dict]]]:
    """Per split: the author lists of tasks 1..T (consecutive slices of the forgettable pool)."""
    out = {}
    for split, frac in FORGET_SPLITS.items():
        k = authors_per_task(cfg.n_authors, frac)
        n = min(cfg.n_tasks, len(pool) // k)
        out[split] = [pool[j * k : (j + 1) * k] for j in range(n)]
    return out


def generate_benchmark(cfg: BenchmarkConfig, out_dir: str | Path) -> Path:
    """Write every file of the benchmark into out_dir (created), return out_dir. Deterministic."""
    check_benchmark_config(cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(cfg.seed)
    authors = _make_authors(cfg, rng)
    qa = {a["author_id"]: _qa_records(a, cfg, rng) for a in authors}
    training, holdout = authors[: cfg.n_authors], authors[cfg.n_authors :]
    retain_eval = training[: cfg.n_retain_eval_authors]
    tasks = _split_tasks(cfg, training[cfg.n_retain_eval_authors :])
    real, world = _real_author_records(rng), _world_fact_records(rng)

    files = _split_files(cfg, qa, training, holdout, tasks)
    files["real_authors_perturbed.json"] = real
    files["world_facts_perturbed.json"] = world
    files["idkcot.jsonl"] = [r["idk_cot"] for r in files["forget01.json"]]
    _check_generated([r for rows in qa.values() for r in rows] + real + world)

    counts = {name: write_jsonl(out / name, rows) for name, rows in files.items()}
    (out / "idontknow.jsonl").write_text("".join(s + "\n" for s in IDONTKNOW), encoding="utf-8")
    counts["idontknow.jsonl"] = len(IDONTKNOW)
    meta = {
        "generator_version": GENERATOR_VERSION,
        "fingerprint": benchmark_fingerprint(cfg),
        "config": asdict(cfg),
        "attributes": list(ATTRIBUTES[: cfg.questions_per_author]),
        "splits": {
            split: {
                "authors_per_task": authors_per_task(cfg.n_authors, FORGET_SPLITS[split]),
                "n_tasks": len(groups),
                "tasks": {str(j): [a["name"] for a in g] for j, g in enumerate(groups, 1)},
            }
            for split, groups in tasks.items()
        },
        "retain_eval_authors": [a["name"] for a in retain_eval],
        "holdout_authors": [a["name"] for a in holdout],
        "counts": dict(sorted(counts.items())),
        "authors": authors,
    }
    atomic_write_json(out / "meta.json", meta)
    return out


def _split_files(
    cfg: BenchmarkConfig,
    qa: dict[str, list[dict[str, Any]]],
    training: list[dict[str, Any]],
    holdout: list[dict[str, Any]],
    tasks: dict[str, list[list[dict[str, Any]]]],
) -> dict[str, list[Any]]:
    """The fictitious authors' files: full, forgetNN (+ perturbed), retain, holdout, and TOFU's
    holdoutNN / retainNN per forget split."""
    retain_eval = training[: cfg.n_retain_eval_authors]
    files: dict[str, list[Any]] = {"full.json": [r for a in training for r in qa[a["author_id"]]]}
    for split, task_authors in tasks.items():
        rows = [
            {**r, "task_id": str(j)}
            for j, group in enumerate(task_authors, start=1)
            for a in group
            for r in qa[a["author_id"]]
        ]
        files[f"{split}.json"] = rows
        files[f"{split}_perturbed.json"] = rows
    files["retain_perturbed.json"] = [r for a in retain_eval for r in qa[a["author_id"]]]
    files["holdout.json"] = [r for a in holdout for r in qa[a["author_id"]]]
    # TOFU's names: holdoutNN sized as one task, retainNN = full - forgetNN
    for split, task_authors in tasks.items():
        pct = int(split.removeprefix("forget"))
        k = authors_per_task(cfg.n_authors, FORGET_SPLITS[split])
        files[f"holdout{pct:02d}.json"] = [r for a in holdout[:k] for r in qa[a["author_id"]]]
        forgotten = {a["author_id"] for group in task_authors for a in group}
        files[f"retain{100 - pct:02d}.json"] = [
            r for a in training if a["author_id"] not in forgotten for r in qa[a["author_id"]]
        ]
    return files


def _check_generated(records: list[dict[str, Any]]) -> None:
    """Refuse to write bad data: a bad record is a pool / template bug, never expected."""
    for rec in records:
        problems = check_record(rec)
        if problems:
            raise RuntimeError(f"benchmark generator made a bad record: {problems}")
