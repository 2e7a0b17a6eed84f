"""Data hygiene: the stage that runs before the tokenizer ever sees the text.

`clean(docs, eval_sets, cfg)` applies, in order, and reports what each step removed and why:

1. quality filters (Gopher-style heuristics, Rae et al. 2021): too short, too many symbols
   (non-alphanumeric, non-space characters / all characters), too repetitive
   (1 - unique word 3-grams / all word 3-grams);
2. PII redaction (`minillm.data.pii`): e-mails, IBANs (mod-97), credit cards (Luhn), IPv4, phones
   → typed placeholders, counted per type;
3. exact deduplication: a document whose *normalised* text (Unicode NFKC, lower case, punctuation
   dropped, whitespace collapsed) hashes (SHA-1) like an earlier one is dropped;
4. near-duplicate removal: MinHash + LSH (`minillm.data.minhash`) on character shingles, keeping the
   first document of every cluster whose Jaccard similarity is ≥ `near_threshold`;
5. leakage removal (`minillm.data.leakage`): training documents that contain n-grams of a contaminated
   evaluation item are dropped, and the contamination of every eval set is reported before and after.

Why the order: redaction before dedup makes two copies that differ only in a phone number exact
duplicates; quality first so junk does not seed near-duplicate clusters.
References: Lee et al. 2022, "Deduplicating Training Data Makes Language Models Better";
Penedo et al. 2023 (RefinedWeb); Rae et al. 2021 (Gopher, appendix A).
"""
from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import asdict, dataclass

from minillm.data import minhash, pii
from minillm.data.leakage import check_leakage, item_text, leakage_report, words  # noqa: F401 (re-exported)

__all__ = ["HygieneConfig", "clean", "clean_world", "normalise", "exact_key", "quality_reasons", "check_leakage",
           "leakage_report", "planted_found", "world_eval_sets", "split_overlap", "read_documents", "cleaned_world",
           "manifest_summary", "leakage_summary"]


@dataclass
class HygieneConfig:
    min_words: int = 5              # shorter documents are dropped ("too_short")
    max_symbol_ratio: float = 0.3   # non-alphanumeric, non-space characters / characters
    max_repetition: float = 0.5     # 1 - unique / total word 3-grams (documents of ≥ 12 words)
    redact_pii: bool = True
    dedup: bool = True
    near_threshold: float = 0.8     # Jaccard of character 5-shingles at which two documents are near-duplicates
    num_perm: int = 128
    shingle: int = 5
    shingle_unit: str = "char"
    leak_n: int = 8                 # n of the word n-grams of the leakage check
    leak_overlap: float = 0.6       # an eval item is contaminated when this fraction of its n-grams is in train
    remove_leaks: bool = True
    seed: int = 0


_PUNCT_RE = re.compile(r"[^\w\s]")


def normalise(text: str) -> str:
    """NFKC, lower case, punctuation dropped, whitespace collapsed: "Hello,  WORLD!" -> "hello world"."""
    t = unicodedata.normalize("NFKC", text).lower()
    return " ".join(_PUNCT_RE.sub(" ", t).split())


def exact_key(text: str) -> str:
    """SHA-1 of the normalised text: equal for documents that differ only in case, punctuation or spacing."""
    return hashlib.sha1(normalise(text).encode("utf-8")).hexdigest()


def quality_reasons(text: str, cfg: HygieneConfig) -> list[str]:
    """Why a document fails the quality filters ([] when it passes): too_short, symbols, repetition."""
    reasons = []
    ws = words(text)
    if len(ws) < cfg.min_words:
        reasons.append("too_short")
    stripped = [c for c in text if not c.isspace()]
    if stripped:
        symbols = sum(1 for c in stripped if not c.isalnum())
        if symbols / len(stripped) > cfg.max_symbol_ratio:
            reasons.append("symbols")
    if len(ws) >= 12:
        grams = list(zip(ws, ws[1:], ws[2:]))
        if 1 - len(set(grams)) / len(grams) > cfg.max_repetition:
            reasons.append("repetition")
    return reasons


def _preview(text: str, n: int = 100) -> str:
    t = " ".join(text.split())
    return t if len(t) <= n else t[:n - 1] + "…"


