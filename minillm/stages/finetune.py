"""Finetuning as continued pretraining: the base model keeps predicting the next token, on domain text now.

Same objective as pretraining, L = −(1/T) Σ_t log p(x_{t+1} | x_≤t), on random windows of the domain corpus
(the world's medicine: conditions, symptoms, treatments, words the general corpus never uses). Two numbers tell
the story: domain perplexity falls (the model learns the domain) and general perplexity rises (forgetting:
nothing reminds the weights of the general text). A lower learning rate than pretraining and few steps keep
forgetting small; `finetune.replay` mixes a share of general text back in, the usual remedy.
"Domain" is the held-out tenth of the finetuning text (the world's domain val corpus by default); "general" is the
held-out pretraining text of the base run (`general_data`): the world's general corpus, or the val shard of your own
pretraining text, so a Shakespeare base finetuned on one play measures forgetting on Shakespeare.

References: Gururangan et al. 2020 ("Don't stop pretraining"); Kirkpatrick et al. 2017 (catastrophic forgetting);
Ibrahim et al. 2024 (replay and re-warming in continual pretraining).
"""
import os
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from minillm.checkpoint import read_json, sha256_texts
from minillm.config import RunConfig
from minillm.errors import MiniLLMError
from minillm.stages import lineage


@dataclass
class FinetuneSection:
    data: str = ""           # "" = the world's domain corpus, or a .txt / folder / .jsonl with "text"
    replay: float = 0.0      # share of each batch drawn from the general corpus (0 = pure domain)
    eval_tokens: int = 16384  # tokens per perplexity measurement


@dataclass
class FinetuneConfig(RunConfig):
    finetune: FinetuneSection = field(default_factory=FinetuneSection)


# tiny: 150 steps (200 until session 9). Domain perplexity falls >99.9% by 120, but what the assistant knows of the
# domain keeps growing: SFT on top, 1228 held-out prompts (benchmarks/heldout_pool.py), domain family, seed 0 -- 120
# steps 0.21, 150 0.39, 200 0.41 (weighted accuracy 0.725, 0.764, 0.772); three seeds at 120 averaged 0.746 where
# session 9's at 150 averaged 0.770.
DEFAULTS = {
    "smoke": {"train": dict(max_steps=20, batch_size=8, lr=1e-3, warmup_steps=2, eval_every=10, eval_batches=2,
                            log_every=5)},
    "tiny": {"train": dict(max_steps=150, batch_size=32, lr=1e-3, warmup_steps=20, eval_every=75,
                           eval_batches=4, log_every=10)},
    "small": {"train": dict(max_steps=1000, batch_size=64, lr=3e-4, warmup_steps=50, eval_every=250,
                            eval_batches=8)},
}


def tokenize_documents(tok, docs) -> torch.Tensor:
    """Documents -> one long 1-D tensor of ids, each document followed by <|endoftext|>."""
    ids = []
    for d in docs:
        ids += tok.encode_ordinary(d) + [tok.eot_id]
    return torch.tensor(ids, dtype=torch.long)


class FinetuneStage:
    """Next-token prediction on random windows of the domain tokens (plus optional general replay)."""
    name = "finetune"

    def __init__(self, train_ids, val_ids, block_size, seed=0, replay_ids=None, replay=0.0):
        if len(train_ids) <= block_size + 1:
            raise MiniLLMError(f"the finetuning text has {len(train_ids)} tokens, fewer than one context "
                               f"({block_size + 1}); give more text")
        self.train_ids, self.val_ids, self.T = train_ids, val_ids, block_size
        self.replay_ids, self.replay = replay_ids, replay
        self.g = torch.Generator().manual_seed(seed)

    def _windows(self, ids, starts):
        x = torch.stack([ids[s:s + self.T] for s in starts])                  # (B, T)
        y = torch.stack([ids[s + 1:s + 1 + self.T] for s in starts])          # (B, T)
        return {"idx": x, "targets": y}

    def train_batch(self, batch_size):
        n_replay = int(round(batch_size * self.replay)) if self.replay_ids is not None else 0
        starts = torch.randint(len(self.train_ids) - self.T - 1, (batch_size - n_replay,), generator=self.g)
        batch = self._windows(self.train_ids, starts.tolist())
        if n_replay:
            r = torch.randint(len(self.replay_ids) - self.T - 1, (n_replay,), generator=self.g)
            other = self._windows(self.replay_ids, r.tolist())
            batch = {k: torch.cat([batch[k], other[k]]) for k in batch}
        return batch

    def val_batches(self, batch_size, n):
        ids = self.val_ids if len(self.val_ids) > self.T + 1 else self.train_ids
        starts = list(range(0, len(ids) - self.T - 1, self.T))[:batch_size * n]
        return [self._windows(ids, starts[i:i + batch_size]) for i in range(0, len(starts), batch_size)]

    def loss(self, model, batch):
        logits = model(batch["idx"])                                          # (B, T, V)
        return F.cross_entropy(logits.float().flatten(0, 1), batch["targets"].flatten()), {}

    def state_dict(self):
        return {"rng": self.g.get_state()}

    def load_state_dict(self, d):
        self.g.set_state(d["rng"])


