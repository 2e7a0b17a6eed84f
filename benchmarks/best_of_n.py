"""Does the reward model rank the policy's own answers the way the oracle does? (minillm.evals.best_of_n)

    python benchmarks/best_of_n.py RUN_DIR/sft RUN_DIR/reward [--n 8] [--train-prompts 300]

Prints one markdown row per prompt set: the held-out test instructions, and as many training instructions
(where the reward model was trained, so its signal should be best). Record results in benchmarks/results/.
"""
import argparse
import random
import time

import torch

from minillm.checkpoint import load_model
from minillm.data.oracle import Oracle
from minillm.data.world import World
from minillm.evals.best_of_n import best_of_n
from minillm.stages import chatdata
from minillm.stages.ppo import load_reward_model


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("policy")
    ap.add_argument("reward")
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--train-prompts", type=int, default=300)
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    policy, tok, _ = load_model(a.policy)
    rm = load_reward_model(a.reward, tok)
    world = World(seed=0)
    oracle = Oracle(world)
    sets = {"test (held out)": world.instructions("test"),
            "train": random.Random(0).sample(world.instructions("train"), a.train_prompts)}
    cols = ("greedy", "sample", "best_of_n")
    print("| prompts | n | " + " | ".join(f"{c} score / acc" for c in cols) + " | any_of_n acc | time (s) |")
    print("|---|---|" + "---|" * (len(cols) + 2))
    for name, items in sets.items():
        t = time.time()
        m = best_of_n(policy, rm, tok, oracle, [chatdata.prompt_of(x) for x in items], n=a.n)
        cells = " | ".join(f"{m[c + '_score']:.3f} / {m[c + '_accuracy']:.3f}" for c in cols)
        print(f"| {name} ({m['n_prompts']}) | {a.n} | {cells} | {m['any_of_n_accuracy']:.3f} | {time.time() - t:.0f} |")


if __name__ == "__main__":
    main()
