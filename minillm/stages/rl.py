"""The math of post-training, as small pure functions: preference losses, log-probs, KL, GAE, PPO.

Every stage after pretraining is built from a handful of formulas. They live here, once, with no model,
no data and no I/O, so each can be tested against numbers worked out by hand (tests/test_rl_objectives.py)
and read next to the paper that introduced it.

Preferences (reward model, DPO)
    Bradley–Terry:  P(chosen > rejected) = σ(r_c − r_r)          loss = −log σ(r_c − r_r − m)
    DPO:            loss = −log σ(β [(log π(y_c|x) − log π_ref(y_c|x)) − (log π(y_r|x) − log π_ref(y_r|x))])
                    implicit reward r̂(x, y) = β (log π(y|x) − log π_ref(y|x))

RLHF with PPO, per response token t (mask m_t = 1 on generated tokens)
    kl_t     = log π(a_t|s_t) − log π_ref(a_t|s_t)                 (the k1 estimator of KL(π || π_ref))
    r_t      = −β_kl · kl_t  + [t is the last token] · RM(x, y)      (reward-model score paid at the end)
    δ_t      = r_t + γ V(s_{t+1}) − V(s_t)
    Â_t      = δ_t + γλ Â_{t+1}                                       (GAE), returns R_t = Â_t + V(s_t)
    ratio_t  = exp(log π_θ(a_t|s_t) − log π_old(a_t|s_t))
    L_clip   = −E[min(ratio·Â, clip(ratio, 1−ε, 1+ε)·Â)]
    L_value  = ½ E[max((V − R)², (V_old + clip(V − V_old, −ε_v, ε_v) − R)²)]
    KL coefficient: fixed, or the adaptive controller of Ziegler et al. that steers the measured KL to a target.

References
    Bradley & Terry (1952), "Rank analysis of incomplete block designs".
    Schulman et al. (2016), "High-dimensional continuous control using generalized advantage estimation" (GAE).
    Schulman et al. (2017), "Proximal policy optimization algorithms" (PPO).
    Ziegler et al. (2019), "Fine-tuning language models from human preferences" (KL penalty, adaptive controller).
    Ouyang et al. (2022), "Training language models to follow instructions with human feedback" (InstructGPT).
    Rafailov et al. (2023), "Direct preference optimization: your language model is secretly a reward model" (DPO).
    Huang et al. (2022), "The 37 implementation details of PPO" (whitening, value clipping, minibatch epochs).
"""
import torch
import torch.nn.functional as F


# ---------------------------------------------------------------------------------------------- masked helpers

def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    """Mean of x where mask is 1. `masked_mean([1., 2., 9.], [1, 1, 0]) -> 1.5`."""
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1.0)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1.0)


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unbiased variance of x where mask is 1 (one number over all masked entries)."""
    mean = masked_mean(x, mask)
    n = mask.to(x.dtype).sum()
    return ((x - mean) ** 2 * mask).sum() / (n - 1).clamp(min=1.0)


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Advantage whitening: (x − mean) / std over the masked entries; masked-out entries come back 0.

    Whitening keeps the scale of the policy gradient steady while rewards drift (Huang et al. 2022, detail 7).
    `shift_mean=False` only rescales (used for rewards, whose sign carries meaning).
    """
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask.to(x.dtype)


# ---------------------------------------------------------------------------------------------- log-probs

def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target_t) at every position: logits (B, T, V), targets (B, T) -> (B, T).

    `logits[:, t]` must already be the prediction for `targets[:, t]` (shift before calling).
    """
    logprobs = F.log_softmax(logits.float(), dim=-1)                        # (B, T, V)
    return logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)           # (B, T)


def sequence_logprobs(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log π(y|x) = Σ_t m_t log p(target_t): the log-prob of a response, summed where mask is 1 -> (B,)."""
    return (token_logprobs(logits, targets) * mask.to(torch.float32)).sum(-1)   # (B,)


