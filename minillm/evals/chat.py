"""Post-training evaluation: perplexity on the domain and general text, and the oracle's verdict on chat answers.

Language models (every stage that keeps an LM head):
    domain_perplexity, general_perplexity   exp(mean next-token NLL) on the world's held-out domain / general
                                            documents: finetuning should lower the first; forgetting raises the second.
Chat models (sft, ppo, dpo), on the held-out instructions (unseen entities and wordings), answered greedily:
    oracle_score          mean oracle score in [0, 1] (correctness, format, politeness, safety)
    instruction_accuracy  share of benign instructions the oracle marks correct (right answer, no refusal)
                          (both also per prompt, in the run's eval_items.json: see `oracle_gain`)
    refusal_rate          share of harmful requests refused (higher is safer)
    over_refusal_rate     share of benign requests refused (lower is more helpful; "kill some time" is benign)
Reward models:
    pairwise_accuracy     share of held-out preference pairs with r(chosen) > r(rejected)

The oracle is the world's programmatic rater; no model ever trains on it, so it stays an honest judge.
"""
import math
from collections import Counter

import numpy as np
import torch
import torch.nn.functional as F

from minillm.stages import chatdata


@torch.no_grad()
def perplexity(model, tok, texts, max_tokens: int = 16384, batch_size: int = 16) -> float:
    """exp(mean NLL) over the first max_tokens tokens of texts (joined by <|endoftext|>), in context-size windows."""
    ids = []
    for t in texts:
        ids += tok.encode_ordinary(t) + [tok.eot_id]
        if len(ids) > max_tokens:
            break
    return ids_perplexity(model, ids[:max_tokens + 1], batch_size)


@torch.no_grad()
def ids_perplexity(model, ids, batch_size: int = 16) -> float:
    """exp(mean next-token NLL) of one sequence of token ids (a list or a shard's array), in context-size windows."""
    ids = torch.as_tensor(np.asarray(ids, dtype=np.int64))                    # (N,)
    T = model.cfg.block_size
    n = (len(ids) - 1) // T
    if n <= 0:                                                                 # not one context of text
        return float("nan")
    x = ids[:n * T].view(n, T)                                                 # (n, T)
    y = ids[1:n * T + 1].view(n, T)                                            # (n, T)
    was = model.training
    model.eval()
    total = 0.0
    for i in range(0, n, batch_size):
        logits = model(x[i:i + batch_size])                                   # (b, T, V)
        total += F.cross_entropy(logits.float().flatten(0, 1), y[i:i + batch_size].flatten(), reduction="sum").item()
    model.train(was)
    return math.exp(total / (n * T))


def lm_metrics(model, tok, world, max_tokens: int = 16384) -> dict:
    """domain_perplexity and general_perplexity on the world's validation documents."""
    return {"domain_perplexity": perplexity(model, tok, world.domain_corpus("val"), max_tokens),
            "general_perplexity": perplexity(model, tok, world.general_corpus("val"), max_tokens)}


def heldout_subset(items, limit=None):
    """At most `limit` items, taken round-robin over the families so each stays represented; all if limit is falsy."""
    if not limit or limit >= len(items):
        return list(items)
    families = {}
    for it in items:
        families.setdefault(it.get("family", ""), []).append(it)
    queues, out = list(families.values()), []
    while len(out) < limit:
        for q in queues:
            if q and len(out) < limit:
                out.append(q.pop(0))
    return out


# the oracle's reasons (free text) as the flaw they name, so stages can be compared by what they get wrong
FLAWS = (("rambling", "rambling"), ("rude", "rude"), ("refused a benign", "over-refusal"),
         ("complied", "harmful compliance"), ("empty", "empty answer"), ("asked for", "off format"),
         ("the rewrite is not shorter", "off format"), ("unknown prompt", "unknown prompt"))


def flaw_of(reason):
    """'rambling: 31 words where 6 would do' -> 'rambling'; any reason about the content -> 'wrong or missing answer'."""
    return next((kind for prefix, kind in FLAWS if reason.startswith(prefix)), "wrong or missing answer")


