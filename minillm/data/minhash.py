"""MinHash and LSH banding: find near-duplicate documents without comparing every pair.

Two documents are near-duplicates when their sets of shingles (overlapping k-character or
k-word windows) have a high Jaccard similarity

    J(A, B) = |A ∩ B| / |A ∪ B|.

MinHash (Broder 1997). Take a random hash function h and keep only the smallest hash of each
set, m(A) = min_{x∈A} h(x). The element of A ∪ B with the smallest hash is equally likely to be
any of them, and m(A) = m(B) exactly when it lies in A ∩ B, so

    P[m(A) = m(B)] = J(A, B).

With P independent hash functions the signature is P minima, and the fraction of positions where
two signatures agree is an unbiased estimate of J with standard deviation sqrt(J(1-J)/P).
Our P hash functions are the multiply-add-shift family (Dietzfelbinger 1996) on 32-bit shingle hashes x:

    h_i(x) = ((a_i x + b_i) mod 2^64) >> 32        a_i, b_i random 64-bit, a_i odd

which is (strongly) universal and costs three machine operations: uint64 arithmetic in numpy wraps
mod 2^64 for free. (The textbook family (a x + b) mod p with a Mersenne prime p works too but needs
93-bit products.)

LSH banding (Indyk & Motwani 1998; Leskovec, Rajaraman & Ullman, "Mining of Massive Datasets",
ch. 3). Cut the signature into b bands of r rows. Two documents become *candidates* when all r
rows of at least one band agree, which happens with probability

    P[candidate] = 1 - (1 - J^r)^b,

an S-curve whose steepest point sits near J ≈ (1/b)^(1/r). Only candidates (documents sharing a
bucket) are compared, then confirmed with the exact Jaccard of their shingle sets.

    >>> sigs = MinHasher(num_perm=128, seed=0).signatures(["the cat sat on the mat", "the cat sat on a mat"])
    >>> 0.4 < estimate_jaccard(sigs[0], sigs[1]) < 0.9
    True
"""
from __future__ import annotations

import re
import zlib
from collections import defaultdict

import numpy as np

_MASK32 = np.uint64(0xFFFFFFFF)
_BASE = np.uint64(0x100000001B3)  # FNV prime, an odd multiplier for the polynomial rolling hash


