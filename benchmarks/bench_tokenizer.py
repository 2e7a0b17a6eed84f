"""Tokenizer speed and compression on Tiny Shakespeare: train seconds, encode MB/s (both paths), bytes per token.

    PYTHONPATH=$PWD python benchmarks/bench_tokenizer.py [--input FILE] [--vocab-size 4096] [--out FILE.md]

Targets (2-core CPU): vocab 4096 trained in < 15 s; tiktoken-path encoding > 5 MB/s. Side by side in the
same run: the naive trainer (recount every pair after each merge, tests/bpe_reference.py) timed on a few
merges and extrapolated, so the speed-up of the incremental trainer is a ratio measured under the same load.
Times are the best of `--repeat` runs (the machine may be shared; `uptime` load is recorded).
"""
import argparse
import datetime
import os
import platform
import shlex
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from minillm.bpe import PATTERNS  # noqa: E402
from minillm.tokenizer import BPETokenizer, CharTokenizer, read_text  # noqa: E402


def best_of(repeat, fn):
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def machine():
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or "unknown"
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    return model, os.cpu_count(), load


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = os.path.join(ROOT, "..", "shared", "data", "tinyshakespeare.txt")
    if not os.path.isfile(default):
        default = "/work/shared/data/tinyshakespeare.txt"
    ap.add_argument("--input", default=default)
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--pattern", default="gpt4", choices=sorted(PATTERNS))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--naive-merges", type=int, default=10, help="merges timed for the naive trainer (0: skip)")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "tokenizer_cpu.md"))
    ap.add_argument("--note", default="", help="a line of context for the results file (e.g. machine sharing)")
    args = ap.parse_args()

    text = read_text(args.input)
    n_bytes = len(text.encode("utf-8"))
    model, ncpu, load_before = machine()

    train_s, tok = best_of(args.repeat, lambda: BPETokenizer.train([text], args.vocab_size, pattern=args.pattern))
    fast_s, ids = best_of(args.repeat, lambda: tok.encode_ordinary(text))
    docs = [text[i:i + 10_000] for i in range(0, len(text), 10_000)]
    batch_s, _ = best_of(args.repeat, lambda: tok.encode_batch(docs))
    py_s, py_ids = best_of(1, lambda: tok.encode_python(text))
    assert py_ids == ids and tok.decode(ids) == text, "the two encoders disagree: a bug"
    rows = [("train vocab %d (%d merges)" % (tok.vocab_size, len(tok.merges)), f"{train_s:.2f} s", "< 15 s"),
            ("encode, tiktoken path", f"{n_bytes / fast_s / 1e6:.1f} MB/s", "> 5 MB/s"),
            (f"encode_batch, tiktoken path ({len(docs)} docs of 10 kB, threads)",
             f"{n_bytes / batch_s / 1e6:.1f} MB/s", ""),
            ("encode, pure-Python path", f"{n_bytes / py_s / 1e6:.2f} MB/s", "(readable reference)"),
            ("bytes per token", f"{n_bytes / len(ids):.3f}", ""),
            ("tokens", f"{len(ids):,}", "")]
    if args.naive_merges:
        from bpe_reference import naive_train
        naive_s, _ = best_of(1, lambda: naive_train([text], args.naive_merges, PATTERNS[args.pattern]))
        per_merge = naive_s / args.naive_merges
        rows.append((f"naive recount trainer, {args.naive_merges} merges", f"{naive_s:.2f} s "
                     f"({per_merge:.3f} s/merge, ~{per_merge * len(tok.merges) / 60:.0f} min for "
                     f"{len(tok.merges)} merges: ~{per_merge * len(tok.merges) / train_s:.0f}x slower)", ""))

    sweep = []
    for v in (256 + 7, 512, 1024, 2048, 4096, 8192):
        t = BPETokenizer.train([text], v, pattern=args.pattern) if v != args.vocab_size else tok
        sweep.append((v, n_bytes / len(t.encode_ordinary(text))))
    char = CharTokenizer.train([text])
    sweep.insert(0, (f"char ({char.vocab_size})", n_bytes / len(char.encode_ordinary(text))))
    _, _, load_after = machine()

    cmd = "PYTHONPATH=$PWD python benchmarks/bench_tokenizer.py " + shlex.join(sys.argv[1:])
    lines = [
        "# Tokenizer benchmark (CPU)", "",
        f"- command: `{cmd.strip()}`",
        f"- input: `{os.path.basename(args.input)}`, {n_bytes:,} bytes; pattern `{args.pattern}`",
        f"- machine: {model}, {ncpu} CPUs (nproc), Python {platform.python_version()}",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"- load before: `{load_before}`", f"- load after: `{load_after}`",
        f"- times: best of {args.repeat} runs (pure-Python encode and naive trainer: 1 run)"]
    lines += [f"- note: {args.note}"] if args.note else []
    lines += ["",
        "| measure | result | target |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    lines += ["", "Compression vs vocabulary size (same text; bytes per token, higher is better):", "",
              "| vocab | bytes/token |", "|---|---|"]
    lines += [f"| {v} | {b:.3f} |" for v, b in sweep]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            f.write(report)
        os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
