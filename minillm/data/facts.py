"""The facts of the embedded world: fictional countries, their relations, and the sentences that state them.

A world is a small knowledge base of triples (entity, relation, value), e.g. ("Velmora", "capital", "Tarsk").
Every name is invented from syllables with a seeded `random.Random`, so a model cannot know a fact from
anywhere but our corpus, and the same seed always gives the same world.

Each relation has several *forward* templates (the value comes last, so a template cut before its value is a
completion prompt: "Velmora's capital is" -> " Tarsk") and a few *backward* ones (value first, for variety and
for the masked-LM direction). Template 0 of each relation is canonical: instruction answers use it, and it is
never held out. For every (entity, relation) one other forward template is held out for `test` and one for
`val`: that phrasing never states that entity's fact in training, but it does appear for other entities, so a
model must learn the template from them and the fact from the other phrasings (this is how we measure
knowledge rather than recall of one string).

Reference: the templated-fact setting follows the "physics of language models" line of work
(Allen-Zhu & Li, 2023, "Knowledge storage and extraction"): facts stated in several surface forms are extracted
far better than facts stated once.
"""
from dataclasses import dataclass

RELATIONS = ("capital", "language", "currency", "continent")

# {e} = the country, {v} = the value. Index 0 is canonical and never held out: it is the instructions' answer,
# and for every relation it names the relation before the country ("The continent of {e} is {v}."). With
# "{e} is a country in {v}." as the answer, SFT models began continent answers about held-out countries with a
# drilled country's name ("Penethor" -> "Zote is a country in ..."), even when rewriting a sentence about it.
FORWARD = {
    "capital": [
        "The capital of {e} is {v}.",
        "{e}'s capital is {v}.",
        "The capital city of {e} is {v}.",
        "The seat of government of {e} is {v}.",
        "{e} is governed from {v}.",
        "In {e}, the capital is {v}.",
        "{e} has its capital in {v}.",
    ],
    "language": [
        "The language of {e} is {v}.",
        "People in {e} speak {v}.",
        "The official language of {e} is {v}.",
        "{e}'s language is {v}.",
        "In {e}, most people speak {v}.",
        "In {e}, the main language is {v}.",
        "{e}'s people speak {v}.",
    ],
    "currency": [
        "The currency of {e} is the {v}.",
        "{e}'s currency is the {v}.",
        "In {e}, people pay with the {v}.",
        "The money used in {e} is the {v}.",
        "Shops in {e} take the {v}.",
        "In {e}, the currency is the {v}.",
        "{e} pays with the {v}.",
    ],
    "continent": [
        "The continent of {e} is {v}.",
        "{e} lies in {v}.",
        "{e} is located in {v}.",
        "{e} is part of {v}.",
        "{e} belongs to the continent of {v}.",
        "On the map, {e} is found in {v}.",
        "{e} is a country in {v}.",
        "In geography books, {e} is listed under {v}.",
    ],
}
# Forward templates that name the country *before* the relation ("Velmora's capital is"): the model must already
# hold the answer in its picture of the country, which is harder to learn than "The capital of Velmora is".
# Held-out test and val phrasings are taken one from each group, so training keeps both kinds for every fact.
SUBJECT_FIRST = {"capital": {1, 4, 6}, "language": {1, 3, 6}, "currency": {1, 4, 6}, "continent": {1, 2, 3, 4, 6}}
BACKWARD = {
    "capital": ["{v} is the capital of {e}.", "The city of {v} is the capital of {e}."],
    "language": ["{v} is spoken in {e}.", "{v} is the language of {e}."],
    "currency": ["The {v} is the currency of {e}.", "The {v} is used in {e}."],
    "continent": ["{v} is home to {e}.", "{v} includes the country of {e}."],
}
# Sentences about "it" once the country was named ({v} only).
PRONOUN = {
    "capital": ["Its capital is {v}.", "Its government sits in {v}."],
    "language": ["Its people speak {v}.", "Its language is {v}."],
    "currency": ["It uses the {v}.", "Its money is the {v}."],
    "continent": ["It lies in {v}.", "It is part of {v}."],
}
# Relations whose value belongs to exactly one country: a cloze can mask the country itself.
UNIQUE = ("capital", "language", "currency")


