"""Reward model: the SFT model with its LM head swapped for a scalar head, trained on preference pairs.

A reward model reads a whole conversation and outputs one number. The head scores every position,
r_t = w · h_t + b, and the sequence's score pools them over the answer's tokens (pool "last": r at the answer's
last token <|end|>, InstructGPT's choice; pool "mean": the average of r_t over the answer, the tiny default).
Humans (here, the world's oracle-made pairs) only say which of two answers is better, so the scores are fit
with the Bradley–Terry model

    P(y_c ≻ y_r | x) = σ(r(x, y_c) − r(x, y_r)),    L = −log σ(r_c − r_r − margin)

which fixes r only up to a constant: what it learns is an ordering. Why "mean" on the tiny world: a wrong fact
("The capital of X is Brisk.") is visible at the token where the trunk's prediction and the text disagree, and a
mean lets that token's score count directly instead of routing it through attention to <|end|> (held-out test pairs,
same SFT parent: wrong-fact pairs 0.62 -> 0.68-0.74, all pairs 0.87 -> 0.91-0.92). `extra_wrong_facts` adds that
share of extra wrong-fact pairs (the hardest kind) to the training pairs. The price: a mean is easier to game
with answers no pair ever showed (one PPO run answered every list with a single continent name; see ppo.py's
hacking flag and benchmarks/results/pipeline_cpu.md). Starting from the SFT model (InstructGPT)
means the reward model already reads the chat format; only the head is new. Its held-out pairwise accuracy
(share of pairs with r_c > r_r) is its metric. References: Bradley & Terry 1952; Ouyang et al. 2022 (§3.5);
Touvron et al. 2023 (Llama 2, margin); Stiennon et al. 2020.

`reward.confusions` (tiny 0.5) adds pairs whose rejected answer answers another question (the SFT model's own
held-out mistakes, see dpo.py): the RM then marks them, and PPO against it moves where the plain RM left it still.

`reward.likelihood` (tiny default; head "scalar_lm" in model.py): r_t = w · h_t + b + c · log p(x_t | x_<t), where
p is the SFT model's own LM head, kept (tied to the embedding) and trained with the rest, c starting at 1. A linear
head on h_t sees the token x_t but not how surprising it was, and surprise is what marks a wrong fact. The SFT
model's mean answer log-prob alone orders 0.96 of the held-out pairs (wrong facts 0.93), where the plain head
trained 800 steps reached 0.91-0.92 (wrong facts 0.73); with the log-prob term, 0.953 (wrong facts 0.87). The
score is then no longer 0 at the start, and it rewards answers the SFT model finds likely: in PPO that pulls
towards the SFT model's mode, the same direction as the KL penalty. Related: DPO's implicit reward β log π/π_ref.
"""
import copy
import random
from dataclasses import dataclass, field

import torch

from minillm.checkpoint import sha256_texts
from minillm.config import RunConfig
from minillm.errors import MiniLLMError
from minillm.model import Transformer
from minillm.stages import chatdata, lineage, rl


def reward_model_from(policy: Transformer, likelihood: bool = False) -> Transformer:
    """A scalar-head Transformer with the trunk weights of `policy` (its LM head is dropped, the score head new);
    with `likelihood`, head "scalar_lm": the score also reads log p(token) from the kept (tied) LM head."""
    cfg = copy.deepcopy(policy.cfg)
    cfg.head = "scalar_lm" if likelihood else "scalar"
    rm = Transformer(cfg)
    state = {k: v for k, v in policy.state_dict().items() if not k.startswith("lm_head")}
    missing, unexpected = rm.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith("score_") for k in missing), (missing, unexpected)
    torch.nn.init.zeros_(rm.score_head.weight)   # start indifferent (scalar_lm: the log-probs alone)
    torch.nn.init.zeros_(rm.score_head.bias)
    return rm


POOLS = ("last", "mean")


def scores_at(rm, input_ids, last_index, attention_mask=None):
    """Reward-model score of each sequence at its last real token: input_ids (B, T), last_index (B,) -> (B,)."""
    all_scores = rm(input_ids, attention_mask)                               # (B, T)
    return all_scores.gather(1, last_index[:, None]).squeeze(1).float()      # (B,)


def sequence_scores(rm, input_ids, answer_mask, attention_mask=None, pool="last"):
    """One score per sequence from the per-token scores, pooled over the answer (answer_mask (B, T) is 1 on the
    answer's tokens, its <|end|> included): "last" reads the last answer token, "mean" averages them. -> (B,)"""
    if pool not in POOLS:
        raise MiniLLMError(f"reward.pool must be one of {', '.join(POOLS)}, got {pool!r}")
    answer_mask = answer_mask.float()
    if pool == "last":
        positions = torch.arange(answer_mask.shape[1], device=answer_mask.device)               # (T,)
        return scores_at(rm, input_ids, (answer_mask * positions).argmax(1), attention_mask)   # (B,)
    all_scores = rm(input_ids, attention_mask).float()                                          # (B, T)
    return (all_scores * answer_mask).sum(1) / answer_mask.sum(1).clamp(min=1.0)                # (B,)


