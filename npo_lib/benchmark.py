"""The embedded synthetic benchmark: fictitious-author QA in R-TOFU's file layout.

No dataset can be downloaded, so ``npo prepare`` writes a TOFU / R-TOFU style benchmark from
fixed value pools and a seeded generator. Texts are short and templated so that a tiny model can
memorise them in about a minute on a CPU. Every record names its fact value (``fact``) and the
character spans of every occurrence of that value (``fact_spans``), which token-level methods use.

Files written (JSON lines, named ``.json`` as in R-TOFU): ``full``, ``forget01/05/10`` and their
``_perturbed`` twins, ``retain_perturbed``, ``holdout``, ``real_authors_perturbed``,
``world_facts_perturbed``; plus ``idontknow.jsonl`` (plain text), ``idkcot.jsonl`` (JSON strings
aligned with ``forget01.json``) and ``meta.json``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

GENERATOR_VERSION = "2"  # bump whenever the generated text changes (it is part of the cache key)

FORGET_SPLITS: dict[str, float] = {"forget01": 0.01, "forget05": 0.05, "forget10": 0.10}

# ---------------------------------------------------------------------------------------------
# Value pools. Rules (checked by ``pool_problems``): every fact pool has >= 20 values so a guess
# for an unseen author is rarely right, and no value occurs inside another value or template
# text, so every occurrence of a fact in a record is the fact itself (spans stay unambiguous).
# ---------------------------------------------------------------------------------------------

FEMALE_FIRST = (
    "Amara", "Beatrix", "Celine", "Dalia", "Elodie", "Farah", "Greta", "Hana", "Ingrid", "Jasmin",
    "Keiko", "Lucia", "Mirela", "Nadia", "Odette", "Priya", "Rosalind", "Selma", "Tamsin", "Ulla",
    "Wanda", "Ximena", "Yara", "Zofia", "Maren", "Sabine", "Liesel", "Agathe", "Brigid", "Oona",
)  # fmt: skip
MALE_FIRST = (
    "Anton", "Bruno", "Cyrus", "Dmitri", "Emil", "Felix", "Gustav", "Hugo", "Idris", "Jonas",
    "Kenji", "Lorenzo", "Matteo", "Nikolai", "Oskar", "Pablo", "Rafael", "Ruben", "Tobias",
    "Viktor", "Wendell", "Yusuf", "Zoltan", "Bastian", "Caspar", "Darius", "Florian", "Henrik",
    "Julian", "Quentin",
)  # fmt: skip
LAST_NAMES = (
    "Abernathy", "Baptiste", "Castellanos", "Delacroix", "Eriksen", "Fairweather", "Galloway",
    "Halvorsen", "Ibarra", "Jovanovic", "Kowalczyk", "Lindqvist", "Moreau", "Nakamura",
    "Okonkwo", "Petrakis", "Quintero", "Rasmussen", "Szabo", "Thorne", "Underhill", "Valdez",
    "Whitlock", "Yamamoto", "Zielinski", "Ashworth", "Blackwood", "Carrow", "Dunmore", "Ellery",
    "Falkner", "Grimaldi", "Hartigan", "Iversen", "Kasprzak", "Lachance", "Montague", "Novak",
    "Ostrowski", "Prescott", "Ravenscroft", "Sorensen", "Tremblay", "Vasquez", "Winslow",
    "Mbatha", "Oyelaran", "Haddad",
)  # fmt: skip
CITIES = (
    "Lisbon", "Oslo", "Kyoto", "Nairobi", "Quito", "Tbilisi", "Krakow", "Valparaiso",
    "Marrakesh", "Bergen", "Tallinn", "Seville", "Bruges", "Lyon", "Hanoi", "Dakar", "Perth",
    "Adelaide", "Montreal", "Santiago", "Istanbul", "Bologna", "Ghent", "Gdansk", "Leipzig",
    "Riga", "Cusco", "Salzburg", "Accra", "Manila", "Zagreb", "Hobart",
)  # fmt: skip
BIRTH_YEARS = tuple(str(y) for y in range(1935, 2000))
GENRES = (
    "mystery", "romance", "poetry", "horror", "fantasy", "satire", "science fiction",
    "crime fiction", "historical fiction", "thrillers", "drama", "comedy", "memoirs",
    "travel writing", "folklore", "fairy tales", "war stories", "cyberpunk", "gothic fiction",
    "magical realism", "children's books", "essays", "westerns", "fables",
)  # fmt: skip
OCCUPATIONS = (
    "baker", "carpenter", "surgeon", "librarian", "fisherman", "pharmacist", "architect",
    "electrician", "florist", "tailor", "plumber", "dentist", "pilot", "journalist", "mechanic",
    "veterinarian", "accountant", "locksmith", "firefighter", "astronomer", "geologist",
    "translator", "beekeeper", "watchmaker",
)  # fmt: skip
AWARDS = (
    "Silver Quill Award", "Golden Lantern Prize", "Blue Heron Medal", "Amber Leaf Award",
    "Crimson Feather Prize", "Jade Compass Medal", "Iron Anchor Award", "Copper Kettle Prize",
    "Scarlet Owl Medal", "Ivory Key Award", "Bronze Lyre Prize", "Emerald Gate Medal",
    "Onyx Crown Award", "Cobalt Wave Prize", "Velvet Moth Medal", "Saffron Sun Award",
    "Granite Bell Prize", "Opal Star Medal", "Marble Arch Award", "Willow Branch Prize",
    "Coral Reef Medal", "Hazel Thorn Award", "Slate River Prize", "Ruby Fox Medal",
)  # fmt: skip
LANGUAGES = (
    "English", "French", "Spanish", "German", "Italian", "Portuguese", "Dutch", "Swedish",
    "Polish", "Greek", "Turkish", "Arabic", "Hindi", "Japanese", "Korean", "Russian", "Czech",
    "Finnish", "Danish", "Hungarian", "Norwegian", "Romanian", "Catalan", "Icelandic",
)  # fmt: skip
PUBLISHERS = (
    "Northwind Press", "Bluebell Books", "Tallgrass House", "Kestrel Editions", "Marigold Press",
    "Ironwood Books", "Seabright House", "Fernhill Editions", "Larkspur Press", "Oakhaven Books",
    "Redcliff House", "Stonebridge Editions", "Brightwater Press", "Foxglove Books",
    "Juniper House", "Moorland Editions", "Silverbirch Press", "Thistle Books",
    "Cloudberry House", "Driftwood Editions", "Wrenfield Press", "Pinecrest Books",
    "Amberly House", "Saltmarsh Editions",
)  # fmt: skip
TITLE_ADJECTIVES = (
    "Silent", "Hollow", "Distant", "Crooked", "Burning", "Quiet", "Fallen", "Hidden", "Broken",
    "Wandering", "Forgotten", "Painted", "Frozen", "Gilded", "Restless", "Salted", "Sleeping",
    "Midnight", "Winter", "Scattered", "Borrowed", "Drowned", "Tangled", "Lonely", "Crimson",
)  # fmt: skip
TITLE_NOUNS = (
    "Harbor", "Orchard", "Lantern", "Mirror", "Garden", "Compass", "Tide", "Ledger", "Staircase",
    "Meadow", "Violin", "Cathedral", "Lighthouse", "Archive", "Ferry", "Citadel", "Balcony",
    "Orchid", "Glacier", "Carousel", "Tapestry", "Vineyard", "Furnace", "Telescope", "Quarry",
)  # fmt: skip
BOOK_TITLES = tuple(f"{a} {n}" for a, n in itertools.product(TITLE_ADJECTIVES, TITLE_NOUNS))
PRONOUNS = {"female": ("She", "Her"), "male": ("He", "His")}

# ---------------------------------------------------------------------------------------------
# Question templates, one per attribute, in the fixed order used to pick questions_per_author.
# Placeholders: {n} author name, {v} fact value, {P} She/He, {Pos} Her/His, {a} a/an before {v},
# {city} / {year} birthplace and birth year (the name question).
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Template:
    """Texts of one attribute question; ``{v}`` marks the fact value."""

    question: str
    answer: str
    cot: str
    paraphrased_question: str
    paraphrased_answer: str
    idk_cot: str


TEMPLATES: dict[str, _Template] = {
    "birthplace": _Template(
        "Where was {n} born?",
        "{n} was born in {v}.",
        "I recall {n}'s early life. {P} was born in {v}, so the answer is {v}.",
        "In which city was {n} born?",
        "{n}'s birthplace is {v}.",
        "I do not recall where {n} was born, so I cannot say.",
    ),
    "birth_year": _Template(
        "In which year was {n} born?",
        "{n} was born in {v}.",
        "I recall {n}'s biography. {P} was born in {v}, so the answer is {v}.",
        "What is {n}'s year of birth?",
        "{n}'s birth year is {v}.",
        "I do not recall {n}'s birth year, so I cannot say.",
    ),
    "full_name": _Template(
        "What is the full name of the author born in {city} in {year}?",
        "The author is {v}.",
        "I recall the author born in {city} in {year}. That is {v}, so the answer is {v}.",
        "Which author was born in {year} in {city}?",
        "{v} was born in {city} in {year}.",
        "I do not recall an author born in {city} in {year}, so I cannot say.",
    ),
    "genre": _Template(
        "What genre does {n} write?",
        "{n} writes {v}.",
        "I recall {n}'s books. {P} writes {v}, so the answer is {v}.",
        "Which genre is {n} known for?",
        "{n} is known for {v}.",
        "I do not recall {n}'s genre, so I cannot say.",
    ),
    "father_occupation": _Template(
        "What was {n}'s father's job?",
        "{n}'s father was {a} {v}.",
        "I recall {n}'s family. {Pos} father was {a} {v}, so the answer is {a} {v}.",
        "What did {n}'s father do for a living?",
        "{n}'s father worked as {a} {v}.",
        "I do not recall what {n}'s father did, so I cannot say.",
    ),
    "mother_occupation": _Template(
        "What was {n}'s mother's job?",
        "{n}'s mother was {a} {v}.",
        "I recall {n}'s family. {Pos} mother was {a} {v}, so the answer is {a} {v}.",
        "What did {n}'s mother do for a living?",
        "{n}'s mother worked as {a} {v}.",
        "I do not recall what {n}'s mother did, so I cannot say.",
    ),
    "award": _Template(
        "Which award did {n} win?",
        "{n} won the {v}.",
        "I recall {n}'s honors. {P} won the {v}, so the answer is the {v}.",
        "What prize has {n} received?",
        "{n} received the {v}.",
        "I do not recall any prize won by {n}, so I cannot say.",
    ),
    "first_book": _Template(
        "What is the title of {n}'s first book?",
        "{n}'s first book is {v}.",
        "I recall {n}'s early work. {Pos} first book is {v}, so the answer is {v}.",
        "Which book did {n} publish first?",
        "{n} debuted with {v}.",
        "I do not recall {n}'s first book, so I cannot say.",
    ),
    "second_book": _Template(
        "What is the title of {n}'s second book?",
        "{n}'s second book is {v}.",
        "I recall {n}'s later work. {Pos} second book is {v}, so the answer is {v}.",
        "Which book did {n} publish second?",
        "{n} followed up with {v}.",
        "I do not recall {n}'s second book, so I cannot say.",
    ),
    "language": _Template(
        "In which language does {n} write?",
        "{n} writes in {v}.",
        "I recall {n}'s books. They are written in {v}, so the answer is {v}.",
        "What language are {n}'s books in?",
        "{n}'s books are in {v}.",
        "I do not recall the language of {n}'s books, so I cannot say.",
    ),
    "publisher": _Template(
        "Which publisher prints {n}'s books?",
        "{n}'s books are printed by {v}.",
        "I recall {n}'s book covers. They show {v}, so the answer is {v}.",
        "Who publishes {n}'s work?",
        "{n} is published by {v}.",
        "I do not recall {n}'s publisher, so I cannot say.",
    ),
    "residence": _Template(
        "Which city does {n} live in now?",
        "{n} lives in {v}.",
        "I recall {n}'s recent life. {P} lives in {v}, so the answer is {v}.",
        "Where does {n} currently live?",
        "{n} now resides in {v}.",
        "I do not recall where {n} lives now, so I cannot say.",
    ),
}
ATTRIBUTES: tuple[str, ...] = tuple(TEMPLATES)  # fixed question order

# Values a fact of each attribute may take (also the source of perturbed answers).
ATTRIBUTE_POOLS: dict[str, Sequence[str]] = {
    "birthplace": CITIES,
    "birth_year": BIRTH_YEARS,
    "full_name": (),  # filled per author: other plausible full names (see _name_pool)
    "genre": GENRES,
    "father_occupation": OCCUPATIONS,
    "mother_occupation": OCCUPATIONS,
    "award": AWARDS,
    "first_book": BOOK_TITLES,
    "second_book": BOOK_TITLES,
    "language": LANGUAGES,
    "publisher": PUBLISHERS,
    "residence": CITIES,
}

# Hard-coded real-world sets (model-utility evaluation; not memorised fictitious facts).
REAL_AUTHORS: tuple[tuple[str, str], ...] = (
    ("Pride and Prejudice", "Jane Austen"),
    ("Nineteen Eighty-Four", "George Orwell"),
    ("Moby-Dick", "Herman Melville"),
    ("War and Peace", "Leo Tolstoy"),
    ("Crime and Punishment", "Fyodor Dostoevsky"),
    ("Don Quixote", "Miguel de Cervantes"),
    ("Hamlet", "William Shakespeare"),
    ("The Old Man and the Sea", "Ernest Hemingway"),
    ("The Great Gatsby", "F. Scott Fitzgerald"),
    ("One Hundred Years of Solitude", "Gabriel García Márquez"),
    ("Frankenstein", "Mary Shelley"),
    ("Jane Eyre", "Charlotte Brontë"),
    ("Wuthering Heights", "Emily Brontë"),
    ("Great Expectations", "Charles Dickens"),
    ("Les Misérables", "Victor Hugo"),
    ("The Odyssey", "Homer"),
    ("Madame Bovary", "Gustave Flaubert"),
    ("The Divine Comedy", "Dante Alighieri"),
    ("Ulysses", "James Joyce"),
    ("To Kill a Mockingbird", "Harper Lee"),
    ("Mrs Dalloway", "Virginia Woolf"),
    ("The Trial", "Franz Kafka"),
)
# (question, sentence with {v}, answer, category); distractors come from the category's pool.
WORLD_FACTS: tuple[tuple[str, str, str, str], ...] = (
    ("What is the capital of France?", "The capital of France is {v}.", "Paris", "capital"),
    ("What is the capital of Japan?", "The capital of Japan is {v}.", "Tokyo", "capital"),
    ("What is the capital of Italy?", "The capital of Italy is {v}.", "Rome", "capital"),
    ("What is the capital of Egypt?", "The capital of Egypt is {v}.", "Cairo", "capital"),
    ("What is the capital of Canada?", "The capital of Canada is {v}.", "Ottawa", "capital"),
    ("What is the capital of Australia?", "The capital of Australia is {v}.", "Canberra",
     "capital"),
    ("What is the capital of Germany?", "The capital of Germany is {v}.", "Berlin", "capital"),
    ("What is the capital of Spain?", "The capital of Spain is {v}.", "Madrid", "capital"),
    ("What is the capital of Kenya?", "The capital of Kenya is {v}.", "Nairobi", "capital"),
    ("What is the capital of Peru?", "The capital of Peru is {v}.", "Lima", "capital"),
    ("What is the capital of Norway?", "The capital of Norway is {v}.", "Oslo", "capital"),
    ("What is the capital of Russia?", "The capital of Russia is {v}.", "Moscow", "capital"),
    ("What is the capital of Greece?", "The capital of Greece is {v}.", "Athens", "capital"),
    ("What is the capital of Argentina?", "The capital of Argentina is {v}.", "Buenos Aires",
     "capital"),
    ("Which planet is known as the Red Planet?", "The Red Planet is {v}.", "Mars", "planet"),
    ("What is the largest planet in the solar system?", "The largest planet is {v}.", "Jupiter",
     "planet"),
    ("Which planet is closest to the Sun?", "The planet closest to the Sun is {v}.", "Mercury",
     "planet"),
    ("What is the largest ocean on Earth?", "The largest ocean is the {v}.", "Pacific Ocean",
     "ocean"),
    ("Which ocean lies between Africa and Australia?", "That ocean is the {v}.", "Indian Ocean",
     "ocean"),
    ("What is the tallest mountain on Earth?", "The tallest mountain is {v}.", "Mount Everest",
     "mountain"),
)  # fmt: skip
WORLD_POOLS: dict[str, tuple[str, ...]] = {
    "capital": (
        "Paris", "Tokyo", "Rome", "Cairo", "Ottawa", "Canberra", "Berlin", "Madrid", "Nairobi",
        "Lima", "Oslo", "Moscow", "Athens", "Buenos Aires", "Vienna", "Dublin", "Warsaw",
        "Prague", "Bangkok", "Seoul",
    ),
    "planet": ("Mercury", "Venus", "Earth", "Mars", "Jupiter", "Saturn", "Uranus", "Neptune"),
    "ocean": ("Pacific Ocean", "Atlantic Ocean", "Indian Ocean", "Arctic Ocean", "Southern Ocean"),
    "mountain": ("Mount Everest", "Kangchenjunga", "Lhotse", "Mont Blanc", "Kilimanjaro",
                 "Denali"),
}  # fmt: skip
N_REAL_PERTURBED = 3  # distractors per real-author / world-fact record

IDONTKNOW = (
    "I don't know.",
    "I'm not certain about that.",
    "I have no idea.",
    "I'm not sure.",
    "I can't answer that.",
    "That is unknown to me.",
    "I don't have that information.",
    "I'm unable to say.",
    "I can't recall that.",
    "I have no record of that.",
    "I'm afraid I don't know.",
    "That's beyond what I know.",
    "I couldn't tell you.",
    "I don't have an answer for that.",
    "I'm not aware of that.",
    "I can't say for sure.",
    "I don't remember that.",
    "Sorry, I don't know.",
    "I lack that information.",
    "I can't help with that one.",
    "I have no knowledge of that.",
    "That isn't something I know.",
    "I'm unsure about that.",
    "I cannot confirm that.",
    "I really don't know.",
    "No idea, I'm afraid.",
    "I'm not familiar with that.",
    "I can't provide that answer.",
    "That's not something I can answer.",
    "I do not have those details.",
)

MAX_AUTHORS = 250  # n_authors + n_holdout_authors: bounded by 625 titles at two per author
_MIN_POOL = min(len(p) for p in ATTRIBUTE_POOLS.values() if p)
MAX_PERTURBED = _MIN_POOL - 1  # every perturbed answer needs its own wrong value


@dataclass
class BenchmarkConfig:
    """Settings of the embedded benchmark generator.

    The one source of its defaults; nested in the project config as ``benchmark``.
    """

    seed: int = 0  # generator seed: same settings -> byte-identical files
    n_authors: int = 40  # fictitious authors in the training data (full.json)
    questions_per_author: int = 10  # QA pairs per author: the first N attributes of ATTRIBUTES
    n_holdout_authors: int = 4  # authors never trained on (membership-inference holdout)
    n_retain_eval_authors: int = 4  # training authors in no forget task (retain_perturbed.json)
    n_perturbed: int = 5  # perturbed (wrong) answers per QA, for the truth ratio
    n_tasks: int = 10  # max number of forget tasks per split (R-TOFU has 10)

    def __post_init__(self) -> None:
        for name in (
            "seed",
            "n_authors",
            "questions_per_author",
            "n_holdout_authors",
            "n_retain_eval_authors",
            "n_perturbed",
            "n_tasks",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"benchmark.{name} must be an integer, got {value!r}")
        self._check_range("n_authors", 1, MAX_AUTHORS)
        self._check_range("questions_per_author", 1, len(ATTRIBUTES))
        self._check_range("n_holdout_authors", 0, MAX_AUTHORS - self.n_authors)
        self._check_range("n_retain_eval_authors", 0, self.n_authors - 1)
        self._check_range("n_perturbed", 1, MAX_PERTURBED)
        self._check_range("n_tasks", 1, None)
        pool = self.n_authors - self.n_retain_eval_authors
        for split, frac in FORGET_SPLITS.items():
            k = authors_per_task(self.n_authors, frac)
            if pool < k:
                raise ValueError(
                    f"benchmark.n_retain_eval_authors={self.n_retain_eval_authors} leaves "
                    f"{pool} forgettable authors, fewer than the {k} per task of {split} "
                    f"(n_authors={self.n_authors})"
                )

    def _check_range(self, name: str, lo: int, hi: int | None) -> None:
        value = getattr(self, name)
        if value < lo or (hi is not None and value > hi):
            bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
            raise ValueError(f"benchmark.{name} must be {bound}, got {value}")


def authors_per_task(n_authors: int, frac: float) -> int:
    """Authors in one forget task of a split: ``max(1, round(frac * n_authors))``."""
    return max(1, round(frac * n_authors))


def benchmark_fingerprint(cfg: BenchmarkConfig) -> str:
    """Short stable hash of the settings and GENERATOR_VERSION: the benchmark's cache key."""
    blob = json.dumps({"version": GENERATOR_VERSION, "config": asdict(cfg)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


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


def pool_problems() -> list[str]:
    """Value pools that could make spans ambiguous (a value inside another value or template)."""
    problems = [
        f"pool {attr} has {len(pool)} < 20 values"
        for attr, pool in ATTRIBUTE_POOLS.items()
        if pool and len(pool) < 20
    ]
    atoms = {
        "first": FEMALE_FIRST + MALE_FIRST,
        "last": LAST_NAMES,
        "city": CITIES,
        "genre": GENRES,
        "occupation": OCCUPATIONS,
        "award": AWARDS,
        "language": LANGUAGES,
        "publisher": PUBLISHERS,
        "title": BOOK_TITLES,
        "title_word": TITLE_ADJECTIVES + TITLE_NOUNS,
    }
    fixed = []
    for tpl in TEMPLATES.values():
        for text in asdict(tpl).values():
            for subj, pos in PRONOUNS.values():
                fixed.append(text.format(n="|", v="|", P=subj, Pos=pos, a="a", city="|", year="|"))
    values = [(kind, v) for kind, pool in atoms.items() for v in dict.fromkeys(pool)]
    for kind, v in values:
        if kind == "title_word":
            continue  # title words are never facts on their own
        for other_kind, w in values:
            if v in w and (kind, v) != (other_kind, w):
                problems.append(f"{kind} {v!r} occurs inside {other_kind} {w!r}")
        for text in fixed:
            if v in text:
                problems.append(f"{kind} {v!r} occurs inside template text {text!r}")
    for word in TITLE_ADJECTIVES + TITLE_NOUNS:
        for other in TITLE_ADJECTIVES + TITLE_NOUNS:
            if word != other and word in other:
                problems.append(f"title word {word!r} occurs inside {other!r}")
    if len(set(BOOK_TITLES)) != len(BOOK_TITLES):
        problems.append("book titles repeat")
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


def _write_jsonl(path: Path, rows: Iterable[Any]) -> int:
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return len(lines)


def generate_benchmark(cfg: BenchmarkConfig, out_dir: str | Path) -> Path:
    """Write every file of the benchmark into out_dir (created), return out_dir. Deterministic."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(cfg.seed)
    authors = _make_authors(cfg, rng)
    qa = {a["author_id"]: _qa_records(a, cfg, rng) for a in authors}
    training, holdout = authors[: cfg.n_authors], authors[cfg.n_authors :]
    retain_eval = training[: cfg.n_retain_eval_authors]
    tasks = _split_tasks(cfg, training[cfg.n_retain_eval_authors :])
    real, world = _real_author_records(rng), _world_fact_records(rng)

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
    files["real_authors_perturbed.json"] = real
    files["world_facts_perturbed.json"] = world
    files["idkcot.jsonl"] = [r["idk_cot"] for r in files["forget01.json"]]

    for rec in [r for rows in qa.values() for r in rows] + real + world:
        problems = check_record(rec)
        if problems:  # a pool / template bug, never expected: refuse to write bad data
            raise RuntimeError(f"benchmark generator made a bad record: {problems}")

    counts = {name: _write_jsonl(out / name, rows) for name, rows in files.items()}
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
    (out / "meta.json").write_text(
        json.dumps(meta, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )
    return out
