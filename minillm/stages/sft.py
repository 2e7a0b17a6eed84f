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
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from minillm.checkpoint import sha256_texts
from minillm.config import RunConfig
from minillm.stages import chatdata, lineage


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


def encode_instructions(tok, examples, block_size):
    """[{"messages"}] -> [(ids, mask)], dropping conversations whose answer does not fit in the context."""
    out = []
    for ex in examples:
        ids, mask = chatdata.encode_chat(tok, ex["messages"], block_size + 1)
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


@dataclass
class SFTSection:
    data: str = ""                  # "" = the world's instructions, or a .jsonl (messages | prompt/response)
    eval_max_new_tokens: int = 48   # greedy answer length for the held-out evaluation
    eval_limit: int = 0             # 0 = every held-out instruction


@dataclass
class SFTConfig(RunConfig):
    sft: SFTSection = field(default_factory=SFTSection)


# A smaller LR than pretraining and few epochs: on tiny, lr 1e-3 for 400 steps memorised the training entities
# (held-out answer loss 1.27, held-out accuracy 0.54, refusals 0.80); 3e-4 for 250 steps keeps more of the base
# model (answer loss 0.55, refusals 1.0).
DEFAULTS = {
    "smoke": {"train": dict(max_steps=20, batch_size=8, lr=1e-3, warmup_steps=2, eval_every=10, eval_batches=2,
                            log_every=5, weight_decay=0.0), "sft": dict(eval_limit=24)},
    "tiny": {"train": dict(max_steps=250, batch_size=32, lr=3e-4, warmup_steps=20, eval_every=50, eval_batches=4,
                           log_every=10, weight_decay=0.0, min_lr_ratio=0.1)},
    "small": {"train": dict(max_steps=1500, batch_size=64, lr=3e-4, warmup_steps=50, eval_every=250,
                            eval_batches=8, weight_decay=0.0)},
}


class SFTStage(lineage.SampledStage):
    """The SFT objective for train.train(): seeded batches of chat examples, loss on the answer only."""
    name = "sft"

    def __init__(self, tok, train_examples, val_examples, seed=0, evaluate=None):
        self.tok = tok
        self.train, self.val = train_examples, val_examples
        self.sampler = lineage.Sampler(len(train_examples), seed)
        self._evaluate = evaluate

    def train_batch(self, batch_size):
        return chatdata.collate_lm([self.train[i] for i in self.sampler.sample(batch_size)], self.tok.pad_id)

    def val_batches(self, batch_size, n):
        val = self.val or self.train
        return [chatdata.collate_lm(val[i:i + batch_size], self.tok.pad_id)
                for i in range(0, min(len(val), batch_size * n), batch_size)]

    def loss(self, model, batch):
        return sft_loss(model, batch)


def instruction_data(tok, cfg, world):
    """-> (train, val, held-out test examples or None) from --data or the world."""
    if cfg.sft.data:
        examples = chatdata.load_instructions(cfg.sft.data)
        n_val = max(1, len(examples) // 10) if len(examples) > 1 else 0
        return examples[n_val:], examples[:n_val], None
    return world.instructions("train"), world.instructions("val"), world.instructions("test")


def run_sft(parent, out, preset="tiny", data="", config_file=None, overrides=(), resume=False):
    """minillm sft: instruction-tune the parent (base or finetuned) run into `out`; -> evaluation dict."""
    from minillm.data.world import World
    from minillm.evals.chat import chat_metrics, lm_metrics
    from minillm.train import train
    model, tok, _ = lineage.load_parent(parent, "sft")
    cfg = lineage.stage_config(SFTConfig, "sft", preset, DEFAULTS, model, config_file,
                               list(overrides) + ([f"sft.data={data}"] if data else []))
    world = World(seed=cfg.data.world_seed)
    train_ex, val_ex, test_ex = instruction_data(tok, cfg, world)
    block = model.cfg.block_size
    stage = SFTStage(tok, encode_instructions(tok, train_ex, block), encode_instructions(tok, val_ex, block),
                     seed=cfg.train.seed)
    resume = lineage.start_run(out, tok, parent, resume)
    metrics = train(model, stage, cfg.train, out, config=cfg.to_dict(), resume=resume,
                    manifest=lineage.manifest_fields("sft", parent, out, sha256_texts(
                        [str(ex["messages"]) for ex in train_ex])))
    evaluation = {"val_answer_loss": heldout_loss(model, tok, stage.val or stage.train)}
    if test_ex is not None:
        from minillm.data.oracle import Oracle
        evaluation.update(chat_metrics(model, tok, world, Oracle(world), examples=test_ex,
                                       max_new_tokens=cfg.sft.eval_max_new_tokens, limit=cfg.sft.eval_limit or None))
        evaluation.update(lm_metrics(model, tok, world))
    return lineage.finish_run(out, metrics, evaluation)