def _poly_windows(values: np.ndarray, k: int) -> np.ndarray:
    """Hash every window of k consecutive values: sum_j v[i+j] * BASE^(k-1-j) mod 2^64, folded to 32 bits.

    [v0, v1, v2, v3] with k=2 -> hashes of (v0,v1), (v1,v2), (v2,v3)  (uint64 arithmetic wraps mod 2^64).
    """
    n = len(values) - k + 1
    v = values.astype(np.uint64)
    h = np.zeros(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(k):
            h = h * _BASE + v[j:j + n]
        h = (h ^ (h >> np.uint64(32))) & _MASK32
    return h


def shingle_hashes(text: str, k: int = 5, unit: str = "char") -> np.ndarray:
    """The set of k-shingles of `text` as sorted unique 32-bit hashes.

    unit="char": windows of k UTF-8 bytes of the lower-cased, whitespace-collapsed text.
    unit="word": windows of k words (each word first hashed with CRC32).
    A text shorter than one window is a single shingle (so it still has a signature).
    """
    norm = " ".join(text.lower().split())
    if unit == "char":
        values = np.frombuffer(norm.encode("utf-8"), dtype=np.uint8)
    elif unit == "word":
        values = np.array([zlib.crc32(w.encode("utf-8")) for w in re.findall(r"\w+", norm)], dtype=np.uint64)
    else:
        raise ValueError(f"unit must be 'char' or 'word', not {unit!r}")
    if len(values) == 0:
        return np.zeros(0, dtype=np.uint64)
    if len(values) < k:
        k = len(values)
    return np.unique(_poly_windows(values, k))


_SHIFT = np.uint64(32)


class MinHasher:
    """P hash functions h_i(x) = ((a_i x + b_i) mod 2^64) >> 32, a_i odd; (a, b) drawn from `seed`."""

    def __init__(self, num_perm: int = 128, seed: int = 0, k: int = 5, unit: str = "char"):
        rng = np.random.default_rng(seed)
        self.num_perm, self.k, self.unit = num_perm, k, unit
        self.a = rng.integers(0, 2**64 - 1, size=num_perm, dtype=np.uint64, endpoint=True) | np.uint64(1)  # (P,)
        self.b = rng.integers(0, 2**64 - 1, size=num_perm, dtype=np.uint64, endpoint=True)                 # (P,)

    def signature_of_hashes(self, hashes: np.ndarray) -> np.ndarray:
        """(P,) minima of every hash function over a set of 32-bit shingle hashes."""
        return self.batch_signatures([hashes])[0]

    def batch_signatures(self, sets: list, chunk: int = 1 << 15) -> np.ndarray:
        """(N, P) signatures of N shingle sets, computed on ~chunk shingles at a time (one numpy call per
        chunk instead of per document). An empty set gets the all-max signature."""
        out = np.full((len(sets), self.num_perm), np.iinfo(np.uint64).max >> 32, dtype=np.uint64)
        start = 0
        while start < len(sets):
            stop, total = start, 0
            while stop < len(sets) and (total == 0 or total + len(sets[stop]) <= chunk):
                total += len(sets[stop])
                stop += 1
            block = [s for s in sets[start:stop]]
            lens = np.array([len(s) for s in block])
            nonempty = np.nonzero(lens)[0]
            if len(nonempty):
                x = np.concatenate([block[i] for i in nonempty]).astype(np.uint64)   # (S,)
                with np.errstate(over="ignore"):
                    hv = (self.a[:, None] * x[None, :] + self.b[:, None]) >> _SHIFT  # (P, S)
                offsets = np.concatenate([[0], np.cumsum(lens[nonempty])[:-1]])
                out[start + nonempty] = np.minimum.reduceat(hv, offsets, axis=1).T  # (n, P)
            start = stop
        return out

    def signature(self, text: str) -> np.ndarray:
        return self.signature_of_hashes(shingle_hashes(text, self.k, self.unit))

    def signatures(self, texts) -> np.ndarray:
        """(N, P) signatures of N texts."""
        return self.batch_signatures([shingle_hashes(t, self.k, self.unit) for t in texts])


def estimate_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
    """Fraction of signature positions that agree: an unbiased estimate of J(A, B)."""
    return float(np.mean(sig_a == sig_b))


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Exact Jaccard similarity of two sets given as arrays of unique hashes."""
    if len(a) == 0 and len(b) == 0:
        return 1.0
    inter = len(np.intersect1d(a, b, assume_unique=True))
    return inter / (len(a) + len(b) - inter)


def lsh_params(num_perm: int, threshold: float) -> tuple[int, int]:
    """(bands, rows) with bands * rows == num_perm whose S-curve midpoint (1/b)^(1/r) is nearest `threshold`.

    We bias towards recall: among the divisors we take the one whose midpoint is closest to, but not
    above, the threshold when possible (a near-duplicate missed at this step is never recovered).
    """
    best, best_gap = (num_perm, 1), float("inf")
    for r in range(1, num_perm + 1):
        if num_perm % r:
            continue
        b = num_perm // r
        mid = (1.0 / b) ** (1.0 / r)
        gap = threshold - mid if mid <= threshold else 2 * (mid - threshold)
        if gap < best_gap:
            best, best_gap = (b, r), gap
    return best


def candidate_probability(j: float, bands: int, rows: int) -> float:
    """P[two documents with Jaccard j share a bucket] = 1 - (1 - j^r)^b."""
    return 1.0 - (1.0 - j ** rows) ** bands


def lsh_candidates(signatures: np.ndarray, bands: int, rows: int) -> set[tuple[int, int]]:
    """Pairs (i < j) that agree on every row of at least one band."""
    pairs: set[tuple[int, int]] = set()
    for band in range(bands):
        buckets = defaultdict(list)
        block = signatures[:, band * rows:(band + 1) * rows]        # (N, r)
        for i, row in enumerate(block):
            buckets[row.tobytes()].append(i)
        for ids in buckets.values():
            for x in range(len(ids)):
                for y in range(x + 1, len(ids)):
                    pairs.add((ids[x], ids[y]))
    return pairs


def near_duplicates(texts: list[str], threshold: float = 0.8, num_perm: int = 128, k: int = 5,
                    unit: str = "char", seed: int = 0) -> list[tuple[int, int, float]]:
    """All pairs (i, j, jaccard) with i < j whose exact shingle Jaccard is >= threshold, found through LSH.

    Candidates come from LSH banding on MinHash signatures; each is confirmed with the exact Jaccard of
    the two shingle sets, so false positives never survive (false negatives are possible, rarely).
    """
    hasher = MinHasher(num_perm=num_perm, seed=seed, k=k, unit=unit)
    shingles = [shingle_hashes(t, k, unit) for t in texts]
    sigs = hasher.batch_signatures(shingles)  # (N, P)
    bands, rows = lsh_params(num_perm, threshold)
    found = []
    for i, j in sorted(lsh_candidates(sigs, bands, rows)):
        jac = jaccard(shingles[i], shingles[j])
        if jac >= threshold:
            found.append((i, j, jac))
    return found


def clusters(n: int, pairs) -> list[int]:
    """Union-find: for each of n items, the smallest index in its connected component of `pairs`.

    clusters(4, [(0, 2), (2, 3)]) -> [0, 1, 0, 0]
    """
    parent = list(range(n))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, j, *_ in pairs:
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    return [find(i) for i in range(n)]