def reward_loss(model, batch, margin: float = 0.0, pool: str = "last"):
    """Bradley–Terry loss on a batch of 2B sequences (chosen rows first, see chatdata.collate_sequences)."""
    score = lambda ids, answer_mask: sequence_scores(model, ids, answer_mask, pool=pool)
    if model.cfg.causal:  # rows run in length-sorted chunks, cut after their last token (same scores, less padding)
        scores = chatdata.by_length(score, batch["last_index"] + 1, batch["input_ids"], batch["answer_mask"])  # (2B,)
    else:
        scores = score(batch["input_ids"], batch["answer_mask"])
    r_chosen, r_rejected = scores.chunk(2)                                   # (B,), (B,)
    loss, metrics = rl.bradley_terry_loss(r_chosen, r_rejected, margin)
    metrics["reward_mean"] = scores.mean().item()
    return loss, metrics


def collate(pairs, pad_id):
    """[(chosen, rejected)] -> one batch with the chosen sequences first."""
    return chatdata.collate_sequences([c for c, _ in pairs] + [r for _, r in pairs], pad_id)


@torch.no_grad()
def pairwise_accuracy(rm, tok, pairs_encoded, batch_size=64, by_kind=None, pool="last"):
    """Share of held-out pairs the reward model orders correctly (r_c > r_r); with by_kind, also per kind."""
    was = rm.training
    rm.eval()
    correct = []
    for i in range(0, len(pairs_encoded), batch_size):
        batch = collate(pairs_encoded[i:i + batch_size], tok.pad_id)
        r_c, r_r = sequence_scores(rm, batch["input_ids"], batch["answer_mask"], pool=pool).chunk(2)
        correct += (r_c > r_r).tolist()
    rm.train(was)
    out = {"pairwise_accuracy": sum(correct) / max(len(correct), 1)}
    if by_kind is not None:
        kinds = {}
        for k, c in zip(by_kind, correct):
            kinds.setdefault(k, []).append(c)
        out["pairwise_accuracy_by_kind"] = {k: sum(v) / len(v) for k, v in sorted(kinds.items())}
    return out


@dataclass
class RewardSection:
    data: str = ""          # "" = the world's preference pairs, or a .jsonl with prompt / chosen / rejected
    margin: float = 0.0     # Bradley–Terry margin (0 = plain BT)
    pool: str = "mean"      # how the per-token scores become one: "last" (the <|end|> token) | "mean" (over the answer)
    extra_wrong_facts: float = 0.3  # world data only: extra wrong-fact pairs, as a share of the training pairs
    confusions: float = 0.0  # world data only: extra pairs answering another question (preferences.confused_answer)
    eval_limit: int = 0     # held-out pairs in the evaluation (0 = all)
    likelihood: bool = False  # score with the SFT model's log p(token) as well (head "scalar_lm", see the docstring)


@dataclass
class RewardConfig(RunConfig):
    reward: RewardSection = field(default_factory=RewardSection)


DEFAULTS = {
    "smoke": {"train": dict(max_steps=20, batch_size=8, lr=1e-3, warmup_steps=2, eval_every=10, eval_batches=2,
                            log_every=5, weight_decay=0.0), "reward": dict(eval_limit=64)},
    # 200 steps (~0.6 epoch of the 5.5k pairs) left wrong facts at chance (0.50); 800 steps: 0.67, overall 0.89;
    # 1200 steps: wrong facts 0.74 but off-format 0.68 (overfits, train 0.996), overall 0.89.
    # With reward.likelihood (the tiny default since session 7) the SFT model's own log-probs already order 0.96 of
    # the held-out pairs; 800 steps: 0.953 (wrong facts 0.87, off-format 0.84), and the val loss was lowest at 200.
    # Session 8: + confusion pairs (reward.confusions 0.5, see preferences.confused_answer): held-out pairwise 0.960 ->
    # 0.953 on the world's kinds, but PPO against it raised the 1228-prompt held-out oracle 0.826 -> 0.841 (harmful
    # refused 0.875 -> 0.96) where PPO against the plain one stayed at 0.827 (benchmarks/results/pipeline_cpu.md).
    # Session 9: 200 steps (was 300) for the time budget: pairwise 0.963 / 0.960 on seeds 0 / 1 (300: 0.953).
    # Session 10: 120 steps, again for time (see benchmarks/results/pipeline_cpu.md for what it measured).
    "tiny": {"train": dict(max_steps=120, batch_size=16, lr=2e-4, warmup_steps=20, eval_every=60, eval_batches=4,
                           log_every=10, weight_decay=0.0), "reward": dict(likelihood=True, confusions=0.5)},
    "small": {"train": dict(max_steps=1000, batch_size=32, lr=1e-4, warmup_steps=50, eval_every=250,
                            eval_batches=8, weight_decay=0.0)},
}


