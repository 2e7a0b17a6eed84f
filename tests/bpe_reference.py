"""A deliberately naive BPE trainer, kept only as the reference the fast trainer is checked against.

It recounts every pair of every chunk after each merge (no index, no heap): slow, and obviously right.
Same rules as minillm/bpe.py: highest count wins, ties go to the smallest (a, b); a pair that spells an
existing token merges into that token's id without spending a new id.
Returns (merges, how many merge steps reused an existing id).
"""
from collections import Counter

import regex


def naive_train(texts, num_merges, pattern):
    chunks = Counter()
    for t in texts:
        chunks.update(regex.findall(pattern, t))
    seqs = {c: list(c.encode("utf-8")) for c in chunks}
    vocab = {i: bytes([i]) for i in range(256)}
    id_of = {b: i for i, b in vocab.items()}
    merges, reused = [], 0
    while len(merges) < num_merges:
        counts = Counter()
        for c, f in chunks.items():
            ids = seqs[c]
            for pair in zip(ids, ids[1:]):
                counts[pair] += f
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))
        token = vocab[best[0]] + vocab[best[1]]
        if token in id_of:
            new_id = id_of[token]
            reused += 1
        else:
            new_id = len(vocab)
            vocab[new_id] = token
            id_of[token] = new_id
            merges.append(best)
        for c in seqs:
            ids, out, i = seqs[c], [], 0
            while i < len(ids):
                if i + 1 < len(ids) and (ids[i], ids[i + 1]) == best:
                    out.append(new_id)
                    i += 2
                else:
                    out.append(ids[i])
                    i += 1
            seqs[c] = out
    return merges, reused
