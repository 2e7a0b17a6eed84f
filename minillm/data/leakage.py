"""Leakage (contamination) check: how much of each evaluation set already appears in the training data.

A model that saw a test item during training can recite it, and its score then measures memory, not
skill (GPT-3, Brown et al. 2020, appendix C; Dodge et al. 2021 on C4). The standard check is n-gram
overlap on normalised words (lower-cased, punctuation dropped):

    item is contaminated  ⇔  |ngrams_n(item) ∩ ngrams_n(train)| / |ngrams_n(item)| ≥ overlap

with n around 8-13 words. An item shorter than n words is represented by all its words as one gram
(GPT-3 did the same), so a short prompt counts as leaked only when it appears verbatim.
The contamination *rate* of an eval set is the fraction of its items that are contaminated;
`check_leakage` refuses (MiniLLMError) when any set's rate exceeds the threshold, unless `allow=True`,
and its report records the override so the manifest can carry it.

N-grams are hashed to 64 bits (word ids within one call, then a polynomial rolling hash), so the
overlap test is a vectorised `np.isin` over arrays instead of Python sets of tuples.
"""
from __future__ import annotations

import re

import numpy as np

from minillm.errors import MiniLLMError

_WORD_RE = re.compile(r"\w+")
_BASE = np.uint64(0x9E3779B97F4A7C15)


def words(text: str) -> list[str]:
    """Normalised words: lower-cased, punctuation dropped. "The Capital, of Italy!" -> ['the', 'capital', 'of', 'italy']"""
    return _WORD_RE.findall(text.lower())


def item_text(item) -> str:
    """The text of an eval item, whatever its shape: a string, a chat, or a dict from the world.

    {"prompt": "The capital of Italy is", "answer": " Rome"} -> "The capital of Italy is Rome"
    {"text": "The capital of <|mask|> is Rome.", "answer": "Italy"} -> "The capital of Italy is Rome."
    {"messages": [{"role": "user", "content": "hi"}, ...]} -> "hi ..."
    """
    if isinstance(item, str):
        return item
    if isinstance(item, dict):
        if "messages" in item:
            return item_text(item["messages"])
        if "text" in item and "answer" in item and "<|mask|>" in str(item["text"]):
            return str(item["text"]).replace("<|mask|>", str(item["answer"]).strip(), 1)
        if "prompt" in item:
            return item_text(item["prompt"]) + str(item.get("answer", item.get("chosen", "")))
        if "content" in item:
            return str(item["content"])
        if "text" in item:
            return str(item["text"])
    if isinstance(item, (list, tuple)):
        return "\n".join(item_text(x) for x in item)
    return str(item)


class _Vocab:
    """Word -> id within one leakage check, so n-gram hashes are consistent between train and eval."""

    def __init__(self):
        self.ids: dict[str, int] = {}

    def encode(self, ws: list[str]) -> np.ndarray:
        get = self.ids.setdefault
        return np.array([get(w, len(self.ids) + 1) for w in ws], dtype=np.uint64)


