"""Token shards on disk and the batchers that read them.

Shards: each split's documents are tokenised once into one flat stream, documents separated by <|endoftext|>,
and written as a raw array (uint16 when the vocabulary fits in 65,536 ids, else uint32) that is read back with
np.memmap, so a corpus larger than memory costs nothing to open. meta.json records counts, dtype and hashes.

Batchers (each owns a seeded torch.Generator whose state is saved in checkpoints, for exact resume):
- CLMBatcher: random windows of T + 1 tokens; x = w[:-1], y = w[1:] (next-token prediction).
- MLMBatcher: BERT masking (Devlin et al. 2019). Each ordinary token is selected with probability p (15%);
  a selected token becomes <|mask|> 80% of the time, a random ordinary token 10%, stays itself 10%.
  Targets are the original ids at selected positions and -100 (ignored by cross-entropy) elsewhere.
  Special tokens and padding are never selected. Whole-word masking (the BERT authors' later variant): the
  selection is drawn per word, so all pieces of a word (' P', 'ir', 'an') are selected together and the model
  learns to fill a whole word, as fill-mask asks it to; the 80/10/10 choice stays per token.
"""
import os

import numpy as np
import torch

from minillm.checkpoint import atomic_write_json, read_json, sha256_texts
from minillm.errors import MiniLLMError

IGNORE = -100  # cross-entropy ignore_index


def token_dtype(vocab_size):
    return np.uint16 if vocab_size <= 2 ** 16 else np.uint32


def encode_documents(docs, tok):
    """[doc, ...] -> flat int array: doc tokens, <|endoftext|>, doc tokens, <|endoftext|>, ..."""
    ids = []
    for doc_ids in tok.encode_batch(docs):
        ids.extend(doc_ids)
        ids.append(tok.eot_id)
    return np.asarray(ids, dtype=np.int64)


def write_shards(out_dir, splits: dict, tok, tokenizer_sha256=None):
    """Tokenise {split: [docs]} into out_dir/{split}.bin + meta.json; reuse them if already written for the same
    documents and tokenizer. -> meta dict."""
    meta_path = os.path.join(out_dir, "meta.json")
    want = {"vocab_size": tok.vocab_size, "tokenizer_sha256": tokenizer_sha256,
            "data_sha256": {s: sha256_texts(d) for s, d in splits.items()}}
    if os.path.exists(meta_path):
        meta = read_json(meta_path, "shard meta")
        if all(meta.get(k) == v for k, v in want.items()) and all(
                os.path.exists(os.path.join(out_dir, f"{s}.bin")) for s in splits):
            return meta
    os.makedirs(out_dir, exist_ok=True)
    dtype = token_dtype(tok.vocab_size)
    meta = dict(want, dtype=np.dtype(dtype).name, splits={})
    for split, docs in splits.items():
        ids = encode_documents(docs, tok)
        if len(ids) == 0:
            raise MiniLLMError(f"the {split} split is empty after tokenising; give more data")
        path = os.path.join(out_dir, f"{split}.bin")
        tmp = path + ".tmp"
        ids.astype(dtype).tofile(tmp)
        os.replace(tmp, path)
        meta["splits"][split] = {"tokens": int(len(ids)), "documents": len(docs)}
    atomic_write_json(meta_path, meta)
    return meta


def open_shard(out_dir, split):
    """-> np.memmap of the split's token ids (read-only)."""
    meta = read_json(os.path.join(out_dir, "meta.json"), "shard meta")
    path = os.path.join(out_dir, f"{split}.bin")
    if not os.path.exists(path):
        raise MiniLLMError(f"token shard {path} is missing; re-run the stage to tokenise the data")
    return np.memmap(path, dtype=np.dtype(meta["dtype"]), mode="r")


class CLMBatcher:
    """Random windows for next-token prediction: {'idx': (B, T), 'targets': (B, T)}."""

    def __init__(self, tokens, block_size, seed=0):
        if len(tokens) < block_size + 2:
            raise MiniLLMError(f"only {len(tokens)} tokens of data for a context of {block_size}; "
                               "give more data or lower model.block_size")
        self.tokens, self.T = tokens, block_size
        self.gen = torch.Generator().manual_seed(seed)

    def _windows(self, batch_size, gen):
        starts = torch.randint(0, len(self.tokens) - self.T - 1, (batch_size,), generator=gen)  # (B,)
        w = np.stack([np.asarray(self.tokens[s:s + self.T + 1], dtype=np.int64) for s in starts.tolist()])
        return torch.from_numpy(w)  # (B, T + 1)

    def batch(self, batch_size, gen=None):
        w = self._windows(batch_size, gen or self.gen)  # (B, T + 1)
        return {"idx": w[:, :-1], "targets": w[:, 1:]}  # (B, T) each

    def fixed_batches(self, batch_size, n, seed=1234):
        """The same n batches on every call (for validation)."""
        gen = torch.Generator().manual_seed(seed)
        return [self.batch(batch_size, gen) for _ in range(n)]

    def state_dict(self):
        return {"gen": self.gen.get_state()}

    def load_state_dict(self, d):
        self.gen.set_state(d["gen"])


