"""Reward model: the SFT model with its LM head swapped for a scalar head, trained on preference pairs.

A reward model reads a whole conversation and outputs one number, read at the answer's last token (<|end|>):
r(x, y) = w · h_T + b. Humans (here, the world's oracle-made pairs) only say which of two answers is better,
so the scores are fit with the Bradley–Terry model

    P(y_c ≻ y_r | x) = σ(r(x, y_c) − r(x, y_r)),    L = −log σ(r_c − r_r − margin)

which fixes r only up to a constant: what it learns is an ordering. Starting from the SFT model (InstructGPT)
means the reward model already reads the chat format; only the head is new. Its held-out pairwise accuracy
(share of pairs with r_c > r_r) is its metric. References: Bradley & Terry 1952; Ouyang et al. 2022 (§3.5);
Touvron et al. 2023 (Llama 2, margin); Stiennon et al. 2020.
"""
import copy

import torch

from minillm.model import Transformer
from minillm.stages import chatdata, rl


def reward_model_from(policy: Transformer) -> Transformer:
    """A scalar-head Transformer with the trunk weights of `policy` (its LM head is dropped, the score head new)."""
    cfg = copy.deepcopy(policy.cfg)
    cfg.head = "scalar"
    rm = Transformer(cfg)
    state = {k: v for k, v in policy.state_dict().items() if not k.startswith("lm_head")}
    missing, unexpected = rm.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith("score_head") for k in missing), (missing, unexpected)
    torch.nn.init.zeros_(rm.score_head.weight)   # start indifferent: every answer scores 0
    torch.nn.init.zeros_(rm.score_head.bias)
    return rm


def scores_at(rm, input_ids, last_index, attention_mask=None):
    """Reward-model score of each sequence at its last real token: input_ids (B, T), last_index (B,) -> (B,)."""
    all_scores = rm(input_ids, attention_mask)                               # (B, T)
    return all_scores.gather(1, last_index[:, None]).squeeze(1).float()      # (B,)


def reward_loss(model, batch, margin: float = 0.0):
    """Bradley–Terry loss on a batch of 2B sequences (chosen rows first, see chatdata.collate_sequences)."""
    scores = scores_at(model, batch["input_ids"], batch["last_index"])      # (2B,)
    r_chosen, r_rejected = scores.chunk(2)                                   # (B,), (B,)
    loss, metrics = rl.bradley_terry_loss(r_chosen, r_rejected, margin)
    metrics["reward_mean"] = scores.mean().item()
    return loss, metrics


def collate(pairs, pad_id):
    """[(chosen, rejected)] -> one batch with the chosen sequences first."""
    return chatdata.collate_sequences([c for c, _ in pairs] + [r for _, r in pairs], pad_id)


@torch.no_grad()
def pairwise_accuracy(rm, tok, pairs_encoded, batch_size=64, by_kind=None):
    """Share of held-out pairs the reward model orders correctly (r_c > r_r); with by_kind, also per kind."""
    was = rm.training
    rm.eval()
    correct = []
    for i in range(0, len(pairs_encoded), batch_size):
        batch = collate(pairs_encoded[i:i + batch_size], tok.pad_id)
        r_c, r_r = scores_at(rm, batch["input_ids"], batch["last_index"]).chunk(2)
        correct += (r_c > r_r).tolist()
    rm.train(was)
    out = {"pairwise_accuracy": sum(correct) / max(len(correct), 1)}
    if by_kind is not None:
        kinds = {}
        for k, c in zip(by_kind, correct):
            kinds.setdefault(k, []).append(c)
        out["pairwise_accuracy_by_kind"] = {k: sum(v) / len(v) for k, v in sorted(kinds.items())}
    return out
