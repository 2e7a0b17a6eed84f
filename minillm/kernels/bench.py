"""Benchmarking the kernel backends side by side: `minillm bench kernels` and lesson 12 use this.

On a shared or loaded machine absolute times drift, so every measurement here is *interleaved*: for one op and
shape, each repetition times every backend once, in turn, and we report medians. Ratios (speedup vs torch,
vs reference) are then fair even when the machine is busy; absolute milliseconds are not.

Per row: op, backend, shape, median_ms, speedup_vs_torch, speedup_vs_reference, max_abs_err (vs reference),
and a throughput (GB/s for memory-bound ops, GFLOP/s for attention). Softmax is also timed with its output
preallocated, because a fresh large allocation costs page faults that can dominate a CPU softmax.
Attention rows carry `saved_bytes`: what the forward keeps for the backward (T x T for the naive version,
O(T) for flash-style kernels), measured with autograd's saved-tensor hooks.
"""
import statistics
import time

import torch

from minillm import kernels
from minillm.kernels import reference


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def interleaved(fns, repeat, device="cpu", warmup=1, warm=()):
    """{name: median ms} timing each fn once per round, round after round. A fn whose name is in `warm` runs
    once more, untimed, right before its timed call: it finds the cache as its own previous call left it."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    _sync(device)
    times = {k: [] for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            if k in warm:
                fn()
                _sync(device)
            t = time.perf_counter()
            fn()
            _sync(device)
            times[k].append((time.perf_counter() - t) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def saved_bytes(fn):
    """Bytes of tensors autograd saves for the backward while running fn() (inputs themselves included)."""
    seen, total = set(), [0]

    def pack(t):
        key = (t.data_ptr(), t.numel())
        if key not in seen:
            seen.add(key)
            total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total[0]


def _rows(op, shape, med, errs, extra):
    rows = []
    for b, ms in med.items():
        backend, _, variant = b.partition(":")
        suffix = ":" + variant if variant else ""
        base_t, base_r = med.get("torch" + suffix), med.get("reference" + suffix) or med.get("reference")
        row = dict(op=op, backend=backend, variant=variant or "alloc", shape=shape, median_ms=round(ms, 4),
                   speedup_vs_torch=round(base_t / ms, 3) if base_t else None,
                   speedup_vs_reference=round(base_r / ms, 3) if base_r else None,
                   max_abs_err=errs.get(backend))
        for k, fn in extra.items():
            row[k] = fn(backend, ms)
        rows.append(row)
    return rows


def bench_softmax(shape, causal, backends, device, repeat):
    x = torch.randn(shape, device=device)
    scale = 0.125
    ref = reference.softmax(x.double(), scale, causal)
    errs = {b: float((kernels.softmax(x, scale, causal, backend=b).double() - ref).abs().max()) for b in backends}
    y = torch.empty_like(x)
    fns = {b: (lambda b=b: kernels.softmax(x, scale, causal, backend=b)) for b in backends}
    if "cpp" in backends or "cuda" in backends:
        ours = "cuda" if device == "cuda" else "cpp"
        fns[ours + ":prealloc"] = lambda: torch.ops.minillm.softmax_fwd_out(x, scale, causal, y)
    if "torch" in backends and not causal:
        fns["torch:prealloc"] = lambda: torch.ops.aten._softmax.out(x * scale, -1, False, out=y)
    nbytes = 2 * x.numel() * x.element_size()
    gbs = {"GB_per_s": lambda b, ms: round(nbytes / ms / 1e6, 2)}
    name = "x".join(map(str, shape)) + (" causal" if causal else "")
    rows = _rows("softmax_fwd", name, interleaved(fns, repeat, device), errs, gbs)
    # forward + backward
    xg = x.clone().requires_grad_()
    dy = torch.randn_like(x)

    def fb(b):
        xg.grad = None
        kernels.softmax(xg, scale, causal, backend=b).backward(dy)
        return xg.grad

    gref = torch.func.vjp(lambda t: reference.softmax(t, scale, causal), x.double())[1](dy.double())[0]
    errs = {b: float((fb(b).double() - gref).abs().max()) for b in backends}
    gbs = {"GB_per_s": lambda b, ms: round(2.5 * nbytes / ms / 1e6, 2)}
    rows += _rows("softmax_fwdbwd", name, interleaved({b: (lambda b=b: fb(b)) for b in backends}, repeat, device),
                  errs, gbs)
    return rows


def bench_attention(B, H, T, D, backends, device, repeat, dtype=torch.float32):
    q, k, v = (torch.randn(B, H, T, D, device=device, dtype=dtype) for _ in range(3))
    do = torch.randn_like(q)
    ref = reference.attention(q.double(), k.double(), v.double(), True)
    name = f"B{B} H{H} T{T} D{D} causal"
    flops = 4 * B * H * T * T * D * 0.5  # causal: half the score matrix
    errs = {b: float((kernels.attention(q, k, v, True, backend=b).double() - ref).abs().max()) for b in backends}
    fl = {"GFLOP_per_s": lambda b, ms: round(flops / ms / 1e6, 1)}

    def fwd(b):
        with torch.no_grad():
            return kernels.attention(q, k, v, True, backend=b)

    rows = _rows("attention_fwd", name, interleaved({b: (lambda b=b: fwd(b)) for b in backends}, repeat, device),
                 errs, fl)
    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))

    def fb(b):
        qg.grad = kg.grad = vg.grad = None
        kernels.attention(qg, kg, vg, True, backend=b).backward(do)

    saved = {b: saved_bytes(lambda b=b: kernels.attention(qg, kg, vg, True, backend=b)) for b in backends}
    fl = {"GFLOP_per_s": lambda b, ms: round(3.5 * flops / ms / 1e6, 1),  # bwd ~ 2.5x the fwd FLOPs
          "saved_bytes": lambda b, ms: saved[b]}
    rows += _rows("attention_fwdbwd", name,
                  interleaved({b: (lambda b=b: fb(b)) for b in backends}, repeat, device), errs, fl)
    return rows


def gpt_param_shapes(d, layers, vocab, block):
    """Parameter shapes of a GPT-2-style model (LayerNorm and biases): 12 tensors per layer + 4."""
    per = [(d,), (d,), (3 * d, d), (3 * d,), (d, d), (d,), (d,), (d,), (4 * d, d), (4 * d,), (d, 4 * d), (d,)]
    return [(vocab, d), (block, d)] + per * layers + [(d,), (d,)]


def memory_roof(n, device):
    """A callable that moves AdamW's 28 bytes per parameter for n parameters and does no math: read p, g, m, v
    and write p, m, v in one pass (torch.ops.minillm.stream_roof_: p += g, m += g, v += g, threads split as in
    adamw_). Timed next to the optimizers, its time is the roof any AdamW can reach here. Without our C++ ops
    (or on CUDA) it is estimated from an in-place torch add, which moves 12 bytes per element (no output
    buffer, so no write-allocate traffic to miscount), scaled to 28."""
    p, g, m, v = (torch.rand(n, device=device) for _ in range(4))
    if device == "cpu" and kernels.available("cpp")[0]:
        return lambda: torch.ops.minillm.stream_roof_(p, g, m, v)

    def scaled():  # run it 28/12 times over: whole passes plus a slice
        for _ in range(2):
            p.add_(g)
        k = n * 4 // 12
        p[:k].add_(g[:k])
    return scaled


def bench_adamw(shapes, label, backends, device, repeat, roof=False):
    g = torch.Generator(device="cpu").manual_seed(0)
    base = [torch.randn(s, generator=g).to(device) for s in shapes]
    grads = [torch.randn(s, generator=g).to(device) for s in shapes]
    n = sum(p.numel() for p in base)
    opts, params = {}, {}
    for b in backends:
        ps = [p.clone() for p in base]
        for p, gr in zip(ps, grads):
            p.grad = gr.clone()
        params[b] = ps
        opts[b] = kernels.make_adamw(ps, lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, backend=b)
        opts[b].step()  # first step allocates the state: not what we time
    ref = params.get("reference")
    errs = {b: (max(float((p - r).abs().max()) for p, r in zip(params[b], ref)) if ref else None) for b in backends}
    shape = f"{label}: {n / 1e6:.2f}M params, {len(shapes)} tensors"
    # Two cache states, both timed in the same interleaved rounds. cold: every backend's step finds its data
    # evicted by the others' (the state of a model much bigger than the caches). warm: each step runs right after
    # an untimed step of its own, as in a training loop where a small model's ~28 bytes/param stay in the L3.
    fns = {f"{b}:{v}": opts[b].step for b in backends for v in ("cold", "warm")}
    if roof:
        roof_fn = memory_roof(n, device)
        fns.update({"roof:cold": roof_fn, "roof:warm": roof_fn})
    med = interleaved(fns, repeat, device, warm=[k for k in fns if k.endswith(":warm")])
    nbytes, rows = 28 * n, []  # read p, g, m, v; write p, m, v
    for v in ("cold", "warm"):
        roof_ms = med.pop("roof:" + v, None)
        extra = {"GB_per_s": lambda b, ms: round(nbytes / ms / 1e6, 1)}
        if roof_ms:  # fraction_of_roof: the roof's time over this step's time (1.0 = at the roof)
            extra.update(roof_ms=lambda b, ms, r=roof_ms: round(r, 3),
                         fraction_of_roof=lambda b, ms, r=roof_ms: round(r / ms, 3))
        rows += _rows("adamw", shape, {k: t for k, t in med.items() if k.endswith(":" + v)}, errs, extra)
    return rows


def run(device="cpu", ops=("softmax", "attention", "adamw"), repeat=15, quick=False, progress=None):
    """All benchmark rows for `device` (a list of dicts). `quick` uses the small shapes only (lesson, tests)."""
    ours = "cuda" if device == "cuda" else "cpp"
    ok, why = kernels.available(ours)
    backends = ["reference", "torch"] + ([ours] if ok else [])
    jobs = []
    if "softmax" in ops:
        shapes = [((4096, 256), False)] if quick else [((4096, 256), False), ((32, 256, 256), True)]
        jobs += [lambda s=s, c=c: bench_softmax(s, c, backends, device, repeat) for s, c in shapes]
    if "attention" in ops:
        shapes = [(4, 4, 128, 32)] if quick else [(8, 4, 256, 32), (4, 8, 512, 64)]
        jobs += [lambda s=s: bench_attention(*s, backends, device, repeat) for s in shapes]
    if "adamw" in ops:
        tiny = gpt_param_shapes(128, 4, 1024, 256)  # 0.96M params, 52 tensors
        big = gpt_param_shapes(384, 6, 256, 128)    # 10.8M params, 76 tensors
        roof = not quick
        jobs.append(lambda: bench_adamw(tiny, "tiny GPT", backends, device, repeat, roof))
        if not quick:
            jobs.append(lambda: bench_adamw(big, "10.8M GPT", backends, device, repeat, roof))
    rows = []
    for job in jobs:
        rows += job()
        if progress:
            progress()
    return rows, (None if ok else why), len(jobs)


def table(rows):
    """A markdown table of the rows."""
    cols = ["op", "shape", "backend", "variant", "median_ms", "speedup_vs_torch", "speedup_vs_reference",
            "max_abs_err", "GB_per_s", "GFLOP_per_s", "saved_bytes", "fraction_of_roof"]
    cols = [c for c in cols if any(c in r for r in rows)]
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c)
            cells.append("" if v is None else (f"{v:.1e}" if c == "max_abs_err" else str(v)))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def plot(rows, path, title="speedup vs torch (higher is better)"):
    """Bar chart of speedup_vs_torch per op/shape and backend, written atomically to `path` (PNG)."""
    import os
    import tempfile

    from matplotlib.figure import Figure  # no pyplot: never switches the backend of a notebook
    def key(r):
        shape = r["shape"].replace(": ", "\n").replace(", ", "\n").replace(" causal", "\ncausal")
        return f"{r['op']}\n{shape}" + ("" if r["variant"] == "alloc" else f"\n({r['variant']})")

    keys = []
    for r in rows:
        if key(r) not in keys and r["speedup_vs_torch"]:
            keys.append(key(r))
    backends = [b for b in ("reference", "torch", "cpp", "cuda") if any(r["backend"] == b for r in rows)]
    fig = Figure(figsize=(max(8, 1.1 * len(keys)), 5))
    ax = fig.subplots()
    w = 0.8 / len(backends)
    for i, b in enumerate(backends):
        vals = []
        for k in keys:
            m = [r["speedup_vs_torch"] for r in rows if r["backend"] == b and key(r) == k]
            vals.append(m[0] if m and m[0] else 0)
        ax.bar([x + i * w for x in range(len(keys))], vals, w, label=b)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks([x + w * (len(backends) - 1) / 2 for x in range(len(keys))], keys, fontsize=7)
    ax.set_ylabel("speedup vs torch")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".png", dir=d)
    os.close(fd)
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)