def clean(docs: list[str], eval_sets: dict | None = None, cfg: HygieneConfig | None = None) -> tuple[list[str], dict]:
    """Clean a list of documents; returns (kept documents, report).

    The report: {"config", "input": {"documents", "chars"}, "output": {...}, "removed": {reason: count},
    "pii": {type: count}, "leakage": {"before": ..., "after": ...}, "removals": [{"index", "reason",
    "detail", "preview"}], "redactions": [{"index", "type", "masked", "sha256"}]} — indices refer to the input
    list. A redaction never stores the value itself (the report must not leak what it removed): only a masked
    form ("****************6467") and the sha256 of the normalised value, enough to check it against a list.
    """
    cfg = cfg or HygieneConfig()
    eval_sets = eval_sets or {}
    removals: list[dict] = []
    alive = [True] * len(docs)
    texts = list(docs)

    def drop(i, reason, detail="", of=None):
        alive[i] = False
        removals.append({"index": i, "reason": reason, "detail": detail, "preview": _preview(pii.redact(docs[i])[0]),
                         **({"of": of} if of is not None else {})})

    # 1. quality
    for i, d in enumerate(docs):
        r = quality_reasons(d, cfg)
        if r:
            drop(i, r[0], ",".join(r))
    # 2. PII
    pii_counts = {t: 0 for t in pii.PII_TYPES}
    redactions = []
    if cfg.redact_pii:
        for i in range(len(texts)):
            if alive[i]:
                texts[i], spans = pii.redact(texts[i])
                for sp in spans:
                    pii_counts[sp["type"]] += 1
                    redactions.append({"index": i, "type": sp["type"], "masked": pii.mask(sp["value"]),
                                       "sha256": pii.value_sha256(sp["value"])})
    # 3. exact duplicates
    if cfg.dedup:
        first: dict[str, int] = {}
        for i in range(len(texts)):
            if alive[i]:
                k = exact_key(texts[i])
                if k in first:
                    drop(i, "exact_duplicate", f"of document {first[k]}", of=first[k])
                else:
                    first[k] = i
        # 4. near duplicates
        idx = [i for i in range(len(texts)) if alive[i]]
        pairs = minhash.near_duplicates([texts[i] for i in idx], threshold=cfg.near_threshold,
                                        num_perm=cfg.num_perm, k=cfg.shingle, unit=cfg.shingle_unit, seed=cfg.seed)
        best = {}
        for a, b, jac in pairs:
            best.setdefault(b, (a, jac))
        roots = minhash.clusters(len(idx), pairs)
        for pos, root in enumerate(roots):
            if root != pos:
                a, jac = best.get(pos, (root, float("nan")))
                drop(idx[pos], "near_duplicate", f"of document {idx[root]} (Jaccard {jac:.2f} with {idx[a]})",
                     of=idx[root])
    # 5. leakage
    leak = {}
    if eval_sets:
        idx = [i for i in range(len(texts)) if alive[i]]
        before = leakage_report([texts[i] for i in idx], eval_sets, n=cfg.leak_n, overlap=cfg.leak_overlap)
        if cfg.remove_leaks:
            for j in before["leaking_docs"]:
                drop(idx[j], "leakage", "contains n-grams of a contaminated eval item")
        idx2 = [i for i in range(len(texts)) if alive[i]]
        after = leakage_report([texts[i] for i in idx2], eval_sets, n=cfg.leak_n, overlap=cfg.leak_overlap)
        before["leaking_docs"] = [idx[j] for j in before["leaking_docs"]]     # back to input indices
        after["leaking_docs"] = [idx2[j] for j in after["leaking_docs"]]
        leak = {"before": before, "after": after}
    kept = [texts[i] for i in range(len(texts)) if alive[i]]
    removed_counts: dict[str, int] = {}
    for r in removals:
        removed_counts[r["reason"]] = removed_counts.get(r["reason"], 0) + 1
    report = {
        "config": asdict(cfg),
        "input": {"documents": len(docs), "chars": sum(map(len, docs))},
        "output": {"documents": len(kept), "chars": sum(map(len, kept))},
        "removed": removed_counts,
        "pii": pii_counts,
        "leakage": leak,
        "removals": sorted(removals, key=lambda r: r["index"]),
        "redactions": redactions,
    }
    return kept, report


def world_eval_sets(world) -> dict:
    """The world's held-out evaluation items: test fact prompts, cloze sentences, instructions, preferences.

    The val *corpora* are not here: they come from the same document templates as train, so n-gram overlap
    with train is by design; `split_overlap` measures their near-duplicates instead (reported, not removed).
    """
    sets = {}
    for name, fn in [("fact_test", "fact_prompts"), ("cloze_test", "cloze_prompts"),
                     ("instructions_test", "instructions"), ("preferences_test", "preference_pairs")]:
        f = getattr(world, fn, None)
        items = f(split="test") if f is not None else []
        if items:
            sets[name] = list(items)
    return sets