def chat_metrics(model, tok, world, oracle, split: str = "test", max_new_tokens: int = 48, limit=None,
                 batch_size: int = 64, examples=None) -> dict:
    """Greedy answers to the held-out instructions, graded by the oracle -> metrics (and a few samples)."""
    items = examples if examples is not None else world.instructions(split)
    items = heldout_subset(items, limit)
    prompts = [chatdata.prompt_of(ex) for ex in items]
    gens = chatdata.generate_chat(model, tok, prompts, max_new_tokens=max_new_tokens, temperature=0.0,
                                  batch_size=batch_size)
    scores, correct, refused_harmful, refused_benign, by_family, flaws = [], [], [], [], {}, Counter()
    for ex, p, g in zip(items, prompts, gens):
        grade = oracle.grade(p, g["text"])          # {"score", "correct", "refusal", "harmful", "reasons", ...}
        scores.append(grade["score"])
        flaws.update({flaw_of(r) for r in grade["reasons"]})     # each flaw once per answer
        by_family.setdefault(ex.get("family", "user"), []).append(grade["score"])
        if ex.get("harmful", grade["harmful"]):
            refused_harmful.append(grade["refusal"])
        else:
            refused_benign.append(grade["refusal"])
            correct.append(bool(grade["correct"]))
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")
    return {
        "oracle_score": mean(scores),
        "instruction_accuracy": mean(correct),
        "refusal_rate": mean(refused_harmful),
        "over_refusal_rate": mean(refused_benign),
        "ended_rate": mean([g["ended"] for g in gens]),
        "oracle_by_family": {k: mean(v) for k, v in sorted(by_family.items())},
        "oracle_flaws": dict(sorted(flaws.items())),   # answers the oracle found each flaw in (one count per answer)
        "n_prompts": len(items),
        "samples": [{"prompt": p[-1]["content"], "answer": g["text"]} for p, g in list(zip(prompts, gens))[:6]],
        # per-prompt scores, same prompts in the same order for every stage: saved to eval_items.json (not eval.json)
        # so that two stages can be compared with a paired bootstrap (compare.bootstrap_diff_ci)
        "items": {"eval.oracle_score": scores, "eval.instruction_accuracy": [float(c) for c in correct],
                  **{f"eval.oracle_by_family.{k}": v for k, v in sorted(by_family.items())}},
    }


def exact_match(model, tok, examples, max_new_tokens: int = 48, limit: int = 64) -> dict:
    """Your own instructions have no oracle: the share of held-out examples whose greedy answer equals the reference
    (case and spacing ignored), with a few samples. Strict, but it is the number a user can check by eye."""
    examples = list(examples)[:limit]
    if not examples:
        return {}
    prompts = [chatdata.prompt_of(ex) for ex in examples]
    gens = chatdata.generate_chat(model, tok, prompts, max_new_tokens=max_new_tokens, temperature=0.0, batch_size=64)
    norm = lambda t: " ".join(t.lower().split())
    hits = [norm(g["text"]) == norm(ex["messages"][-1]["content"]) for ex, g in zip(examples, gens)]
    return {"heldout_exact_match": sum(hits) / len(hits), "n_heldout": len(hits),
            "samples": [{"prompt": p[-1]["content"], "answer": g["text"]} for p, g in list(zip(prompts, gens))[:6]],
            "items": {"eval.heldout_exact_match": [float(h) for h in hits]}}


def oracle_gain(base_dir, run_dir, metric="eval.oracle_score"):
    """(mean(run) - mean(base), 95% CI) of a chat metric over the same held-out prompts, from the two runs'
    eval_items.json by paired bootstrap; None where either run lacks the per-prompt scores or they differ in number.
    At 300 prompts a gain of a few thousandths is noise: the interval says whether one stage beat another."""
    import os

    from minillm.evals.compare import bootstrap_diff_ci
    from minillm.evals.report import read_json_or_none
    a, b = (read_json_or_none(os.path.join(d, "eval_items.json")) or {} for d in (base_dir, run_dir))
    a, b = a.get(metric), b.get(metric)
    if not a or not b or len(a) != len(b):
        return None
    return sum(b) / len(b) - sum(a) / len(a), bootstrap_diff_ci(a, b)


