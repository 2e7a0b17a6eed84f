"""Hygiene speed: the whole clean() on real and synthetic text, and LSH vs all-pairs near-duplicate search.

    PYTHONPATH=$PWD python benchmarks/bench_hygiene.py [--out benchmarks/results/hygiene_cpu.md]

Measures, side by side in one run: clean() on Tiny Shakespeare (paragraphs as documents) and on the world
(general + domain), in documents/s and MB/s; and near-duplicate search on N documents by MinHash + LSH against
the exact all-pairs Jaccard it replaces (same pairs found, ratio of times). Records machine, load and date.
"""
import argparse
import datetime
import os
import platform
import re
import subprocess
import time

import numpy as np


def best_of(fn, n=3):
    times = []
    for _ in range(n):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def uptime():
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "?"


def main():
    from minillm.data import hygiene, minhash
    from minillm.data.world import World
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results/hygiene_cpu.md")
    ap.add_argument("--pairs-n", type=int, default=600, help="documents for the LSH vs all-pairs comparison")
    ap.add_argument("--shakespeare", default="", help="path to tinyshakespeare.txt (default: ../shared/data)")
    args = ap.parse_args()
    load_before = uptime()
    rows = []
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    found = [p for p in (args.shakespeare, os.path.join(root, "..", "shared", "data", "tinyshakespeare.txt"),
                         os.path.join(root, "..", "..", "shared", "data", "tinyshakespeare.txt")) if p and os.path.exists(p)]
    corpora = {}
    if found:
        shakespeare = found[0]
        text = open(shakespeare, encoding="utf-8").read()
        corpora["Tiny Shakespeare (paragraphs)"] = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
    w = World(seed=0)
    corpora["world general + domain train"] = w.general_corpus("train") + w.domain_corpus("train")
    for name, docs in corpora.items():
        mb = sum(len(d.encode()) for d in docs) / 1e6
        t, (kept, rep) = best_of(lambda: hygiene.clean(docs, hygiene.world_eval_sets(w)), 2)
        rows.append((f"clean() on {name}: {len(docs):,} docs, {mb:.2f} MB", f"{t:.2f} s",
                     f"{len(docs) / t:,.0f} docs/s, {mb / t:.2f} MB/s; removed {rep['removed']}"))
    docs = corpora["world general + domain train"][:args.pairs_n]
    t_lsh, pairs = best_of(lambda: minhash.near_duplicates(docs, threshold=0.8), 3)

    def all_pairs():
        sh = [minhash.shingle_hashes(d) for d in docs]
        return [(i, j) for i in range(len(sh)) for j in range(i + 1, len(sh)) if minhash.jaccard(sh[i], sh[j]) >= 0.8]
    t_all, exact = best_of(all_pairs, 1)
    same = {(i, j) for i, j, _ in pairs} == set(exact)
    rows.append((f"near-duplicates among {len(docs)} docs: MinHash+LSH", f"{t_lsh:.2f} s",
                 f"{len(pairs)} pairs; all-pairs exact Jaccard {t_all:.2f} s ({t_all / t_lsh:.0f}x slower), "
                 f"same pairs: {same}"))
    n_big = len(corpora["world general + domain train"])
    rows.append((f"all-pairs at {n_big} docs (extrapolated, O(N^2))", f"{t_all * (n_big / len(docs)) ** 2:.0f} s",
                 "vs MinHash+LSH inside clean() above"))
    lines = ["# Hygiene benchmark (CPU)", "",
             f"- command: `PYTHONPATH=$PWD python benchmarks/bench_hygiene.py --pairs-n {args.pairs_n}`",
             f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs (nproc), "
             f"Python {platform.python_version()}, numpy {np.__version__}",
             f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
             f"- load before: `{load_before}`", f"- load after: `{uptime()}`",
             "- note: a 2-core VM shared by several agents; absolute times are inflated and noisy, the LSH vs "
             "all-pairs ratio is measured side by side.", "",
             "| measure | time | detail |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
