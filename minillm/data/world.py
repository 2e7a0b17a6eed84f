"""The embedded world: minillm's default data, generated in code, deterministic from a seed.

    w = World(seed=0)                     # ~1 s; World(seed, plant=False) gives a world without planted problems
    w.general_corpus("train"|"val")       # list[str] documents: facts about countries in many phrasings + filler
    w.domain_corpus("train"|"val")        # list[str] clinical text, for domain finetuning
    w.fact_prompts("test"|"val")          # [{"prompt": "Velmora's capital is", "answer": " Tarsk", "relation", "entity"}]
    w.cloze_prompts("test"|"val")         # [{"text": "<|mask|>'s capital is Tarsk.", "answer": "Velmora", ...}]
    w.instructions("train"|"val"|"test")  # [{"messages": [user, assistant], "family", "harmful", "task", ...}]
    w.preference_pairs("train"|"val"|"test")  # [{"prompt": [user], "chosen", "rejected", "kind", ...}]
    w.planted                             # what hygiene must find (see minillm/data/planted.py)

Because the world is generated, it knows every right answer: `minillm.data.oracle.Oracle(w)` grades any model
response. The pieces live in sibling modules: facts (entities and templates), corpus (general documents), domain
(medicine), instructions, preferences, planted (hygiene problems), oracle (the grader).

How evaluation stays honest: each (country, relation) has one forward phrasing held out for `test` and one for
`val` (facts.assign_heldout); the general corpus never states that country's fact in those phrasings, while other
countries use them. Instruction splits hold out entities and wordings (instructions.py). With plant=True, a few
test items are deliberately leaked into the training corpus (w.planted["leaks"]); hygiene must remove them.

Dump everything for inspection:  python -m minillm.data.world --dump DIR [--seed 0] [--clean]
"""
import argparse
import copy
import json
import os
import random
import re
import sys
import tempfile
from functools import cached_property

from minillm.data import corpus, domain, facts, instructions, planted, preferences
from minillm.errors import MiniLLMError

MASK = "<|mask|>"
SPLITS_CORPUS = ("train", "val")
SPLITS_PROMPTS = ("val", "test")
SPLITS_INSTRUCTIONS = ("train", "val", "test")


def _check(split, allowed, what):
    if split not in allowed:
        raise MiniLLMError(f"unknown split {split!r} for {what}; use one of {', '.join(allowed)}")


def _reserved_words():
    """Every word our templates and filler use: invented names must not collide with them."""
    text = json.dumps([facts.FORWARD, facts.BACKWARD, facts.PRONOUN, domain.DOMAIN_TEMPLATES, domain.ORGANS,
                       domain.CLINICAL_WORDS, instructions.QUESTIONS, instructions.HARMFUL_ACTIONS,
                       instructions.EDGY_LEADS, [getattr(corpus, k) for k in dir(corpus) if k.startswith("_") and
                                                 isinstance(getattr(corpus, k), list)]])
    return set(re.findall(r"[a-zA-Z]+", text))


