"""Reference kernels: the math of each op written out in plain PyTorch, to read and to check against.

softmax(x)_i = exp(x_i - max x) / sum_j exp(x_j - max x)        (subtracting the max changes nothing but overflow)
attention(q, k, v) = softmax(q k^T / sqrt(D) + mask) v           (Vaswani et al. 2017, "Attention Is All You Need")
AdamW: m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;  p -= lr (m/(1-b1^t)) / (sqrt(v/(1-b2^t)) + eps) + lr wd p
       (Kingma & Ba 2015; Loshchilov & Hutter 2019, decoupled weight decay)
"""
import math

import torch


def build_mask(Tq, Tk, causal, key_padding_mask, device):
    """Boolean mask (B or 1, 1, Tq, Tk), True where a query may attend; None when nothing is masked.

    Causal: query i (the last Tq positions of Tk keys) sees keys j <= i + (Tk - Tq), so the same rule
    works when a KV cache holds earlier keys.
    """
    mask = None
    if causal:
        mask = torch.ones(Tq, Tk, dtype=torch.bool, device=device).tril(Tk - Tq)[None, None]  # (1, 1, Tq, Tk)
    if key_padding_mask is not None:
        pad = key_padding_mask[:, None, None, :].to(torch.bool)  # (B, 1, 1, Tk)
        mask = pad if mask is None else (mask & pad)
    return mask


def softmax(x, scale=1.0, causal=False):
    x = x * scale
    if causal:
        T, S = x.shape[-2:]
        x = x.masked_fill(~torch.ones(T, S, dtype=torch.bool, device=x.device).tril(S - T), float("-inf"))
    m = x.amax(dim=-1, keepdim=True).clamp_min(torch.finfo(x.dtype).min)  # (..., 1) row max, finite
    e = torch.exp(x - m)
    return e / e.sum(dim=-1, keepdim=True)


def attention(q, k, v, causal=True, key_padding_mask=None):
    B, H, T, D = q.shape
    att = (q @ k.transpose(-2, -1)) / math.sqrt(D)  # (B, H, T, Tk)
    mask = build_mask(T, k.shape[-2], causal, key_padding_mask, q.device)
    if mask is not None:
        att = att.masked_fill(~mask, float("-inf"))
    att = softmax(att)  # (B, H, T, Tk); a fully masked row becomes NaN-free zeros below
    att = torch.nan_to_num(att, nan=0.0)
    return att @ v  # (B, H, T, D)


class AdamW(torch.optim.Optimizer):
    """AdamW written out; state keys match torch.optim.AdamW ('step', 'exp_avg', 'exp_avg_sq')."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st["step"] = torch.tensor(0.0)
                    st["exp_avg"] = torch.zeros_like(p)
                    st["exp_avg_sq"] = torch.zeros_like(p)
                st["step"] += 1
                t = st["step"].item()
                p.mul_(1 - group["lr"] * group["weight_decay"])  # decoupled weight decay
                st["exp_avg"].lerp_(p.grad, 1 - b1)
                st["exp_avg_sq"].mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                denom = (st["exp_avg_sq"] / (1 - b2 ** t)).sqrt_().add_(group["eps"])
                p.addcdiv_(st["exp_avg"], denom, value=-group["lr"] / (1 - b1 ** t))
        return loss
