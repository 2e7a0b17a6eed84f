"""Byte-level BPE: the training algorithm and the readable encoder.

Text is turned into UTF-8 bytes, so the 256 byte values (ids 0..255) can spell any string and no
input is ever "unknown". Training repeatedly finds the most frequent adjacent pair of tokens and
gives it a new id (merge i gets id 256 + i). With N(a, b) the number of times b follows a in the
corpus, merge t is the greedy step

    (a*, b*) = argmax_{(a, b)} N_t(a, b),        tokens_{t+1} = tokens_t with every "a* b*" -> new id,

which shrinks the corpus by N_t(a*, b*) tokens (exactly, when a* != b*; a run like "aaa" holds two
overlapping (a, a) but only one merge): the largest one-step gain in compression.

Two ideas make training fast (Tiny Shakespeare, vocab 4096, in seconds instead of minutes):

1. Pre-split: a regex cuts text into chunks (words with their leading space, numbers, punctuation
   runs, whitespace); merges never cross a chunk boundary. The corpus becomes a table of *unique*
   chunks with their frequencies, {" the": 5000, " king": 300, ...}, so a word seen 5000 times is
   processed once and weighted by 5000.
2. Incremental counts: after a merge only the chunks that contain the merged pair change. An index
   pair -> {chunks that contain it} finds them; their old pairs are subtracted from the counts and
   their new pairs added, instead of recounting the whole corpus after each merge.
   The best pair comes from a max-heap with lazy deletion (stale entries are checked on pop).

Tie-breaking (deterministic): the highest count wins; among equal counts, the lexicographically
smallest pair of ids (a, b) wins.

Every id must be a distinct byte string (tiktoken's ranks are keyed by bytes). Should the winning pair
ever spell an existing token (the same bytes by another split, e.g. (" t", "he") after (" th", "e")),
its occurrences are merged into that id and no new id is spent. With merges applied left to right in
every chunk this has not occurred on any corpus we tried (the tests check it against the naive trainer).

Encoding (`bpe_encode_chunk`) is the rank rule tiktoken uses: start from single bytes and repeatedly
merge the adjacent pair whose concatenated bytes is the token with the lowest rank (leftmost on a
tie) until no adjacent pair is a token; a chunk that is itself a token is returned at once. For
ranks learned here, rank == id. The pre-split runs on Python's `regex` module here and on Rust's regex inside
tiktoken; both read the same pattern, but each ships its own Unicode tables, so a character assigned only in
the newest Unicode version (say a letter new in Unicode 17 that tiktoken's tables do not know yet) can be split
differently. For every older character the two encoders give the same ids (a property test checks it).

References: Sennrich et al. 2016 (BPE for NMT); Radford et al. 2019 (GPT-2, byte-level BPE and its
pre-split regex); OpenAI tiktoken (`_byte_pair_merge`); Karpathy's minbpe (the readable trainer).
"""
import heapq
from collections import Counter

import regex

# The pre-split patterns, verbatim from tiktoken (tiktoken_ext/openai_public.py) so both encoders agree.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
GPT4_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
                r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s""")
O200K_PATTERN = "|".join([
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""\p{N}{1,3}""",
    r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
    r"""\s*[\r\n]+""",
    r"""\s+(?!\S)""",
    r"""\s+""",
])
PATTERNS = {"gpt2": GPT2_PATTERN, "gpt4": GPT4_PATTERN, "o200k": O200K_PATTERN}


def count_chunks(texts, pattern):
    """Pre-split every text and count the unique chunks.

    >>> count_chunks(["the cat, the hat", "the end"], GPT4_PATTERN)
    Counter({'the': 2, ' cat': 1, ',': 1, ' the': 1, ' hat': 1, ' end': 1})
    """
    compiled = regex.compile(pattern)
    counts = Counter()
    for text in texts:
        counts.update(compiled.findall(text))
    return counts


