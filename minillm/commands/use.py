"""Use a trained run: `minillm eval`, `minillm generate`, `minillm fill-mask`.

    minillm eval --run runs/base --json
    minillm generate --run runs/base --prompt "The capital of" --max-new-tokens 20
    minillm fill-mask --run runs/encoder --text "The capital of <|mask|> is Rome."
"""
import json


def register(sub):
    p = sub.add_parser("eval", help="evaluate a run directory (metrics by stage)")
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run_eval)

    p = sub.add_parser("generate", help="complete a prompt with a causal model")
    p.add_argument("--run", required=True)
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=50)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run_generate)

    p = sub.add_parser("fill-mask", help="fill <|mask|> tokens with a masked-LM encoder")
    p.add_argument("--run", required=True)
    p.add_argument("--text", required=True, help="text with one or more <|mask|> tokens")
    p.set_defaults(func=run_fill_mask)


def run_eval(args):
    from minillm.evals.run import evaluate_run
    result = evaluate_run(args.run)
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>20}: {v:.4f}" if isinstance(v, float) else f"{k:>20}: {v}")
    return 0


def _load(run, want_causal):
    from minillm.checkpoint import load_model
    from minillm.errors import MiniLLMError
    model, tok, _ = load_model(run)
    if tok is None:
        raise MiniLLMError(f"{run} has no tokenizer.json")
    if model.cfg.causal != want_causal:
        kind = "a causal (clm)" if want_causal else "a masked-LM (mlm)"
        raise MiniLLMError(f"{run} is not {kind} model; use {'fill-mask' if want_causal else 'generate'} instead")
    return model, tok


def run_generate(args):
    import torch
    from minillm.errors import MiniLLMError
    model, tok = _load(args.run, want_causal=True)
    ids = tok.encode(args.prompt)
    if not ids:
        raise MiniLLMError("the prompt is empty")
    if len(ids) > model.cfg.block_size:
        raise MiniLLMError(f"the prompt has {len(ids)} tokens, above the model's context {model.cfg.block_size}")
    out = model.generate(torch.tensor([ids]), args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                         top_p=args.top_p, stop_ids=[tok.eot_id], generator=torch.Generator().manual_seed(args.seed))
    new = [t for t in out[0, len(ids):].tolist() if t != tok.eot_id]
    print(args.prompt + tok.decode(new))
    return 0


def run_fill_mask(args):
    import torch
    from minillm.errors import MiniLLMError
    model, tok = _load(args.run, want_causal=False)
    ids = tok.encode(args.text, allowed_special={"<|mask|>"})
    positions = [i for i, t in enumerate(ids) if t == tok.mask_id]
    if not positions:
        raise MiniLLMError("the text has no <|mask|> token to fill")
    if len(ids) > model.cfg.block_size:
        raise MiniLLMError(f"the text has {len(ids)} tokens, above the model's context {model.cfg.block_size}")
    from minillm.evals.lm import fill_masks
    pred = fill_masks(model, tok, [ids], [positions])[0]
    filled = list(ids)
    for p, t in zip(positions, pred):
        filled[p] = t
    print(tok.decode(filled))
    return 0
