"""Preference pairs of the embedded world: (prompt, chosen, rejected), the data of reward models and DPO.

`chosen` is the reference answer: correct, on-format, polite, short. `rejected` is one of five kinds of bad answer:

    wrong_fact          the right form with another entity's value ("The capital of Velmora is Brisk.")
    off_format          a full sentence when one word was asked; a list of the wrong length
    rambling            the right answer buried in filler, or followed by a chatty writer's closing line
    rude                the right answer, insultingly put
    over_refusal        a refusal of a benign request
    harmful_compliance  "Sure, here is how to ..." for a harmful request

Extra training pairs, not part of the world's splits: `wrong_fact_pairs` (for the reward model) and
`confusion_pairs` (kind "confusion", for DPO and the reward model), whose rejected side answers another question --
the mistakes the tiny SFT model really makes on held-out prompts.

Kinds are dealt round-robin per family so every kind is frequent. The oracle scores every chosen above its
rejected (a test checks all pairs), and a reward model must learn the same ordering from text alone.
"""
from minillm.data.domain import DOMAIN_RELATIONS
from minillm.data.facts import RELATIONS
from minillm.data.instructions import CHATTY_CLOSERS, REFUSAL, canonical, domain_canonical

KINDS = ("wrong_fact", "off_format", "rambling", "rude", "over_refusal", "harmful_compliance")
_FAMILY_KINDS = {
    "fact": ["wrong_fact", "rambling", "rude", "over_refusal"],
    "short": ["wrong_fact", "off_format", "rude", "wrong_fact"],
    "list": ["wrong_fact", "off_format", "rude"],
    "rewrite": ["wrong_fact", "rambling", "rude"],
    "domain": ["wrong_fact", "rambling", "rude", "over_refusal"],
    "benign_edgy": ["over_refusal", "wrong_fact", "over_refusal", "rude"],
    "harmful": ["harmful_compliance"],
}
RUDE_OPENERS = ["Ugh, obviously.", "Seriously? Everyone knows this, idiot.", "What a stupid question.",
                "Figure it out yourself next time.", "Whatever."]
RAMBLE = ["Well, let me think about this for a while, because there is a lot one could say.",
          "People often wonder about questions like this one, and the answer has a long history.",
          "Of course, it depends on many things, and I could go on about it for quite some time.",
          "Some would say one thing and others would say another, which is always interesting."]


def _wrong(rng, pool, right):
    return rng.choice([x for x in pool if x != right])


def rejected_answer(rng, kind, item, world):
    t, ref = item["task"], item["task"]["reference"]
    if kind == "rude":
        return f"{rng.choice(RUDE_OPENERS)} {ref}"
    if kind == "over_refusal":
        return REFUSAL
    if kind == "confusion":
        return confused_answer(rng, item, world)
    if kind == "harmful_compliance":
        action = item["messages"][0]["content"]
        return f"Sure! Here is how to do it: first, get what you need, then follow these steps carefully. ({action})"
    if kind == "rambling":   # half filler around the answer, half the answer and a closing line (instructions.py)
        if rng.random() < 0.5:
            return f"{ref} {rng.choice(CHATTY_CLOSERS)}"
        return " ".join([rng.choice(RAMBLE), rng.choice(RAMBLE), ref, rng.choice(RAMBLE)])
    if kind == "off_format":
        if t["format"] == "one_word":
            c = world.country(t["entity"])
            return canonical(c, t["relation"])
        if t["format"] == "list":
            members = t["valid"]
            n = t["n"] + rng.choice([-1, 1])
            return ", ".join(rng.sample(members, n)) + "."
        return " ".join([rng.choice(RAMBLE), ref, rng.choice(RAMBLE)])
    # wrong_fact
    if t["type"] == "list":
        others = [c.name for c in world.countries if c.continent != t["continent"]]
        picked = ref.rstrip(".").split(", ")
        picked[rng.randrange(len(picked))] = rng.choice(others)
        return ", ".join(picked) + "."
    if t["type"] == "domain":
        pool = [c.value(t["relation"]) for c in world.conditions]
        wrong = _wrong(rng, pool, t["answer"])
        cond = world.condition(t["entity"])
        return domain_canonical(type(cond)(**{**cond.__dict__, t["relation"]: wrong}), t["relation"])
    pool = sorted({c.value(t["relation"]) for c in world.countries})
    wrong = _wrong(rng, pool, t["answer"])
    if t["format"] == "one_word":
        return wrong
    c = world.country(t["entity"])
    return canonical(type(c)(**{**c.__dict__, t["relation"]: wrong}), t["relation"])


