"""Do Python's `regex` and tiktoken's Rust regex pre-split text the same way, character by character?

    PYTHONPATH=$PWD python benchmarks/check_tokenizer_unicode.py [--every 41] [--out FILE.md]

The two encoders of `BPETokenizer` agree exactly when their pre-splits agree. For each code point c checked, a
probe text puts c in many contexts (after a letter, a space, a digit, an apostrophe, before a newline, ...). To
read tiktoken's split, we build an Encoding whose ranks hold every substring of the probe: BPE then merges each
chunk into one token, so tiktoken's tokens *are* its chunks, which we compare with `regex.findall`.
Checked: every whitespace, control, format, mark, titlecase, modifier-letter and other-number character, plus every
`--every`-th assigned code point. Characters newer than Python's `unicodedata` tables are counted apart: the
`regex` module's Unicode tables are newer than tiktoken's, so they can differ (documented in minillm/bpe.py).
Takes minutes (one small tiktoken Encoding per character); a diagnostic to rerun when tiktoken or regex change.
"""
import argparse
import datetime
import os
import sys
import time
import unicodedata

import regex
import tiktoken

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from minillm.bpe import PATTERNS  # noqa: E402


def tiktoken_chunks(text, pattern):
    b = text.encode("utf-8")
    ranks = {bytes([i]): i for i in range(256)}
    for i in range(len(b)):
        for j in range(i + 2, len(b) + 1):
            ranks.setdefault(b[i:j], len(ranks))
    enc = tiktoken.Encoding("probe", pat_str=pattern, mergeable_ranks=ranks, special_tokens={})
    return [enc.decode_single_token_bytes(t) for t in enc.encode_ordinary(text)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--every", type=int, default=41, help="also check every N-th assigned code point")
    ap.add_argument("--patterns", nargs="+", default=sorted(PATTERNS), choices=sorted(PATTERNS))
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "tokenizer_unicode.md"))
    args = ap.parse_args()
    assigned = regex.compile(r"\p{Assigned}")
    tricky = regex.compile(r"[\p{Z}\p{Cc}\p{Cf}\p{M}\p{Lt}\p{Lm}\p{Nl}\p{No}\p{Pc}\s]")
    cps = [c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF
           and (tricky.match(chr(c)) or (assigned.match(chr(c)) and c % args.every == 0))]
    is_new = {c: unicodedata.category(chr(c)) == "Cn" for c in cps}   # assigned per `regex`, unknown to Python
    rows = []
    for name in args.patterns:
        pat, t0 = PATTERNS[name], time.perf_counter()
        compiled = regex.compile(pat)
        bad_old, bad_new = [], []
        for cp in cps:
            c = chr(cp)
            probe = f"a{c}b {c} x{c}{c}1\n{c}  \n'{c}s 1{c}2A{c}a a {c}"
            if tiktoken_chunks(probe, pat) != [x.encode("utf-8") for x in compiled.findall(probe)]:
                (bad_new if is_new[cp] else bad_old).append(cp)
        rows.append((name, len(bad_old), len(bad_new), [f"U+{c:04X}" for c in (bad_old or bad_new)[:8]],
                     time.perf_counter() - t0))
        print(rows[-1], flush=True)
    n_new = sum(is_new.values())
    lines = ["# Pre-split agreement: Python `regex` vs tiktoken (Rust)", "",
             f"- command: `PYTHONPATH=$PWD python benchmarks/check_tokenizer_unicode.py {' '.join(sys.argv[1:])}`",
             f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}; tiktoken "
             f"{tiktoken.__version__}, regex {regex.__version__}, Python unicodedata {unicodedata.unidata_version}",
             f"- code points checked: {len(cps):,}, of which {n_new:,} are newer than Python's unicodedata", "",
             "| pattern | mismatches (older characters) | mismatches (newer characters) | first ones | seconds |",
             "|---|---|---|---|---|"]
    lines += [f"| {n} | {a} | {b} | {' '.join(f)} | {s:.0f} |" for n, a, b, f, s in rows]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            f.write(report)
        os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
