"""The `cpp` and `cuda` backends: autograd wrappers and an optimizer around our compiled ops.

The compiled library (csrc/, built by build.py) registers plain ops in torch: `torch.ops.minillm.softmax_fwd`,
`softmax_bwd`, `attn_fwd`, `attn_bwd`, `adamw_`, with a CPU implementation (csrc/ops.cpp) and, when built, a
CUDA one (csrc/cuda_binding.cpp). The ops know nothing about autograd; here we

- pair each forward with its backward in a `torch.autograd.Function`:
    softmax:    y = softmax(s x)              dx = s y (dy - <y, dy>)         (saves y)
    attention:  (o, lse) = attn_fwd(q, k, v)  (dq, dk, dv) = attn_bwd(..., o, do, lse)   (saves q, k, v, o, lse:
                O(T) extra memory per row instead of the T x T probabilities)
- register "fake" implementations (shapes only) so torch.compile can trace through the ops;
- wrap `adamw_` in `FusedAdamW`, a torch.optim.Optimizer whose state dict is torch.optim.AdamW's.

Why multi-tensor and not a flat buffer: a flat buffer (all parameters as views of one big tensor) needs the
model to be re-pointed at that buffer and breaks when someone replaces a parameter or loads a checkpoint;
passing the list of tensors to one C++ call gets the same single pass (one call, no per-tensor Python or
dispatcher overhead; work is cut into 32K-element chunks spread over threads) and keeps every parameter
an ordinary tensor, so the state dict is exactly torch's.
"""
import torch

from minillm.errors import MiniLLMError
from minillm.kernels import build

_fakes_registered = False


def ensure(device_type="cpu"):
    """Load the compiled ops for `device_type` ('cpu' or 'cuda'); return (ok, reason)."""
    ok, why = build.load_cuda() if device_type == "cuda" else build.load_cpp()
    if ok:
        _register_fakes()
    return ok, why


def _register_fakes():
    global _fakes_registered
    if _fakes_registered:
        return
    _fakes_registered = True
    lib = "minillm::"

    @torch.library.register_fake(lib + "softmax_fwd")
    def _(x, scale, causal):
        return torch.empty_like(x)

    @torch.library.register_fake(lib + "softmax_bwd")
    def _(y, dy, scale):
        return torch.empty_like(y)

    @torch.library.register_fake(lib + "attn_fwd")
    def _(q, k, v, causal, key_padding_mask):
        lse_dtype = torch.float32 if q.dtype in (torch.bfloat16, torch.float16) else q.dtype  # CUDA bf16: fp32 LSE
        return torch.empty_like(q), q.new_empty(q.shape[:-1], dtype=lse_dtype)

    @torch.library.register_fake(lib + "softmax_fwd_out")
    def _(x, scale, causal, out):
        return None

    @torch.library.register_fake(lib + "adamw_")
    def _(params, grads, exp_avgs, exp_avg_sqs, steps, lr, beta1, beta2, eps, weight_decay):
        return None

    @torch.library.register_fake(lib + "attn_bwd")
    def _(q, k, v, o, dout, lse, causal, key_padding_mask):
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


class Softmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale, causal):
        y = torch.ops.minillm.softmax_fwd(x, scale, causal)
        ctx.save_for_backward(y)
        ctx.scale = scale
        return y

    @staticmethod
    def backward(ctx, dy):
        (y,) = ctx.saved_tensors
        return torch.ops.minillm.softmax_bwd(y, dy.contiguous(), ctx.scale), None, None


class Attention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal, key_padding_mask):
        o, lse = torch.ops.minillm.attn_fwd(q, k, v, causal, key_padding_mask)  # (B, H, Tq, D), (B, H, Tq)
        ctx.save_for_backward(q, k, v, o, lse, key_padding_mask)
        ctx.causal = causal
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse, kpm = ctx.saved_tensors
        dq, dk, dv = torch.ops.minillm.attn_bwd(q, k, v, o, do.contiguous(), lse, ctx.causal, kpm)
        return dq, dk, dv, None, None


def softmax(x, scale=1.0, causal=False):
    return Softmax.apply(x.contiguous(), float(scale), bool(causal))


def attention(q, k, v, causal=True, key_padding_mask=None):
    if key_padding_mask is not None:
        key_padding_mask = key_padding_mask.to(device=q.device, dtype=torch.bool).contiguous()
    return Attention.apply(q.contiguous(), k.contiguous(), v.contiguous(), bool(causal), key_padding_mask)


class FusedAdamW(torch.optim.Optimizer):
    """AdamW whose whole step is one call into our kernel (`torch.ops.minillm.adamw_`).

    State per parameter is torch.optim.AdamW's: 'step' (a float32 scalar tensor on the CPU), 'exp_avg',
    'exp_avg_sq'; so `state_dict()` loads into torch.optim.AdamW and back.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        if lr < 0 or eps < 0 or weight_decay < 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise MiniLLMError(f"invalid AdamW hyper-parameters lr={lr} betas={betas} eps={eps} wd={weight_decay}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    def load_state_dict(self, state_dict):
        self._cache = {}
        super().load_state_dict(state_dict)

    def _lists(self, gi, params):
        """(exp_avgs, exp_avg_sqs, steps) for these params, creating state on first use; cached per group."""
        key = tuple(map(id, params))
        cache = self.__dict__.setdefault("_cache", {})
        if gi in cache and cache[gi][0] == key:
            return cache[gi][1]
        for p in params:
            if p.grad.is_sparse:
                raise MiniLLMError("FusedAdamW does not support sparse gradients; use backend='torch'")
            if not p.is_contiguous():
                raise MiniLLMError("FusedAdamW needs contiguous parameters; use backend='torch' for this model")
            st = self.state[p]
            if not st:
                st["step"] = torch.tensor(0.0)
                st["exp_avg"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
                st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
            elif st["step"].device.type != "cpu" or st["step"].dtype != torch.float32:
                st["step"] = st["step"].detach().to("cpu", torch.float32)  # e.g. from AdamW(fused=True)
        lists = tuple([self.state[p][k] for p in params] for k in ("exp_avg", "exp_avg_sq", "step"))
        cache[gi] = (key, lists)
        return lists

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for gi, group in enumerate(self.param_groups):
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            exp_avgs, exp_avg_sqs, steps = self._lists(gi, params)
            b1, b2 = group["betas"]
            torch.ops.minillm.adamw_(params, [p.grad for p in params], exp_avgs, exp_avg_sqs, steps,
                                     float(group["lr"]), float(b1), float(b2), float(group["eps"]),
                                     float(group["weight_decay"]))
        return loss
