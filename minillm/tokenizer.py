"""Tokenizers: text <-> ids. A byte-level BPE tokenizer (trained here) and a character tokenizer.

    tok = BPETokenizer.train(texts, vocab_size=4096)           # or CharTokenizer.train(texts)
    ids = tok.encode("Hello")                                  # fast path: a tiktoken.Encoding of our ranks
    ids == tok.encode_python("Hello")                          # the readable encoder, same ids on any text
    tok.decode(ids) == "Hello"
    ids, mask = tok.render_chat([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}])

Id layout of a trained BPE tokenizer: 0..255 are the raw bytes in order, merge i is id 256 + i, and the
special tokens (SPECIAL_TOKENS, in that order) come after the merges. A character tokenizer has the
sorted characters of its training text, then the specials.

Special tokens are control symbols, not text: `encode` refuses text that contains a special token's
spelling unless it is allowed (`allowed_special="all"` or a set), so a document cannot forge an
end-of-text or a role switch. `encode_ordinary` encodes such text as plain bytes.

Chat template: each message is `<|role|> content <|end|>`; `add_generation_prompt` appends
`<|assistant|>`. The loss mask is 1 exactly on the assistant's content tokens and its `<|end|>` (so a
tuned model learns to stop), 0 elsewhere. Message content is always encoded as plain text.

`token_bytes[id]` is how many UTF-8 bytes an id spells (0 for specials): the sum over a sequence turns a
loss in nats per token into bits per byte, a measure that does not depend on the vocabulary:
bpb = sum(loss) / (ln 2 * sum(token_bytes)).

Files: `save(dir)` writes dir/tokenizer.json (type, pattern, merges as id pairs, specials; or the
characters). `load_tokenizer(path)` reads that, a GPT-2 folder (encoder.json + vocab.bpe) or a
.tiktoken file (minillm/bpe_io.py). Input files with invalid UTF-8: `read_text` replaces each bad
byte with U+FFFD and prints one warning line to stderr (it never fails on them).
"""
import base64
import json
import os
import sys

import regex
import tiktoken

from minillm.bpe import GPT2_PATTERN, GPT4_PATTERN, PATTERNS, bpe_encode_chunk, count_chunks, train_bpe  # noqa: F401
from minillm.errors import MiniLLMError

