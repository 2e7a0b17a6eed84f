"""The post-training math (minillm/stages/rl.py) against numbers worked out by hand, and PPO on a tiny bandit."""
import copy
import math

import pytest
import torch

from minillm.stages import rl


def softplus(z):  # −log σ(−z), written out by hand for the expected values
    return math.log(1.0 + math.exp(z))


def test_bradley_terry_loss_matches_hand_computed_values():
    r_c, r_r = torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0.0, 1.0, 2.0])
    loss, m = rl.bradley_terry_loss(r_c, r_r)
    # −log σ(1), −log σ(−1), −log σ(0)
    assert loss.item() == pytest.approx((softplus(-1) + softplus(1) + math.log(2)) / 3, abs=1e-6)
    assert loss.item() == pytest.approx(0.773223, abs=1e-5)
    assert m["accuracy"] == pytest.approx(1 / 3)
    assert m["margin"] == pytest.approx(0.0)
    loss_m, _ = rl.bradley_terry_loss(r_c, r_r, margin=0.5)  # −log σ(0.5), −log σ(−1.5), −log σ(−0.5)
    assert loss_m.item() == pytest.approx((softplus(-0.5) + softplus(1.5) + softplus(0.5)) / 3, abs=1e-6)
    assert loss_m.item() > loss.item()


def test_bradley_terry_gradient_pushes_chosen_up_and_rejected_down():
    r_c, r_r = torch.tensor([0.3], requires_grad=True), torch.tensor([0.1], requires_grad=True)
    rl.bradley_terry_loss(r_c, r_r)[0].backward()
    expected = -(1 - 1 / (1 + math.exp(-0.2)))  # d/dr_c of −log σ(r_c − r_r) = −(1 − σ(0.2))
    assert r_c.grad.item() == pytest.approx(expected, abs=1e-6)
    assert r_r.grad.item() == pytest.approx(-expected, abs=1e-6)


def test_dpo_loss_matches_hand_computed_values_and_metrics():
    pc, pr = torch.tensor([-10.0, -5.0]), torch.tensor([-12.0, -3.0])
    rc, rr = torch.tensor([-11.0, -4.0]), torch.tensor([-11.0, -4.0])
    loss, m = rl.dpo_loss(pc, pr, rc, rr, beta=0.1)
    # pair 1: chosen reward 0.1·(+1), rejected 0.1·(−1): margin +0.2; pair 2: margin −0.2
    assert loss.item() == pytest.approx((softplus(-0.2) + softplus(0.2)) / 2, abs=1e-6)
    assert m["rewards_chosen"] == pytest.approx((0.1 - 0.1) / 2, abs=1e-6)
    assert m["reward_margin"] == pytest.approx(0.0, abs=1e-6)
    assert m["reward_accuracy"] == pytest.approx(0.5)
    # at the start of DPO the policy is the reference: loss = log 2 whatever β
    same = torch.tensor([-7.0, -2.0])
    assert rl.dpo_loss(same, same - 1, same, same - 1, beta=0.5)[0].item() == pytest.approx(math.log(2), abs=1e-6)


def test_sequence_logprobs_sum_only_where_mask_is_one():
    probs = torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]]])  # (1, 3, 3)
    targets = torch.tensor([[0, 1, 2]])
    mask = torch.tensor([[0, 1, 1]])
    got = rl.sequence_logprobs(probs.log(), targets, mask)
    assert got.item() == pytest.approx(math.log(0.8) + math.log(0.6), abs=1e-6)
    assert rl.token_logprobs(probs.log(), targets)[0, 0].item() == pytest.approx(math.log(0.5), abs=1e-6)


def test_token_kl_is_exact_nonnegative_and_the_mean_of_the_k1_estimator():
    p, q = torch.tensor([0.5, 0.5]), torch.tensor([0.25, 0.75])
    got = rl.token_kl(p.log().view(1, 1, 2), q.log().view(1, 1, 2))
    assert got.item() == pytest.approx(0.5 * math.log(2) + 0.5 * math.log(2 / 3), abs=1e-6)
    logits = torch.randn(3, 5, 7, generator=torch.Generator().manual_seed(0))
    assert rl.token_kl(logits, logits).abs().max().item() < 1e-6                 # KL(p || p) = 0
    other = torch.randn(3, 5, 7, generator=torch.Generator().manual_seed(1))
    kl = rl.token_kl(logits, other)
    assert (kl > 0).all()
    # the k1 estimator log p(a) - log q(a), averaged over a ~ p, converges to the same number
    g = torch.Generator().manual_seed(2)
    a = torch.multinomial(logits.softmax(-1).view(-1, 7), 20000, replacement=True, generator=g)   # (15, 20000)
    lp, lq = logits.log_softmax(-1).view(-1, 7), other.log_softmax(-1).view(-1, 7)
    k1 = (lp.gather(1, a) - lq.gather(1, a)).mean(1)                                  # (15,)
    assert k1.tolist() == pytest.approx(kl.flatten().tolist(), abs=0.05)


