"""Post-training commands: finetune, sft, reward, ppo, dpo, the whole `pipeline`, and `chat`.

    minillm pipeline --preset tiny --out runs/journey          # tokenizer -> ... -> ppo and dpo, with report.md
    minillm finetune --parent runs/journey/pretrain --out runs/ft
    minillm sft      --parent runs/ft --out runs/sft [--data my_instructions.jsonl]
    minillm reward   --parent runs/sft --out runs/rm [--data my_pairs.jsonl]
    minillm ppo      --parent runs/sft --reward runs/rm --out runs/ppo
    minillm dpo      --parent runs/sft --out runs/dpo [--data my_pairs.jsonl]
    minillm chat     --run runs/ppo
"""
import json

STAGE_HELP = {
    "finetune": ("continue pretraining a base run on domain text", ".txt / folder / .jsonl with 'text'"),
    "sft": ("instruction-tune a base or finetuned run (loss on answers only)",
            ".jsonl with 'messages' or 'prompt'/'response'"),
    "reward": ("train a reward model (scalar head, Bradley-Terry) from an SFT run",
               ".jsonl with 'prompt'/'chosen'/'rejected'"),
    "ppo": ("RLHF with PPO: an SFT policy against a reward model", ".jsonl of 'prompt' (or 'messages')"),
    "dpo": ("Direct Preference Optimization of an SFT run", ".jsonl with 'prompt'/'chosen'/'rejected'"),
}


def _common(p, data_help):
    p.add_argument("--parent", required=True, help="the parent run directory")
    p.add_argument("--out", required=True, help="run directory to write")
    p.add_argument("--preset", default="tiny", help="smoke | tiny | small: training defaults (default tiny)")
    p.add_argument("--data", default="", help=f"your own data instead of the world's: {data_help}")
    p.add_argument("--config", help="a .toml or .json config file")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override; repeatable")
    p.add_argument("--resume", action="store_true", help="continue the checkpoint in --out")
    p.add_argument("--json", action="store_true", help="print the evaluation as one JSON object")


def register(sub):
    for name, (help_text, data_help) in STAGE_HELP.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        _common(p, data_help)
        if name == "ppo":
            p.add_argument("--reward", default="", help="the reward-model run directory (minillm reward)")
        p.set_defaults(func=run_stage, stage=name)

    p = sub.add_parser("pipeline", help="the whole journey: tokenizer -> pretrain -> finetune -> sft -> reward -> "
                                        "ppo and dpo -> report.md", description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="tiny", help="smoke | tiny | small (default tiny)")
    p.add_argument("--out", required=True, help="directory for every stage's run, report.md and summary.json")
    p.add_argument("--set", action="append", default=[], metavar="[STAGE:]SECTION.KEY=VALUE",
                   help="override for every stage, or one stage with a prefix (sft:train.max_steps=100)")
    p.add_argument("--until", help="stop after this stage")
    p.set_defaults(func=run_pipeline)

    p = sub.add_parser("chat", help="talk to a chat model (sft, ppo or dpo run) in the terminal")
    p.add_argument("--run", required=True, help="a chat-stage run directory")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--system", default="", help="an optional system message")
    p.add_argument("--message", action="append", default=[], help="ask these and exit (repeatable); "
                                                                 "without it, read lines from stdin")
    p.set_defaults(func=run_chat)


def _print_eval(result, as_json):
    if as_json:
        print(json.dumps(result))
        return
    for k, v in result.items():
        if isinstance(v, (list, dict)):
            continue
        print(f"{k:>28}: {v:.4f}" if isinstance(v, float) else f"{k:>28}: {v}")


def run_stage(args):
    from minillm.stages import dpo, finetune, ppo, reward, sft
    common = dict(preset=args.preset, data=args.data, config_file=args.config, overrides=args.set)
    if args.stage == "ppo":
        result = ppo.run_ppo(args.parent, args.out, reward=args.reward, **common)
    else:
        runner = {"finetune": finetune.run_finetune, "sft": sft.run_sft, "reward": reward.run_reward,
                  "dpo": dpo.run_dpo}[args.stage]
        result = runner(args.parent, args.out, resume=args.resume, **common)
    _print_eval(result, args.json)
    return 0


def run_pipeline(args):
    from minillm.pipeline import run_pipeline as run
    summary = run(args.out, args.preset, args.set, until=args.until)
    print(f"report: {args.out}/report.md   summary: {args.out}/summary.json")
    for name, m in summary.items():
        if name.startswith("_"):
            continue
        keys = [k for k in ("oracle_score", "instruction_accuracy", "pairwise_accuracy", "domain_perplexity",
                            "kl_to_reference") if k in m]
        print(f"  {name:>9}: " + ", ".join(f"{k}={m[k]:.3g}" for k in keys))
    return 0


def run_chat(args):
    import sys

    import torch

    from minillm.checkpoint import load_model
    from minillm.errors import MiniLLMError
    from minillm.stages import chatdata
    from minillm.stages.lineage import CHAT_STAGES
    model, tok, manifest = load_model(args.run)
    if manifest.get("stage") not in CHAT_STAGES:
        raise MiniLLMError(f"{args.run} is a {manifest.get('stage')!r} run; chat needs an sft, ppo or dpo run")
    messages = [{"role": "system", "content": args.system}] if args.system else []
    interactive = not args.message
    lines = args.message or sys.stdin
    if interactive and sys.stdin.isatty():
        print(f"chatting with {args.run} ({manifest.get('stage')}); an empty line or Ctrl-D ends", flush=True)
    g = torch.Generator().manual_seed(0)
    for line in lines:
        text = line.strip()
        if not text:
            break
        messages.append({"role": "user", "content": text})
        out = chatdata.generate_chat(model, tok, [messages], max_new_tokens=args.max_new_tokens,
                                     temperature=args.temperature, generator=g)[0]
        messages.append({"role": "assistant", "content": out["text"]})
        print(f"assistant: {out['text']}", flush=True)
    return 0