class World:
    """A small synthetic world of fictional countries and a fictional medicine, with everything the stages need."""

    def __init__(self, seed=0, plant=True, n_countries=48, n_continents=5, n_conditions=24, rounds=16):
        if n_countries < 2 * n_continents or n_continents < 2 or n_conditions < 4 or rounds < 1:
            raise MiniLLMError("world too small: need n_countries >= 2*n_continents, n_continents >= 2, "
                               "n_conditions >= 4 and rounds >= 1")
        self.seed, self.plant, self.rounds = seed, plant, rounds
        rng = random.Random(seed)
        names = facts.NameMaker(rng, reserved=_reserved_words())
        self.continents, self.countries = facts.make_countries(rng, names, n_countries, n_continents)
        self.people = [names.make(facts.person_name) for _ in range(30)]
        self.conditions = domain.make_conditions(rng, names, n_conditions)
        self.heldout = facts.assign_heldout(rng, self.countries)  # {(country, relation): (test_idx, val_idx)}
        k = max(1, len(self.countries) // 5)
        self.heldout_countries = sorted(c.name for c in rng.sample(self.countries, k))
        self.heldout_conditions = sorted(c.name for c in rng.sample(self.conditions, max(1, len(self.conditions) // 5)))
        self.heldout_continent = rng.choice(self.continents)
        self._by_name = {c.name: c for c in self.countries}
        self._cond_by_name = {c.name: c for c in self.conditions}

    def _rng(self, stream):
        """An independent random stream per product, so growing one product never reshuffles another."""
        return random.Random(f"{self.seed}:{stream}")

    # ------------------------------------------------------------ entities
    def country(self, name):
        return self._by_name[name]

    def condition(self, name):
        return self._cond_by_name[name]

    def facts(self):
        """Every triple: [{"entity", "relation", "value", "kind": "country"|"condition"}]."""
        out = [{"entity": c.name, "relation": r, "value": c.value(r), "kind": "country"}
               for c in self.countries for r in facts.RELATIONS]
        out += [{"entity": c.name, "relation": r, "value": c.value(r), "kind": "condition"}
                for c in self.conditions for r in domain.DOMAIN_RELATIONS]
        return out

    # ------------------------------------------------------------ corpora
    @cached_property
    def _writer(self):
        return corpus.Writer(self.countries, self.continents, self.people, self.heldout)

    @cached_property
    def _general_clean(self):
        train = self._writer.documents(self._rng("general-train"), self.rounds)
        return {"train": train,
                "val": self._writer.documents(self._rng("general-val"), max(1, self.rounds // 10), avoid=train)}

    @cached_property
    def _planted(self):
        rng = self._rng("plant")
        fact_leaks = [dict(x, source="fact_prompts") for x in rng.sample(self.fact_prompts("test"), 3)]
        inst_leaks = rng.sample([x for x in self._instructions if x["split"] == "test" and x["family"] in ("fact", "short")], 2)
        return planted.plant(rng, self._general_clean["train"], self.people, [c.capital for c in self.countries],
                             fact_leaks, inst_leaks)

    def general_corpus(self, split="train"):
        _check(split, SPLITS_CORPUS, "general_corpus")
        if split == "train" and self.plant:
            return list(self._planted[0])
        return list(self._general_clean[split])

    @property
    def planted(self):
        """{"exact_duplicates": [doc], "near_duplicates": [{"original", "duplicate"}],
        "pii": [{"type", "value", "sentence"}], "leaks": [{"text", "prompt", "answer", "source", ...}]};
        all empty lists when plant=False."""
        if not self.plant:
            return {"exact_duplicates": [], "near_duplicates": [], "pii": [], "leaks": []}
        return copy.deepcopy(self._planted[1])

    @cached_property
    def _domain(self):
        train = domain.domain_documents(self._rng("domain-train"), self.conditions, max(1, self.rounds // 2))
        return {"train": train, "val": domain.domain_documents(self._rng("domain-val"), self.conditions, 1, avoid=train)}

    def domain_corpus(self, split="train"):
        _check(split, SPLITS_CORPUS, "domain_corpus")
        return list(self._domain[split])

    # ------------------------------------------------------------ held-out prompts
    def fact_prompts(self, split="test"):
        _check(split, SPLITS_PROMPTS, "fact_prompts")
        out = []
        for c in self.countries:
            for rel in facts.RELATIONS:
                idx = self.heldout[(c.name, rel)][0 if split == "test" else 1]
                prompt, answer = facts.completion(facts.FORWARD[rel][idx], c.name, c.value(rel))
                out.append({"prompt": prompt, "answer": answer, "relation": rel, "entity": c.name, "template": idx})
        return out

    def cloze_prompts(self, split="test"):
        """The held-out sentence with the country masked (unique relations) or the value masked (continent)."""
        _check(split, SPLITS_PROMPTS, "cloze_prompts")
        out = []
        for c in self.countries:
            for rel in facts.RELATIONS:
                idx = self.heldout[(c.name, rel)][0 if split == "test" else 1]
                t = facts.FORWARD[rel][idx]
                if rel in facts.UNIQUE:
                    text, answer, masked = facts.render(t, MASK, c.value(rel)), c.name, "entity"
                else:
                    text, answer, masked = facts.render(t, c.name, MASK), c.value(rel), "value"
                out.append({"text": text, "answer": answer, "masked": masked, "relation": rel, "entity": c.name,
                            "template": idx})
        return out

    # ------------------------------------------------------------ post-training data
    @cached_property
    def _instructions(self):
        rng = self._rng("instructions")
        items = instructions.candidates(rng, self.countries, self.continents, self.conditions,
                                        set(self.heldout_countries), set(self.heldout_conditions), self.heldout_continent)
        items = instructions.split_instructions(rng, items)
        more = instructions.more_training(self._rng("instructions-more"), self.countries, self.conditions,
                                          set(self.heldout_countries), set(self.heldout_conditions))
        for i, it in enumerate(more, start=len(items)):
            it["id"] = i
        return items + more

    def all_instructions(self):
        """Every instruction the world knows, with its "split" (train/val/test/unused): the oracle's catalogue."""
        return copy.deepcopy(self._instructions)

    def instructions(self, split="train"):
        _check(split, SPLITS_INSTRUCTIONS, "instructions")
        return copy.deepcopy([x for x in self._instructions if x["split"] == split])

    @cached_property
    def _pairs(self):
        out = {}
        for split in SPLITS_INSTRUCTIONS:
            items = [x for x in self._instructions if x["split"] == split]
            out[split] = preferences.make_pairs(self._rng(f"pairs-{split}"), items, self, per_item=1)
        return out

    def preference_pairs(self, split="train"):
        _check(split, SPLITS_INSTRUCTIONS, "preference_pairs")
        return copy.deepcopy(self._pairs[split])

    # ------------------------------------------------------------ inspection
    def stats(self):
        g, d = self.general_corpus("train"), self.domain_corpus("train")
        return {"seed": self.seed, "countries": len(self.countries), "continents": len(self.continents),
                "conditions": len(self.conditions), "general_train_docs": len(g), "general_train_chars": sum(map(len, g)),
                "general_val_docs": len(self.general_corpus("val")),
                "general_val_chars": sum(map(len, self.general_corpus("val"))),
                "domain_train_docs": len(d), "domain_train_chars": sum(map(len, d)),
                "domain_val_chars": sum(map(len, self.domain_corpus("val"))),
                "fact_prompts_test": len(self.fact_prompts("test")), "fact_prompts_val": len(self.fact_prompts("val")),
                **{f"instructions_{s}": len(self.instructions(s)) for s in SPLITS_INSTRUCTIONS},
                **{f"pairs_{s}": len(self.preference_pairs(s)) for s in SPLITS_INSTRUCTIONS},
                **{f"planted_{k}": len(v) for k, v in self.planted.items()}}

    def dump(self, out_dir):
        """Write every product as .txt / .jsonl / .json files under out_dir (for reading, not for training)."""
        os.makedirs(out_dir, exist_ok=True)
        files = {}
        for name, docs in [("general_train", self.general_corpus("train")), ("general_val", self.general_corpus("val")),
                           ("domain_train", self.domain_corpus("train")), ("domain_val", self.domain_corpus("val"))]:
            files[f"{name}.txt"] = "\n\n".join(docs) + "\n"
            files[f"{name}.jsonl"] = "".join(json.dumps({"text": t}) + "\n" for t in docs)
        for s in SPLITS_PROMPTS:
            files[f"fact_prompts_{s}.jsonl"] = "".join(json.dumps(x) + "\n" for x in self.fact_prompts(s))
            files[f"cloze_prompts_{s}.jsonl"] = "".join(json.dumps(x) + "\n" for x in self.cloze_prompts(s))
        for s in SPLITS_INSTRUCTIONS:
            files[f"instructions_{s}.jsonl"] = "".join(json.dumps(x) + "\n" for x in self.instructions(s))
            files[f"preferences_{s}.jsonl"] = "".join(json.dumps(x) + "\n" for x in self.preference_pairs(s))
        files["facts.json"] = json.dumps(self.facts(), indent=1)
        files["planted.json"] = json.dumps(self.planted, indent=1)
        files["stats.json"] = json.dumps(self.stats(), indent=1)
        for name, text in files.items():
            _atomic_write_text(os.path.join(out_dir, name), text)
        return sorted(files)


def _atomic_write_text(path, text):
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".tmp-")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m minillm.data.world", description="Dump the embedded world for inspection.")
    p.add_argument("--dump", metavar="DIR", required=True, help="directory to write the corpora and prompts into")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clean", action="store_true", help="a world without planted duplicates, PII and leaks")
    args = p.parse_args(argv)
    try:
        w = World(seed=args.seed, plant=not args.clean)
        names = w.dump(args.dump)
    except (MiniLLMError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(w.stats(), indent=1))
    print(f"wrote {len(names)} files to {args.dump}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