def word_pieces(tok):
    """(starts_alnum, ends_alnum), each (V,) bool: does the token's text start / end with a letter or digit.
    A token continues the previous token's word when it starts alnum and the previous one ends alnum."""
    texts = [tok.decode([i]) for i in range(tok.vocab_size)]
    specials = set(tok.special_ids.values())
    starts = torch.tensor([i not in specials and t[:1].isalnum() for i, t in enumerate(texts)])
    ends = torch.tensor([i not in specials and t[-1:].isalnum() for i, t in enumerate(texts)])
    return starts, ends


def word_ids(idx, pieces):
    """idx (B, T) -> (B, T) index of the word each token belongs to (0, 0, 1, 2, 2, 2, ...)."""
    starts, ends = pieces
    cont = torch.zeros_like(idx, dtype=torch.bool)
    cont[:, 1:] = starts[idx[:, 1:]] & ends[idx[:, :-1]]  # (B, T) continues the previous token's word
    return torch.cumsum(~cont, dim=1) - 1  # (B, T)


def mlm_mask(idx, mask_id, special_ids, vocab_size, p=0.15, gen=None, pieces=None):
    """BERT masking of idx (B, T) -> (inputs (B, T), targets (B, T) with IGNORE where not selected).

    pieces (from word_pieces): select whole words instead of single tokens."""
    special = torch.tensor(sorted(special_ids), dtype=torch.long)
    ordinary = ~torch.isin(idx, special)  # (B, T) specials and padding never selected
    draw = torch.rand(idx.shape, generator=gen)  # (B, T)
    if pieces is not None:  # every token of a word takes the draw of the word's first token
        wid = word_ids(idx, pieces)  # (B, T)
        start = torch.ones_like(idx, dtype=torch.bool)
        start[:, 1:] = wid[:, 1:] != wid[:, :-1]  # (B, T) first token of each word
        per_word = torch.full_like(draw, 2.0).scatter_reduce(1, wid, torch.where(start, draw, 2.0), "amin")
        draw = torch.gather(per_word, 1, wid)  # (B, T) the draw of the word's first token
    selected = (draw < p) & ordinary  # (B, T)
    action = torch.rand(idx.shape, generator=gen)  # (B, T): < 0.8 mask, < 0.9 random, else keep
    allowed = torch.tensor([i for i in range(vocab_size) if i not in set(special_ids)], dtype=torch.long)
    random_ids = allowed[torch.randint(0, len(allowed), idx.shape, generator=gen)]  # (B, T)
    inputs = torch.where(selected & (action < 0.8), torch.full_like(idx, mask_id), idx)
    inputs = torch.where(selected & (action >= 0.8) & (action < 0.9), random_ids, inputs)
    targets = torch.where(selected, idx, torch.full_like(idx, IGNORE))
    return inputs, targets


class MLMBatcher(CLMBatcher):
    """Random windows with BERT masking: {'idx': masked inputs (B, T), 'targets': originals or -100 (B, T)}."""

    def __init__(self, tokens, block_size, tok, p=0.15, seed=0, whole_words=True):
        super().__init__(tokens, block_size, seed)
        self.mask_id, self.special_ids = tok.mask_id, set(tok.special_ids.values())
        self.vocab_size, self.p = tok.vocab_size, p
        self.pieces = word_pieces(tok) if whole_words else None

    def batch(self, batch_size, gen=None):
        gen = gen or self.gen
        idx = self._windows(batch_size, gen)[:, :-1]  # (B, T)
        inputs, targets = mlm_mask(idx, self.mask_id, self.special_ids, self.vocab_size, self.p, gen, self.pieces)
        if (targets == IGNORE).all():  # nothing selected (tiny batches): select one ordinary token
            ok = (~torch.isin(idx, torch.tensor(sorted(self.special_ids)))).nonzero()
            if len(ok):
                b, t = ok[0].tolist()
                targets[b, t], inputs[b, t] = idx[b, t], self.mask_id
        return {"idx": inputs, "targets": targets}

