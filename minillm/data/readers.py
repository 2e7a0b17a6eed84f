"""Readers for the user's own text: a .txt file, a folder of .txt files, or a .jsonl file with a "text" field.

Each returns a list of documents (strings). Train/validation is split by document: the last `val_fraction` of
the documents (in file order) are validation. A source with too few documents for that (one big .txt such as
Tiny Shakespeare) is cut once, at the line boundary nearest to (1 - val_fraction) of its text: the head trains,
the tail validates -- the split nanoGPT uses for Shakespeare.
"""
import json
import math
import os

from minillm.errors import MiniLLMError


def _read_txt(path):
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError:
        raise MiniLLMError(f"{path} is not UTF-8 text; convert it (e.g. iconv -t utf-8) and retry") from None


def _read_jsonl(path):
    docs = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                raise MiniLLMError(f"{path} line {n} is not valid JSON") from None
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise MiniLLMError(f"{path} line {n} has no string field \"text\"")
            docs.append(row["text"])
    return docs


def read_documents(path):
    """path (.txt | folder of .txt | .jsonl) -> list of non-empty documents. Empty data is an error."""
    if os.path.isdir(path):
        files = sorted(f for f in os.listdir(path) if f.endswith(".txt"))
        docs = [_read_txt(os.path.join(path, f)) for f in files]
    elif os.path.isfile(path):
        if path.endswith(".jsonl"):
            docs = _read_jsonl(path)
        elif path.endswith(".txt"):
            docs = [_read_txt(path)]
        else:
            raise MiniLLMError(f"{path}: unsupported data file; give a .txt, a .jsonl with a \"text\" field, "
                               "or a folder of .txt files")
    else:
        raise MiniLLMError(f"data path {path} does not exist")
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise MiniLLMError(f"no text found in {path}; the data is empty")
    return docs


def split_documents(docs, val_fraction=0.1):
    """-> (train_docs, val_docs). By document when there are enough, else one cut at a line boundary."""
    if not 0 < val_fraction < 1:
        raise MiniLLMError(f"data.val_fraction={val_fraction} must be between 0 and 1")
    n_val = math.ceil(len(docs) * val_fraction)
    if len(docs) >= 2 and n_val < len(docs):
        return docs[:-n_val], docs[-n_val:]
    text = "".join(docs) if len(docs) == 1 else "\n\n".join(docs)
    cut = int(len(text) * (1 - val_fraction))
    nl = text.rfind("\n", 0, cut)
    cut = nl + 1 if nl > 0 else cut
    if cut <= 0 or cut >= len(text):
        raise MiniLLMError("the data is too small to hold out a validation part; give more text")
    return [text[:cut]], [text[cut:]]
