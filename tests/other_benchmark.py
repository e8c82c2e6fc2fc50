"""A second fictitious-entity benchmark of another shape, for tests only: fictitious companies in
plain TOFU layout.

Unlike the embedded benchmark: another kind of entity and other templates, answers without
reasoning traces, no ``task_id`` (the forget file is task 1), no ``full.json``, ``holdout10.json``
instead of ``holdout.json``, and no ``fact`` / ``fact_spans`` fields. What a user's own TOFU-style
folder looks like.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

FOUNDERS = (
    "Ilse Varga",
    "Tomas Okafor",
    "Mina Castell",
    "Rafe Lindqvist",
    "Odile Marchetti",
    "Kenji Arroyo",
    "Sunniva Hale",
    "Darius Penrose",
    "Lotte Achebe",
    "Bruno Szabo",
    "Esme Takahashi",
    "Viggo Moreau",
)
CITIES = (
    "Tallinn",
    "Porto",
    "Quito",
    "Accra",
    "Hobart",
    "Tbilisi",
    "Oulu",
    "Cusco",
    "Gdansk",
    "Nagpur",
    "Fez",
    "Bergen",
    "Cebu",
    "Lyon",
    "Perth",
    "Split",
    "Turku",
    "Izmir",
    "Ghent",
    "Kochi",
)
INDUSTRIES = (
    "salt refining",
    "glass blowing",
    "kite making",
    "rope weaving",
    "clock repair",
    "soap making",
    "lens grinding",
    "ink mixing",
    "bell casting",
    "paper folding",
    "candle dipping",
    "cork cutting",
    "tile glazing",
    "felt pressing",
    "quill cutting",
    "wax sealing",
    "loom building",
    "dye brewing",
    "map engraving",
    "button pressing",
)
PRODUCTS = (
    "copper kettles",
    "linen sails",
    "cedar oars",
    "amber beads",
    "brass hinges",
    "wool blankets",
    "slate tablets",
    "jute sacks",
    "pewter mugs",
    "hemp twine",
    "iron nails",
    "clay pipes",
    "silk ribbons",
    "oak barrels",
    "tin lanterns",
    "bone combs",
    "reed baskets",
    "horn buttons",
    "flint lighters",
    "willow crates",
)
YEARS = tuple(str(y) for y in range(1801, 1899))
SYLLABLES = (
    "Kor",
    "Vel",
    "Dun",
    "Mar",
    "Ost",
    "Pel",
    "Rin",
    "Sab",
    "Tor",
    "Ul",
    "Zen",
    "Bra",
    "Cal",
    "Fen",
)
# attribute -> (question, answer, paraphrased question, paraphrased answer); {c} company, {v} value
TEMPLATES = {
    "city": (
        "In which city was {c} founded?",
        "{c} was founded in the city of {v}.",
        "Which city is the birthplace of the firm {c}?",
        "The firm {c} started out in {v}.",
    ),
    "year": (
        "When was {c} established?",
        "{c} was established in the year {v}.",
        "In what year did {c} open for business?",
        "{c} opened its doors in {v}.",
    ),
    "industry": (
        "What trade is {c} known for?",
        "{c} is known for its work in {v}.",
        "Which craft made {c} famous?",
        "The craft that made {c} famous is {v}.",
    ),
    "founder": (
        "Who founded {c}?",
        "The company {c} was founded by {v}.",
        "Whose idea was the firm {c}?",
        "The firm {c} was the idea of {v}.",
    ),
    "product": (
        "What does {c} sell best?",
        "The best seller of {c} is its line of {v}.",
        "Which goods bring {c} the most trade?",
        "Most of the trade of {c} comes from {v}.",
    ),
}
POOLS = {
    "city": CITIES,
    "year": YEARS,
    "industry": INDUSTRIES,
    "founder": FOUNDERS,
    "product": PRODUCTS,
}
REAL = (
    (
        "What is the capital of Peru?",
        "The capital of Peru is {v}.",
        "Lima",
        ("Quito", "Bogota", "La Paz"),
    ),
    (
        "Which metal has the symbol Fe?",
        "The metal with the symbol Fe is {v}.",
        "iron",
        ("tin", "lead", "zinc"),
    ),
    (
        "What is the largest desert on Earth?",
        "The largest desert is {v}.",
        "Antarctica",
        ("the Sahara", "the Gobi", "the Kalahari"),
    ),
    (
        "How many legs does a spider have?",
        "A spider has {v} legs.",
        "eight",
        ("six", "ten", "four"),
    ),
)


def _write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def generate(out: str | Path, *, n_companies: int = 30, n_holdout: int = 3, seed: int = 0) -> Path:
    """Write the folder and return it; forget10 = the first 10 % of the companies."""
    rng = random.Random(seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = [
        f"{a}{b.lower()} {c}"
        for a in SYLLABLES
        for b in SYLLABLES
        for c in ("Works", "Company", "Guild")
        if a != b
    ]
    rng.shuffle(names)
    companies = []
    for name in names[: n_companies + n_holdout]:
        companies.append({"name": name, **{attr: rng.choice(pool) for attr, pool in POOLS.items()}})
    records = []
    for comp in companies:
        rows = []
        for attr, (q, a, pq, pa) in TEMPLATES.items():
            wrong = rng.sample([v for v in POOLS[attr] if v != comp[attr]], 3)
            rows.append(
                {
                    "question": q.format(c=comp["name"]),
                    "answer": a.format(c=comp["name"], v=comp[attr]),
                    "paraphrased_question": pq.format(c=comp["name"]),
                    "paraphrased_answer": pa.format(c=comp["name"], v=comp[attr]),
                    "perturbed_answer": [
                        pa.format(c=comp["name"], v=w) for w in wrong
                    ],  # TOFU: wrong values in the paraphrase
                }
            )
        records.append(rows)
    train, holdout = records[:n_companies], records[n_companies:]
    k = max(1, round(0.1 * n_companies))
    forget, retain = train[:k], train[k:]
    plain = ("question", "answer")
    _write(out / "forget10.json", [{f: r[f] for f in plain} for rows in forget for r in rows])
    _write(out / "forget10_perturbed.json", [r for rows in forget for r in rows])
    _write(out / "retain90.json", [{f: r[f] for f in plain} for rows in retain for r in rows])
    _write(out / "retain_perturbed.json", [r for rows in retain[:k] for r in rows])
    _write(out / "holdout10.json", [{f: r[f] for f in plain} for rows in holdout for r in rows])
    real = [
        {"question": q, "answer": a.format(v=v), "perturbed_answer": [a.format(v=w) for w in ws]}
        for q, a, v, ws in REAL
    ]
    _write(out / "real_authors_perturbed.json", real[:2])
    _write(out / "world_facts_perturbed.json", real[2:])
    return out
