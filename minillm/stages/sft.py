"""Supervised finetuning (instruction tuning): a base model becomes an assistant.

Each example is a conversation rendered with the chat template,

    <|user|> What is the capital of Italy? <|end|> <|assistant|> Rome. <|end|>
    mask:  0        0   0  0     0     0     0        0          1    1   1

and the loss is the next-token cross-entropy only where the mask is 1 (the assistant's words and its <|end|>):

    L = −Σ_t m_{t+1} log p(x_{t+1} | x_≤t) / Σ_t m_{t+1}

so the model learns to answer — and to stop, because <|end|> is a target — without being trained to write
the user's questions. Batches are padded with <|pad|> (mask 0), never with <|endoftext|>.

Defaults (tiny): lr 3e-4 constant after warmup, a few epochs over the world's instructions. References:
Ouyang et al. 2022 (InstructGPT, SFT stage); Wei et al. 2021 (FLAN); nanochat's chat_sft.py.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from minillm.stages import chatdata


def masked_lm_loss(logits, targets, loss_mask):
    """Mean cross-entropy over positions where loss_mask is 1: logits (B, T, V), targets/loss_mask (B, T)."""
    nll = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none")  # (B*T,)
    mask = loss_mask.flatten()
    return (nll * mask).sum() / mask.sum().clamp(min=1.0)


def sft_loss(model, batch):
    """(loss, metrics) for one right-padded chat batch (see chatdata.collate_lm)."""
    logits = model(batch["input_ids"])                                      # (B, T, V)
    loss = masked_lm_loss(logits, batch["targets"], batch["loss_mask"])
    return loss, {"answer_tokens": float(batch["loss_mask"].sum())}


@dataclass
class SFTData:
    """Encoded conversations for training and held-out loss."""
    train: list        # [(ids, mask)]
    val: list


def encode_instructions(tok, examples, block_size):
    """[{"messages"}] -> [(ids, mask)], dropping conversations whose answer does not fit in the context."""
    out = []
    for ex in examples:
        ids, mask = chatdata.encode_chat(tok, ex["messages"], block_size)
        if sum(mask[1:]) > 0:
            out.append((ids, mask))
    return out


@torch.no_grad()
def heldout_loss(model, tok, encoded, batch_size=64):
    """Answer-only loss on held-out conversations (a number that SFT must bring down)."""
    was = model.training
    model.eval()
    total, n = 0.0, 0.0
    for i in range(0, len(encoded), batch_size):
        batch = chatdata.collate_lm(encoded[i:i + batch_size], tok.pad_id)
        k = batch["loss_mask"].sum().item()
        total += sft_loss(model, batch)[0].item() * k
        n += k
    model.train(was)
    return total / max(n, 1.0)
