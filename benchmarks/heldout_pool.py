"""A chat model on many more held-out instructions than the 300 of the test split, by family and by what is held out.

    python benchmarks/heldout_pool.py RUN_DIR/sft [RUN_DIR/dpo ...] [--per-family 200] [--threads 2]

The test split has 20 list and 40 domain prompts, so one family's accuracy moves by 0.05 per answer and two SFT
variants can swap places by chance. Every instruction that is not `train` (test, val and the `unused` rest, which
the oracle still grades) is held out by entity, wording or both; this takes up to --per-family of them per family
(seeded shuffle), answers greedily (48 tokens, as the stage evaluation) and prints one JSON line per run:
accuracy per family and per held-out kind, `weighted_acc`, the family accuracies weighted as the test split
weighs them (instructions.TEST_CAPS; close to the stages' instruction_accuracy, which leaves out the harmful family),
and `weighted_oracle`, the mean oracle score weighted the same way, comparable with oracle_score; `over_refusal`, the
share of the pool's benign prompts that got a refusal (the harmful family's accuracy is its refusal rate).
"""
import argparse
import collections
import json
import random

import torch

from minillm.checkpoint import load_model
from minillm.data.instructions import TEST_CAPS
from minillm.data.oracle import Oracle
from minillm.data.world import World
from minillm.stages import chatdata


def pool(world, per_family, seed=0):
    items = [x for x in world.all_instructions() if x["split"] != "train"]
    random.Random(seed).shuffle(items)
    by_family = collections.defaultdict(list)
    for x in items:
        by_family[x["family"]].append(x)
    return [x for f in sorted(by_family) for x in by_family[f][:per_family]]


def grade(run, items, oracle):
    model, tok, manifest = load_model(run)
    prompts = [chatdata.prompt_of(x) for x in items]
    answers = chatdata.generate_chat(model, tok, prompts, max_new_tokens=48, temperature=0.0, batch_size=64)
    family, heldout, scores = collections.defaultdict(list), collections.defaultdict(list), collections.defaultdict(list)
    refused_benign = []
    for x, p, a in zip(items, prompts, answers):
        g = oracle.grade(p, a["text"])
        family[x["family"]].append(g["correct"])
        heldout[x["heldout"]].append(g["correct"])
        scores[x["family"]].append(g["score"])
        if not x["harmful"]:
            refused_benign.append(g["refusal"])
    acc = {k: sum(v) / len(v) for k, v in sorted(family.items())}
    weigh = lambda per_family: sum(TEST_CAPS[f] * a for f, a in per_family.items()) / sum(TEST_CAPS[f] for f in acc)
    weighted, oracle_w = weigh(acc), weigh({k: sum(v) / len(v) for k, v in scores.items()})
    return {"run": run, "stage": manifest.get("stage"), "n": len(items), "weighted_acc": round(weighted, 3),
            "weighted_oracle": round(oracle_w, 3),
            "over_refusal": round(sum(refused_benign) / max(len(refused_benign), 1), 4),
            "family": {k: round(v, 3) for k, v in acc.items()},
            "family_n": {k: len(v) for k, v in sorted(family.items())},
            "heldout": {k: round(sum(v) / len(v), 3) for k, v in sorted(heldout.items())}}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--per-family", type=int, default=200)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--world-seed", type=int, default=0)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    world = World(seed=a.world_seed)
    items, oracle = pool(world, a.per_family), Oracle(world)
    for run in a.runs:
        print(json.dumps(grade(run, items, oracle)))


if __name__ == "__main__":
    main()
