"""Best-of-n: does the reward model agree with the oracle on the policy's own answers?

For each prompt x the policy samples n answers y_1..y_n at temperature 1; the reward model picks
y* = argmax_i r(x, y_i), and the oracle grades it. Four numbers per prompt set, each as a mean oracle score and
as the share marked correct:

    greedy      the temperature-0 answer (what the chat evals measure)
    sample      one sampled answer (what PPO's rollouts look like)
    best_of_n   the reward model's pick among the n samples
    any_of_n    (accuracy only) some sample is correct: the ceiling of any reranker

best_of_n above sample means the reward model carries signal the oracle agrees with, on these prompts, and PPO
(which climbs the reward model) or RM-ranked preference pairs can use it. At or below sample it cannot tell
right from wrong there, and optimising against it can only move the policy at random or exploit it.
Best-of-n is also the simplest use of a reward model at inference (Nakano et al. 2021, WebGPT) and the yardstick
of reward over-optimisation (Gao et al. 2022).
"""
import torch

from minillm.stages import chatdata
from minillm.stages.ppo import rollout_scores


@torch.no_grad()
def reward_of(rm, tok, gens, batch_size: int = 64):
    """Reward-model scores (N,) of generated answers (chatdata.generate_chat output)."""
    out = []
    for i in range(0, len(gens), batch_size):
        chunk = gens[i:i + batch_size]
        input_ids, attention_mask, mask = chatdata.pack_rollout(chunk, tok.pad_id)  # (B, T), (B, T), (B, T-1)
        P = max(len(g["prompt_ids"]) for g in chunk)
        out.append(rollout_scores(rm, input_ids, attention_mask, mask, P))           # (B,)
    return torch.cat(out)


@torch.no_grad()
def best_of_n(policy, rm, tok, oracle, prompts, n: int = 8, max_new_tokens: int = 32, seed: int = 0,
              batch_size: int = 64) -> dict:
    """{greedy,sample,best_of_n}_{score,accuracy} and any_of_n_accuracy over `prompts` (lists of messages)."""
    if n < 1 or not prompts:
        raise ValueError("best_of_n needs n >= 1 and at least one prompt")
    was = policy.training
    policy.eval()
    gen = torch.Generator().manual_seed(seed)
    greedy = chatdata.generate_chat(policy, tok, prompts, max_new_tokens=max_new_tokens, temperature=0.0,
                                    batch_size=batch_size)
    samples = [chatdata.generate_chat(policy, tok, prompts, max_new_tokens=max_new_tokens, temperature=1.0,
                                      batch_size=batch_size, generator=gen) for _ in range(n)]
    rewards = torch.stack([reward_of(rm, tok, s, batch_size) for s in samples])      # (n, P)
    pick = rewards.argmax(0)                                                         # (P,)
    policy.train(was)
    sums = dict.fromkeys(("greedy_score", "greedy_accuracy", "sample_score", "sample_accuracy",
                          "best_of_n_score", "best_of_n_accuracy", "any_of_n_accuracy"), 0.0)
    for j, p in enumerate(prompts):
        grades = [oracle.grade(p, s[j]["text"]) for s in samples]
        for name, g in (("greedy", oracle.grade(p, greedy[j]["text"])), ("sample", grades[0]),
                        ("best_of_n", grades[int(pick[j])])):
            sums[f"{name}_score"] += g["score"]
            sums[f"{name}_accuracy"] += float(g["correct"])
        sums["any_of_n_accuracy"] += float(any(g["correct"] for g in grades))
    return {k: v / len(prompts) for k, v in sums.items()} | {"n": n, "n_prompts": len(prompts)}