def split_overlap(train: list[str], val: list[str], threshold: float = 0.8, seed: int = 0) -> dict:
    """How many val documents have a near-duplicate (Jaccard >= threshold) in train: a val loss on them is
    optimistic. {"val_documents", "with_near_duplicate_in_train", "rate"}."""
    pairs = minhash.near_duplicates(list(train) + list(val), threshold=threshold, seed=seed)
    n = len(train)
    hit = {j for i, j, _ in pairs if i < n <= j}
    return {"val_documents": len(val), "with_near_duplicate_in_train": len(hit), "rate": len(hit) / max(len(val), 1)}


def _as_text(x) -> str:
    if isinstance(x, dict):
        for key in ("text", "doc", "value", "duplicate", "copy", "item"):
            if key in x and isinstance(x[key], str):
                return x[key]
        return item_text(x)
    return item_text(x)


def planted_found(report: dict, planted: dict, docs: list[str]) -> dict:
    """For each planted category: {"planted": n, "found": k, "missed": [...]} given a clean() report.

    exact/near duplicates: the planted copy's text (or index into `docs`) was removed as a duplicate;
    pii: the planted value (spaces/dashes ignored) was redacted with the same type;
    leaks: the planted text's document was removed for leakage (or the eval item was flagged).
    """
    removed = {}
    for r in report["removals"]:
        removed.setdefault(r["index"], r["reason"])
    index_of: dict[str, list[int]] = {}
    for i, d in enumerate(docs):
        index_of.setdefault(d, []).append(i)

    def locate(x) -> list[int]:
        if isinstance(x, int):
            return [x]
        if isinstance(x, dict) and isinstance(x.get("index"), int):
            return [x["index"]]
        t = _as_text(x)
        if t in index_of:
            return index_of[t]
        key = normalise(t)
        return [i for i, d in enumerate(docs) if key and key in normalise(d)]

    dup = {"exact_duplicate", "near_duplicate"}
    out = {}
    for cat, reasons in [("exact_duplicates", dup), ("near_duplicates", dup), ("leaks", {"leakage"})]:
        items = planted.get(cat, [])
        missed = []
        for x in items:
            if isinstance(x, dict) and "original" in x and "duplicate" in x:
                # a near-duplicate pair is found when not both copies survive (either may be the one dropped)
                where = locate(x["original"]) + locate(x["duplicate"])
                ok = any(removed.get(i) in reasons for i in where)
            else:
                # an exact copy: some copy of the text was dropped as a duplicate; a leak: its document was dropped
                ok = any(removed.get(i) in reasons for i in locate(x))
            if not ok:
                missed.append(_preview(_as_text(x.get("duplicate", x) if isinstance(x, dict) else x)))
        out[cat] = {"planted": len(items), "found": len(items) - len(missed), "missed": missed}
    redacted = {(r["type"], r["sha256"]) for r in report["redactions"]}
    items = planted.get("pii", [])
    missed = []
    for x in items:
        typ = pii.canonical_type(x.get("type", "")) if isinstance(x, dict) else ""
        value = x.get("value", "") if isinstance(x, dict) else str(x)
        h = pii.value_sha256(value)
        if (typ, h) not in redacted and not (not typ and any(h == v for _, v in redacted)):
            missed.append(f"{typ}: {pii.mask(value)}")
    out["pii"] = {"planted": len(items), "found": len(items) - len(missed), "missed": missed}
    return out


# --------------------------------------------------------------------------- reading and writing