def test_entropy_of_uniform_is_log_vocab():
    assert rl.entropy_from_logits(torch.zeros(2, 3, 4)).flatten().tolist() == pytest.approx([math.log(4)] * 6)


def test_kl_penalty_per_token_with_score_on_last_response_token():
    logprobs = torch.tensor([[-1.0, -2.0, -3.0, 0.0]])
    ref = torch.tensor([[-1.5, -2.0, -2.5, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    rewards, kl = rl.kl_penalized_rewards(logprobs, ref, torch.tensor([2.0]), mask, kl_coef=0.1)
    assert kl[0].tolist() == pytest.approx([0.5, 0.0, -0.5, 0.0])
    assert rewards[0].tolist() == pytest.approx([-0.05, 0.0, 0.05 + 2.0, 0.0])


def test_gae_matches_hand_computed_example():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.6, 0.7]])
    adv, ret = rl.gae(rewards, values, torch.ones(1, 3), gamma=1.0, lam=0.95)
    # δ = [0.1, 0.1, 0.3];  Â2 = 0.3, Â1 = 0.1 + .95·0.3, Â0 = 0.1 + .95·Â1
    assert adv[0].tolist() == pytest.approx([0.46575, 0.385, 0.3], abs=1e-6)
    assert ret[0].tolist() == pytest.approx([0.96575, 0.985, 1.0], abs=1e-6)


def _gae_loop_reference(rewards, values, mask, gamma, lam):
    """GAE the way it is written in the paper: one response at a time, plain Python lists."""
    adv = [[0.0] * len(r) for r in rewards]
    for b in range(len(rewards)):
        idx = [t for t in range(len(mask[b])) if mask[b][t]]
        running = 0.0
        for j in reversed(range(len(idx))):
            t = idx[j]
            next_v = values[b][idx[j + 1]] if j + 1 < len(idx) else 0.0
            delta = rewards[b][t] + gamma * next_v - values[b][t]
            running = delta + gamma * lam * running
            adv[b][t] = running
    ret = [[(adv[b][t] + values[b][t]) if mask[b][t] else 0.0 for t in range(len(mask[b]))] for b in range(len(mask))]
    return adv, ret


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.5), (0.99, 1.0), (1.0, 0.0)])
def test_gae_matches_plain_loop_reference_with_prompt_and_padding(gamma, lam):
    g = torch.Generator().manual_seed(1)
    B, T = 5, 9
    rewards, values = torch.randn(B, T, generator=g), torch.randn(B, T, generator=g)
    mask = torch.zeros(B, T)
    for b in range(B):  # prompt (0s), response (1s), padding (0s), with lengths varying per row
        start, length = b % 3, 2 + b
        mask[b, start:start + length] = 1
    adv, ret = rl.gae(rewards, values, mask, gamma, lam)
    ref_adv, ref_ret = _gae_loop_reference(rewards.tolist(), values.tolist(), mask.tolist(), gamma, lam)
    assert torch.allclose(adv, torch.tensor(ref_adv), atol=1e-5)
    assert torch.allclose(ret, torch.tensor(ref_ret), atol=1e-5)


def test_whitening_gives_zero_mean_unit_variance_on_mask_only():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    assert rl.whiten(x, mask)[0].tolist() == pytest.approx([-1.0, 0.0, 1.0, 0.0], abs=1e-4)
    assert rl.whiten(x, mask, shift_mean=False)[0].tolist() == pytest.approx([1.0, 2.0, 3.0, 0.0], abs=1e-4)


def test_ppo_clipped_surrogate_and_clip_fraction_by_hand():
    old = torch.zeros(1, 3)
    new = torch.tensor([[math.log(1.5), math.log(0.5), 0.0]])  # ratios 1.5, 0.5, 1.0
    adv = torch.tensor([[1.0, 1.0, -1.0]])
    loss, m = rl.ppo_policy_loss(new, old, adv, torch.ones(1, 3), clip=0.2)
    # token 1: max(−1.5, −1.2) = −1.2 (clipped); token 2: max(−0.5, −0.8) = −0.5; token 3: 1
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 1.0) / 3, abs=1e-6)
    assert m["clipfrac"] == pytest.approx(1 / 3)