def ngram_hashes(ids: np.ndarray, n: int) -> np.ndarray:
    """64-bit hashes of every window of n word ids; a text shorter than n is one gram of all its words."""
    if len(ids) == 0:
        return np.zeros(0, dtype=np.uint64)
    n = min(n, len(ids))
    m = len(ids) - n + 1
    h = np.full(m, np.uint64(n), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(n):
            h = h * _BASE + ids[j:j + m]
    return h


def leakage_report(train_docs: list[str], eval_sets: dict, n: int = 8, overlap: float = 0.5,
                   min_words: int = 4) -> dict:
    """Per eval set: how many items are contaminated by `train_docs`; per train doc: whether it leaks.

    Items with fewer than `min_words` words are too short to tell a leak from a common phrase and are
    skipped (counted in "skipped"). Returns
    {"n", "overlap", "sets": {name: {"items", "checked", "contaminated", "rate", "examples"}},
     "max_rate", "leaking_docs": [train doc indices that contain a contaminated item's n-grams]}.
    """
    vocab = _Vocab()
    eval_grams, owners, per_set = [], [], {}
    for name, items in eval_sets.items():
        texts = [item_text(x) for x in items]
        info = {"items": len(texts), "checked": 0, "contaminated": 0, "rate": 0.0, "examples": [], "_grams": []}
        for t in texts:
            ws = words(t)
            if len(ws) < min_words:
                info["_grams"].append(None)
                continue
            g = np.unique(ngram_hashes(vocab.encode(ws), n))
            info["_grams"].append(g)
            info["checked"] += 1
            eval_grams.append(g)
        per_set[name] = (texts, info)
        owners.append(name)
    train_grams = [ngram_hashes(vocab.encode(words(d)), n) for d in train_docs]
    # Windows shorter than n in the eval side are matched against same-length windows of the train side.
    short_lengths = sorted({min(len(words(t)), n) for texts, _ in per_set.values() for t in texts} - {n})
    all_train = np.unique(np.concatenate(train_grams)) if train_grams else np.zeros(0, np.uint64)
    extra = {L: np.unique(np.concatenate([ngram_hashes(vocab.encode(words(d)), L) for d in train_docs]))
             for L in short_lengths if L >= min_words} if train_docs else {}
    contaminated_grams = []
    for name, (texts, info) in per_set.items():
        for t, g in zip(texts, info.pop("_grams")):
            if g is None:
                continue
            L = min(len(words(t)), n)
            pool = all_train if L == n else extra.get(L, np.zeros(0, np.uint64))
            hit = np.isin(g, pool)
            if hit.mean() >= overlap:
                info["contaminated"] += 1
                contaminated_grams.append((L, g[hit]))
                if len(info["examples"]) < 3:
                    info["examples"].append(t[:160])
        info["skipped"] = info["items"] - info["checked"]
        info["rate"] = info["contaminated"] / max(info["checked"], 1)
    leaking = set()
    if contaminated_grams:
        by_len: dict[int, np.ndarray] = {}
        for L, g in contaminated_grams:
            by_len[L] = np.concatenate([by_len.get(L, np.zeros(0, np.uint64)), g])
        for i, d in enumerate(train_docs):
            ids = vocab.encode(words(d))
            for L, grams in by_len.items():
                dh = train_grams[i] if L == n else ngram_hashes(ids, L)
                if np.isin(dh, grams).any():
                    leaking.add(i)
                    break
    sets = {name: info for name, (_, info) in per_set.items()}
    return {"n": n, "overlap": overlap, "min_words": min_words, "sets": sets,
            "max_rate": max((s["rate"] for s in sets.values()), default=0.0), "leaking_docs": sorted(leaking)}


def check_leakage(train_docs: list[str], eval_sets: dict, threshold: float = 0.01, allow: bool = False,
                  n: int = 8, overlap: float = 0.5) -> dict:
    """Refuse to train on data that contains too much of an evaluation set.

    Raises MiniLLMError when some eval set's contamination rate exceeds `threshold`, unless `allow`;
    the returned report has "exceeded" and "overridden" (record it in the run's manifest).
    """
    rep = leakage_report(train_docs, eval_sets, n=n, overlap=overlap)
    worst = max(rep["sets"].items(), key=lambda kv: kv[1]["rate"], default=(None, {"rate": 0.0}))
    exceeded = worst[1]["rate"] > threshold
    rep.update({"threshold": threshold, "exceeded": exceeded, "overridden": bool(exceeded and allow)})
    if exceeded and not allow:
        s = worst[1]
        raise MiniLLMError(
            f"training data contains {s['contaminated']} of {s['checked']} items of eval set '{worst[0]}' "
            f"({s['rate']:.1%} > threshold {threshold:.1%}): remove them with `minillm data clean`, "
            f"or pass --allow-leakage to train anyway (the override is recorded in the manifest)")
    return rep
