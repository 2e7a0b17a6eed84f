"""Pretraining: next-token prediction (clm, a decoder) or masked-LM (mlm, a bidirectional encoder).

    clm:  L = -1/N sum_t log p(x_{t+1} | x_<=t)                 every position predicts the next token
    mlm:  L = -1/|M| sum_{t in M} log p(x_t | x~)               x~: the window with 15% of tokens masked (80/10/10)

Data: the embedded world's general corpus (its own train/val split) or the user's text, tokenised once into
shards in <run>/data/. The tokenizer is trained on the training documents unless one is given. On the world,
`data.faq` (default on) deals the SFT training questions into the corpus as FAQ pages: mixed training, which
helps SFT answer about countries it never asks about -- on average over seeds (minillm/data/faq.py).
"""
import os

import torch.nn.functional as F

from minillm.checkpoint import sha256_file, sha256_texts
from minillm.data.shards import IGNORE, CLMBatcher, MLMBatcher, open_shard, write_shards
from minillm.errors import MiniLLMError

OBJECTIVES = ("clm", "mlm")


class PretrainStage:
    name = "pretrain"

    def __init__(self, train_tokens, val_tokens, tok, block_size, objective="clm", mlm_prob=0.15, seed=0,
                 world=None):
        if objective not in OBJECTIVES:
            raise MiniLLMError(f"unknown objective {objective!r}; choose clm or mlm")
        self.tok, self.objective, self.world, self.mlm_prob = tok, objective, world, mlm_prob
        self.val_tokens = val_tokens
        if objective == "mlm":
            self.train_data = MLMBatcher(train_tokens, block_size, tok, mlm_prob, seed)
            self.val_data = MLMBatcher(val_tokens, block_size, tok, mlm_prob, seed)
        else:
            self.train_data = CLMBatcher(train_tokens, block_size, seed)
            self.val_data = CLMBatcher(val_tokens, block_size, seed)

    def train_batch(self, batch_size):
        return self.train_data.batch(batch_size)

    def val_batches(self, batch_size, n):
        return self.val_data.fixed_batches(batch_size, n)

    def loss(self, model, batch):
        logits = model(batch["idx"])  # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), batch["targets"].flatten(), ignore_index=IGNORE)
        return loss, {}

    def tokens(self, batch):
        return batch["idx"].numel()

    def state_dict(self):
        return {"train": self.train_data.state_dict()}

    def load_state_dict(self, d):
        self.train_data.load_state_dict(d["train"])

    def evaluate(self, model, limit=None):
        return evaluate_pretrain(model, self.tok, self.val_tokens, self.objective, self.world, self.mlm_prob, limit)


def evaluate_pretrain(model, tok, val_tokens, objective, world=None, mlm_prob=0.15, limit=None):
    """val_loss, val_bpb, perplexity; on the world also fact_accuracy (clm) or fill_mask_accuracy (mlm)."""
    from minillm.evals.lm import fact_accuracy, fill_mask_accuracy, lm_losses
    out = lm_losses(model, val_tokens, tok, objective, mlm_prob=mlm_prob)
    if world is not None:
        if objective == "clm":
            out["fact_accuracy"] = fact_accuracy(model, tok, world.fact_prompts("test")[:limit])
        else:
            out["fill_mask_accuracy"] = fill_mask_accuracy(model, tok, world.cloze_prompts("test")[:limit])
    return out


# ---- data and tokenizer -------------------------------------------------------------------------------------
def load_documents(data_cfg):
    """-> (train_docs, val_docs, world or None) for data.source = 'world' (after hygiene: deduplicated, PII
    redacted, leaked eval items removed), 'world-raw' (as generated, planted problems included) or a path."""
    if data_cfg.source in ("world", "world-raw"):
        from minillm.data.hygiene import cleaned_world
        from minillm.data.world import World
        w = World(seed=data_cfg.world_seed)
        train = cleaned_world(w)[0]["general"] if data_cfg.source == "world" else w.general_corpus("train")
        return train, w.general_corpus("val"), w
    from minillm.data.readers import read_documents, split_documents
    train, val = split_documents(read_documents(data_cfg.source), data_cfg.val_fraction)
    return train, val, None


