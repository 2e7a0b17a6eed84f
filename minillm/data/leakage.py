"""Leakage (contamination) check: how much of each evaluation set already appears in the training data.

A model that saw a test item during training can recite it, and its score then measures memory, not
skill (GPT-3, Brown et al. 2020, appendix C; Dodge et al. 2021 on C4). The standard check is n-gram
overlap on normalised words (lower-cased, punctuation dropped):

    item is contaminated  ⇔  mean over its fields f of |G_n(f) ∩ G_n(train)| / |G_n(f)|  ≥ overlap

with n around 8-13 words. An item is split into its fields (question, answer) and n-grams never span two
fields; a field shorter than n words is one gram of all its words (GPT-3 did the same), so a short prompt
counts as leaked only when it appears verbatim. With overlap 0.6 a question + answer item is contaminated
only when both appear: an answer alone ("The capital of Velmora is Tarsk.") is a fact the corpus is
*meant* to teach, not a leak.
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


def item_segments(item) -> list[str]:
    """The texts of an eval item, one per field, whatever its shape (n-grams never span two fields).

    "Velmora's capital is Tarsk" -> ["Velmora's capital is Tarsk"]
    {"prompt": "Velmora's capital is", "answer": " Tarsk"} -> ["Velmora's capital is Tarsk"]
    {"text": "<|mask|>'s capital is Tarsk.", "answer": "Velmora"} -> ["Velmora's capital is Tarsk."]
    {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} -> [q, a]
    {"prompt": [user message], "chosen": c, "rejected": r} -> [q, c]   (the rejected answer is not a test item)
    """
    if isinstance(item, str):
        return [item]
    if isinstance(item, dict):
        if "messages" in item:
            return item_segments(item["messages"])
        if "text" in item and "answer" in item and "<|mask|>" in str(item["text"]):
            return [str(item["text"]).replace("<|mask|>", str(item["answer"]).strip(), 1)]
        if "prompt" in item and "chosen" in item:
            return item_segments(item["prompt"]) + [str(item["chosen"])]
        if "prompt" in item:
            if isinstance(item["prompt"], str):
                return [item["prompt"] + str(item.get("answer", ""))]
            return item_segments(item["prompt"]) + ([str(item["answer"])] if "answer" in item else [])
        if "content" in item:
            return [str(item["content"])]
        if "text" in item:
            return [str(item["text"])]
    if isinstance(item, (list, tuple)):
        return [s for x in item for s in item_segments(x)]
    return [str(item)]


def item_text(item) -> str:
    """All segments of an eval item joined by newlines (for display and for probes)."""
    return "\n".join(item_segments(item))


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


def member(x: np.ndarray, sorted_pool: np.ndarray) -> np.ndarray:
    """x[i] in sorted_pool, by binary search (np.isin would re-sort the big pool on every call)."""
    if len(sorted_pool) == 0:
        return np.zeros(len(x), dtype=bool)
    pos = np.searchsorted(sorted_pool, x).clip(max=len(sorted_pool) - 1)
    return sorted_pool[pos] == x


def _grams(vocab, segments: list[str], n: int, min_words: int) -> list[tuple[int, np.ndarray]]:
    """[(L, unique L-gram hashes)] per segment, L = min(n, words in the segment); [] when the whole item has
    fewer than min_words words (too short to tell a leak from a common phrase)."""
    segs = [words(s) for s in segments]
    if sum(map(len, segs)) < min_words:
        return []
    return [(min(n, len(ws)), np.unique(ngram_hashes(vocab.encode(ws), min(n, len(ws))))) for ws in segs if ws]


def leakage_report(train_docs: list[str], eval_sets: dict, n: int = 8, overlap: float = 0.6,
                   min_words: int = 4) -> dict:
    """Per eval set: how many items are contaminated by `train_docs`; per train doc: whether it leaks.

    An item's grams are the n-grams of each of its segments (a segment shorter than n words is one gram of
    all its words); an item of fewer than `min_words` words in all is "skipped".
    Returns {"n", "overlap", "sets": {name: {"items", "checked", "skipped", "contaminated", "rate", "examples"}},
    "max_rate", "leaking_docs": [...]}. The leaking documents of a contaminated item are those that alone hold
    >= `overlap` of its grams (the copy of the item); only when no single document does (an item spread over
    several) every document holding one of its grams is listed. So a document that merely states a fact which
    is also a leaked answer is kept.
    """
    vocab = _Vocab()
    per_set = {}
    for name, items in eval_sets.items():
        per_set[name] = [(item_text(x), _grams(vocab, item_segments(x), n, min_words)) for x in items]
    lengths = sorted({L for items in per_set.values() for _, gs in items for L, _ in gs})
    train_ids = [vocab.encode(words(d)) for d in train_docs]
    doc_grams = {L: [np.unique(ngram_hashes(ids, L)) for ids in train_ids] for L in lengths}  # sorted per doc
    pool = {L: (np.unique(np.concatenate(doc_grams[L])) if train_ids else np.zeros(0, np.uint64)) for L in lengths}
    sets, bad = {}, []
    for name, items in per_set.items():
        info = {"items": len(items), "checked": 0, "skipped": 0, "contaminated": 0, "rate": 0.0, "examples": []}
        for text, gs in items:
            if not gs:
                info["skipped"] += 1
                continue
            info["checked"] += 1
            if np.mean([member(g, pool[L]).mean() for L, g in gs]) >= overlap:   # fields weigh equally
                info["contaminated"] += 1
                bad.append(gs)
                if len(info["examples"]) < 3:
                    info["examples"].append(text[:160])
        info["rate"] = info["contaminated"] / max(info["checked"], 1)
        sets[name] = info
    leaking = set()
    for gs in bad:
        frac = np.zeros(len(train_docs))                       # (D,) share of this item found in each document
        for L, g in gs:
            for i, dg in enumerate(doc_grams[L]):
                frac[i] += member(g, dg).mean() / len(gs)
        whole = np.nonzero(frac >= overlap)[0]
        leaking.update((whole if len(whole) else np.nonzero(frac)[0]).tolist())
    leaking = sorted(leaking)
    return {"n": n, "overlap": overlap, "min_words": min_words, "sets": sets,
            "max_rate": max((s["rate"] for s in sets.values()), default=0.0), "leaking_docs": leaking}


def check_leakage(train_docs: list[str], eval_sets: dict, threshold: float = 0.01, allow: bool = False,
                  n: int = 8, overlap: float = 0.6) -> dict:
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
