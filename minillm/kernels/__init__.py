"""Swappable kernels: softmax, attention and AdamW, each with several backends.

Every op is exposed once here with a `backend` argument:

- `reference`: plain PyTorch with the math written out (the readable definition; in `reference.py`)
- `torch`:     PyTorch built-ins (`torch.softmax`, `scaled_dot_product_attention`, `AdamW(fused=True)`)
- `cpp`:       our C++ kernels (csrc/*.cpp), compiled on first use; CPU, float32/float64
- `cuda`:      our CUDA kernels (csrc/*.cu); needs a torch with CUDA and a GPU
- `auto`:      cuda for CUDA tensors, else cpp, else reference. If the first choice cannot be used here, auto
               says why once (on stderr) and falls back; asking for that backend explicitly raises MiniLLMError.

Shapes: attention takes q (B, H, Tq, D), k and v (B, H, Tk, D); `key_padding_mask` is (B, Tk) bool, True = real
token; causal with Tq < Tk (a KV cache) lets query i see keys j <= i + Tk - Tq.
"""
import sys

from minillm.errors import MiniLLMError
from minillm.kernels import reference

BACKENDS = ("auto", "reference", "torch", "cpp", "cuda")
_warned = set()
_available = {"reference": (True, "always available (plain PyTorch)"),
              "torch": (True, "always available (plain PyTorch)")}


def available(backend):
    """(ok, reason) for one backend on this machine; builds the extension the first time it is asked."""
    if backend in _available:  # a plain dict lookup: torch.compile traces straight through it
        return _available[backend]
    if backend not in ("cpp", "cuda"):
        raise MiniLLMError(f"unknown kernel backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    _available[backend] = _probe(backend)
    return _available[backend]


def _probe(backend):
    import torch
    from minillm.kernels import cpp
    return torch.compiler.disable(cpp.ensure)("cuda" if backend == "cuda" else "cpu")


def _fallback_note(backend, why, to):
    if (backend, to) not in _warned:
        _warned.add((backend, to))
        print(f"minillm.kernels: backend {backend!r} unavailable ({why}); auto uses {to!r}", file=sys.stderr)


def resolve(backend, device_type="cpu", dtype=None):
    """The concrete backend that `backend` means for tensors on `device_type` with `dtype`."""
    import torch
    if backend not in BACKENDS:
        raise MiniLLMError(f"unknown kernel backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    ours = "cuda" if device_type == "cuda" else "cpp"
    dtypes = (None, torch.float32, torch.bfloat16) if ours == "cuda" else (None, torch.float32, torch.float64)
    if backend == "auto":
        if device_type not in ("cpu", "cuda") or dtype not in dtypes:
            return "reference"  # e.g. bf16 on CPU: our CPU kernels are float32/float64 only
        ok, why = available(ours)
        if not ok:
            _fallback_note(ours, why, "reference")
            return "reference"
        return ours
    if backend in ("cpp", "cuda"):
        if backend != ours:
            raise MiniLLMError(f"kernel backend {backend!r} cannot run on {device_type} tensors; "
                               f"use backend={ours!r}, 'torch' or 'reference'")
        if dtype not in dtypes:
            names = "float32/bfloat16" if ours == "cuda" else "float32/float64"
            raise MiniLLMError(f"the {backend} kernels take {names}, got {dtype}; use backend='torch'")
        ok, why = available(backend)
        if not ok:
            raise MiniLLMError(f"kernel backend {backend!r} is not available: {why}")
    return backend


def softmax(x, scale=1.0, causal=False, backend="auto"):
    """softmax(scale * x) over the last dim, with an optional causal mask on the last two dims."""
    backend = resolve(backend, x.device.type, x.dtype)
    if backend == "reference":
        return reference.softmax(x, scale, causal)
    if backend in ("cpp", "cuda"):
        from minillm.kernels import cpp
        return cpp.softmax(x, scale, causal)
    import torch
    if causal:
        T, S = x.shape[-2:]
        keep = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(S - T)
        x = x.masked_fill(~keep, float("-inf"))
    return torch.softmax(x * scale, dim=-1)


def attention(q, k, v, causal=True, key_padding_mask=None, backend="auto"):
    """softmax(q k^T / sqrt(D) + mask) v for q (B, H, Tq, D) and k, v (B, H, Tk, D)."""
    requested, backend = backend, resolve(backend, q.device.type, q.dtype)
    if backend == "cuda" and q.shape[-1] not in (32, 64, 128):
        if requested != "auto":
            raise MiniLLMError(f"cuda attention supports head dims 32, 64, 128, not {q.shape[-1]}; use 'torch'")
        backend = "reference"
    if backend == "reference":
        return reference.attention(q, k, v, causal, key_padding_mask)
    if backend in ("cpp", "cuda"):
        from minillm.kernels import cpp
        return cpp.attention(q, k, v, causal, key_padding_mask)
    import torch.nn.functional as F
    if key_padding_mask is None and (not causal or q.shape[-2] == k.shape[-2]):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # lets torch pick its flash kernel
    mask = reference.build_mask(q.shape[-2], k.shape[-2], causal, key_padding_mask, q.device)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out.nan_to_num(0.0)  # a fully masked row is 0, as in the reference


def make_adamw(params, lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0, backend="auto"):
    """An AdamW optimizer over `params` (a list of tensors or of param groups). Every backend's state dict
    has torch.optim.AdamW's layout, so checkpoints move between backends."""
    import torch
    params = list(params)
    first = params[0]["params"][0] if params and isinstance(params[0], dict) else (params[0] if params else None)
    device = first.device.type if first is not None else "cpu"
    requested, backend = backend, resolve(backend, device, first.dtype if first is not None else None)
    if backend == "cuda" and first.dtype != torch.float32:  # our CUDA AdamW is fp32 only
        if requested != "auto":
            raise MiniLLMError(f"the cuda AdamW takes float32 parameters, got {first.dtype}; use backend='torch'")
        backend = "reference"
    if backend == "reference":
        return reference.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    if backend in ("cpp", "cuda"):
        from minillm.kernels import cpp
        return cpp.FusedAdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=True)


def info():
    """One row per backend: name, available, why (or how it was built)."""
    rows = []
    for b in BACKENDS[1:]:
        ok, why = available(b)
        rows.append({"backend": b, "available": ok, "detail": why})
    return rows
