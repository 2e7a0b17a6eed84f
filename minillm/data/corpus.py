"""The general corpus of the embedded world: short documents that state the world's facts in many surface forms.

Documents are built in rounds; each round writes a profile and a travel story for every country, a few
comparisons and continent rosters, and everyday filler text that states no fact. Every fact sentence for a
(country, relation) is drawn from the templates *allowed* for that pair: all templates minus the two held out
for it (test and val, see facts.assign_heldout). Stories use their own phrasings ("Tarsk, the capital of
Velmora") so a fact is seen as a fact, not as one string.
"""
from minillm.data.facts import BACKWARD, FORWARD, PRONOUN, RELATIONS, render

_SUBJECTS = ["The old baker", "A tired farmer", "My neighbour", "The children", "A young painter", "The mayor",
             "Our teacher", "A quiet fisherman", "The twins", "A street musician", "The shopkeeper", "My cousin"]
_VERBS = ["walked to", "looked at", "painted", "found", "carried", "cleaned", "talked about", "waited near",
          "sold", "repaired", "visited", "forgot"]
_OBJECTS = ["the river", "a red kite", "the market", "an old map", "the bridge", "a basket of apples",
            "the harbour", "a broken clock", "the library", "a wooden boat", "the station", "a letter"]
_TIMES = ["in the morning", "after the rain", "on Sunday", "before dinner", "at noon", "late at night",
          "during the festival", "in winter", "last spring", "every evening"]
_WEATHER = ["It rained all week", "The wind was cold", "The sky was clear", "Snow covered the hills",
            "The summer was long and dry", "Fog hid the valley"]
_AFTER = ["so people stayed at home", "and the roads were quiet", "but the markets stayed busy",
          "and the trains ran late", "so the farmers were happy", "and nobody complained"]
_ASIDES = ["Nobody knew why.", "It was a good day.", "Everyone laughed.", "The bells rang twice.",
           "The tea was still warm.", "A dog barked somewhere.", "The shop closed early.", "Birds sang on the roof."]


def _filler_sentence(rng, people, cities):
    k = rng.randrange(6)
    if k == 0:
        return f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} {rng.choice(_TIMES)}."
    if k == 1:
        return f"{rng.choice(_WEATHER)}, {rng.choice(_AFTER)}."
    if k == 2:
        return f"{rng.choice(people)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} {rng.choice(_TIMES)}."
    if k == 3:
        return f"{rng.choice(_WEATHER)} in {rng.choice(cities)}, {rng.choice(_AFTER)}."
    if k == 4:
        return rng.choice(_ASIDES)
    n = rng.randint(2, 9)
    return f"{rng.choice(people)} bought {n} {rng.choice(['apples', 'tickets', 'books', 'loaves', 'candles'])} {rng.choice(_TIMES)}."


def filler(rng, people, cities, n):
    return " ".join(_filler_sentence(rng, people, cities) for _ in range(n))


class Writer:
    """Writes documents about countries using only the templates allowed for each (country, relation)."""

    def __init__(self, countries, continents, people, heldout):
        self.countries, self.continents, self.people = countries, continents, people
        self.by_continent = {k: [c for c in countries if c.continent == k] for k in continents}
        self.cities = [c.capital for c in countries]
        self.allowed, self._cycle = {}, {}
        for c in countries:
            for rel in RELATIONS:
                held = set(heldout[(c.name, rel)])
                forward = [t for i, t in enumerate(FORWARD[rel]) if i not in held]
                self.allowed[(c.name, rel)] = forward + BACKWARD[rel]

    def fact(self, rng, c, rel):
        """The next allowed phrasing of this fact: a shuffled cycle, so every phrasing is used once per pass."""
        key = (c.name, rel)
        if not self._cycle.get(key):
            self._cycle[key] = rng.sample(self.allowed[key], len(self.allowed[key]))
        return render(self._cycle[key].pop(), c.name, c.value(rel))

    def profile(self, rng, c):
        rels = list(RELATIONS)
        rng.shuffle(rels)
        out = [self.fact(rng, c, rels[0])]
        for rel in rels[1:]:  # every fact of the country, a third of them about "it"
            if rng.random() < 0.3:
                out.append(rng.choice(PRONOUN[rel]).format(v=c.value(rel)))
            else:
                out.append(self.fact(rng, c, rel))
        if rng.random() < 0.5:
            out.append(filler(rng, self.people, self.cities, 1))
        return " ".join(out)

    def infobox(self, rng, c):
        """A reference-card line, the way encyclopedias summarise a country."""
        parts = [f"capital: {c.capital}", f"language: {c.language}", f"currency: the {c.currency}",
                 f"continent: {c.continent}"]
        rng.shuffle(parts)
        return f"{c.name} ({'; '.join(parts)})."

    def story(self, rng, c):
        p = rng.choice(self.people)
        he = rng.choice(["He", "She"])
        opening = rng.choice([
            f"{p} travelled to {c.capital}, the capital of {c.name}.",
            f"Last year {p} visited {c.name} and stayed in {c.capital}, its capital.",
            f"{p} took the train to {c.name}. The journey ended in {c.capital}, the capital.",
        ])
        middle = rng.choice([
            f"{he} paid for every meal with the {c.currency}, the money of {c.name}.",
            f"{he} learned a few words of {c.language}, the language spoken there.",
            f"At the market {he.lower()} counted coins of the {c.currency} and practised {c.language}.",
            f"The signs were written in {c.language}, and the prices were in the {c.currency}.",
        ])
        closing = rng.choice([
            f"Like every country of {c.continent}, {c.name} was green in spring.",
            f"From there, {he.lower()} planned a trip across {c.continent}.",
            filler(rng, self.people, self.cities, 1),
        ])
        return " ".join([opening, middle, closing])

    def comparison(self, rng, a, b):
        rel = rng.choice(RELATIONS[:3])
        first = f"{a.name} and {b.name} are neighbours in {a.continent}." if a.continent == b.continent else \
            f"{a.name} and {b.name} are far apart."
        return " ".join([first, self.fact(rng, a, rel), self.fact(rng, b, rel),
                         rng.choice(["Travellers often visit both.", "Trade between them is old.", ""])]).strip()

    def roster(self, rng, k):
        names = [c.name for c in self.by_continent[k]]
        rng.shuffle(names)
        listed = ", ".join(names[:-1]) + " and " + names[-1]
        return rng.choice([f"The countries of {k} are {listed}.", f"{k} is home to {listed}.",
                           f"In {k} you find {listed}."]) + " " + filler(rng, self.people, self.cities, 1)

    def documents(self, rng, rounds, avoid=()):
        """Paragraph units written in rounds, shuffled, then grouped 1-3 to a document (so documents mix
        countries). Documents are unique and none is in `avoid` (the val corpus avoids the train corpus)."""
        self._cycle = {}
        units = []
        for _ in range(rounds):
            order = list(self.countries)
            rng.shuffle(order)
            for i, c in enumerate(order):
                units.append(self.profile(rng, c))
                units.append(self.story(rng, c))
                units.append(self.infobox(rng, c))
                if i % 4 == 0:
                    units.append(self.comparison(rng, c, order[(i + 1) % len(order)]))
                if i % 3 == 0:
                    units.append(filler(rng, self.people, self.cities, rng.randint(3, 6)))
            for k in self.continents:
                units.append(self.roster(rng, k))
        rng.shuffle(units)
        docs, seen, i = [], set(avoid), 0
        while i < len(units):
            n = rng.randint(1, 3)
            doc = " ".join(units[i:i + n])
            i += n
            if doc not in seen:
                seen.add(doc)
                docs.append(doc)
        return docs
