"""Direct Preference Optimization: align the SFT model on preference pairs without a reward model or sampling.

RLHF maximises E[r(x, y)] − β KL(π || π_ref). Its optimum has a closed form, π*(y|x) = π_ref(y|x) e^{r(x,y)/β} / Z(x),
so any reward can be written through its optimal policy: r(x, y) = β log π*(y|x)/π_ref(y|x) + β log Z(x).
In the Bradley–Terry likelihood only reward differences appear, Z(x) cancels, and the policy is fit directly:

    L_DPO = −log σ(β [log π(y_c|x)/π_ref(y_c|x) − log π(y_r|x)/π_ref(y_r|x)])

π_ref is the frozen SFT model; its log-probs are computed once before training. The implicit reward
r̂ = β log π/π_ref of chosen and rejected answers, their margin and the share of pairs ordered correctly are logged.
β = 0.1 is the paper's default: smaller β lets the policy move further from the reference.
Reference: Rafailov et al. 2023; Tunstall et al. 2023 (Zephyr) for β = 0.1 with SFT as reference.
"""
import torch

from minillm.stages import chatdata, rl


def pair_logprobs(model, batch):
    """Sequence log-probs of the answers of a pair batch (chosen rows first) -> (chosen (B,), rejected (B,))."""
    logits = model(batch["input_ids"])                                        # (2B, T, V)
    logps = rl.sequence_logprobs(logits, batch["targets"], batch["loss_mask"])  # (2B,)
    return logps.chunk(2)


@torch.no_grad()
def reference_logprobs(ref_model, pairs_encoded, pad_id, batch_size=64):
    """log π_ref of every chosen and rejected answer, once: -> tensor (N, 2)."""
    was = ref_model.training
    ref_model.eval()
    out = []
    for i in range(0, len(pairs_encoded), batch_size):
        c, r = pair_logprobs(ref_model, chatdata.collate_pairs(pairs_encoded[i:i + batch_size], pad_id))
        out.append(torch.stack([c, r], 1))
    ref_model.train(was)
    return torch.cat(out)


def dpo_batch_loss(model, batch, beta: float = 0.1):
    """DPO loss for a pair batch carrying its reference log-probs in batch["ref_logps"] (B, 2)."""
    chosen, rejected = pair_logprobs(model, batch)
    return rl.dpo_loss(chosen, rejected, batch["ref_logps"][:, 0], batch["ref_logps"][:, 1], beta)