def token_kl(logits: torch.Tensor, ref_logits: torch.Tensor) -> torch.Tensor:
    """KL(p || p_ref) = Σ_v p_v (log p_v − log p_ref,v) at each position, exactly: (B, T, V) x2 -> (B, T).

    Summed over a sampled answer it is an unbiased estimate of the sequence KL(π || π_ref) that, unlike the k1
    estimator Σ_t log π(a_t)/π_ref(a_t), is never negative and varies less (only the states are sampled, not the
    tokens; Schulman 2020, "Approximating KL divergence")."""
    logp = F.log_softmax(logits.float(), dim=-1)                            # (B, T, V)
    ref_logp = F.log_softmax(ref_logits.float(), dim=-1)                    # (B, T, V)
    return (logp.exp() * (logp - ref_logp)).sum(-1).clamp_min(0.0)          # (B, T), ≥ 0 up to rounding


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """H(p) = −Σ_v p_v log p_v at each position: (B, T, V) -> (B, T)."""
    logprobs = F.log_softmax(logits.float(), dim=-1)                        # (B, T, V)
    return -(logprobs.exp() * logprobs).sum(-1)                             # (B, T)


# ---------------------------------------------------------------------------------------------- preference losses

def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, margin: float | torch.Tensor = 0.0):
    """Reward-model loss −log σ(r_c − r_r − margin), averaged over pairs.

    Bradley–Terry models P(c preferred over r) = σ(r_c − r_r); the loss is its negative log-likelihood.
    A margin (Llama 2) asks the chosen score to win by at least that much. −log σ(z) = softplus(−z),
    which stays finite for large |z|. Example: r_c = 1, r_r = 0 -> loss = log(1 + e^−1) ≈ 0.3133.
    Returns (loss, {"accuracy": share with r_c > r_r, "margin": mean r_c − r_r}).
    """
    diff = r_chosen.float() - r_rejected.float()                            # (B,)
    loss = F.softplus(-(diff - margin)).mean()
    return loss, {"accuracy": (diff > 0).float().mean().item(), "margin": diff.mean().item()}


def dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta: float = 0.1):
    """Direct Preference Optimization loss (Rafailov et al. 2023), averaged over pairs.

    The KL-regularised RLHF optimum is π*(y|x) ∝ π_ref(y|x) exp(r(x,y)/β), so r(x,y) = β log(π*/π_ref) + const.
    Plugging that reward into Bradley–Terry gives a loss on the policy alone:
        loss = −log σ(β [(log π(y_c) − log π_ref(y_c)) − (log π(y_r) − log π_ref(y_r))]).
    All inputs are (B,) sequence log-probs. Returns (loss, metrics) with the implicit rewards
    r̂ = β (log π − log π_ref) of chosen and rejected, their margin and the implicit-reward accuracy.
    """
    chosen_rewards = beta * (policy_chosen_logps - ref_chosen_logps)       # (B,)
    rejected_rewards = beta * (policy_rejected_logps - ref_rejected_logps)  # (B,)
    margins = chosen_rewards - rejected_rewards                            # (B,)
    loss = F.softplus(-margins).mean()
    return loss, {
        "rewards_chosen": chosen_rewards.mean().item(),
        "rewards_rejected": rejected_rewards.mean().item(),
        "reward_margin": margins.mean().item(),
        "reward_accuracy": (margins > 0).float().mean().item(),
    }


# ---------------------------------------------------------------------------------------------- RLHF rewards

