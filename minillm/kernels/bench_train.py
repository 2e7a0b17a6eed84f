"""`minillm bench train`: tokens/s of the same tiny training run under each backend combination.

Every combination (attention backend x optimizer backend) trains its own copy of one Transformer from the same
initial weights on the same batches. The runs are interleaved — a few steps of each combination, round after
round — so machine load hits them all alike, and the ratio to the `torch` combination is what we report.
The data is a deterministic, learnable token stream (a noisy repeating pattern), so losses can be compared too:
the backends compute the same function and their loss curves agree to rounding.
"""
import copy
import time

import torch
import torch.nn.functional as F

from minillm import kernels

COMBOS = [("torch", "torch"), ("reference", "reference"), ("cpp", "cpp"), ("cpp", "torch"), ("torch", "cpp")]


def batches(vocab, B, T, n, seed=0):
    """n batches (B, T+1) of a learnable stream: token t+1 = (token t * 5 + 3) % vocab, 10% random tokens."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        start = torch.randint(0, vocab, (B, 1), generator=g)
        seq = [start]
        for _ in range(T):
            seq.append((seq[-1] * 5 + 3) % vocab)
        x = torch.cat(seq, 1)  # (B, T+1)
        noise = torch.rand(x.shape, generator=g) < 0.1
        out.append(torch.where(noise, torch.randint(0, vocab, x.shape, generator=g), x))
    return out


def make_runs(combos, cfg_kwargs, lr=3e-3, seed=0):
    """{combo: (model, optimizer)} with identical initial weights."""
    from minillm.model import ModelConfig, Transformer
    torch.manual_seed(seed)
    base = Transformer(ModelConfig(**cfg_kwargs))
    runs = {}
    for attn, opt in combos:
        m = copy.deepcopy(base)
        for block in m.h:
            block.attn.backend = attn
        decay = [p for p in m.parameters() if p.dim() >= 2]
        rest = [p for p in m.parameters() if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}]
        runs[(attn, opt)] = (m, kernels.make_adamw(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1,
                                                   backend=opt))
    return runs


def train_step(model, opt, batch):
    x, y = batch[:, :-1], batch[:, 1:]  # (B, T)
    loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()


def run(combos=COMBOS, steps=30, rounds=5, B=8, T=128, cfg_kwargs=None, progress=None):
    """Rows {attention, optimizer, tokens_per_s, speedup_vs_torch, final_loss} for each combination."""
    cfg_kwargs = cfg_kwargs or dict(vocab_size=512, n_layer=4, n_head=4, n_embd=128, block_size=T)
    runs = make_runs(combos, cfg_kwargs)
    data = batches(cfg_kwargs["vocab_size"], B, T, steps)
    per_round = max(1, steps // rounds)
    secs = {c: 0.0 for c in runs}
    losses = {c: [] for c in runs}
    for c, (m, o) in runs.items():  # warm-up step (JIT build, allocator), not timed, same batch for all
        train_step(m, o, data[0])
    for r0 in range(1, steps, per_round):
        for c, (m, o) in runs.items():
            t = time.perf_counter()
            for batch in data[r0:r0 + per_round]:
                losses[c].append(train_step(m, o, batch))
            secs[c] += time.perf_counter() - t
        if progress:
            progress()
    tokens = B * T * (steps - 1)
    base = tokens / secs[("torch", "torch")] if ("torch", "torch") in secs else None
    rows = []
    for (attn, opt), s in secs.items():
        tps = tokens / s
        rows.append(dict(attention=attn, optimizer=opt, tokens_per_s=round(tps),
                         final_loss=round(losses[(attn, opt)][-1], 4),
                         speedup_vs_torch=round(tps / base, 3) if base else None))
    return rows


def main(args):
    from tqdm import tqdm

    from minillm.commands.kernels import load, machine, write_json
    from minillm.errors import MiniLLMError
    if args.steps < 2:
        raise MiniLLMError("--steps must be at least 2")
    if args.threads < 0:
        raise MiniLLMError("--threads must be >= 0 (0 = torch's default)")
    if args.threads:
        torch.set_num_threads(args.threads)
    ok, why = kernels.available("cpp")
    combos = COMBOS if ok else [c for c in COMBOS if "cpp" not in c]
    if not ok:
        print(f"note: cpp backend unavailable ({why}); timing torch and reference only")
    load_before = load()
    bar = tqdm(total=5, desc="bench train", unit="round")
    rows = run(combos, steps=args.steps, progress=lambda: bar.update(1))
    bar.close()
    print(f"{'attention':>10} {'optimizer':>10} {'tokens/s':>10} {'vs torch':>9} {'final loss':>11}")
    for r in rows:
        print(f"{r['attention']:>10} {r['optimizer']:>10} {r['tokens_per_s']:>10} {r['speedup_vs_torch']:>9} "
              f"{r['final_loss']:>11}")
    meta = dict(machine=machine(), threads=torch.get_num_threads(), load_before=load_before, load_after=load(),
                model="4 layers, 4 heads, C=128, T=128, vocab 512, batch 8", steps=args.steps)
    print(f"machine: {meta['machine']}, {meta['threads']} threads; load before {load_before}, after {meta['load_after']}")
    if args.json:
        write_json(args.json, [dict(r, **meta) for r in rows])
        print(f"wrote {args.json}")
    return 0