def test_ppo_clipped_value_loss_by_hand():
    values, old, returns = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.5, 0.0]]), torch.tensor([[2.0, 1.0]])
    loss, m = rl.ppo_value_loss(values, old, returns, torch.ones(1, 2), clip_value=0.2)
    # token 1: max((1−2)², (0.7−2)²) = 1.69; token 2: 1
    assert loss.item() == pytest.approx(0.5 * (1.69 + 1.0) / 2, abs=1e-6)
    assert m["value_clipfrac"] == pytest.approx(0.5)


def test_adaptive_kl_controller_follows_ziegler_update():
    c = rl.AdaptiveKLController(0.1, target=6.0, horizon=100)
    c.update(12.0, n_steps=100)  # error clipped to +0.2
    assert c.value == pytest.approx(0.12)
    c = rl.AdaptiveKLController(0.1, target=6.0, horizon=100)
    c.update(6.6, n_steps=50)  # error 0.1, K = 0.5
    assert c.value == pytest.approx(0.105)
    c.update(0.0, n_steps=100)  # error clipped to −0.2
    assert c.value == pytest.approx(0.105 * 0.8)
    f = rl.FixedKLController(0.05)
    f.update(100.0, 10)
    assert f.value == 0.05


class _BanditPolicy(torch.nn.Module):
    """A Markov 'language model' over 4 tokens with a value head: next token depends on the current one."""

    def __init__(self, V=4):
        super().__init__()
        self.logits = torch.nn.Embedding(V, V)
        self.value = torch.nn.Embedding(V, 1)
        torch.nn.init.zeros_(self.logits.weight)
        torch.nn.init.zeros_(self.value.weight)

    def forward(self, input_ids, attention_mask=None):
        return self.logits(input_ids), self.value(input_ids).squeeze(-1)  # (B, T, V), (B, T)

    @torch.no_grad()
    def sample(self, B, n_new, g):
        ids = torch.zeros(B, 1, dtype=torch.long)  # prompt: token 0
        for _ in range(n_new):
            probs = self.logits(ids[:, -1]).softmax(-1)
            ids = torch.cat([ids, torch.multinomial(probs, 1, generator=g)], 1)
        return ids


def test_ppo_on_a_bandit_raises_reward_and_respects_kl():
    """Reward 1 when both response tokens are 3 (chance 1/16). PPO must find it while KL to the start stays finite."""
    g = torch.Generator().manual_seed(0)
    policy = _BanditPolicy()
    ref = copy.deepcopy(policy).requires_grad_(False)
    opt = torch.optim.Adam(policy.parameters(), lr=0.1)
    kl_ctl = rl.AdaptiveKLController(0.05, target=3.0, horizon=100)
    history = []
    for it in range(25):
        ids = policy.sample(64, 2, g)                                           # (B, 3)
        mask = torch.ones(64, 2)
        with torch.no_grad():
            logits, values = policy(ids)
            logprobs = rl.token_logprobs(logits[:, :-1], ids[:, 1:])
            ref_logprobs = rl.token_logprobs(ref(ids)[0][:, :-1], ids[:, 1:])
        scores = ((ids[:, 1] == 3) & (ids[:, 2] == 3)).float()
        history.append(scores.mean().item())
        out = rl.compute_advantages(logprobs, ref_logprobs, values[:, :-1], scores, mask, kl_coef=kl_ctl.value)
        kl_ctl.update(rl.masked_mean(out["kl"], mask).item() * 2, n_steps=64)
        rollout = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "mask": mask, "old_logprobs": logprobs,
                   "old_values": values[:, :-1], "advantages": out["advantages"], "returns": out["returns"]}
        stats = rl.ppo_epochs(policy, opt, rollout, epochs=4, minibatch_size=16, generator=g)
        assert 0.0 <= stats["clipfrac"] <= 1.0
    assert history[0] < 0.2  # before any update: chance level
    assert sum(history[-3:]) / 3 > 0.8
    assert kl_ctl.value != 0.05  # the controller reacted to the measured KL