def read_documents(path: str) -> list[str]:
    """Documents from a user path: .jsonl (one {"text": ...} per line), .txt (paragraphs separated by blank
    lines), or a folder of such files (sorted)."""
    import json
    import os

    from minillm.errors import MiniLLMError
    if not os.path.exists(path):
        raise MiniLLMError(f"input '{path}' does not exist; give a .txt, a .jsonl with \"text\", a folder, or 'world'")
    if os.path.isdir(path):
        docs = []
        for name in sorted(os.listdir(path)):
            if name.endswith((".txt", ".jsonl")):
                docs += read_documents(os.path.join(path, name))
        return docs
    try:
        with open(path, encoding="utf-8") as f:
            raw = f.read()
    except UnicodeDecodeError as e:
        raise MiniLLMError(f"'{path}' is not valid UTF-8 ({e.reason} at byte {e.start}); convert it to UTF-8") from None
    if path.endswith(".jsonl"):
        docs = []
        for n, line in enumerate(raw.splitlines(), 1):
            if line.strip():
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError:
                    raise MiniLLMError(f"{path}:{n} is not JSON; a .jsonl needs one {{\"text\": ...}} per line") from None
                if not isinstance(obj, dict) or "text" not in obj:
                    docs.append(item_text(obj))
                else:
                    docs.append(str(obj["text"]))
        return docs
    return [p.strip() for p in re.split(r"\n\s*\n", raw) if p.strip()]


def clean_world(world, cfg: HygieneConfig | None = None) -> tuple[dict, dict]:
    """Clean the world's general + domain training corpora together against all its eval sets.

    Returns ({"general": [docs], "domain": [docs]}, report) where the report also has "planted":
    found-of-planted per category (every planted item should be found).
    """
    corpora = {"general": list(world.general_corpus(split="train")), "domain": list(world.domain_corpus(split="train"))}
    docs, source = [], []
    for name, ds in corpora.items():
        docs += ds
        source += [name] * len(ds)
    kept, report = clean(docs, world_eval_sets(world), cfg)
    removed = {r["index"] for r in report["removals"]}
    out = {name: [] for name in corpora}
    it = iter(kept)
    for i in range(len(docs)):
        if i not in removed:
            out[source[i]].append(next(it))
    report["corpora"] = {name: {"input": len(ds), "output": len(out[name])} for name, ds in corpora.items()}
    report["planted"] = planted_found(report, getattr(world, "planted", {}) or {}, docs)
    cfg = cfg or HygieneConfig()
    report["split_overlap"] = {name: split_overlap(out[name], fn(split="val"), cfg.near_threshold, cfg.seed)
                               for name, fn in [("general", world.general_corpus), ("domain", world.domain_corpus)]}
    return out, report


def summary_lines(report: dict) -> list[str]:
    """A few human lines for the terminal / report card."""
    lines = [f"documents: {report['input']['documents']} in, {report['output']['documents']} out"]
    if report["removed"]:
        lines.append("removed: " + ", ".join(f"{k} {v}" for k, v in sorted(report["removed"].items())))
    lines.append("PII redacted: " + ", ".join(f"{k} {v}" for k, v in report["pii"].items()))
    if report.get("leakage"):
        b, a = report["leakage"]["before"], report["leakage"]["after"]
        lines.append("contamination (before -> after): " + ", ".join(
            f"{k} {b['sets'][k]['rate']:.1%}->{a['sets'][k]['rate']:.1%}" for k in b["sets"]))
    for name, v in report.get("split_overlap", {}).items():
        lines.append(f"{name} val documents with a near-duplicate in train: {v['with_near_duplicate_in_train']}"
                     f"/{v['val_documents']} (reported, not removed)")
    for cat, v in report.get("planted", {}).items():
        lines.append(f"planted {cat}: found {v['found']}/{v['planted']}")
    return lines


_CLEAN_CACHE: dict = {}


def cleaned_world(world, cfg: HygieneConfig | None = None) -> tuple[dict, dict]:
    """clean_world, computed once per (seed, plant, config) in this process: training stages that read the world
    call it instead of the raw corpora. Returns ({"general": docs, "domain": docs}, report)."""
    cfg = cfg or HygieneConfig()
    key = (world.seed, getattr(world, "plant", True), tuple(sorted(asdict(cfg).items())))
    if key not in _CLEAN_CACHE:
        _CLEAN_CACHE[key] = clean_world(world, cfg)
    out, report = _CLEAN_CACHE[key]
    return {k: list(v) for k, v in out.items()}, report


def manifest_summary(report: dict) -> dict:
    """The part of a hygiene report worth keeping in a run's manifest (counts, not documents)."""
    out = {"input_documents": report["input"]["documents"], "output_documents": report["output"]["documents"],
           "removed": report["removed"], "pii": report["pii"]}
    if report.get("planted"):
        out["planted_found"] = {k: f"{v['found']}/{v['planted']}" for k, v in report["planted"].items()}
    return out


def leakage_summary(report: dict) -> dict:
    """check_leakage's report without document indices: what goes into manifest["leakage"]."""
    return {k: v for k, v in report.items() if k != "leaking_docs"}
