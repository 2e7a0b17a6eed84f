"""RLHF with PPO: the SFT policy samples answers, the reward model scores them, PPO nudges the policy.

One iteration (Ziegler et al. 2019; Ouyang et al. 2022; the PPO details of Huang et al. 2022):

    1. rollout   sample a batch of prompts; the policy answers with the KV-cache generator (temperature 1),
                 stopping at <|end|>. Keep log π_old(a_t|s_t) and the value head's V(s_t) for every answer token.
    2. score     r = RM(prompt, answer) at the answer's last token (minus a penalty if it never said <|end|>);
                 the oracle also scores each answer (logged only: it is the human we do not have at train time).
    3. reward    per token: r_t = −β (log π_old − log π_ref)_t, plus r on the last token (the KL keeps the
                 policy near the frozen SFT model, so it cannot drift into text the RM was never trained on).
    4. GAE       advantages Â_t with (γ, λ), returns R_t = Â_t + V_t; advantages whitened over the batch.
    5. update    `ppo_epochs` epochs over shuffled minibatches of the clipped surrogate + clipped value loss.
    6. adapt β   with the adaptive controller, β follows the measured KL towards a target.

The value head is a linear layer on the policy's final hidden state (a shared trunk, as in TRL); vf_coef
weighs its loss. Reward hacking shows up as RM score rising while the oracle score falls: the run flags it.

Defaults, with the references they come from and what we changed for a 1M-parameter model on a CPU:
    clip ε = 0.2, value clip 0.2, γ = 1, λ = 0.95, 4 epochs          (Schulman 2017; Ziegler 2019; InstructGPT)
    kl_coef β = 0.05, adaptive target 6 nats, horizon 10000            (Ziegler 2019 uses β0 0.1-0.2, target 6;
                                                                        InstructGPT a fixed 0.02)
    lr 1e-5 in the papers; 1e-4 here (a tiny model, few iterations); rollout 64 prompts, minibatch 16.
"""
import copy
from dataclasses import dataclass

import torch
import torch.nn as nn

from minillm.stages import chatdata, rl
from minillm.stages.reward import scores_at


@dataclass
class PPOSection:
    iterations: int = 40            # rollout -> update cycles
    rollout_size: int = 64          # prompts per rollout
    minibatch_size: int = 16
    epochs: int = 4                 # passes over each rollout
    max_new_tokens: int = 24
    temperature: float = 1.0
    lr: float = 1e-4
    clip: float = 0.2
    clip_value: float = 0.2
    vf_coef: float = 0.1
    ent_coef: float = 0.0
    gamma: float = 1.0
    lam: float = 0.95
    kl_coef: float = 0.05
    adaptive_kl: bool = False
    kl_target: float = 6.0
    kl_horizon: float = 10000.0
    missing_end_penalty: float = 1.0   # subtracted from the RM score when an answer never ends
    whiten_advantages: bool = True
    eval_every: int = 10            # iterations between held-out oracle evaluations (0 = only at the end)


class PolicyWithValue(nn.Module):
    """The policy Transformer plus a value head V(s_t) = w · h_t + b on its final hidden states."""

    def __init__(self, policy):
        super().__init__()
        self.policy = policy
        self.value_head = nn.Linear(policy.cfg.n_embd, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids, attention_mask=None):
        h = self.policy.forward_hidden(input_ids, attention_mask)             # (B, T, C)
        return self.policy.lm_head(h), self.value_head(h).squeeze(-1).float()  # (B, T, V), (B, T)


def frozen_copy(model):
    """A copy with no gradients, in eval mode: the reference policy π_ref."""
    return copy.deepcopy(model).eval().requires_grad_(False)