def encode_pairs(tok, pairs, max_tokens):
    """Preference pairs -> [(chosen (ids, mask), rejected (ids, mask))], each cut to max_tokens."""
    return [chatdata.encode_pair(tok, p, max_tokens) for p in pairs]


class RewardStage(lineage.SampledStage):
    """Bradley–Terry on preference pairs, for train.train()."""
    name = "reward"

    def __init__(self, tok, train_pairs, val_pairs, margin=0.0, seed=0, evaluate=None, pool="last"):
        self.tok, self.train, self.val, self.margin, self.pool = tok, train_pairs, val_pairs, margin, pool
        self.sampler = lineage.Sampler(len(train_pairs), seed)
        self._evaluate = evaluate

    def train_batch(self, batch_size):
        return collate([self.train[i] for i in self.sampler.sample(batch_size)], self.tok.pad_id)

    def val_batches(self, batch_size, n):
        val = self.val or self.train
        return [collate(val[i:i + batch_size], self.tok.pad_id)
                for i in range(0, min(len(val), batch_size * n), batch_size)]

    def loss(self, model, batch):
        return reward_loss(model, batch, self.margin, self.pool)


def preference_data(path, world, extra_wrong_facts=0.0, seed=0, confusions=0.0, mirrored=False):
    """-> (train, val, test) preference pairs from a .jsonl path (10% held out) or, with path "", the world (plus
    extra wrong-fact and confusion pairs on the training instructions, shares `extra_wrong_facts` and `confusions`
    of the world's training pairs; mirrored: see preferences.confusion_pairs)."""
    if path:
        train, val = chatdata.split_tenth(chatdata.load_preferences(path))
        return train, val, val
    train_p = world.preference_pairs("train")
    if extra_wrong_facts > 0:
        from minillm.data.preferences import wrong_fact_pairs
        train_p += wrong_fact_pairs(random.Random(seed), world.instructions("train"), world,
                                    int(len(train_p) * extra_wrong_facts))
    if confusions > 0:
        from minillm.data.preferences import confusion_pairs
        n = int(len(world.preference_pairs("train")) * confusions)
        train_p += confusion_pairs(random.Random(seed + 1), world.instructions("train"), world, n, mirrored)
    return train_p, world.preference_pairs("val"), world.preference_pairs("test")


def run_reward(parent, out, preset="tiny", data="", config_file=None, overrides=(), resume=False):
    """minillm reward: train a reward model from the SFT run `parent` into `out`; -> evaluation dict."""
    from minillm.data.world import World
    from minillm.train import train
    policy, tok, _ = lineage.load_parent(parent, "reward")
    cfg = lineage.stage_config(RewardConfig, "reward", preset, DEFAULTS, policy, config_file,
                               list(overrides) + ([f"reward.data={data}"] if data else []))
    model = reward_model_from(policy, cfg.reward.likelihood)
    cfg.model = model.cfg
    world = World(seed=cfg.data.world_seed)
    train_p, val_p, test_p = preference_data(cfg.reward.data, world, cfg.reward.extra_wrong_facts, cfg.train.seed,
                                             cfg.reward.confusions)
    block = model.cfg.block_size
    stage = RewardStage(tok, encode_pairs(tok, train_p, block), encode_pairs(tok, val_p, block),
                        margin=cfg.reward.margin, seed=cfg.train.seed, pool=cfg.reward.pool)
    resume = lineage.start_run(out, tok, parent, resume)
    metrics = train(model, stage, cfg.train, out, config=cfg.to_dict(), resume=resume,
                    manifest=lineage.manifest_fields("reward", parent, out, sha256_texts(
                        [str(p["prompt"]) + p["chosen"] + p["rejected"] for p in train_p])))
    test_p = test_p[:cfg.reward.eval_limit or None]
    evaluation = pairwise_accuracy(model, tok, encode_pairs(tok, test_p, block),
                                   by_kind=[p.get("kind", "user") for p in test_p], pool=cfg.reward.pool)
    train_acc = pairwise_accuracy(model, tok, stage.train[:cfg.reward.eval_limit or 256], pool=cfg.reward.pool)
    evaluation["train_pairwise_accuracy"] = train_acc["pairwise_accuracy"]
    return lineage.finish_run(out, metrics, evaluation)