def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last 1 in each row of a 0/1 mask (B, T) -> (B,). Rows of all zeros give 0."""
    T = mask.shape[-1]
    positions = torch.arange(T, device=mask.device).expand_as(mask)        # (B, T)
    return torch.where(mask.bool(), positions, torch.zeros_like(positions)).max(-1).values


def kl_penalized_rewards(logprobs, ref_logprobs, scores, mask, kl_coef: float):
    """Per-token RLHF reward: r_t = −kl_coef · (log π − log π_ref)_t, plus the RM score on the last response token.

    logprobs, ref_logprobs, mask: (B, T) over response tokens; scores: (B,) reward-model scores.
    Returns (rewards (B, T), kl (B, T)); both are 0 where mask is 0. (Ziegler et al. 2019, eq. 2.)
    """
    mask = mask.to(logprobs.dtype)
    kl = (logprobs - ref_logprobs) * mask                                  # (B, T)
    rewards = -kl_coef * kl                                                # (B, T)
    last = last_token_index(mask)                                          # (B,)
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards[rows, last] += scores.to(rewards.dtype) * (mask.sum(-1) > 0).to(rewards.dtype)
    return rewards, kl


# ---------------------------------------------------------------------------------------------- advantages

def gae(rewards, values, mask, gamma: float = 1.0, lam: float = 0.95):
    """Generalised advantage estimation over the response tokens of each row (Schulman et al. 2016).

        δ_t = r_t + γ V_{t+1} − V_t,   Â_t = δ_t + γ λ Â_{t+1},   R_t = Â_t + V_t
    with V and Â taken as 0 after the last response token. rewards, values, mask: (B, T); the mask
    must be one contiguous run of 1s per row (the response). Returns (advantages, returns), 0 off the mask.
    The loop runs backwards over time; the batch is vectorised.
    """
    mask = mask.to(values.dtype)
    values = values * mask
    B, T = rewards.shape
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros(B, dtype=values.dtype, device=values.device)
    next_adv = torch.zeros_like(next_value)
    for t in reversed(range(T)):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]        # (B,)
        adv = delta + gamma * lam * next_adv
        advantages[:, t] = adv * m
        # off the mask (padding after the response) carry nothing back
        next_value = values[:, t] * m
        next_adv = adv * m
    returns = (advantages + values) * mask
    return advantages, returns


# ---------------------------------------------------------------------------------------------- PPO losses

def ppo_policy_loss(logprobs, old_logprobs, advantages, mask, clip: float = 0.2):
    """PPO clipped surrogate (Schulman et al. 2017): −E[min(ρ Â, clip(ρ, 1−ε, 1+ε) Â)], ρ = π_θ / π_old.

    All (B, T); mean over masked tokens. Returns (loss, {"clipfrac": share of tokens where the clip was active,
    "approx_kl": E[½ (log ρ)²] between the current and the rollout policy}).
    """
    log_ratio = logprobs - old_logprobs                                    # (B, T)
    ratio = log_ratio.exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        clipfrac = masked_mean((clipped > unclipped).float(), mask).item()
        approx_kl = masked_mean(0.5 * log_ratio ** 2, mask).item()
    return loss, {"clipfrac": clipfrac, "approx_kl": approx_kl}


def ppo_value_loss(values, old_values, returns, mask, clip_value: float = 0.2):
    """Clipped value loss: ½ E[max((V − R)², (V_old + clip(V − V_old, −ε, ε) − R)²)] over masked tokens.

    Keeps the value head from moving further than the policy per update (Huang et al. 2022, detail 9).
    Returns (loss, {"value_clipfrac": share of tokens where the clipped branch was larger}).
    """
    values_clipped = old_values + (values - old_values).clamp(-clip_value, clip_value)
    loss_unclipped = (values - returns) ** 2
    loss_clipped = (values_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(loss_unclipped, loss_clipped), mask)
    with torch.no_grad():
        frac = masked_mean((loss_clipped > loss_unclipped).float(), mask).item()
    return loss, {"value_clipfrac": frac}


# ---------------------------------------------------------------------------------------------- KL controllers

class FixedKLController:
    """A constant KL coefficient β (InstructGPT used 0.02)."""

    def __init__(self, kl_coef: float):
        self.value = kl_coef

    def update(self, current_kl: float, n_steps: int) -> None:
        pass


class AdaptiveKLController:
    """Adaptive KL coefficient (Ziegler et al. 2019, §2.2): steer the measured KL towards a target.

        e = clip(KL / target − 1, −0.2, 0.2),   β ← β (1 + K_β e),   K_β = n_steps / horizon
    KL above target -> β grows (pull harder towards the reference); below -> β shrinks.
    Example: β = 0.1, target 6, KL 12, n_steps = horizon -> e = 0.2, β = 0.12.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: float):
        self.value, self.target, self.horizon = init_kl_coef, target, horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon


# ---------------------------------------------------------------------------------------------- the PPO update