@torch.no_grad()
def kl_to_reference(model, ref_model, tok, prompts, max_new_tokens: int = 32, seed: int = 0) -> float:
    """KL(π || π_ref) per answer, on the policy's own samples: mean over answers of Σ_t KL(π(·|s_t) || π_ref(·|s_t)).

    Each visited state's KL is exact over the vocabulary (rl.token_kl), so the estimate is never negative; the
    number PPO's penalty controls and DPO's β bounds implicitly; 0 for the SFT model itself."""
    from minillm.stages import rl
    g = torch.Generator().manual_seed(seed)
    gens = chatdata.generate_chat(model, tok, prompts, max_new_tokens=max_new_tokens, temperature=1.0,
                                  batch_size=64, generator=g)
    total = 0.0
    for i in range(0, len(gens), 64):
        ids, attn, mask = chatdata.pack_rollout(gens[i:i + 64], tok.pad_id)        # (B, T), (B, T), (B, T-1)
        kl = rl.token_kl(model(ids, attn)[:, :-1], ref_model(ids, attn)[:, :-1])    # (B, T-1)
        total += (kl * mask).sum().item()
    return total / max(len(gens), 1)


# ---------------------------------------------------------------------------------------------- `minillm eval`

def _previous(run_dir):
    """What the stage itself measured (eval.json), kept so that `minillm eval` refreshes rather than erases it."""
    import json
    import os
    try:
        with open(os.path.join(run_dir, "eval.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _world(config):
    from minillm.data.world import World
    return World(seed=config.get("data", {}).get("world_seed", 0))


def _own_data(config, manifest):
    """True for a post-training run on your --data: the world's held-out sets say nothing about it."""
    return bool(config.get(manifest.get("stage") or "", {}).get("data"))


def eval_language_model(run_dir, model, tok, manifest, config):
    """finetune (and any LM): domain and general perplexity on the world's held-out documents. A finetune on your
    own text keeps what the stage measured: your held-out tenth, and its base's held-out pretraining text."""
    if _own_data(config, manifest):
        return _previous(run_dir)
    return {**_previous(run_dir), **lm_metrics(model, tok, _world(config))}


def eval_chat_model(run_dir, model, tok, manifest, config):
    """sft / ppo / dpo: the oracle's verdict on the held-out instructions, plus the perplexities (on your --data:
    what the stage measured on your held-out examples, since the oracle knows only the world)."""
    from minillm.data.oracle import Oracle
    if _own_data(config, manifest):
        return _previous(run_dir)
    world = _world(config)
    out = _previous(run_dir)
    out.update(chat_metrics(model, tok, world, Oracle(world)))
    out.update(lm_metrics(model, tok, world))
    return out


def eval_reward_model(run_dir, model, tok, manifest, config):
    """reward: pairwise accuracy on the world's held-out preference pairs (overall and per kind of mistake); on your
    --data, what the stage measured on your held-out pairs."""
    if _own_data(config, manifest):
        return _previous(run_dir)
    from minillm.stages.reward import encode_pairs, pairwise_accuracy
    pairs = _world(config).preference_pairs("test")
    pool = config.get("reward", {}).get("pool", "last")  # score the way the model was trained to
    return {**_previous(run_dir), **pairwise_accuracy(model, tok, encode_pairs(tok, pairs, model.cfg.block_size),
                                                      by_kind=[p.get("kind", "") for p in pairs], pool=pool)}


POST_EVALUATORS = {"finetune": eval_language_model, "sft": eval_chat_model, "ppo": eval_chat_model,
                   "dpo": eval_chat_model, "reward": eval_reward_model}
