"""Does the reward model see the SFT model's own mistakes? (minillm.evals.best_of_n.caught_mistakes)

    python benchmarks/reward_blindspot.py PIPELINE_DIR [PIPELINE_DIR ...] [--split test] [--threads 2]
    python benchmarks/reward_blindspot.py --sft RUN --reward RUN

The reward stage's `pairwise_accuracy` measures the reward model on the world's held-out preference pairs, whose
rejected answers are made by rule (another entity's value, a rude or rambling answer, ...). This measures it where
PPO needs it: on the answers the SFT policy itself gets wrong. The SFT model answers every prompt of the split
greedily (48 tokens, as the stage evaluations), the oracle marks the wrong answers, and the reward model scores
the reference answer against each. `caught` is the share where the reference scores higher, also by what the
prompt holds out (entity, wording = template, both). Prints one JSON line per pair of runs; record results in
benchmarks/results/.
"""
import argparse
import json
import os

import torch

from minillm.checkpoint import load_model
from minillm.data.oracle import Oracle
from minillm.data.world import World
from minillm.evals.best_of_n import caught_mistakes
from minillm.stages.ppo import load_reward_model


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dirs", nargs="*", help="pipeline directories (their sft/ and reward/ runs)")
    ap.add_argument("--sft", default="")
    ap.add_argument("--reward", default="")
    ap.add_argument("--split", default="test", choices=["test", "val"])
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--world-seed", type=int, default=0)
    a = ap.parse_args()
    runs = [(os.path.join(d, "sft"), os.path.join(d, "reward")) for d in a.dirs]
    if a.sft or a.reward:
        runs.append((a.sft, a.reward))
    if not runs:
        ap.error("give PIPELINE_DIR(s) or --sft RUN --reward RUN")
    if a.threads:
        torch.set_num_threads(a.threads)
    world = World(seed=a.world_seed)
    oracle = Oracle(world)
    for sft_run, reward_run in runs:
        policy, tok, _ = load_model(sft_run)
        rm = load_reward_model(reward_run, tok)
        row = {"sft": sft_run, "reward": reward_run, "split": a.split}
        row.update(caught_mistakes(policy, rm, tok, oracle, world.instructions(a.split)))
        row.update({k: round(row[k], 3) for k in ("caught", "mean_margin") if row.get(k) is not None})
        with open(os.path.join(reward_run, "eval.json")) as f:
            row["world_pairs_accuracy"] = round(json.load(f).get("pairwise_accuracy", float("nan")), 3)
        with open(os.path.join(reward_run, "config.json")) as f:
            row["reward_likelihood"] = json.load(f).get("reward", {}).get("likelihood")
        print(json.dumps(row))


if __name__ == "__main__":
    main()