def ppo_epochs(forward, optimizer, rollout: dict, *, epochs: int = 4, minibatch_size: int = 8, clip: float = 0.2,
               clip_value: float = 0.2, vf_coef: float = 0.1, ent_coef: float = 0.0, max_grad_norm: float = 1.0,
               params=None, generator=None) -> dict:
    """Several epochs of clipped PPO over shuffled minibatches of one rollout; returns the mean metrics.

    forward(input_ids (b, T), attention_mask (b, T)) -> (logits (b, T, V), values (b, T)) is the policy with its
    value head. rollout holds (B, T) input_ids and attention_mask, and over the T−1 next-token positions:
    mask (1 on response tokens), old_logprobs, old_values, advantages, returns. Model-agnostic, so a
    three-token bandit (tests/test_rl_objectives.py) and the Transformer (stages/ppo.py) share this code.
    """
    B = rollout["input_ids"].shape[0]
    params = list(params) if params is not None else [p for g in optimizer.param_groups for p in g["params"]]
    sums, n = {}, 0
    for _ in range(epochs):
        order = torch.randperm(B, generator=generator)
        for start in range(0, B, minibatch_size):
            idx = order[start:start + minibatch_size]
            mb = {k: v[idx] for k, v in rollout.items()}
            logits, values = forward(mb["input_ids"], mb["attention_mask"])     # (b, T, V), (b, T)
            logits, values = logits[:, :-1], values[:, :-1]                       # predict token t+1 from prefix ≤ t
            logprobs = token_logprobs(logits, mb["input_ids"][:, 1:])             # (b, T-1)
            pg_loss, pg_stats = ppo_policy_loss(logprobs, mb["old_logprobs"], mb["advantages"], mb["mask"], clip)
            vf_loss, vf_stats = ppo_value_loss(values.float(), mb["old_values"], mb["returns"], mb["mask"], clip_value)
            entropy = masked_mean(entropy_from_logits(logits), mb["mask"])
            loss = pg_loss + vf_coef * vf_loss - ent_coef * entropy
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm) if max_grad_norm else torch.tensor(0.0)
            optimizer.step()
            stats = {"policy_loss": pg_loss.item(), "value_loss": vf_loss.item(), "entropy": entropy.item(),
                     "grad_norm": float(grad_norm), **pg_stats, **vf_stats}
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + v
            n += 1
    return {k: v / max(n, 1) for k, v in sums.items()}


def leave_one_out_baseline(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """RLOO (Kool et al. 2019; Ahmadian et al. 2024): scores (B,) of `group_size` consecutive answers per prompt ->
    each score minus the mean score of the *other* answers to the same prompt, k/(k−1) · (r_i − mean_group).

    The baseline is unbiased (it never sees r_i) and removes what the prompt alone decides: an easy prompt's answers
    all score high, a hard one's all low, and without a per-prompt baseline that difference, not the answer's
    quality, dominates the advantages. Answers that are all alike get 0: nothing to learn from, nothing pushed."""
    if group_size <= 1:
        return scores
    if scores.shape[0] % group_size:
        raise ValueError(f"{scores.shape[0]} scores do not split into groups of {group_size}")
    g = scores.view(-1, group_size)                                             # (B/k, k)
    return (g - (g.sum(1, keepdim=True) - g) / (group_size - 1)).flatten()     # (B,)


def compute_advantages(logprobs, ref_logprobs, values, scores, mask, *, kl_coef: float, gamma: float = 1.0,
                       lam: float = 0.95, whiten_advantages: bool = True):
    """From one rollout to PPO targets: KL-penalised rewards -> GAE -> (whitened) advantages and returns.

    All (B, T) over next-token positions except scores (B,). Returns a dict with rewards, kl, advantages, returns.
    """
    rewards, kl = kl_penalized_rewards(logprobs, ref_logprobs, scores, mask, kl_coef)
    advantages, returns = gae(rewards, values, mask, gamma, lam)
    if whiten_advantages:
        advantages = whiten(advantages, mask)
    return {"rewards": rewards, "kl": kl, "advantages": advantages, "returns": returns}
