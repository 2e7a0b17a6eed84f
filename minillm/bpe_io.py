"""Loading vocabularies someone else trained, offline: GPT-2's files and tiktoken `.tiktoken` rank files.

Both become a `BPETokenizer` whose ranks ({token bytes: rank}) are exactly the ones tiktoken would
build from the same files, so encoding matches tiktoken's encoding of those ranks id for id.
Nothing is downloaded: the user points at files they have.

GPT-2 (`encoder.json` + `vocab.bpe`). GPT-2 stores byte strings as printable unicode strings: each
byte maps to one character (`bytes_to_unicode`): the printable Latin-1 bytes map to themselves, the
other 68 bytes (controls, space, ...) to chr(256 + n). So " the" is stored as "Ġthe" (Ġ = chr(288) =
byte 32). encoder.json maps those strings to ids; vocab.bpe lists the merges in priority order. In
GPT-2 the rank of a token is its id, and ids grow with merge order; the loader checks that the two
files agree, like tiktoken's `data_gym_to_mergeable_bpe_ranks`.

`.tiktoken`: one line per token, "<base64 of the token's bytes> <rank>".

Special tokens: the file's own end-of-text keeps its id (GPT-2's 50256, or the known id of OpenAI's
named encodings); minillm's other SPECIAL_TOKENS are appended after the largest id.

References: GPT-2 `encoder.py` (bytes_to_unicode); tiktoken `load.py` and `tiktoken_ext/openai_public.py`.
"""
import base64
import json
import os

from minillm.bpe import GPT2_PATTERN, GPT4_PATTERN, O200K_PATTERN, PATTERNS
from minillm.errors import MiniLLMError

# End-of-text ids of OpenAI's named .tiktoken files (from tiktoken_ext/openai_public.py).
KNOWN_TIKTOKEN = {
    "r50k_base": (GPT2_PATTERN, 50256),
    "p50k_base": (GPT2_PATTERN, 50256),
    "p50k_edit": (GPT2_PATTERN, 50256),
    "cl100k_base": (GPT4_PATTERN, 100257),
    "o200k_base": (O200K_PATTERN, 199999),
}


def bytes_to_unicode():
    """GPT-2's reversible byte -> printable character table.

    >>> bytes_to_unicode()[ord("a")], bytes_to_unicode()[ord(" ")]
    ('a', 'Ġ')
    """
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def _with_specials(ranks, own):
    """own specials ({text: id}) plus minillm's SPECIAL_TOKENS after the largest id."""
    from minillm.tokenizer import SPECIAL_TOKENS
    specials = dict(own)
    next_id = max(list(ranks.values()) + list(specials.values())) + 1
    for s in SPECIAL_TOKENS:
        if s not in specials:
            specials[s] = next_id
            next_id += 1
    return specials


def load_gpt2(directory):
    """A GPT-2 style folder (encoder.json + vocab.bpe) -> BPETokenizer with the GPT-2 pre-split pattern."""
    from minillm.tokenizer import BPETokenizer
    enc_path, bpe_path = os.path.join(directory, "encoder.json"), os.path.join(directory, "vocab.bpe")
    try:
        with open(enc_path, encoding="utf-8") as f:
            encoder = json.load(f)
        with open(bpe_path, encoding="utf-8") as f:
            lines = f.read().split("\n")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MiniLLMError(f"cannot read GPT-2 files in {directory!r}: {e}")
    if not isinstance(encoder, dict) or not all(isinstance(v, int) for v in encoder.values()):
        raise MiniLLMError(f"{enc_path!r} must be a JSON object of token string -> id")
    byte_decoder = {c: b for b, c in bytes_to_unicode().items()}

    def to_bytes(token):
        try:
            return bytes(byte_decoder[c] for c in token)
        except KeyError as e:
            raise MiniLLMError(f"{token!r} in GPT-2 files uses character {e.args[0]!r}, "
                               "which is not in GPT-2's byte-to-unicode table")

    own_specials = {s: encoder.pop(s) for s in ("<|endoftext|>", "<|startoftext|>") if s in encoder}
    ranks = {to_bytes(t): i for t, i in encoder.items()}
    if len(ranks) != len(encoder):
        raise MiniLLMError(f"{enc_path!r} spells the same bytes twice")
    # The merges must rebuild exactly these ranks: 256 bytes (in bytes_to_unicode order), then one per merge.
    expected = {bytes([b]): i for i, b in enumerate(bytes_to_unicode())}
    merge_lines = [ln for ln in lines[1:] if ln.strip()] if lines and lines[0].startswith("#") else \
        [ln for ln in lines if ln.strip()]
    for n, line in enumerate(merge_lines):
        parts = line.split()
        if len(parts) != 2:
            raise MiniLLMError(f"{bpe_path!r} line {n + 2} is {line!r}: a merge line is two tokens")
        expected[to_bytes(parts[0]) + to_bytes(parts[1])] = 256 + n
    if expected != ranks:
        raise MiniLLMError(f"encoder.json and vocab.bpe in {directory!r} disagree: token ids must be the 256 bytes "
                           "in GPT-2's order followed by one id per merge, in merge order")
    return BPETokenizer(ranks, GPT2_PATTERN, _with_specials(ranks, own_specials), name="gpt2-files")


def load_tiktoken_file(path, pattern=None):
    """A .tiktoken rank file -> BPETokenizer. The pattern is guessed from the file name (OpenAI's names),
    else the GPT-4 pattern; pass `pattern` ("gpt2", "gpt4", "o200k" or a regex) to choose."""
    from minillm.tokenizer import BPETokenizer
    name = os.path.basename(path)[: -len(".tiktoken")] if path.endswith(".tiktoken") else os.path.basename(path)
    known_pattern, eot = KNOWN_TIKTOKEN.get(name, (GPT4_PATTERN, None))
    ranks = {}
    try:
        with open(path, "rb") as f:
            for n, line in enumerate(f.read().splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    token, rank = line.split()
                    ranks[base64.b64decode(token, validate=True)] = int(rank)
                except ValueError:
                    raise MiniLLMError(f"{path!r} line {n} is {line[:60]!r}: expected '<base64 token> <rank>'")
    except OSError as e:
        raise MiniLLMError(f"cannot read {path!r}: {e}")
    if not ranks:
        raise MiniLLMError(f"{path!r} holds no tokens")
    if len(set(ranks.values())) != len(ranks):
        raise MiniLLMError(f"{path!r} gives the same rank to two tokens")
    pat = PATTERNS.get(pattern, pattern) if pattern else known_pattern
    own = {"<|endoftext|>": eot} if eot is not None and eot not in ranks.values() else {}
    return BPETokenizer(ranks, pat, _with_specials(ranks, own), name=name or "tiktoken-file")
