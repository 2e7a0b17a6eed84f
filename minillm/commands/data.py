"""`minillm data clean`: the hygiene stage from the command line (see minillm/data/hygiene.py)."""
import json
import os

from minillm.errors import MiniLLMError


def register(sub):
    data = sub.add_parser("data", help="data hygiene: dedup, PII redaction, quality filters, leakage check")
    dsub = data.add_subparsers(dest="data_command", metavar="ACTION")
    p = dsub.add_parser("clean", help="clean a corpus; writes corpus .jsonl files + hygiene.json")
    p.add_argument("--input", required=True, help="a .txt / .jsonl (with \"text\") / folder, or 'world'")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--eval", action="append", default=[], metavar="FILE",
                   help="an evaluation file to check for leakage (repeatable; the world's are always used)")
    p.add_argument("--near-threshold", type=float, default=0.8, help="Jaccard for near-duplicates (default 0.8)")
    p.add_argument("--leak-n", type=int, default=8, help="n of the word n-grams of the leakage check (default 8)")
    p.add_argument("--min-words", type=int, default=5, help="drop documents shorter than this (default 5)")
    p.add_argument("--keep-leaks", action="store_true", help="report leaking documents but keep them")
    p.add_argument("--no-redact", action="store_true", help="do not redact PII (still counted nowhere)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_clean)
    data.set_defaults(func=lambda a: (data.print_help(), 2)[1])


def _atomic_write(path, text):
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def run_clean(input, out, eval_files=(), cfg=None, world_seed=0) -> dict:
    """Clean `input` ('world' or a path) into directory `out`; returns the hygiene report (also hygiene.json).

    Writes out/<name>.jsonl per corpus ({"text": ...} per line; the world gives general.jsonl and
    domain.jsonl, a user path gives corpus.jsonl) and out/hygiene.json. Meant for `minillm pipeline` too.
    """
    from minillm.data import hygiene
    cfg = cfg or hygiene.HygieneConfig()
    if input == "world":
        from minillm.data.world import World
        outputs, report = hygiene.cleaned_world(World(seed=world_seed), cfg)  # cached: training reuses it
        report = dict(report)
        report["source"] = f"world(seed={world_seed})"
    else:
        docs = hygiene.read_documents(input)
        if not docs:
            raise MiniLLMError(f"'{input}' holds no documents; give a non-empty .txt, .jsonl or folder")
        evals = {os.path.splitext(os.path.basename(f))[0]: hygiene.read_documents(f) for f in eval_files}
        kept, report = hygiene.clean(docs, evals, cfg)
        outputs = {"corpus": kept}
        report["source"] = os.path.abspath(input)
    os.makedirs(out, exist_ok=True)
    report["files"] = {}
    for name, docs in outputs.items():
        path = os.path.join(out, f"{name}.jsonl")
        _atomic_write(path, "".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs))
        report["files"][name] = os.path.basename(path)
    _atomic_write(os.path.join(out, "hygiene.json"), json.dumps(report, indent=1, ensure_ascii=False))
    return report


def cmd_clean(args):
    from minillm.data import hygiene
    cfg = hygiene.HygieneConfig(near_threshold=args.near_threshold, leak_n=args.leak_n, min_words=args.min_words,
                                remove_leaks=not args.keep_leaks, redact_pii=not args.no_redact, seed=args.seed)
    if not 0 < args.near_threshold <= 1:
        raise MiniLLMError(f"--near-threshold must be in (0, 1], got {args.near_threshold}")
    report = run_clean(args.input, args.out, args.eval, cfg)
    for line in hygiene.summary_lines(report):
        print(line)
    print(f"wrote {args.out}/hygiene.json")
    return 0
