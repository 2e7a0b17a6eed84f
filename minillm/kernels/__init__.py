"""Swappable kernels: softmax, attention and AdamW, each with several backends.

Every op is exposed once here with a `backend` argument:

- `reference`: plain PyTorch with the math written out (the readable definition; in `reference.py`)
- `torch`:     PyTorch built-ins (`torch.softmax`, `scaled_dot_product_attention`, `AdamW(fused=True)`)
- `cpp`, `cuda`: our own kernels in csrc/ (added by the kernels work; see docs/architecture.md)
- `auto`:      the fastest one that works here

Shapes: attention takes q, k, v as (B, H, T, D); `key_padding_mask` is (B, Tk) bool, True = real token.
"""
from minillm.errors import MiniLLMError
from minillm.kernels import reference

BACKENDS = ("auto", "reference", "torch")


def _check(backend):
    if backend not in BACKENDS:
        raise MiniLLMError(f"unknown kernel backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    return "torch" if backend == "auto" else backend


def softmax(x, scale=1.0, causal=False, backend="auto"):
    """softmax(scale * x) over the last dim, with an optional causal mask on the last two dims."""
    backend = _check(backend)
    if backend == "reference":
        return reference.softmax(x, scale, causal)
    import torch
    if causal:
        T, S = x.shape[-2:]
        keep = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(S - T)
        x = x.masked_fill(~keep, float("-inf"))
    return torch.softmax(x * scale, dim=-1)


def attention(q, k, v, causal=True, key_padding_mask=None, backend="auto"):
    """softmax(q k^T / sqrt(D) + mask) v for q, k, v of shape (B, H, T, D)."""
    backend = _check(backend)
    if backend == "reference":
        return reference.attention(q, k, v, causal, key_padding_mask)
    import torch.nn.functional as F
    mask = reference.build_mask(q.shape[-2], k.shape[-2], causal, key_padding_mask, q.device)
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def make_adamw(params, lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0, backend="auto"):
    """An AdamW optimizer over `params` (a list of tensors or of param groups)."""
    backend = _check(backend)
    import torch
    if backend == "reference":
        return reference.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
