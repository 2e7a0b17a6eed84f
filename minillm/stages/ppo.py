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
With your own prompts (--data) there is no oracle to ask: the first tenth of them is held out, and the run reports
the reward model's score of the greedy answers to those (`heldout_reward`, and its change) and the KL there; with
only the proxy to look at, hacking cannot be told from progress, so read the answers (`minillm chat`).
Each iteration logs two KLs per answer: `kl`, the k1 sum the penalty uses (unbiased, but a batch of it can dip below
0), and `kl_exact`, the exact per-state KL summed along the same answers (rl.token_kl; never negative).

Defaults, with the references they come from and what we changed for a 1M-parameter model on a CPU:
    clip ε = 0.2, value clip 0.2, γ = 1, λ = 0.95, 4 epochs          (Schulman 2017; Ziegler 2019; InstructGPT)
    kl_coef β = 0.05, adaptive target 6 nats, horizon 10000            (Ziegler 2019 uses β0 0.1-0.2, target 6;
                                                                        InstructGPT a fixed 0.02)
    policy lr 1e-5, as in the papers (on tiny, 1e-4 moved the policy 0.3 nats per update and the answers
    collapsed in 5 iterations; 3e-5 let the entropy and the KL creep up while the held-out oracle score fell
    0.75 -> 0.61); the value head has its own lr 1e-3 and does not train the trunk (see PolicyWithValue);
    rollout 64 prompts, minibatch 16, 8 iterations on tiny.
    group_size (tiny 4): the rollout is 16 prompts x 4 answers, and each answer's score has the mean score of the
    other three subtracted (RLOO, Ahmadian et al. 2024; GRPO's group baseline, Shao et al. 2024, without its std).
    The SFT policy is near-deterministic, so most groups are four equal answers and get advantage ~0; only prompts
    whose answers differ push the policy, towards the better one. Advantages are then not whitened: whitening
    would blow those near-zero advantages back up to unit variance.
"""
import copy
import json
import os
import time
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from minillm.checkpoint import atomic_write_json, load_model, read_manifest, save_model, write_manifest
from minillm.config import RunConfig
from minillm.errors import MiniLLMError
from minillm.stages import chatdata, lineage, rl
from minillm.stages.reward import scores_at, sequence_scores


@dataclass
class PPOSection:
    iterations: int = 40            # rollout -> update cycles (tiny: 8)
    rollout_size: int = 64          # answers per rollout
    group_size: int = 1             # answers sampled per prompt; > 1: RLOO baseline on the score (see ppo_iteration)
    minibatch_size: int = 16
    epochs: int = 4                 # passes over each rollout
    max_new_tokens: int = 24
    temperature: float = 1.0
    clip: float = 0.2
    clip_value: float = 0.2
    vf_coef: float = 0.1
    value_lr: float = 1e-3          # the value head learns the reward scale fast; the policy moves slowly (train.lr)
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
    eval_prompts: int = 96          # held-out prompts in those evaluations
    eval_limit: int = 0             # held-out prompts in the final evaluation (0 = all)
    eval_max_new_tokens: int = 48
    reward_run: str = ""            # the reward model's run directory (--reward)
    data: str = ""                  # "" = the world's training prompts, or a .jsonl of prompts / instructions


@dataclass
class PPOConfig(RunConfig):
    ppo: PPOSection = field(default_factory=PPOSection)


# The optimizer settings come from the train section (lr, betas, grad_clip, seed); max_steps is unused.
DEFAULTS = {
    "smoke": {"train": dict(lr=3e-4, weight_decay=0.0, warmup_steps=0),
              "ppo": dict(iterations=3, rollout_size=8, minibatch_size=4, epochs=2, max_new_tokens=8, eval_every=0,
                          eval_prompts=8, eval_max_new_tokens=8, eval_limit=24)},
    "tiny": {"train": dict(lr=1e-5, weight_decay=0.0, warmup_steps=0),
             # kl_coef 0.05 (the module default) let the 800-step reward model pull the policy 1.8 nats away
             # (oracle 0.81 -> 0.69); 0.2: KL 2.8 and the reward-hacking flag raised; 0.5: KL 0.5, oracle 0.77
             # session 8: 16 prompts x 4 answers with the leave-one-out baseline, no whitening. Whitened over a batch of
             # 64 different prompts, the advantages mostly said which *prompt* the RM liked (the policy's answers are
             # near-deterministic, entropy ~0.1): on SFT seed 1 the RM score fell over the run and the 1228-prompt
             # held-out oracle went 0.857 -> 0.839 (KL 0.27); with groups 0.851 (KL 0.04); seed 0: 0.826 -> 0.841 / 0.840
             # Session 10: 8 iterations (was 20, 30 before) for the time budget: on SFT models that answer 98.5%
             # of the training prompts right, 20 iterations moved the held-out oracle by -0.002 to -0.006.
             "ppo": dict(iterations=8, eval_every=4, eval_prompts=64, kl_coef=0.5, group_size=4,
                         whiten_advantages=False)},
    "small": {"train": dict(lr=3e-5, weight_decay=0.0, warmup_steps=0),
              "ppo": dict(iterations=100, rollout_size=128, minibatch_size=32)},
}


class PolicyWithValue(nn.Module):
    """The policy Transformer plus a value head V(s_t) = w · h_t + b on its final hidden states.

    With detach_value (the default) the value head reads the trunk's features without training them: on a tiny
    model the value loss (large while V is still learning the reward scale) otherwise pulls the shared trunk away
    from the policy and the answers collapse within a few iterations."""

    def __init__(self, policy, detach_value: bool = True):
        super().__init__()
        self.policy, self.detach_value = policy, detach_value
        self.value_head = nn.Linear(policy.cfg.n_embd, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids, attention_mask=None):
        h = self.policy.forward_hidden(input_ids, attention_mask)             # (B, T, C)
        values = self.value_head(h.detach() if self.detach_value else h)      # (B, T, 1)
        return self.policy.lm_head(h), values.squeeze(-1).float()             # (B, T, V), (B, T)


def frozen_copy(model):
    """A copy with no gradients, in eval mode: the reference policy π_ref."""
    return copy.deepcopy(model).eval().requires_grad_(False)


@torch.no_grad()
def rollout_scores(rm, input_ids, attention_mask, mask, P):
    """Reward-model scores (B,) of packed answers (chatdata.pack_rollout; P = padded prompt length), pooled the
    way the reward model was trained: at the last answer token, or the mean over the answer's tokens."""
    if getattr(rm, "score_pool", "last") == "mean":
        answer_tokens = torch.nn.functional.pad(mask, (1, 0))                  # (B, T): 1 on the answer's tokens
        return sequence_scores(rm, input_ids, answer_tokens, attention_mask, pool="mean")
    last = (P - 1 + mask.sum(1).long()).clamp(max=input_ids.shape[1] - 1)    # (B,) index of the last answer token
    return scores_at(rm, input_ids, last, attention_mask)


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
    logits, values = agent(input_ids, attention_mask)                         # (B, T, V), (B, T)
    logprobs = rl.token_logprobs(logits[:, :-1], input_ids[:, 1:])            # (B, T-1)
    ref_logits = ref(input_ids, attention_mask)[:, :-1]                       # (B, T-1, V)
    ref_logprobs = rl.token_logprobs(ref_logits, input_ids[:, 1:])             # (B, T-1)
    kl_exact = (rl.token_kl(logits[:, :-1], ref_logits) * mask).sum(1)        # (B,) Σ_t KL(π(·|s_t) || π_ref(·|s_t))
    scores = rollout_scores(rm, input_ids, attention_mask, mask, P)           # (B,)
    ended = torch.tensor([g["ended"] for g in gens])
    scores = scores - cfg.missing_end_penalty * (~ended).float()
    oracle_scores = [oracle.score(p, g["text"])[0] for p, g in zip(prompts, gens)] if oracle is not None else []
    agent.train()
    return {"input_ids": input_ids, "attention_mask": attention_mask, "mask": mask, "old_logprobs": logprobs,
            "ref_logprobs": ref_logprobs, "old_values": values[:, :-1], "scores": scores,
            "oracle": oracle_scores, "ended": ended, "texts": [g["text"] for g in gens], "kl_exact": kl_exact}


def ppo_iteration(agent, ref, rm, tok, prompts, optimizer, kl_ctl, cfg: PPOSection, generator=None, oracle=None):
    """One rollout + several PPO epochs; returns the iteration's metrics (reward, oracle, KL, entropy, clipfrac)."""
    ro = make_rollout(agent, ref, rm, tok, prompts, cfg, generator, oracle)
    # prompts come in groups of cfg.group_size copies: each answer is scored against the others to its prompt
    scores = rl.leave_one_out_baseline(ro["scores"], cfg.group_size)         # (B,)
    adv = rl.compute_advantages(ro["old_logprobs"], ro["ref_logprobs"], ro["old_values"], scores, ro["mask"],
                                kl_coef=kl_ctl.value, gamma=cfg.gamma, lam=cfg.lam,
                                whiten_advantages=cfg.whiten_advantages)
    rollout = {k: ro[k] for k in ("input_ids", "attention_mask", "mask", "old_logprobs", "old_values")}
    rollout.update(advantages=adv["advantages"], returns=adv["returns"])
    stats = rl.ppo_epochs(agent, optimizer, rollout, epochs=cfg.epochs, minibatch_size=cfg.minibatch_size,
                          clip=cfg.clip, clip_value=cfg.clip_value, vf_coef=cfg.vf_coef, ent_coef=cfg.ent_coef,
                          max_grad_norm=1.0, generator=generator)
    kl_per_answer = adv["kl"].sum(1).mean().item()                             # Σ_t kl_t, mean over answers
    kl_ctl.update(kl_per_answer, n_steps=len(prompts))
    # "kl" is the k1 sum the penalty (and the adaptive controller) uses: unbiased, but one batch of it can be < 0;
    # "kl_exact" sums the exact per-state KL along the same answers (rl.token_kl): never negative, less noisy
    metrics = {"reward": ro["scores"].mean().item(), "kl": kl_per_answer, "kl_exact": ro["kl_exact"].mean().item(),
               "kl_coef": kl_ctl.value,
               "answer_length": ro["mask"].sum(1).mean().item(), "ended": ro["ended"].float().mean().item(),
               "non_score_reward": (-kl_ctl.value * adv["kl"]).sum(1).mean().item(), **stats}
    if ro["oracle"]:
        metrics["oracle"] = sum(ro["oracle"]) / len(ro["oracle"])
    return metrics, ro


def detect_reward_hacking(history: list[dict], window: int = 5, min_rise: float = 0.1, min_fall: float = 0.05,
                          heldout: tuple = ()):
    """Reward hacking: the RM score rose while the oracle fell, comparing the first and last `window` iterations
    (oracle on the rollouts), or the first and last of `heldout` (oracle scores on fixed held-out prompts, which
    catch a policy that keeps its training prompts but breaks on new ones).

    Returns {"reward_hacking": bool, "reward_change", "oracle_change", "heldout_oracle_change"} (changes are
    last-window − first-window means; last − first for held-out).
    """
    d_heldout = heldout[-1] - heldout[0] if len(heldout) >= 2 else 0.0
    rows = [h for h in history if "oracle" in h]
    if len(rows) < 2 * window:
        window = max(len(rows) // 2, 1)
    if len(rows) < 2:
        return {"reward_hacking": False, "reward_change": 0.0, "oracle_change": 0.0, "heldout_oracle_change": d_heldout}
    mean = lambda xs, k: sum(x[k] for x in xs) / len(xs)
    d_reward = mean(rows[-window:], "reward") - mean(rows[:window], "reward")
    d_oracle = mean(rows[-window:], "oracle") - mean(rows[:window], "oracle")
    hacked = d_reward > min_rise and min(d_oracle, d_heldout) < -min_fall
    return {"reward_hacking": bool(hacked), "reward_change": d_reward, "oracle_change": d_oracle,
            "heldout_oracle_change": d_heldout}


def load_prompts(path, world):
    """PPO prompts: the world's training instructions, or a .jsonl of {"prompt"} / {"messages"} lines."""
    if not path:
        return [chatdata.prompt_of(ex) for ex in world.instructions("train")]
    out = []
    for lineno, row in chatdata.read_jsonl(path):
        if "messages" in row or "prompt" in row:
            msgs = chatdata.prompt_of(row) if "messages" in row else chatdata.as_messages(row["prompt"])
            if msgs:
                out.append(msgs)
                continue
        raise MiniLLMError(f"{path} line {lineno}: a PPO prompt needs 'prompt' (string or messages) or 'messages'")
    if not out:
        raise MiniLLMError(f"{path} holds no prompts")
    return out


def load_reward_model(reward_run, tok):
    """The reward run's scalar-head model, frozen; it must share the policy's tokenizer."""
    if not reward_run:
        raise MiniLLMError("ppo needs --reward RUN_DIR, a finished reward-model run (minillm reward)")
    if not os.path.isfile(os.path.join(reward_run, "manifest.json")):
        raise MiniLLMError(f"--reward {reward_run} is not a minillm run directory (no manifest.json)")
    kind = read_manifest(reward_run).get("stage")
    if kind != "reward":
        raise MiniLLMError(f"--reward {reward_run} is a {kind!r} run, not a reward model; train one with minillm reward")
    rm, rm_tok, _ = load_model(reward_run)
    if rm_tok is None or rm_tok.vocab_size != tok.vocab_size or rm_tok.special_ids != tok.special_ids:
        raise MiniLLMError(f"--reward {reward_run} uses a different tokenizer than the policy; train it from this SFT run")
    with open(os.path.join(reward_run, "config.json")) as f:
        rm.score_pool = json.load(f).get("reward", {}).get("pool", "last")  # runs from before pooling: "last"
    return rm.requires_grad_(False)


def plot_ppo(run_dir, rows):
    """reward, KL and oracle score over PPO iterations -> run_dir/plots/ppo.png."""
    from matplotlib.figure import Figure  # no pyplot: never switches the backend of a notebook
    fig = Figure(figsize=(12, 3.2))
    axes = fig.subplots(1, 3)
    for ax, keys, title in zip(axes, [("reward", "heldout_reward"), ("kl", "kl_exact"), ("oracle", "heldout_oracle")],
                               ["reward-model score", "KL(π || π_ref) per answer", "oracle score"]):
        for k in keys:
            pts = [(r["step"], r[k]) for r in rows if k in r]
            if pts:
                ax.plot(*zip(*pts), label=k, marker="o" if k.startswith("heldout") else None)
        ax.set_title(title)
        ax.set_xlabel("PPO iteration")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
        else:
            ax.text(0.5, 0.5, "no oracle for your own prompts", ha="center", va="center", transform=ax.transAxes)
    os.makedirs(os.path.join(run_dir, "plots"), exist_ok=True)
    path = os.path.join(run_dir, "plots", "ppo.png")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return path


def run_ppo(parent, out, preset="tiny", reward="", data="", config_file=None, overrides=(), resume=False):
    """minillm ppo: RLHF of the SFT run `parent` against the reward run `reward`, into `out`; -> evaluation dict.

    PPO is not resumable mid-run: an interrupted PPO run starts again from its SFT parent.
    """
    from minillm.checkpoint import sha256_file
    from minillm.data.oracle import Oracle
    from minillm.data.world import World
    from minillm.evals.chat import chat_metrics, heldout_subset, kl_to_reference, lm_metrics
    from minillm.checkpoint import device_info
    from minillm.train import MetricsLogger, configure_optimizer
    policy, tok, _ = lineage.load_parent(parent, "ppo")
    extra = ([f"ppo.data={data}"] if data else []) + ([f"ppo.reward_run={reward}"] if reward else [])
    cfg = lineage.stage_config(PPOConfig, "ppo", preset, DEFAULTS, policy, config_file, list(overrides) + extra)
    rm = load_reward_model(cfg.ppo.reward_run, tok)
    world = World(seed=cfg.data.world_seed)
    user = bool(cfg.ppo.data)            # your prompts: the world's oracle knows nothing about them
    oracle = None if user else Oracle(world)
    prompts = load_prompts(cfg.ppo.data, world)
    if user:   # the first tenth held out, as sft and reward do with your data (a single prompt: evaluated on itself)
        prompts, held = chatdata.split_tenth(prompts)
        eval_prompts, held_out = (held or prompts)[:cfg.ppo.eval_prompts], bool(held)
    else:
        heldout = world.instructions("test")
        eval_prompts = [chatdata.prompt_of(ex) for ex in heldout_subset(heldout, cfg.ppo.eval_limit)]
    tracked = "heldout_reward" if user else "heldout_oracle"
    lineage.start_run(out, tok, parent, resume)
    for f in ("metrics.jsonl", "state.json"):
        if os.path.exists(os.path.join(out, f)):
            os.remove(os.path.join(out, f))
    torch.manual_seed(cfg.train.seed)
    g = torch.Generator().manual_seed(cfg.train.seed)
    ref = frozen_copy(policy)
    agent = PolicyWithValue(policy)
    optimizer = configure_optimizer(agent.policy, cfg.train)
    optimizer.add_param_group({"params": list(agent.value_head.parameters()), "lr": cfg.ppo.value_lr,
                               "weight_decay": 0.0})
    kl_ctl = (rl.AdaptiveKLController(cfg.ppo.kl_coef, cfg.ppo.kl_target, cfg.ppo.kl_horizon) if cfg.ppo.adaptive_kl
              else rl.FixedKLController(cfg.ppo.kl_coef))
    config = cfg.to_dict()
    atomic_write_json(os.path.join(out, "config.json"), config)
    write_manifest(out, config=config, seed=cfg.train.seed, device=device_info(torch.device("cpu")), status="running",
                   **lineage.manifest_fields("ppo", parent, out, None, reward_run=os.path.abspath(cfg.ppo.reward_run),
                                             reward_model_sha256=sha256_file(os.path.join(cfg.ppo.reward_run,
                                                                                          "model.safetensors"))))
    logger = MetricsLogger(os.path.join(out, "metrics.jsonl"))
    sampler = lineage.Sampler(len(prompts), cfg.train.seed)

    def heldout_score():
        """The world: the oracle's mean score on held-out instructions. Your data: the reward model's mean score of
        the greedy answers to your held-out prompts (a proxy: without an oracle, hacking cannot be told apart)."""
        if user:
            from minillm.evals.best_of_n import reward_of
            gens = chatdata.generate_chat(policy, tok, eval_prompts, max_new_tokens=cfg.ppo.eval_max_new_tokens,
                                          temperature=0.0, batch_size=64)
            return reward_of(rm, tok, gens).mean().item()
        return chat_metrics(policy, tok, world, oracle, examples=heldout, limit=cfg.ppo.eval_prompts,
                            max_new_tokens=cfg.ppo.eval_max_new_tokens)["oracle_score"]

    rows, t0 = [], time.time()
    start_row = {"step": 0, tracked: heldout_score()}
    logger.log(**start_row)
    rows.append(start_row)
    from tqdm.auto import tqdm
    bar = tqdm(range(1, cfg.ppo.iterations + 1), desc="ppo", unit="it", disable=not cfg.train.progress,
               dynamic_ncols=True)
    for it in bar:
        k = max(1, cfg.ppo.group_size)
        batch = [prompts[i] for i in sampler.sample(max(1, cfg.ppo.rollout_size // k)) for _ in range(k)]
        metrics, _ = ppo_iteration(agent, ref, rm, tok, batch, optimizer, kl_ctl, cfg.ppo, g, oracle)
        row = {"step": it, **metrics, "elapsed_s": round(time.time() - t0, 2)}
        if cfg.ppo.eval_every and it % cfg.ppo.eval_every == 0 and it != cfg.ppo.iterations:
            row[tracked] = heldout_score()
        logger.log(**row)
        rows.append(row)
        bar.set_postfix(reward=f"{metrics['reward']:.2f}", kl=f"{metrics['kl']:.2f}",
                        oracle=f"{metrics.get('oracle', 0):.2f}")
    policy.eval()
    save_model(out, policy)
    train_rows = [r for r in rows if "reward" in r]
    end_row = {"step": cfg.ppo.iterations, tracked: heldout_score()}   # the same prompts as step 0
    final = {k: train_rows[-1][k] for k in ("reward", "kl", "kl_coef", "entropy", "clipfrac", "oracle")
             if train_rows and k in train_rows[-1]}
    final["train_time_s"] = round(time.time() - t0, 2)
    if user:
        evaluation = {"heldout_reward": end_row[tracked], "heldout_reward_change": end_row[tracked] - start_row[tracked],
                      "n_eval_prompts": len(eval_prompts), "eval_prompts_held_out": held_out}
    else:
        evaluation = chat_metrics(policy, tok, world, oracle, max_new_tokens=cfg.ppo.eval_max_new_tokens,
                                  limit=cfg.ppo.eval_limit)
        evaluation.update(lm_metrics(policy, tok, world))
        heldout_curve = [r[tracked] for r in rows + [end_row] if tracked in r]
        evaluation.update(detect_reward_hacking(train_rows, heldout=heldout_curve))
    evaluation["kl_to_reference"] = kl_to_reference(policy, ref, tok, eval_prompts)
    logger.log(**end_row)
    plot_ppo(out, rows + [end_row])
    write_manifest(out, status="done")
    return lineage.finish_run(out, final, evaluation)
