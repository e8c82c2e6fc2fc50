"""The value pools and templates of the embedded benchmark: what its fictitious authors are made of.

Rules (checked by :func:`pool_problems`): every fact pool has >= 20 values so a guess for an
unseen author is rarely right, and no value occurs inside another value or template text, so
every occurrence of a fact in a record is the fact itself (spans stay unambiguous).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import asdict, dataclass

GENERATOR_VERSION = "3"  # bump whenever the generated text changes (it is part of the cache key)

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
class Template:
    """Texts of one attribute question; ``{v}`` marks the fact value."""

    question: str
    answer: str
    cot: str
    paraphrased_question: str
    paraphrased_answer: str
    idk_cot: str


TEMPLATES: dict[str, Template] = {
    "birthplace": Template(
        "Where was {n} born?",
        "{n} was born in {v}.",
        "I recall {n}'s early life. {P} was born in {v}, so the answer is {v}.",
        "In which city was {n} born?",
        "{n}'s birthplace is {v}.",
        "I do not recall where {n} was born, so I cannot say.",
    ),
    "birth_year": Template(
        "In which year was {n} born?",
        "{n} was born in {v}.",
        "I recall {n}'s biography. {P} was born in {v}, so the answer is {v}.",
        "What is {n}'s year of birth?",
        "{n}'s birth year is {v}.",
        "I do not recall {n}'s birth year, so I cannot say.",
    ),
    "full_name": Template(
        "What is the full name of the author born in {city} in {year}?",
        "The author is {v}.",
        "I recall the author born in {city} in {year}. That is {v}, so the answer is {v}.",
        "Which author was born in {year} in {city}?",
        "{v} was born in {city} in {year}.",
        "I do not recall an author born in {city} in {year}, so I cannot say.",
    ),
    "genre": Template(
        "What genre does {n} write?",
        "{n} writes {v}.",
        "I recall {n}'s books. {P} writes {v}, so the answer is {v}.",
        "Which genre is {n} known for?",
        "{n} is known for {v}.",
        "I do not recall {n}'s genre, so I cannot say.",
    ),
    "father_occupation": Template(
        "What was {n}'s father's job?",
        "{n}'s father was {a} {v}.",
        "I recall {n}'s family. {Pos} father was {a} {v}, so the answer is {a} {v}.",
        "What did {n}'s father do for a living?",
        "{n}'s father worked as {a} {v}.",
        "I do not recall what {n}'s father did, so I cannot say.",
    ),
    "mother_occupation": Template(
        "What was {n}'s mother's job?",
        "{n}'s mother was {a} {v}.",
        "I recall {n}'s family. {Pos} mother was {a} {v}, so the answer is {a} {v}.",
        "What did {n}'s mother do for a living?",
        "{n}'s mother worked as {a} {v}.",
        "I do not recall what {n}'s mother did, so I cannot say.",
    ),
    "award": Template(
        "Which award did {n} win?",
        "{n} won the {v}.",
        "I recall {n}'s honors. {P} won the {v}, so the answer is the {v}.",
        "What prize has {n} received?",
        "{n} received the {v}.",
        "I do not recall any prize won by {n}, so I cannot say.",
    ),
    "first_book": Template(
        "What is the title of {n}'s first book?",
        "{n}'s first book is {v}.",
        "I recall {n}'s early work. {Pos} first book is {v}, so the answer is {v}.",
        "Which book did {n} publish first?",
        "{n} debuted with {v}.",
        "I do not recall {n}'s first book, so I cannot say.",
    ),
    "second_book": Template(
        "What is the title of {n}'s second book?",
        "{n}'s second book is {v}.",
        "I recall {n}'s later work. {Pos} second book is {v}, so the answer is {v}.",
        "Which book did {n} publish second?",
        "{n} followed up with {v}.",
        "I do not recall {n}'s second book, so I cannot say.",
    ),
    "language": Template(
        "In which language does {n} write?",
        "{n} writes in {v}.",
        "I recall {n}'s books. They are written in {v}, so the answer is {v}.",
        "What language are {n}'s books in?",
        "{n}'s books are in {v}.",
        "I do not recall the language of {n}'s books, so I cannot say.",
    ),
    "publisher": Template(
        "Which publisher prints {n}'s books?",
        "{n}'s books are printed by {v}.",
        "I recall {n}'s book covers. They show {v}, so the answer is {v}.",
        "Who publishes {n}'s work?",
        "{n} is published by {v}.",
        "I do not recall {n}'s publisher, so I cannot say.",
    ),
    "residence": Template(
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
MIN_POOL = min(len(p) for p in ATTRIBUTE_POOLS.values() if p)
MAX_PERTURBED = MIN_POOL - 1  # every perturbed answer needs its own wrong value


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