def domain_texts(path, world, faq=True, seed=0):
    """-> (train docs, val docs) from the user's text (readers.split_documents: the last tenth held out) or the
    world's domain corpus (with the domain questions of the SFT set as FAQ pages when `faq`, as in pretraining)."""
    if not path:
        from minillm.data.faq import DOMAIN_FAMILIES, with_faq
        from minillm.data.hygiene import cleaned_world
        train = cleaned_world(world)[0]["domain"]
        return (with_faq(train, world, DOMAIN_FAMILIES, seed) if faq else train), world.domain_corpus("val")
    from minillm.data.readers import read_documents, split_documents
    return split_documents(read_documents(path))   # the last tenth of the documents, or of one big text


def base_run(run_dir):
    """The nearest pretrain run in run_dir's lineage (run_dir itself for a pretrain run), or None."""
    from minillm.evals.report import read_json_or_none
    from minillm.registry import lineage
    stage = lambda d: (read_json_or_none(os.path.join(d, "manifest.json")) or {}).get("stage")
    return next((d for d in reversed(lineage(run_dir)) if stage(d) == "pretrain"), None)


def general_data(parent, world, split):
    """The general text: what forgetting is measured on (split "val") and replay draws from ("train"), i.e. the
    pretraining data of the base run `parent` descends from. -> ("texts", documents) for a base pretrained on the
    world; ("ids", its token shard) for one pretrained on your text; None if that shard is gone."""
    from minillm.data.shards import open_shard
    base = base_run(parent)
    source = read_json(os.path.join(base, "config.json"), "config")["data"]["source"] if base else "world"
    if source.startswith("world"):
        from minillm.data.hygiene import cleaned_world
        return "texts", cleaned_world(world)[0]["general"] if split == "train" else world.general_corpus("val")
    try:
        return "ids", open_shard(os.path.join(base, "data"), split)
    except MiniLLMError:
        return None


def perplexities(model, tok, domain_val, general, max_tokens):
    """domain_perplexity on the held-out domain documents, general_perplexity on general_data(..., "val")."""
    from minillm.evals.chat import ids_perplexity, perplexity
    out = {"domain_perplexity": perplexity(model, tok, domain_val, max_tokens), "general_perplexity": float("nan")}
    if general and general[0] == "texts":
        out["general_perplexity"] = perplexity(model, tok, general[1], max_tokens)
    elif general:
        out["general_perplexity"] = ids_perplexity(model, general[1][:max_tokens + 1])
    return out


def run_finetune(parent, out, preset="tiny", data="", config_file=None, overrides=(), resume=False):
    """minillm finetune: continue pretraining the base run `parent` on domain text into `out`."""
    from minillm.data.world import World
    from minillm.train import train
    model, tok, _ = lineage.load_parent(parent, "finetune")
    cfg = lineage.stage_config(FinetuneConfig, "finetune", preset, DEFAULTS, model, config_file,
                               list(overrides) + ([f"finetune.data={data}"] if data else []))
    world = World(seed=cfg.data.world_seed)
    train_docs, val_docs = domain_texts(cfg.finetune.data, world, cfg.data.faq, cfg.train.seed)
    general_val = general_data(parent, world, "val")
    replay = None
    if cfg.finetune.replay > 0:
        general_train = general_data(parent, world, "train")
        if general_train is None:
            raise MiniLLMError(f"finetune.replay needs the base run's training data, and "
                               f"{base_run(parent)}/data is gone")
        kind, general_train = general_train
        replay = (tokenize_documents(tok, general_train) if kind == "texts"
                  else torch.from_numpy(np.asarray(general_train, dtype=np.int64)))
    stage = FinetuneStage(tokenize_documents(tok, train_docs), tokenize_documents(tok, val_docs),
                          model.cfg.block_size, seed=cfg.train.seed, replay_ids=replay, replay=cfg.finetune.replay)
    before = perplexities(model, tok, val_docs, general_val, cfg.finetune.eval_tokens)
    resume = lineage.start_run(out, tok, parent, resume)
    metrics = train(model, stage, cfg.train, out, config=cfg.to_dict(), resume=resume,
                    manifest=lineage.manifest_fields("finetune", parent, out, sha256_texts(train_docs)))
    after = perplexities(model, tok, val_docs, general_val, cfg.finetune.eval_tokens)
    evaluation = {**after, "parent_domain_perplexity": before["domain_perplexity"],
                  "parent_general_perplexity": before["general_perplexity"],
                  "domain_perplexity_change": after["domain_perplexity"] / before["domain_perplexity"] - 1.0,
                  "general_perplexity_change": after["general_perplexity"] / before["general_perplexity"] - 1.0}
    return lineage.finish_run(out, metrics, evaluation)