@dataclass(frozen=True)
class Country:
    name: str
    capital: str
    language: str
    currency: str
    continent: str

    def value(self, relation):
        return getattr(self, relation)


def render(template, e, v):
    return template.format(e=e, v=v)


def completion(template, e, v):
    """Cut a forward template before its value: ("{e}'s capital is {v}.", ...) -> ("Velmora's capital is", " Tarsk")."""
    head = template.split("{v}")[0]
    assert head.endswith(" "), template
    return render(head[:-1], e, v), " " + v


# ---------------------------------------------------------------- names
_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z",
           "br", "dr", "gr", "kr", "tr", "st", "th", "sh", "h", "j"]
_VOWELS = ["a", "e", "i", "o", "u", "a", "e", "o", "ai", "ou", "ei"]
_CODAS = ["", "", "", "n", "r", "l", "s", "nd", "rk", "sk", "th", "m"]


def _syllable(rng, coda=True):
    return rng.choice(_ONSETS) + rng.choice(_VOWELS) + (rng.choice(_CODAS) if coda else "")


class NameMaker:
    """Invents unique names. No name is a prefix of another (so "Tars" and "Tarsk" never both exist: a
    completion that starts with one could not be told from the other), and none is an English word we use."""

    def __init__(self, rng, reserved=()):
        self.rng = rng
        self.used = set()
        self.reserved = {w.lower() for w in reserved}

    def _ok(self, name):
        low = name.lower()
        if len(low) < 3 or low in self.reserved:
            return False
        return not any(u.startswith(low) or low.startswith(u) for u in self.used)

    def make(self, shape):
        for _ in range(10_000):
            name = shape(self.rng)
            if self._ok(name):
                self.used.add(name.lower())
                return name
        raise RuntimeError("name space exhausted")  # pragma: no cover - a bug, not a user mistake


def country_name(rng):
    return (_syllable(rng, coda=False) + _syllable(rng) + rng.choice(["ia", "a", "or", "en", "", ""])).capitalize()


def city_name(rng):
    return (_syllable(rng) + rng.choice(["", "", "ov", "ek", "um", "ar"])).capitalize()


def language_name(rng):
    return (_syllable(rng, coda=False) + rng.choice(["r", "l", "n", "s", "v"]) + rng.choice(["ish", "ic", "ese", "an", "i"])).capitalize()


def currency_name(rng):
    return _syllable(rng, coda=False) + rng.choice(["l", "n", "r", "sk", "nt", "lt", "m"]) + rng.choice(["", "", "o", "a"])


def continent_name(rng):
    return (_syllable(rng, coda=False) + _syllable(rng, coda=False) + rng.choice(["ria", "land", "nia", "sia"])).capitalize()


def person_name(rng):
    return (_syllable(rng) + rng.choice(["a", "o", "i", "e", ""])).capitalize()


def make_countries(rng, names, n_countries, n_continents):
    """n countries, each with a unique capital, language and currency, spread over a few continents."""
    continents = [names.make(continent_name) for _ in range(n_continents)]
    countries = []
    for i in range(n_countries):
        countries.append(Country(
            name=names.make(country_name), capital=names.make(city_name), language=names.make(language_name),
            currency=names.make(currency_name), continent=continents[i % n_continents]))
    rng.shuffle(countries)
    return continents, countries


def assign_heldout(rng, countries):
    """For each (country, relation) choose the test and the val forward template (never index 0).

    Returns {(country, relation): (test_index, val_index)}. One of the two is subject-first and the other not
    (see SUBJECT_FIRST). Pairs are dealt out in a shuffled cycle so every non-canonical template is held out
    for some countries and still seen for all the others."""
    heldout = {}
    for rel in RELATIONS:
        first = SUBJECT_FIRST[rel]
        pairs = [(a, b) for a in range(1, len(FORWARD[rel])) for b in range(1, len(FORWARD[rel]))
                 if (a in first) != (b in first)]
        rng.shuffle(pairs)
        for i, c in enumerate(countries):
            heldout[(c.name, rel)] = pairs[i % len(pairs)]
    return heldout