SPECIAL_TOKENS = ["<|endoftext|>", "<|pad|>", "<|mask|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
ROLES = ("system", "user", "assistant")
FORMAT_VERSION = 1


def _as_texts(texts):
    """A single string is one text, not an iterable of characters."""
    return [texts] if isinstance(texts, str) else texts


def _valid_unicode(text):
    """Lone surrogates (unencodable in UTF-8) become U+FFFD, as tiktoken does before encoding."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _to_json(d):
    """JSON with one list item per line (a merge is one line: `[104, 101]`), easy to read and diff."""
    lines = []
    for k, v in d.items():
        if isinstance(v, list) and v and isinstance(v[0], (list, str)):
            items = ",\n".join("  " + json.dumps(x, ensure_ascii=False) for x in v)
            lines.append(f" {json.dumps(k)}: [\n{items}\n ]")
        else:
            lines.append(f" {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


class Tokenizer:
    """What every tokenizer shares: specials, their checks, batch encoding, the chat template, save."""

    special_ids: dict

    # --- special tokens -------------------------------------------------------------------------
    eot_id = property(lambda self: self.special_ids["<|endoftext|>"])
    pad_id = property(lambda self: self.special_ids["<|pad|>"])
    mask_id = property(lambda self: self.special_ids["<|mask|>"])
    system_id = property(lambda self: self.special_ids["<|system|>"])
    user_id = property(lambda self: self.special_ids["<|user|>"])
    assistant_id = property(lambda self: self.special_ids["<|assistant|>"])
    end_id = property(lambda self: self.special_ids["<|end|>"])

    def _allowed(self, allowed_special):
        """'none' | 'all' | a set of special strings -> a set; anything else is a user error."""
        if allowed_special in ("none", None):
            return set()
        if allowed_special == "all":
            return set(self.special_ids)
        if isinstance(allowed_special, str):
            raise MiniLLMError("allowed_special must be 'none', 'all' or a set of special tokens, "
                               f"not {allowed_special!r}")
        allowed = set(allowed_special)
        unknown = allowed - set(self.special_ids)
        if unknown:
            raise MiniLLMError(f"unknown special token(s) {sorted(unknown)}; known: {sorted(self.special_ids)}")
        return allowed

    def _check_special(self, text, allowed):
        """Refuse special-token text that is not allowed (it would silently become a control symbol)."""
        if not isinstance(text, str):
            raise MiniLLMError(f"can only encode text (str), got {type(text).__name__}")
        for s in self.special_ids:
            if s not in allowed and s in text:
                raise MiniLLMError(f"the text contains the special token {s!r}; pass allowed_special='all' (or a set "
                                   "holding it; CLI: --allow-special) to encode it as that token, or use "
                                   "encode_ordinary for plain text")

    def _split_special(self, text, allowed):
        """Cut text at allowed specials: 'a<|end|>b' -> ['a', '<|end|>', 'b'] (specials as separate items)."""
        if not allowed:
            return [text]
        alternatives = "|".join(regex.escape(s) for s in sorted(allowed, key=len, reverse=True))
        return [p for p in regex.split(f"({alternatives})", text) if p]

    def encode_batch(self, texts, allowed_special="none"):
        return [self.encode(t, allowed_special=allowed_special) for t in texts]

    @property
    def vocab_size(self):
        return len(self.token_bytes)

    def __repr__(self):
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, specials={len(self.special_ids)})"

    def decode(self, ids):
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def decode_bytes(self, ids):
        """The bytes the ids spell (specials as their text); decode() turns them into a str."""
        table, out = self._id_bytes, []
        for i in ids:
            j = int(i)
            if not 0 <= j < len(table) or table[j] is None:
                raise MiniLLMError(f"id {j} is not in this tokenizer's vocabulary (0..{len(table) - 1}); "
                                   "were the ids made by another tokenizer?")
            out.append(table[j])
        return b"".join(out)

    # --- chat template --------------------------------------------------------------------------
    def render_chat(self, messages, add_generation_prompt=False):
        """Messages -> (ids, mask). Format per message: <|role|> content <|end|>.

        mask is 1 on the assistant's content tokens and its <|end|>, 0 elsewhere (role tokens included).
        """
        if isinstance(messages, dict) or not hasattr(messages, "__iter__"):
            raise MiniLLMError("messages must be a list of {'role': ..., 'content': ...} dicts")
        ids, mask = [], []
        for n, m in enumerate(messages):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise MiniLLMError(f"message {n} must be a dict with 'role' and 'content', got {m!r:.80}")
            role, content = m["role"], m["content"]
            if role not in ROLES:
                raise MiniLLMError(f"message {n} has role {role!r}; roles are {', '.join(ROLES)}")
            if not isinstance(content, str):
                raise MiniLLMError(f"message {n} content must be a string, got {type(content).__name__}")
            body = self.encode_ordinary(content)
            w = 1 if role == "assistant" else 0
            ids += [self.special_ids[f"<|{role}|>"]] + body + [self.end_id]
            mask += [0] + [w] * len(body) + [w]
        if add_generation_prompt:
            ids.append(self.assistant_id)
            mask.append(0)
        return ids, mask

    # --- files ------------------------------------------------------------------------------------
    def save(self, directory):
        """Write directory/tokenizer.json atomically; returns its path."""
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, "tokenizer.json")
        tmp = path + f".tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(_to_json(self.to_dict()))
        os.replace(tmp, path)
        return path


class BPETokenizer(Tokenizer):
    """Byte-level BPE over a regex pre-split; encodes through tiktoken, or in Python (encode_python).

    ranks: {token bytes: id} for the mergeable (non-special) tokens; merges: [(a, b), ...] when trained
    here (merge i made id 256 + i), else None; special_tokens: {text: id}.
    """

    def __init__(self, ranks, pattern, special_tokens, merges=None, name="minillm-bpe"):
        self.ranks = dict(ranks)
        self.pattern = PATTERNS.get(pattern, pattern)
        self.merges = [tuple(m) for m in merges] if merges is not None else None
        self.special_ids = dict(special_tokens)
        self.name = name
        try:
            self._compiled = regex.compile(self.pattern)
        except (regex.error, TypeError) as e:
            raise MiniLLMError(f"pattern {pattern!r} is neither one of {sorted(PATTERNS)} nor a valid regex: {e}")
        missing = [b for b in range(256) if bytes([b]) not in self.ranks]
        if missing:
            raise MiniLLMError(f"a byte-level BPE vocabulary needs all 256 single bytes; byte {missing[0]} is missing")
        ids = list(self.ranks.values()) + list(self.special_ids.values())
        if len(set(ids)) != len(ids) or min(ids) < 0:
            raise MiniLLMError("two tokens (or a token and a special) share an id, or an id is negative")
        size = max(list(self.ranks.values()) + list(self.special_ids.values())) + 1
        table = [None] * size
        for t, i in self.ranks.items():
            table[i] = t
        for s, i in self.special_ids.items():
            table[i] = s.encode("utf-8")
        self._id_bytes = table
        specials = set(self.special_ids.values())
        self.token_bytes = [0 if (t is None or i in specials) else len(t) for i, t in enumerate(table)]
        try:
            self._enc = tiktoken.Encoding(name, pat_str=self.pattern, mergeable_ranks=self.ranks,
                                          special_tokens=self.special_ids)
        except ValueError as e:     # Python's regex accepts syntax that tiktoken's Rust regex does not
            raise MiniLLMError(f"tiktoken cannot use the pattern {self.pattern!r}: {e}")

    def __repr__(self):
        pattern = next((k for k, v in PATTERNS.items() if v == self.pattern), "custom")
        merges = "" if self.merges is None else f", merges={len(self.merges)}"
        return f"BPETokenizer(name={self.name!r}, vocab_size={self.vocab_size}{merges}, pattern={pattern!r})"

    # --- training -----------------------------------------------------------------------------
    @classmethod
    def train(cls, texts, vocab_size, pattern="gpt4", progress=False, special_tokens=SPECIAL_TOKENS):
        """Learn vocab_size - 256 - len(special_tokens) merges from texts (see minillm/bpe.py)."""
        texts = _as_texts(texts)
        n_merges = int(vocab_size) - 256 - len(special_tokens)
        if n_merges < 0:
            raise MiniLLMError(f"vocab size {vocab_size} is too small: it needs at least 256 bytes + "
                               f"{len(special_tokens)} special tokens = {256 + len(special_tokens)}")
        pat = PATTERNS.get(pattern, pattern)
        cls({bytes([b]): b for b in range(256)}, pat, {})      # fail now on a pattern either engine rejects
        chunks = count_chunks(texts, pat)
        if not chunks:
            raise MiniLLMError("no training text: the input is empty")
        merges, vocab = train_bpe(chunks, n_merges, progress=progress)
        ranks = {t: i for i, t in enumerate(vocab)}
        specials = {s: len(vocab) + k for k, s in enumerate(special_tokens)}
        return cls(ranks, pat, specials, merges=merges)

    # --- encoding -------------------------------------------------------------------------------
    def encode(self, text, allowed_special="none"):
        """Text -> ids through tiktoken (fast). Special-token text is refused unless allowed."""
        allowed = self._allowed(allowed_special)
        self._check_special(text, allowed)
        return self._enc.encode(text, allowed_special=allowed, disallowed_special=())

    def encode_ordinary(self, text):
        """Text -> ids, special-token spellings encoded as plain text."""
        if not isinstance(text, str):
            raise MiniLLMError(f"can only encode text (str), got {type(text).__name__}")
        return self._enc.encode_ordinary(text)

    def encode_batch(self, texts, allowed_special="none"):
        allowed = self._allowed(allowed_special)
        texts = list(texts)
        for t in texts:
            self._check_special(t, allowed)
        return self._enc.encode_batch(texts, allowed_special=allowed, disallowed_special=())

    def encode_python(self, text, allowed_special="none"):
        """The readable encoder: split at allowed specials, pre-split with the regex, BPE each chunk."""
        allowed = self._allowed(allowed_special)
        self._check_special(text, allowed)
        ids = []
        for part in self._split_special(_valid_unicode(text), allowed):
            if part in allowed:
                ids.append(self.special_ids[part])
                continue
            for chunk in self._compiled.findall(part):
                ids.extend(bpe_encode_chunk(chunk.encode("utf-8"), self.ranks))
        return ids

    # --- files ------------------------------------------------------------------------------------
    def to_dict(self):
        d = {"type": "bpe", "format_version": FORMAT_VERSION, "name": self.name, "pattern": self.pattern,
             "special_tokens": self.special_ids}
        if self.merges is not None:
            d["merges"] = [list(m) for m in self.merges]
        else:   # loaded from GPT-2 / .tiktoken files: keep the ranks themselves (base64 bytes, rank)
            d["ranks"] = [[base64.b64encode(t).decode("ascii"), i]
                          for t, i in sorted(self.ranks.items(), key=lambda x: x[1])]
        return d

    @classmethod
    def from_merges(cls, merges, pattern, special_tokens, name="minillm-bpe"):
        """Rebuild the ranks from merges as id pairs: id 256 + i spells bytes(a) + bytes(b)."""
        vocab = [bytes([i]) for i in range(256)]
        for i, m in enumerate(merges):
            if (not isinstance(m, (list, tuple)) or len(m) != 2
                    or not all(isinstance(x, int) and 0 <= x < len(vocab) for x in m)):
                raise MiniLLMError(f"merge {i} is {m!r}: a merge must be a pair of earlier ids")
            vocab.append(vocab[m[0]] + vocab[m[1]])
        ranks = {t: i for i, t in enumerate(vocab)}
        if len(ranks) != len(vocab):
            raise MiniLLMError("the merges spell the same bytes twice; the tokenizer file is corrupt")
        return cls(ranks, pattern, special_tokens, merges=merges, name=name)


class CharTokenizer(Tokenizer):
    """One id per character: the sorted characters of the training text, then the specials."""

    def __init__(self, chars, special_tokens=SPECIAL_TOKENS):
        self.chars = list(chars)
        if len(set(self.chars)) != len(self.chars) or not all(isinstance(c, str) and len(c) == 1 for c in self.chars):
            raise MiniLLMError("a character vocabulary must be a list of distinct single characters")
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        self.special_ids = {s: len(self.chars) + k for k, s in enumerate(special_tokens)}
        self._id_bytes = [c.encode("utf-8", "surrogatepass") for c in self.chars] + \
            [s.encode("utf-8") for s in self.special_ids]
        self.token_bytes = [len(b) for b in self._id_bytes[:len(self.chars)]] + [0] * len(self.special_ids)

    @classmethod
    def train(cls, texts, special_tokens=SPECIAL_TOKENS, **unused):
        """The sorted set of characters in texts. BPE-only arguments (vocab_size, pattern, ...) are ignored."""
        chars = set()
        for t in _as_texts(texts):
            chars.update(t)
        if not chars:
            raise MiniLLMError("no training text: the input is empty")
        return cls(sorted(chars), special_tokens)

    def _chars_to_ids(self, text):
        try:
            return [self.stoi[c] for c in text]
        except KeyError:
            i, c = next((i, c) for i, c in enumerate(text) if c not in self.stoi)
            raise MiniLLMError(f"character {c!r} (U+{ord(c):04X}) at position {i} is not in this character "
                               "tokenizer's vocabulary; train it on text that contains it, or use a BPE tokenizer")

    def encode(self, text, allowed_special="none"):
        allowed = self._allowed(allowed_special)
        self._check_special(text, allowed)
        ids = []
        for part in self._split_special(text, allowed):
            ids.extend([self.special_ids[part]] if part in allowed else self._chars_to_ids(part))
        return ids

    def encode_ordinary(self, text):
        if not isinstance(text, str):
            raise MiniLLMError(f"can only encode text (str), got {type(text).__name__}")
        return self._chars_to_ids(text)

    encode_python = encode

    def to_dict(self):
        return {"type": "char", "format_version": FORMAT_VERSION, "chars": self.chars,
                "special_tokens": self.special_ids}


# --- loading ------------------------------------------------------------------------------------------
def tokenizer_from_dict(d):
    """The inverse of tok.to_dict()."""
    if not isinstance(d, dict) or d.get("type") not in ("bpe", "char"):
        raise MiniLLMError("not a minillm tokenizer file: expected a JSON object with type 'bpe' or 'char'")
    try:
        specials = d["special_tokens"]
        if d["type"] == "char":
            tok = CharTokenizer(d["chars"], list(specials))
            if tok.special_ids != specials:
                raise MiniLLMError("special token ids do not follow the characters; the tokenizer file is corrupt")
            return tok
        if "merges" in d:
            return BPETokenizer.from_merges(d["merges"], d["pattern"], specials, name=d.get("name", "minillm-bpe"))
        ranks = {base64.b64decode(t): int(i) for t, i in d["ranks"]}
        return BPETokenizer(ranks, d["pattern"], specials, name=d.get("name", "minillm-bpe"))
    except (KeyError, TypeError, ValueError) as e:
        raise MiniLLMError(f"the tokenizer file is incomplete or corrupt ({type(e).__name__}: {e})")


def load_tokenizer(path, pattern=None):
    """A dir with tokenizer.json (BPE or char), a GPT-2 dir (encoder.json + vocab.bpe), or a .tiktoken file.

    `pattern` overrides the pre-split regex of a .tiktoken file (default: guessed from its name).
    """
    from minillm import bpe_io
    path = os.fspath(path)
    if not os.path.exists(path):
        raise MiniLLMError(f"tokenizer path {path!r} does not exist")
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "tokenizer.json")):
            path = os.path.join(path, "tokenizer.json")
        elif os.path.isfile(os.path.join(path, "encoder.json")) and os.path.isfile(os.path.join(path, "vocab.bpe")):
            return bpe_io.load_gpt2(path)
        else:
            raise MiniLLMError(f"{path!r} holds neither tokenizer.json nor GPT-2's encoder.json + vocab.bpe")
    if path.endswith(".tiktoken"):
        return bpe_io.load_tiktoken_file(path, pattern=pattern)
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MiniLLMError(f"{path!r} is not a tokenizer JSON file ({e}); expected tokenizer.json, "
                           "a GPT-2 folder or a .tiktoken file")
    return tokenizer_from_dict(d)


def read_text(path):
    """Read a text file for training or encoding. Missing or empty: MiniLLMError. Invalid UTF-8: each bad
    byte becomes U+FFFD, with one warning line on stderr saying how many and where the first one is."""
    if not os.path.isfile(path):
        raise MiniLLMError(f"input file {path!r} does not exist")
    with open(path, "rb") as f:
        data = f.read()
    if not data:
        raise MiniLLMError(f"input file {path!r} is empty")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        text = data.decode("utf-8", errors="replace")
        bad = text.count("\ufffd") - data.decode("utf-8", errors="ignore").count("\ufffd")
        print(f"warning: {path}: invalid UTF-8 (first at byte {e.start}); "
              f"{bad} bad sequence(s) replaced by U+FFFD", file=sys.stderr)
        return text
