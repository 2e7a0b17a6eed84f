"""Robustness: the same questions, asked a little differently; how much does accuracy drop?

A model that learned a fact should still produce it when the question has a typo, different casing,
another wording, or an irrelevant sentence in front. For each perturbation π:

    drop(π) = accuracy(clean) - accuracy(π(prompts))          (positive = worse under π)

Perturbations (all seeded, so a run is reproducible):
    typos        each word of >= 4 letters, with probability `rate`, gets two neighbouring letters swapped
    lowercase    the whole prompt lower-cased;  uppercase: upper-cased
    paraphrase   the same question in another of the world's templates (chat) or phrasings (completion)
    distractor   a true but irrelevant sentence about another country is put in front

The answer is always graded against the *original* item (the oracle for chat, the expected continuation for
completion), so a perturbation can only change what the model is asked, never what counts as right.
References: Ribeiro et al. 2020 (CheckList); Wang et al. 2021 (AdvGLUE); Sclar et al. 2023 (prompt formatting).
"""
from __future__ import annotations

import random

PERTURBATIONS = ("typos", "lowercase", "uppercase", "paraphrase", "distractor")


def typos(text: str, rng: random.Random, rate: float = 0.15) -> str:
    """Swap two neighbouring letters inside some words: "capital" -> "cpaital"."""
    out = []
    for w in text.split(" "):
        letters = [i for i, c in enumerate(w) if c.isalpha()]
        if len(letters) >= 4 and rng.random() < rate:
            i = rng.randrange(1, len(w) - 2) if len(w) > 3 else 0
            if w[i].isalpha() and w[i + 1].isalpha():
                w = w[:i] + w[i + 1] + w[i] + w[i + 2:]
        out.append(w)
    return " ".join(out)


def _other_fact_sentence(world, entity: str, rng: random.Random) -> str:
    from minillm.data.instructions import canonical
    from minillm.data.facts import RELATIONS
    c = rng.choice([c for c in world.countries if c.name != entity])
    return canonical(c, rng.choice(RELATIONS))


def _paraphrase_question(item: dict, k: int) -> str | None:
    """Another question template for a chat fact item (the world's QUESTIONS), or None."""
    from minillm.data.instructions import QUESTIONS
    task = item.get("task") or {}
    if task.get("type") != "fact" or task.get("relation") not in QUESTIONS:
        return None
    templates = [t.format(e=task["entity"]) for t in QUESTIONS[task["relation"]]]
    user = item["messages"][0]["content"]
    others = [t for t in templates if t not in user]
    if not others:
        return None
    return user.replace(next((t for t in templates if t in user), user), others[k % len(others)])


def _paraphrase_completion(world, item: dict, k: int) -> str | None:
    """The same fact cut from another forward phrasing: "Velmora's capital is" -> "The capital of Velmora is"."""
    from minillm.data.facts import FORWARD, completion
    templates = FORWARD.get(item.get("relation"), [])
    choices = [t for i, t in enumerate(templates) if i != item.get("template")]
    if not choices:
        return None
    c = world.country(item["entity"])
    prompt, _ = completion(choices[k % len(choices)], c.name, c.value(item["relation"]))
    return prompt


def perturb(kind: str, prompt: str, rng: random.Random, world=None, item=None, k: int = 0, chat=True) -> str:
    if kind == "typos":
        return typos(prompt, rng)
    if kind == "lowercase":
        return prompt.lower()
    if kind == "uppercase":
        return prompt.upper()
    if kind == "distractor":
        entity = (item.get("task") or {}).get("entity") if chat else item.get("entity")
        return _other_fact_sentence(world, entity, rng) + " " + prompt
    if kind == "paraphrase":
        alt = _paraphrase_question(item, k) if chat else _paraphrase_completion(world, item, k)
        return alt if alt is not None else prompt
    raise ValueError(f"unknown perturbation {kind!r}; choose from {PERTURBATIONS}")


def robustness_eval(world, chat=None, complete=None, oracle=None, n: int = 48, seed: int = 0,
                    kinds=PERTURBATIONS) -> dict:
    """Accuracy on clean and perturbed prompts. With `chat`: the world's test fact questions graded by the
    oracle; else with `complete`: the test fact prompts, right when the continuation starts with the answer.

    Returns {"task", "n", "clean", "perturbations": {kind: {"accuracy", "drop"}}, "items": {...}, "examples"}.
    """
    if chat is not None:
        from minillm.data.oracle import Oracle
        oracle = oracle or Oracle(world)
        items = [x for x in world.instructions("test") if x["family"] == "fact"][:n]
        prompts = [x["messages"][0]["content"] for x in items]

        def score(perturbed):
            replies = chat([[{"role": "user", "content": p}] for p in perturbed])
            return [float(oracle.is_correct([x["messages"][0]], r)) for x, r in zip(items, replies)], replies
        task = "instructions (fact questions, oracle-graded)"
    elif complete is not None:
        items = world.fact_prompts("test")[:n]
        prompts = [x["prompt"] for x in items]

        def score(perturbed):
            outs = complete(perturbed)
            return [float(o.strip().lower().startswith(x["answer"].strip().lower())) for x, o in zip(items, outs)], outs
        task = "fact completion (exact match)"
    else:
        raise ValueError("robustness_eval needs a chat or a complete responder")
    clean, _ = score(prompts)
    acc = sum(clean) / max(len(clean), 1)
    res = {"task": task, "n": len(items), "clean": acc, "perturbations": {}, "examples": {},
           "items": {"robustness.clean": clean}}
    for kind in kinds:
        rng = random.Random(f"{seed}:{kind}")
        perturbed = [perturb(kind, p, rng, world, x, k, chat is not None) for k, (p, x) in enumerate(zip(prompts, items))]
        s, outs = score(perturbed)
        a = sum(s) / max(len(s), 1)
        res["perturbations"][kind] = {"accuracy": a, "drop": acc - a}
        res["items"][f"robustness.perturbations.{kind}.accuracy"] = s
        res["examples"][kind] = {"prompt": perturbed[0], "reply": outs[0]} if perturbed else {}
    return res


def run_robustness(run_dir: str, world_seed: int = 0, n: int = 48) -> dict:
    """Load a run, evaluate (chat for post-trained stages, completion otherwise), write run_dir/robustness.json."""
    from minillm.checkpoint import load_model
    from minillm.data.world import World
    from minillm.evals.safety import chat_responder, completion_responder, save_results
    model, tok, manifest = load_model(run_dir)
    stage = (manifest or {}).get("stage") or ""
    world = World(seed=world_seed)
    if stage in ("pretrain", "finetune", "mlm"):
        res = robustness_eval(world, complete=completion_responder(model, tok), n=n)
    else:
        res = robustness_eval(world, chat=chat_responder(model, tok), n=n)
    save_results(run_dir, "robustness.json", res)
    return res
