"""An offline stand-in for MUSE (Shi et al. 2024, arXiv:2407.06460) in MUSE's file layout.

MUSE-News holds BBC articles; no dataset can be downloaded here, so this writes short invented
news articles (invented towns, people, organisations, dates and counts; 60-150 words, so a tiny
model can memorise them) from a seeded ``random.Random``: the same settings give byte-identical
files. Every article knows the [start, end] character spans of its fact values, written beside
each corpus as ``<split>_facts.json``; the generator checks each span before writing.

Files (single JSON lists, MUSE's names, see :data:`npo_lib.data.muse.MUSE_LAYOUT`):
``raw/{forget,retain1,retain2,holdout}.json`` (+ ``_facts``), ``verbmem/forget.json`` (the first
two sentences of a forget article as ``prompt``, the rest as ``gt``),
``knowmem/{forget_qa,retain2_qa}.json`` (questions on the facts, each with its article's ``doc``
index) and their ``_icl`` few-shot examples (from extra articles in no split),
``privleak/{forget,holdout,retain2}.json``, ``scal/forget_{1..4}.json`` (nested: the first k
quarters of forget) and ``sust/forget_{1..4}.json`` (the k-th quarter: pairwise disjoint), both
with ``_facts``; plus ``meta.json`` (settings and every article's fact values).
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from npo_lib.config import MuseStandinConfig
from npo_lib.embedded.benchmark import find_spans
from npo_lib.embedded.pools import FEMALE_FIRST, LAST_NAMES, MALE_FIRST
from npo_lib.errors import ConfigError
from npo_lib.utils.io import atomic_write_json

MUSE_GENERATOR_VERSION = "1"  # bump whenever the generated text changes

FACT_KINDS = ("town", "person", "org", "date", "count")
N_PARTS = 4  # scal / sust forget sets, as in MUSE
PROMPT_SENTENCES = 2  # verbmem: the article's first sentences are the prompt
# benchmark.muse.* keys that choose what a run reads, not what the generator writes: left out of
# the stand-in's settings (its cache key and meta.json), so every forget set shares one stand-in
# and one pair of tiny models
RUN_KEYS = ("forget_set",)


def generator_settings(cfg: MuseStandinConfig) -> dict[str, Any]:
    """The settings the generated files depend on: ``benchmark.muse.*`` less :data:`RUN_KEYS`."""
    return {k: v for k, v in asdict(cfg).items() if k not in RUN_KEYS}


# ---------------------------------------------------------------------------------------------
# Pools. Towns are made of two invented syllables; every value is unique per article.
# ---------------------------------------------------------------------------------------------

TOWN_HEADS = (
    "Ash", "Brack", "Cold", "Dun", "Ell", "Fen", "Gras", "Holl", "Ivel", "Kess", "Lam", "Mard",
    "Nor", "Oak", "Pell", "Quar", "Rud", "Sand", "Thorn", "Umber", "Vale", "Wick", "Yarr",
    "Zell", "Bram", "Carr", "Dray", "Hem", "Loft", "Mere",
)  # fmt: skip
TOWN_TAILS = (
    "bury", "combe", "ford", "gate", "holm", "mouth", "stead", "thwaite", "wick", "well",
)  # fmt: skip
ORG_WORDS = (
    "Amberley", "Birchwood", "Copperfield", "Dovecote", "Eastmoor", "Foxhollow", "Greyfriars",
    "Heathcote", "Ironbridge", "Juniper", "Kingsmead", "Larkhill", "Millbrook", "Northcliff",
    "Oldcastle", "Primrose", "Redbank", "Stonehaven", "Tidewater", "Upfield", "Westbrook",
    "Yewtree", "Harrowdale", "Cloverleigh",
)  # fmt: skip
MONTHS = (
    "January", "February", "March", "April", "May", "June", "July", "August", "September",
    "October", "November", "December",
)  # fmt: skip
YEARS = tuple(str(y) for y in range(2031, 2038))


@dataclass(frozen=True)
class Story:
    """One kind of news story: organisation kinds, fillers, sentences and fact questions.

    Sentences use ``{town} {person} {org} {date} {count}`` (facts, spanned) and ``{thing}`` (a
    filler). ``questions`` maps a fact kind to a question that names other facts, not it.
    """

    org_kinds: tuple[str, ...]
    things: tuple[str, ...]
    sentences: tuple[str, ...]
    questions: dict[str, str]


STORIES: tuple[Story, ...] = (
    Story(
        ("Transport Board", "Civic Trust", "Works Council"),
        ("footbridge", "tram depot", "bus station", "ferry terminal"),
        (
            "The {org} has opened a new {thing} in {town}, ending years of delays.",
            "The project was led by engineer {person}, who said the work had been harder than "
            "anyone expected.",
            "Officials said {count} residents came to the opening ceremony on {date}.",
            "{person} told reporters that the {thing} would cut journey times across the district.",
            "Local shopkeepers welcomed the news, although some said parking was still a problem.",
            "The {org} said repairs to the nearby roads would begin next spring.",
        ),
        {
            "town": "Where did the {org} open a new {thing}?",
            "person": "Which engineer led the {org}'s {thing} project?",
            "date": "On what date did the new {thing} in {town} open?",
            "count": "How many residents came to the opening of the {thing} in {town}?",
            "org": "Which organisation opened a new {thing} in {town}?",
        },
    ),
    Story(
        ("Arts Society", "Festival Guild", "Music Circle"),
        ("lantern festival", "folk festival", "kite festival", "harvest fair"),
        (
            "Crowds filled the streets of {town} on {date} for the first {thing} in a decade.",
            "The event was organised by the {org}, which had raised the money over two years.",
            "Its director, {person}, said {count} tickets had been sold by the end of the day.",
            "Stalls sold local cheese, cider and pottery, and a brass band played until midnight.",
            "Police said the evening passed without any serious trouble.",
            "{person} said the {org} hoped to make the {thing} a yearly tradition.",
        ),
        {
            "town": "In which town did the {org} hold its {thing}?",
            "person": "Who is the director of the {org}?",
            "date": "On what date was the {thing} in {town} held?",
            "count": "How many tickets were sold for the {thing} in {town}?",
            "org": "Which organisation organised the {thing} in {town}?",
        },
    ),
    Story(
        ("Lifeboat Crew", "Mountain Rescue Team", "Coastguard Unit"),
        ("fishing boat", "yacht", "walking party", "canoe club"),
        (
            "A {thing} was rescued near {town} on {date} after a storm blew in from the sea.",
            "Volunteers from the {org} spent six hours searching in heavy rain and strong wind.",
            "Team leader {person} said everyone on board had been brought home safely.",
            "The {org} has answered {count} calls for help since it was founded.",
            "{person} urged visitors to check the weather forecast before setting out.",
            "Two people were treated in hospital for cold and later allowed to go home.",
        ),
        {
            "town": "Near which town did the {org} rescue a {thing}?",
            "person": "Who is the team leader of the {org}?",
            "date": "On what date was the {thing} rescued near {town}?",
            "count": "How many calls for help has the {org} answered since it was founded?",
            "org": "Which volunteers rescued a {thing} near {town}?",
        },
    ),
    Story(
        ("Science Institute", "Field Survey", "Natural History Trust"),
        ("rare beetle", "hoard of old coins", "fossil reef", "lost orchid"),
        (
            "Researchers from the {org} have found a {thing} in the hills above {town}.",
            "The find was announced on {date} after months of careful checking.",
            "Lead researcher {person} said the discovery had surprised the whole team.",
            "The survey recorded {count} separate samples from the site.",
            "Landowners have agreed to keep the area closed while the work goes on.",
            "{person} said the {org} would publish its full results later in the year.",
        ),
        {
            "town": "Above which town did the {org} find a {thing}?",
            "person": "Who leads the research of the {org}?",
            "date": "On what date was the {thing} found above {town} announced?",
            "count": "How many samples did the {org} record at the site of the {thing}?",
            "org": "Which organisation found a {thing} above {town}?",
        },
    ),
)


def check_muse_standin_config(cfg: MuseStandinConfig) -> None:
    """The bounds the pools and the layout set; a ConfigError names the setting."""

    def need(name: str, lo: int, hi: int) -> None:
        value = getattr(cfg, name)
        if not lo <= value <= hi:
            raise ConfigError(f"benchmark.muse.{name} must be in [{lo}, {hi}], got {value}")

    need("n_forget", N_PARTS, 100)
    need("n_retain", 2, 120)
    need("n_holdout", 1, 100)
    need("qa_per_article", 1, len(FACT_KINDS))
    need("n_icl", 1, 10)


def _fill(template: str, values: dict[str, str], offset: int) -> tuple[str, list[list[Any]]]:
    """``template`` with ``values`` in, and ``[kind, start, end]`` of each fact placed (start and
    end shifted by ``offset``, the sentence's place in the article)."""
    out, spans = "", []
    for literal, field, _, _ in string.Formatter().parse(template):
        out += literal
        if field is None:
            continue
        if field in FACT_KINDS:
            spans.append([field, offset + len(out), offset + len(out) + len(values[field])])
        out += values[field]
    return out, spans


class _Names:
    """Draws values no earlier article used, so every fact points at one article."""

    def __init__(self, rng: random.Random) -> None:
        self.rng, self.used = rng, set()

    def draw(self, make: Callable[[], str]) -> str:
        while True:
            value = make()
            if value not in self.used:
                self.used.add(value)
                return value


def _article(rng: random.Random, names: _Names) -> dict[str, Any]:
    """One article: its text, facts, fact spans, story and filler, and where its prompt ends."""
    story = rng.choice(STORIES)
    first = FEMALE_FIRST + MALE_FIRST
    facts = {
        "town": names.draw(lambda: rng.choice(TOWN_HEADS) + rng.choice(TOWN_TAILS)),
        "person": names.draw(lambda: f"{rng.choice(first)} {rng.choice(LAST_NAMES)}"),
        "org": names.draw(lambda: f"{rng.choice(ORG_WORDS)} {rng.choice(story.org_kinds)}"),
        "date": f"{rng.randint(1, 28)} {rng.choice(MONTHS)} {rng.choice(YEARS)}",
        "count": f"{rng.randrange(1200, 9800):,}",
    }
    values = {**facts, "thing": rng.choice(story.things)}
    text, spans, prompt_end = "", [], 0
    for i, sentence in enumerate(story.sentences):
        if text:
            text += " "
        filled, placed = _fill(sentence, values, len(text))
        text += filled
        spans += placed
        if i == PROMPT_SENTENCES - 1:
            prompt_end = len(text)
    return {
        "text": text,
        "facts": facts,
        "spans": [[s, e] for _, s, e in spans],
        "span_kinds": [k for k, _, _ in spans],
        "story": STORIES.index(story),
        "values": values,
        "prompt_end": prompt_end,
    }


def _questions(
    article: dict[str, Any], n: int, rng: random.Random, doc: int | None
) -> list[dict[str, Any]]:
    """``n`` QA records on distinct facts of ``article`` (answer: the fact value); ``doc``, the
    article's index in its raw split, is kept with each record when given."""
    story = STORIES[article["story"]]
    out = []
    for kind in rng.sample(FACT_KINDS, n):
        rec: dict[str, Any] = {
            "question": story.questions[kind].format(**article["values"]),
            "answer": article["facts"][kind],
        }
        if rec["answer"] in rec["question"]:
            raise RuntimeError(f"MUSE stand-in question gives its answer away: {rec}")
        if doc is not None:
            rec["doc"] = doc
        out.append(rec)
    return out


def article_problems(article: dict[str, Any]) -> list[str]:
    """Problems of one generated article (empty when sound): every span holds its fact value,
    is found by :func:`find_spans`, and is not glued to a letter or digit; 60-150 words."""
    text, problems = article["text"], []
    for kind, (s, e) in zip(article["span_kinds"], article["spans"], strict=True):
        value = article["facts"][kind]
        if text[s:e] != value or [s, e] not in find_spans(text, value):
            problems.append(f"span [{s}, {e}] is {text[s:e]!r}, not the {kind} {value!r}")
        elif (s > 0 and text[s - 1].isalnum()) or (e < len(text) and text[e].isalnum()):
            problems.append(f"{kind} {value!r} at [{s}, {e}] is glued to a word")
    for kind in FACT_KINDS:
        if kind not in article["span_kinds"]:
            problems.append(f"the {kind} {article['facts'][kind]!r} is not in the text")
    words = len(text.split())
    if not 60 <= words <= 150:
        problems.append(f"{words} words, outside 60-150")
    return problems


def _quarters(n: int) -> list[tuple[int, int]]:
    """[start, end) of the N_PARTS near-equal consecutive parts of n items."""
    cuts = [round(k * n / N_PARTS) for k in range(N_PARTS + 1)]
    return list(zip(cuts[:-1], cuts[1:]))


def _layout_files(
    cfg: MuseStandinConfig, arts: dict[str, list[dict[str, Any]]], rng: random.Random
) -> dict[str, Any]:
    """Every file of the layout, by path relative to the folder, from the generated articles."""
    files: dict[str, Any] = {}
    for split in ("forget", "retain1", "retain2", "holdout"):
        files[f"raw/{split}.json"] = [a["text"] for a in arts[split]]
        files[f"raw/{split}_facts.json"] = [a["spans"] for a in arts[split]]
    forget = arts["forget"]
    files["verbmem/forget.json"] = [
        {"prompt": a["text"][: a["prompt_end"]], "gt": a["text"][a["prompt_end"] :]} for a in forget
    ]
    for split in ("forget", "retain2"):
        files[f"knowmem/{split}_qa.json"] = [
            q for i, a in enumerate(arts[split]) for q in _questions(a, cfg.qa_per_article, rng, i)
        ]
        files[f"knowmem/{split}_qa_icl.json"] = [
            _questions(a, 1, rng, None)[0] for a in arts[f"{split}_icl"]
        ]
    for split in ("forget", "holdout", "retain2"):
        files[f"privleak/{split}.json"] = [a["text"] for a in arts[split]]
    for k, (lo, hi) in enumerate(_quarters(len(forget)), 1):
        for subset, part in (("scal", forget[:hi]), ("sust", forget[lo:hi])):
            files[f"{subset}/forget_{k}.json"] = [a["text"] for a in part]
            files[f"{subset}/forget_{k}_facts.json"] = [a["spans"] for a in part]
    return files


def generate_muse_standin(cfg: MuseStandinConfig, out_dir: str | Path) -> Path:
    """Write the stand-in's full MUSE layout into ``out_dir`` (created) and return it.

    Deterministic: the same ``cfg`` gives byte-identical files. Raises RuntimeError if an article
    fails :func:`article_problems` (a template or pool bug, never expected).
    """
    check_muse_standin_config(cfg)
    out = Path(out_dir)
    rng = random.Random(cfg.seed)
    names = _Names(rng)
    n_r1 = cfg.n_retain // 2
    sizes = {
        "forget": cfg.n_forget,
        "retain1": n_r1,
        "retain2": cfg.n_retain - n_r1,
        "holdout": cfg.n_holdout,
        "forget_icl": cfg.n_icl,
        "retain2_icl": cfg.n_icl,
    }
    arts = {split: [_article(rng, names) for _ in range(n)] for split, n in sizes.items()}
    for split, articles in arts.items():
        for i, a in enumerate(articles):
            problems = article_problems(a)
            if problems:
                raise RuntimeError(f"MUSE stand-in made a bad {split} article {i}: {problems}")

    files = _layout_files(cfg, arts, rng)
    for name, items in files.items():
        atomic_write_json(out / name, items)
    meta = {
        "generator_version": MUSE_GENERATOR_VERSION,
        "config": generator_settings(cfg),
        "counts": {name: len(items) for name, items in sorted(files.items())},
        "facts": {
            split: [{**a["facts"], "kinds": a["span_kinds"]} for a in arts[split]]
            for split in ("forget", "retain1", "retain2", "holdout")
        },
    }
    atomic_write_json(out / "meta.json", meta)
    return out
