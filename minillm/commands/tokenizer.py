"""`minillm tokenizer train | encode | decode | stats`.

    minillm tokenizer train  --input FILE [FILE ...] --vocab-size N --out DIR
                             [--pattern gpt4|gpt2|REGEX] [--type bpe|char] [--quiet]
    minillm tokenizer encode --tokenizer PATH --text TEXT [--allow-special]   # prints the ids as a JSON list
    minillm tokenizer decode --tokenizer PATH --ids '[72, 105]'                # prints the text
    minillm tokenizer stats  --tokenizer PATH --input FILE [FILE ...]           # bytes per token, tokens, time

PATH is a trained tokenizer (a dir with tokenizer.json), a GPT-2 folder (encoder.json + vocab.bpe) or a
.tiktoken file. Input files with invalid UTF-8 are read with U+FFFD for each bad byte and a warning line.
"""
import json
import time

from minillm.errors import MiniLLMError


def _train(args):
    from minillm.tokenizer import BPETokenizer, CharTokenizer, read_text
    texts = [read_text(p) for p in args.input]
    t0 = time.perf_counter()
    if args.type == "char":
        tok = CharTokenizer.train(texts)
    else:
        if args.vocab_size is None:
            raise MiniLLMError("--vocab-size is required for a BPE tokenizer (e.g. --vocab-size 4096)")
        tok = BPETokenizer.train(texts, args.vocab_size, pattern=args.pattern, progress=not args.quiet)
    seconds = time.perf_counter() - t0
    path = tok.save(args.out)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    n_tokens = sum(len(ids) for ids in tok.encode_batch(texts, allowed_special="all"))
    learned = f", {len(tok.merges)} merges" if getattr(tok, "merges", None) is not None else ""
    print(f"trained {args.type} tokenizer: vocab {tok.vocab_size}{learned} in {seconds:.2f} s; "
          f"{n_bytes / max(n_tokens, 1):.2f} bytes/token on the training text; wrote {path}")
    if args.type == "bpe" and tok.vocab_size < args.vocab_size:
        print(f"note: the text has no more pairs to merge, so the vocabulary is {tok.vocab_size}, "
              f"not {args.vocab_size}")
    return 0


def _encode(args):
    from minillm.tokenizer import load_tokenizer, read_text
    tok = load_tokenizer(args.tokenizer)
    text = args.text if args.text is not None else read_text(args.input)
    print(json.dumps(tok.encode(text, allowed_special="all" if args.allow_special else "none")))
    return 0


def _parse_ids(s):
    s = s.strip()
    try:
        ids = json.loads(s) if s.startswith("[") else [int(x) for x in s.replace(",", " ").split()]
    except ValueError:
        raise MiniLLMError(f"--ids must be a JSON list of integers like '[72, 105]', got {s[:40]!r}")
    if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
        raise MiniLLMError(f"--ids must be a JSON list of integers like '[72, 105]', got {s[:40]!r}")
    return ids


def _decode(args):
    from minillm.tokenizer import load_tokenizer
    tok = load_tokenizer(args.tokenizer)
    print(tok.decode(_parse_ids(args.ids)))
    return 0


def _stats(args):
    from minillm.tokenizer import load_tokenizer, read_text
    tok = load_tokenizer(args.tokenizer)
    texts = [read_text(p) for p in args.input]
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    t0 = time.perf_counter()
    n_tokens = sum(len(tok.encode_ordinary(t)) for t in texts)
    seconds = time.perf_counter() - t0
    print(json.dumps({"tokenizer": args.tokenizer, "vocab_size": tok.vocab_size, "bytes": n_bytes,
                      "tokens": n_tokens, "bytes_per_token": round(n_bytes / max(n_tokens, 1), 4),
                      "seconds": round(seconds, 4), "mb_per_s": round(n_bytes / 1e6 / max(seconds, 1e-9), 2)}))
    return 0


def register(sub):
    p = sub.add_parser("tokenizer", help="train, use and measure tokenizers")
    tsub = p.add_subparsers(dest="tokenizer_command", metavar="ACTION", required=True)

    t = tsub.add_parser("train", help="train a byte-level BPE (or character) tokenizer on text files")
    t.add_argument("--input", nargs="+", required=True, metavar="FILE", help="UTF-8 text file(s)")
    t.add_argument("--vocab-size", type=int, help="total vocabulary incl. 256 bytes and the special tokens")
    t.add_argument("--out", required=True, metavar="DIR", help="writes DIR/tokenizer.json")
    t.add_argument("--pattern", default="gpt4", help="pre-split regex: gpt4 (default), gpt2, or a regex")
    t.add_argument("--type", choices=["bpe", "char"], default="bpe")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=_train)

    e = tsub.add_parser("encode", help="print the ids of a text as a JSON list")
    e.add_argument("--tokenizer", required=True, metavar="PATH",
                   help="tokenizer dir, GPT-2 folder (encoder.json + vocab.bpe), or .tiktoken file")
    src = e.add_mutually_exclusive_group(required=True)
    src.add_argument("--text")
    src.add_argument("--input", metavar="FILE")
    e.add_argument("--allow-special", action="store_true", help="encode special-token text as special tokens")
    e.set_defaults(func=_encode)

    d = tsub.add_parser("decode", help="print the text of a list of ids")
    d.add_argument("--tokenizer", required=True, metavar="PATH")
    d.add_argument("--ids", required=True, help="a JSON list like '[72, 105]' (or space-separated ids)")
    d.set_defaults(func=_decode)

    s = tsub.add_parser("stats", help="bytes per token, tokens and encode time on text files")
    s.add_argument("--tokenizer", required=True, metavar="PATH")
    s.add_argument("--input", nargs="+", required=True, metavar="FILE")
    s.set_defaults(func=_stats)
