"""`minillm pretrain`: train a tokenizer (unless given) and a base model (clm) or an encoder (mlm).

    minillm pretrain --preset tiny --objective clm --out runs/base
    minillm pretrain --preset smoke --data mytext.txt --tokenizer char --out runs/char --max-steps 100
    minillm pretrain --config benchmarks/shakespeare_char.toml --out runs/shakespeare --set train.lr=2e-3
"""
import os


def register(sub):
    p = sub.add_parser("pretrain", help="pretrain a model: next-token (clm) or masked-LM (mlm)",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="tiny", help="smoke | tiny | small (default tiny)")
    p.add_argument("--objective", choices=["clm", "mlm"], help="next-token (clm, default) or masked-LM (mlm)")
    p.add_argument("--data", help="'world' (default; after hygiene), 'world-raw' (planted duplicates, PII and "
                                  "leaks kept) or a .txt / folder of .txt / .jsonl with a 'text' field")
    p.add_argument("--tokenizer", help="a tokenizer directory, or 'char'; default: train BPE on the data")
    p.add_argument("--out", required=True, help="run directory to write")
    p.add_argument("--max-steps", type=int, help="optimizer steps (train.max_steps)")
    p.add_argument("--resume", action="store_true", help="continue the checkpoint in --out")
    p.add_argument("--seed", type=int, help="random seed (train.seed)")
    p.add_argument("--attention", help="attention kernel backend (model.attention): reference, torch, cpp, cuda, auto")
    p.add_argument("--softmax", help="compute attention unfused with this softmax backend (model.softmax): "
                   "reference, torch, cpp, cuda, auto; default none = the fused attention kernel")
    p.add_argument("--optimizer", help="AdamW kernel backend (train.optimizer): reference, torch, cpp, cuda, auto")
    p.add_argument("--config", help="a .toml or .json config file (layered over the preset)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override any config field; repeatable")
    p.add_argument("--samples", type=int, default=3, help="completions to print at the end (clm)")
    p.add_argument("--allow-leakage", action="store_true",
                   help="train even if the data contains eval items (data.allow_leakage; recorded in the manifest)")
    p.set_defaults(func=run)


def flag_overrides(args):
    flags = {"objective": args.objective, "data.source": args.data, "data.tokenizer": args.tokenizer,
             "train.max_steps": args.max_steps, "train.seed": args.seed, "model.attention": args.attention,
             "model.softmax": args.softmax, "train.optimizer": args.optimizer,
             "data.allow_leakage": "true" if getattr(args, "allow_leakage", False) else None}
    return [f"{k}={v}" for k, v in flags.items() if v is not None]


def barrier():
    import torch.distributed as dist
    dist.barrier()


def run(args):
    import torch

    from minillm.config import load_config
    from minillm.stages.pretrain import prepare
    from minillm.model import Transformer
    from minillm.train import ddp_setup, train

    cfg = load_config(args.preset, args.config, list(args.set) + flag_overrides(args))
    rank, world = ddp_setup()  # under torchrun: rank 0 writes the tokenizer and shards, the others then read them
    if rank != 0:
        barrier()
    stage, tok, fields = prepare(cfg, args.out, resume=args.resume or rank != 0,
                                 progress=rank == 0 and cfg.train.progress)
    if rank == 0 and world > 1:
        barrier()
    torch.manual_seed(cfg.train.seed)
    model = Transformer(cfg.model)
    if rank == 0:
        print(f"pretrain ({cfg.objective}) {model.num_params() / 1e6:.2f}M parameters, vocab {tok.vocab_size}, "
              f"context {cfg.model.block_size} -> {args.out}")
    metrics = train(model, stage, cfg.train, args.out, config=cfg.to_dict(), manifest=fields, resume=args.resume)
    if rank != 0:
        return 0
    from minillm.checkpoint import atomic_write_json
    atomic_write_json(os.path.join(args.out, "eval.json"), metrics)
    print("final: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                for k, v in metrics.items()))
    if cfg.objective == "clm" and args.samples:
        prompts = ([p["prompt"] for p in stage.world.fact_prompts("test")[:args.samples]] if stage.world
                   else ["\n"] * args.samples)
        for i, prompt in enumerate(prompts):
            idx = torch.tensor([tok.encode(" " + prompt if stage.world else prompt)])  # running text, see evals/lm
            out = model.cpu().generate(idx, 40, temperature=0.8, top_k=50, stop_ids=[tok.eot_id],
                                       generator=torch.Generator().manual_seed(i))
            print(repr(prompt + tok.decode([t for t in out[0, idx.size(1):].tolist() if t != tok.eot_id])))
    return 0