def make_tokenizer(spec, train_docs, vocab_size, progress=False):
    """'' = train a BPE tokenizer, 'char' = a character tokenizer, else load one from a path."""
    from minillm.tokenizer import BPETokenizer, CharTokenizer, load_tokenizer
    if spec == "char":
        return CharTokenizer.train(train_docs)
    if spec:
        if not os.path.exists(spec):
            raise MiniLLMError(f"tokenizer {spec} does not exist; give a directory with tokenizer.json, or 'char'")
        return load_tokenizer(spec)
    return BPETokenizer.train(train_docs, vocab_size=vocab_size, progress=progress)


def prepare(cfg, run_dir, resume=False, progress=False):
    """Documents -> tokenizer (saved in run_dir) -> shards; fixes cfg.model.vocab_size and causality.

    -> (stage, tokenizer, manifest fields)."""
    from minillm.tokenizer import load_tokenizer
    if cfg.objective not in OBJECTIVES:
        raise MiniLLMError(f"unknown objective {cfg.objective!r}; choose clm or mlm")
    train_docs, val_docs, world = load_documents(cfg.data)
    leakage = leakage_gate(train_docs, val_docs, world, cfg.data)
    corpus_docs, n_faq = train_docs, 0
    if world is not None and cfg.data.faq:
        from minillm.data.faq import GENERAL_FAMILIES, with_faq
        train_docs = with_faq(train_docs, world, GENERAL_FAMILIES, cfg.train.seed)  # after the gate: see faq.py
        n_faq = len(train_docs) - len(corpus_docs)
    tok_path = os.path.join(run_dir, "tokenizer.json")
    if resume and os.path.exists(tok_path):
        tok = load_tokenizer(run_dir)
    else:  # BPE without the FAQ pages: they name only training entities, and BPE would merge those alone
        tok_docs = train_docs if cfg.data.tokenizer == "char" else corpus_docs  # a char vocabulary needs every char
        tok = make_tokenizer(cfg.data.tokenizer, tok_docs, cfg.data.vocab_size, progress)
        os.makedirs(run_dir, exist_ok=True)
        tok.save(run_dir)
    cfg.model.vocab_size = tok.vocab_size
    cfg.model.causal = cfg.objective == "clm"
    tok_sha = sha256_file(tok_path)
    data_dir = os.path.join(run_dir, "data")
    write_shards(data_dir, {"train": train_docs, "val": val_docs}, tok, tok_sha)
    T = cfg.model.block_size
    stage = PretrainStage(open_shard(data_dir, "train"), open_shard(data_dir, "val"), tok, T, cfg.objective,
                          cfg.data.mlm_prob, cfg.train.seed, world)
    fields = {"stage": "pretrain", "objective": cfg.objective, "parent": None,
              "data_source": cfg.data.source, "data_sha256": sha256_texts(train_docs + val_docs),
              "tokenizer_sha256": tok_sha, "leakage": leakage, "faq_pages": n_faq}
    if cfg.data.source == "world":
        from minillm.data.hygiene import cleaned_world, manifest_summary
        fields["hygiene"] = manifest_summary(cleaned_world(world)[1])
    return stage, tok, fields


def leakage_gate(train_docs, val_docs, world, data_cfg):
    """Refuse (MiniLLMError) to train on data holding more than data.leakage_threshold of an eval set (the world's
    held-out prompts, or the user's val documents) unless data.allow_leakage; -> the report for the manifest."""
    from minillm.data.hygiene import check_leakage, leakage_summary, world_eval_sets
    evals = world_eval_sets(world) if world is not None else {"val": val_docs}
    return leakage_summary(check_leakage(train_docs, evals, threshold=data_cfg.leakage_threshold,
                                         allow=data_cfg.allow_leakage))