def merge_pair(ids, pair, new_id):
    """Replace every non-overlapping occurrence of `pair`, left to right, by `new_id`.

    >>> merge_pair([1, 2, 3, 1, 2], (1, 2), 256)
    [256, 3, 256]
    """
    a, b = pair
    out, i, n = [], 0, len(ids)
    while i < n:
        if i < n - 1 and ids[i] == a and ids[i + 1] == b:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _pair_counts(ids):
    """{pair: occurrences} inside one chunk: [1, 2, 1, 2] -> {(1, 2): 2, (2, 1): 1}."""
    counts = {}
    for p in zip(ids, ids[1:]):
        counts[p] = counts.get(p, 0) + 1
    return counts


def train_bpe(chunk_counts, num_merges, progress=False):
    """Learn up to `num_merges` merges from {chunk string: frequency}.

    Returns (merges, vocab): merges[i] = (a, b) is the pair that became id 256 + i, and vocab[id] is
    the byte string of each id. Stops early if no adjacent pair is left (a very small corpus).
    """
    vocab = [bytes([i]) for i in range(256)]
    id_of = {t: i for i, t in enumerate(vocab)}
    # Working set: only chunks of 2+ bytes can hold a pair.
    seqs, freqs = [], []
    for chunk, f in chunk_counts.items():
        b = chunk.encode("utf-8", "surrogatepass")
        if len(b) > 1:
            seqs.append(list(b))
            freqs.append(f)

    counts = {}                 # pair -> weighted count over the corpus
    where = {}                  # pair -> set of chunk indices that contain it
    for ci, ids in enumerate(seqs):
        f = freqs[ci]
        for p, c in _pair_counts(ids).items():
            counts[p] = counts.get(p, 0) + c * f
            where.setdefault(p, set()).add(ci)
    # Max-heap by count via negation; ties fall to the smallest (a, b) because tuples compare in order.
    heap = [(-c, p) for p, c in counts.items()]
    heapq.heapify(heap)

    merges = []
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=num_merges, desc="bpe merges", unit="merge")
    while len(merges) < num_merges and heap:
        neg, pair = heapq.heappop(heap)
        current = counts.get(pair, 0)
        if -neg != current:     # stale entry: re-queue with its true count (entries below it are newer)
            if 0 < current < -neg:
                heapq.heappush(heap, (-current, pair))
            continue
        if current == 0:
            continue
        token = vocab[pair[0]] + vocab[pair[1]]
        new_id = id_of.get(token)
        if new_id is None:      # a new token: the usual case
            new_id = len(vocab)
            vocab.append(token)
            id_of[token] = new_id
            merges.append(pair)
            if bar is not None:
                bar.update(1)
        # Update only the chunks that contain the pair: subtract their old pairs, add their new ones.
        for ci in where.pop(pair):
            old_ids, f = seqs[ci], freqs[ci]
            new_ids = merge_pair(old_ids, pair, new_id)
            seqs[ci] = new_ids
            old_pc, new_pc = _pair_counts(old_ids), _pair_counts(new_ids)
            for p, c in old_pc.items():
                counts[p] -= c * f
                if p not in new_pc and p != pair:
                    where[p].discard(ci)
            for p, c in new_pc.items():
                counts[p] = counts.get(p, 0) + c * f
                if p not in old_pc:
                    where.setdefault(p, set()).add(ci)
                if c > old_pc.get(p, 0):    # count rose: push its new value
                    heapq.heappush(heap, (-counts[p], p))
        counts.pop(pair, None)
    if bar is not None:
        bar.close()
    return merges, vocab


def bpe_encode_chunk(piece, ranks):
    """Encode one pre-split chunk (bytes) with tiktoken's rule: lowest-rank adjacent pair first.

    >>> ranks = {bytes([i]): i for i in range(256)} | {b"ab": 256, b"abc": 257}
    >>> bpe_encode_chunk(b"abcab", ranks)
    [257, 256]
    """
    if piece in ranks:                      # the whole chunk is one token (tiktoken's shortcut)
        return [ranks[piece]]
    parts = [piece[i:i + 1] for i in range(len(piece))]
    while len(parts) > 1:
        best_rank, best_i = None, -1
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and (best_rank is None or r < best_rank):
                best_rank, best_i = r, i
        if best_rank is None:
            break
        parts[best_i:best_i + 2] = [parts[best_i] + parts[best_i + 1]]
    return [ranks[p] for p in parts]
