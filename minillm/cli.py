"""The `minillm` command (also `python -m minillm`).

Each area of the package contributes its sub-commands through a module in `minillm/commands/`
with one function, `register(subparsers)`, which adds its parsers and sets `func` on them.
A user mistake raises `MiniLLMError`; here it becomes one line on stderr and exit code 2.
"""
import argparse
import importlib
import os
import sys

from minillm.errors import MiniLLMError

# Order is the order of `minillm --help`: the journey from bytes to release.
COMMAND_MODULES = [
    "minillm.commands.tokenizer",   # minillm tokenizer train|encode|decode|stats
    "minillm.commands.data",        # minillm data clean
    "minillm.commands.pretrain",    # minillm pretrain
    "minillm.commands.posttrain",   # minillm finetune | sft | reward | ppo | dpo | pipeline | chat
    "minillm.commands.use",         # minillm eval | generate | fill-mask | chat
    "minillm.commands.kernels",     # minillm kernels info | bench kernels | bench train
    "minillm.commands.registry",    # minillm registry | reproduce | release | export
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="minillm", description="Every stage of LLM training, from raw bytes to RLHF, written to be read.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


INVOCATION = None  # {"argv", "cwd"} of the running command; manifests record it (minillm reproduce replays it)


def main(argv=None) -> int:
    global INVOCATION
    INVOCATION = {"argv": list(sys.argv[1:] if argv is None else argv), "cwd": os.getcwd()}
    parser = build_parser()
    args = parser.parse_args(argv)  # argparse itself exits 2 with one usage line on bad flags
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except MiniLLMError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