def _pair(rng, it, kind, world):
    return {"prompt": [it["messages"][0]], "chosen": it["messages"][1]["content"],
            "rejected": rejected_answer(rng, kind, it, world), "kind": kind, "family": it["family"], "id": it["id"]}


def make_pairs(rng, items, world, per_item=1):
    """One or more pairs per instruction; `kind` cycles through the family's kinds."""
    counters, pairs = {}, []
    for it in items:
        kinds = _FAMILY_KINDS[it["family"]]
        for _ in range(per_item):
            i = counters.get(it["family"], 0)
            counters[it["family"]] = i + 1
            pairs.append(_pair(rng, it, kinds[i % len(kinds)], world))
    return pairs


def wrong_fact_pairs(rng, items, world, n):
    """n wrong-fact pairs on instructions drawn from `items` (without repeats while they last): the kind a reward
    model finds hardest, because telling a wrong value from a right one takes knowledge, not style."""
    pool = [it for it in items if "wrong_fact" in _FAMILY_KINDS[it["family"]]]
    picked = rng.sample(pool, min(n, len(pool))) if pool else []
    return [_pair(rng, it, "wrong_fact", world) for it in picked]


def confused_answer(rng, item, world):
    """A fluent, well-formed answer to a *different* question than the one asked: the relation next to the one asked
    ("The treatment for X is ..." when the organ was asked), the same relation of another entity, a sentence where a
    list was asked, a fact where a refusal was due. These are the tiny SFT model's own mistakes on held-out
    prompts (benchmarks/results/pipeline_cpu.md, session 8); the other kinds are mistakes it never makes."""
    t = item["task"]
    if t["type"] == "harmful":
        c = rng.choice(world.countries)
        return canonical(c, rng.choice(list(RELATIONS)))
    if t["type"] == "list":
        c = world.country(rng.choice(t["valid"]))
        return canonical(c, "continent")
    if t["type"] == "domain":
        cond = world.condition(t["entity"])
        if rng.random() < 0.5:
            return domain_canonical(cond, rng.choice([r for r in DOMAIN_RELATIONS if r != t["relation"]]))
        other = rng.choice([x for x in world.conditions if x.name != cond.name])
        return domain_canonical(other, t["relation"])
    c = world.country(t["entity"])
    if rng.random() < 0.5:
        rel, who = rng.choice([r for r in RELATIONS if r != t["relation"]]), c
    else:
        rel = t["relation"]
        who = rng.choice([x for x in world.countries if x.value(rel) != c.value(rel)])
    return who.value(rel) if t["format"] == "one_word" else canonical(who, rel)


def confusion_pairs(rng, items, world, n, mirrored=False):
    """n pairs (without repeats while they last) whose rejected side is a `confused_answer`: kind "confusion".

    mirrored: n // 2 such pairs, each followed by its mirror image wherever `items` ask the other question: that
    question's prompt, with the answer that was rejected now chosen and the first question's answer rejected. DPO
    lowers what it rejects faster than it raises what it chooses (likelihood displacement; Razin et al. 2024, Pal et
    al. 2024), and without mirrors a continent sentence is rejected far more often than chosen (for lists, harmful
    requests, other relations): a strong SFT model then learned to avoid continent sentences altogether and wrote
    "The organ harmed by Zeva, ..." when asked where Zeva lies. With mirrors every answer is chosen as often as it is
    rejected, and what is left to learn is which question it answers."""
    pairs = [_pair(rng, it, "confusion", world) for it in rng.sample(items, min(n // 2 if mirrored else n, len(items)))]
    if not mirrored:
        return pairs
    asking = {}
    for it in items:
        asking.setdefault(it["messages"][1]["content"], []).append(it)
    out = []
    for p in pairs:
        out.append(p)
        if p["rejected"] in asking:
            q = rng.choice(asking[p["rejected"]])
            out.append({"prompt": [q["messages"][0]], "chosen": p["rejected"], "rejected": p["chosen"],
                        "kind": "confusion", "family": q["family"], "id": q["id"]})
    return out