def test_reward_hacking_is_flagged_when_the_rm_rises_and_either_oracle_falls():
    from minillm.stages.ppo import detect_reward_hacking
    rising = [{"reward": 1.0 + 0.1 * i, "oracle": 0.8} for i in range(20)]            # RM up, rollout oracle flat
    assert not detect_reward_hacking(rising)["reward_hacking"]
    assert not detect_reward_hacking(rising, heldout=[0.77, 0.76, 0.75])["reward_hacking"]   # a fall within noise
    flagged = detect_reward_hacking(rising, heldout=[0.77, 0.73, 0.69, 0.64])            # held-out prompts break
    assert flagged["reward_hacking"] and flagged["heldout_oracle_change"] == pytest.approx(-0.13)
    falling = [{"reward": 1.0 + 0.1 * i, "oracle": 0.8 - 0.02 * i} for i in range(20)]
    assert detect_reward_hacking(falling)["reward_hacking"]
    honest = [{"reward": 1.0 + 0.1 * i, "oracle": 0.8 + 0.01 * i} for i in range(20)]
    assert not detect_reward_hacking(honest, heldout=[0.7, 0.75])["reward_hacking"]


def test_leave_one_out_baseline_matches_a_plain_loop_and_removes_what_the_prompt_decides():
    torch.manual_seed(0)
    k, scores = 4, torch.randn(12)
    loop = torch.tensor([scores[i] - sum(scores[j] for j in range(i // k * k, i // k * k + k) if j != i) / (k - 1)
                         for i in range(12)])
    out = rl.leave_one_out_baseline(scores, k)
    assert torch.allclose(out, loop, atol=1e-6)
    offset = torch.tensor([5.0, -3.0, 0.5]).repeat_interleave(k)                  # a per-prompt difficulty
    assert torch.allclose(rl.leave_one_out_baseline(scores + offset, k), out, atol=1e-5)
    assert torch.equal(rl.leave_one_out_baseline(torch.full((8,), 2.0), k), torch.zeros(8))  # all alike: nothing
    assert torch.equal(rl.leave_one_out_baseline(scores, 1), scores)
    with pytest.raises(ValueError, match="groups of 4"):
        rl.leave_one_out_baseline(torch.zeros(6), 4)


def _contextual_bandit_ppo(baseline, iterations=15, k=4):
    """PPO on two prompts (tokens 0 and 1) answered k times per rollout; the right answer is 3 after prompt 0 and 2
    after prompt 1, and each prompt *instance* also pays a random offset N(0, 5²) whatever is answered -- a
    difficulty the value head cannot see (it reads only the token). -> (share right over the last 3 rollouts,
    π(3 | 0), π(2 | 1))."""
    g = torch.Generator().manual_seed(0)
    policy = _BanditPolicy()
    ref = copy.deepcopy(policy).requires_grad_(False)
    opt = torch.optim.Adam(policy.parameters(), lr=0.1)
    history = []
    for it in range(iterations):
        prompt = torch.randint(0, 2, (16,), generator=g).repeat_interleave(k)      # (64,) groups of k
        offset = (5.0 * torch.randn(16, generator=g)).repeat_interleave(k)         # (64,) per prompt instance
        with torch.no_grad():
            answer = torch.multinomial(policy.logits(prompt).softmax(-1), 1, generator=g).squeeze(1)
        ids = torch.stack([prompt, answer], 1)                                      # (64, 2)
        right = (answer == torch.where(prompt == 0, 3, 2)).float()
        scores = right + offset
        history.append(right.mean().item())
        mask = torch.ones(64, 1)
        with torch.no_grad():
            logits, values = policy(ids)
            logprobs = rl.token_logprobs(logits[:, :-1], ids[:, 1:])
            ref_logprobs = rl.token_logprobs(ref(ids)[0][:, :-1], ids[:, 1:])
        if baseline:
            scores = rl.leave_one_out_baseline(scores, k)
        out = rl.compute_advantages(logprobs, ref_logprobs, values[:, :-1], scores, mask, kl_coef=0.01,
                                    whiten_advantages=False)
        rollout = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "mask": mask, "old_logprobs": logprobs,
                   "old_values": values[:, :-1], "advantages": out["advantages"], "returns": out["returns"]}
        rl.ppo_epochs(policy, opt, rollout, epochs=4, minibatch_size=16, generator=g)
    probs = policy.logits(torch.tensor([0, 1])).softmax(-1)
    return sum(history[-3:]) / 3, probs[0, 3].item(), probs[1, 2].item()


def test_ppo_with_a_leave_one_out_baseline_learns_a_contextual_bandit_despite_prompt_offsets():
    """The per-instance offsets swamp the answer's own reward (1) unless each answer is compared with the other
    answers to the same prompt instance: with the baseline PPO learns both right answers, without it (same seed,
    same rollouts at the start) it does not within the same iterations."""
    right, p0, p1 = _contextual_bandit_ppo(baseline=True)
    assert right > 0.9 and p0 > 0.8 and p1 > 0.8
    right_without, p0_without, p1_without = _contextual_bandit_ppo(baseline=False)
    assert right_without < 0.8 and min(p0_without, p1_without) < 0.5