@torch.no_grad()
def make_rollout(agent: PolicyWithValue, ref, rm, tok, prompts, cfg: PPOSection, generator=None, oracle=None):
    """Sample answers to `prompts` (lists of messages) and build everything PPO needs, as (B, ·) tensors.

    Sequences are [left-padded prompt | answer | right padding]; position t of the (B, T−1) tensors is the
    prediction of token t+1, and `mask` is 1 where that token belongs to the answer (its <|end|> included).
    """
    agent.eval()
    gens = chatdata.generate_chat(agent.policy, tok, prompts, max_new_tokens=cfg.max_new_tokens,
                                  temperature=cfg.temperature, batch_size=len(prompts), generator=generator)
    input_ids, attention_mask, mask = chatdata.pack_rollout(gens, tok.pad_id)   # (B, T), (B, T), (B, T-1)
    P = max(len(g["prompt_ids"]) for g in gens)
    lengths = mask.sum(1).long()                                              # (B,)
    logits, values = agent(input_ids, attention_mask)                         # (B, T, V), (B, T)
    logprobs = rl.token_logprobs(logits[:, :-1], input_ids[:, 1:])            # (B, T-1)
    ref_logprobs = rl.token_logprobs(ref(input_ids, attention_mask)[:, :-1], input_ids[:, 1:])
    last = (P - 1 + lengths).clamp(max=input_ids.shape[1] - 1)                # index of the last answer token
    scores = scores_at(rm, input_ids, last, attention_mask)                   # (B,)
    ended = torch.tensor([g["ended"] for g in gens])
    scores = scores - cfg.missing_end_penalty * (~ended).float()
    oracle_scores = [oracle.score(p, g["text"])[0] for p, g in zip(prompts, gens)] if oracle is not None else []
    agent.train()
    return {"input_ids": input_ids, "attention_mask": attention_mask, "mask": mask, "old_logprobs": logprobs,
            "ref_logprobs": ref_logprobs, "old_values": values[:, :-1], "scores": scores,
            "oracle": oracle_scores, "ended": ended, "texts": [g["text"] for g in gens]}


def ppo_iteration(agent, ref, rm, tok, prompts, optimizer, kl_ctl, cfg: PPOSection, generator=None, oracle=None):
    """One rollout + several PPO epochs; returns the iteration's metrics (reward, oracle, KL, entropy, clipfrac)."""
    ro = make_rollout(agent, ref, rm, tok, prompts, cfg, generator, oracle)
    adv = rl.compute_advantages(ro["old_logprobs"], ro["ref_logprobs"], ro["old_values"], ro["scores"], ro["mask"],
                                kl_coef=kl_ctl.value, gamma=cfg.gamma, lam=cfg.lam,
                                whiten_advantages=cfg.whiten_advantages)
    rollout = {k: ro[k] for k in ("input_ids", "attention_mask", "mask", "old_logprobs", "old_values")}
    rollout.update(advantages=adv["advantages"], returns=adv["returns"])
    stats = rl.ppo_epochs(agent, optimizer, rollout, epochs=cfg.epochs, minibatch_size=cfg.minibatch_size,
                          clip=cfg.clip, clip_value=cfg.clip_value, vf_coef=cfg.vf_coef, ent_coef=cfg.ent_coef,
                          max_grad_norm=1.0, generator=generator)
    kl_per_answer = adv["kl"].sum(1).mean().item()                             # Σ_t kl_t, mean over answers
    kl_ctl.update(kl_per_answer, n_steps=len(prompts))
    metrics = {"reward": ro["scores"].mean().item(), "kl": kl_per_answer, "kl_coef": kl_ctl.value,
               "answer_length": ro["mask"].sum(1).mean().item(), "ended": ro["ended"].float().mean().item(),
               "non_score_reward": (-kl_ctl.value * adv["kl"]).sum(1).mean().item(), **stats}
    if ro["oracle"]:
        metrics["oracle"] = sum(ro["oracle"]) / len(ro["oracle"])
    return metrics, ro


def detect_reward_hacking(history: list[dict], window: int = 5, min_rise: float = 0.1, min_fall: float = 0.05):
    """Reward hacking: the RM score rose while the oracle fell, comparing the first and last `window` iterations.

    Returns {"reward_hacking": bool, "reward_change", "oracle_change"} (changes are last-window − first-window means).
    """
    rows = [h for h in history if "oracle" in h]
    if len(rows) < 2 * window:
        window = max(len(rows) // 2, 1)
    if len(rows) < 2:
        return {"reward_hacking": False, "reward_change": 0.0, "oracle_change": 0.0}
    mean = lambda xs, k: sum(x[k] for x in xs) / len(xs)
    d_reward = mean(rows[-window:], "reward") - mean(rows[:window], "reward")
    d_oracle = mean(rows[-window:], "oracle") - mean(rows[:window], "oracle")
    hacked = d_reward > min_rise and d_oracle < -min_fall
    return {"reward_hacking": bool(hacked), "reward_change": d_reward, "oracle_change": d_oracle}
