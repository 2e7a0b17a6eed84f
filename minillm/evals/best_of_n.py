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

caught_mistakes asks the narrower question PPO depends on: for each prompt the policy answers wrongly (greedy,
graded by the oracle), is r(x, reference) > r(x, policy's answer)? PPO can only move the policy off a mistake the
reward model scores below something better. A reward model built on the SFT model (and, with
reward.likelihood, on its log-probabilities) tends to share the policy's blind spots, because the greedy answer
is by construction the policy's most likely one; a low `caught` on held-out prompts bounds what PPO can fix there.
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


@torch.no_grad()
def caught_mistakes(policy, rm, tok, oracle, items, max_new_tokens: int = 48, batch_size: int = 64) -> dict:
    """On instructions `items` (world items: messages with the reference answer last), the policy's greedy wrong
    answers and the share the reward model scores below the reference answer, overall and by item["heldout"]."""
    prompts = [chatdata.prompt_of(x) for x in items]
    was = policy.training
    policy.eval()
    greedy = chatdata.generate_chat(policy, tok, prompts, max_new_tokens=max_new_tokens, temperature=0.0,
                                    batch_size=batch_size)
    policy.train(was)
    wrong = [j for j, (p, g) in enumerate(zip(prompts, greedy)) if not oracle.grade(p, g["text"])["correct"]]
    out = {"n_prompts": len(items), "policy_wrong": len(wrong), "caught": None, "caught_by_heldout": {}}
    if not wrong:
        return out
    refs = []
    for j in wrong:   # the reference answer as PPO would see it: prompt ids, then the answer's ids and <|end|>
        ids, _ = tok.render_chat(prompts[j] + [items[j]["messages"][-1]])
        P = len(tok.render_chat(prompts[j], add_generation_prompt=True)[0])
        refs.append({"prompt_ids": greedy[j]["prompt_ids"], "response_ids": ids[P:]})
    r_ref = reward_of(rm, tok, refs, batch_size)                                     # (W,)
    r_pol = reward_of(rm, tok, [greedy[j] for j in wrong], batch_size)               # (W,)
    caught = (r_ref > r_pol).tolist()
    by = {}
    for j, c in zip(wrong, caught):
        k = items[j].get("heldout", "all")
        hit, n = by.get(k, (0, 0))
        by[k] = (hit + c, n + 1)
    out.update(caught=sum(caught) / len(caught), mean_margin=float((r_ref - r_pol).mean()),
               caught_by_heldout={k: f"{h}/{n}" for k, (h, n) in sorted(by.items())})
    return out
