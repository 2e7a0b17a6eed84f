"""The `cpp` and `cuda` backends: autograd wrappers and an optimizer around our compiled ops.

The compiled library (csrc/, built by build.py) registers plain ops in torch: `torch.ops.minillm.softmax_fwd`,
`softmax_bwd`, `attn_fwd`, `attn_bwd`, `adamw_` (and `stream_roof_`, AdamW's memory roof for the benchmark),
with a CPU implementation (csrc/ops.cpp) and, when built, a CUDA one (csrc/cuda_binding.cpp). The ops know
nothing about autograd; here we

- pair each forward with its backward in a `torch.autograd.Function`:
    softmax:    y = softmax(s x)              dx = s y (dy - <y, dy>)         (saves y)
    attention:  (o, lse) = attn_fwd(q, k, v)  (dq, dk, dv) = attn_bwd(..., o, do, lse)   (saves q, k, v, o, lse:
                O(T) extra memory per row instead of the T x T probabilities)
- register "fake" implementations (shapes only) so torch.compile can trace through the ops;
- wrap `adamw_` in `FusedAdamW`, a torch.optim.Optimizer whose state dict is torch.optim.AdamW's.

AdamW's layout, and why: the update itself is trivially memory-bound (28 bytes per parameter, see csrc/adamw.cpp),
so on a small model the cost is everything around it. torch's AdamW(fused=True) spends ~150 us per step on 52 one-
element tensors (~70 us of Python gathering each parameter's state, ~80 us in its ops: lists of 52 tensors to
convert, then a loop over tensors in C++); passing our op five lists of 52 tensors still cost ~30 us. So the state
the optimizer owns is flat: per param group one exp_avg buffer, one exp_avg_sq buffer (each parameter's slot
starting on a 64-byte boundary, so all four streams are aligned) and one float32 step per parameter; `state[p]`
holds views into them, so the state dict is exactly torch.optim.AdamW's and checkpoints move between backends. What
the model owns stays as it is: parameters and their grads are passed as lists. Making the parameters views into one
flat buffer too would save a few more microseconds but means re-pointing the model's tensors, which breaks when
anything replaces a parameter or moves the model; grads could not be flat anyway, since autograd allocates a fresh
.grad after zero_grad(set_to_none=True). One step is then one C++ call per group (~13 us of overhead for 52 tensors,
~25 us with Optimizer.step's own wrapper), and C++ gives each thread one contiguous share of the group's elements.
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
    def _(params, grads, exp_avg, exp_avg_sq, steps, lr, beta1, beta2, eps, weight_decay):
        return None

    @torch.library.register_fake(lib + "stream_roof_")
    def _(p, g, m, v):
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


SLOT_ALIGN = 16  # elements: each parameter's slot in the flat state starts on a 64-byte boundary (as in ops.cpp)


class _FlatState:
    """One param group's AdamW state in three flat buffers: exp_avg and exp_avg_sq (every parameter's moments
    back to back, slot t at offsets[t]) and steps (one float32 per parameter). `optimizer.state[p]` holds views
    into them, so the state dict looks exactly like torch.optim.AdamW's."""

    def __init__(self, params):
        self.n, self.offsets, total = len(params), [], 0
        for p in params:
            self.offsets.append(total)
            total += -(-p.numel() // SLOT_ALIGN) * SLOT_ALIGN
        dtype, device = params[0].dtype, params[0].device
        if any(p.dtype != dtype or p.device != device for p in params):
            raise MiniLLMError("FusedAdamW needs one dtype and device per param group; use backend='torch'")
        self.exp_avg = torch.zeros(total, dtype=dtype, device=device)
        self.exp_avg_sq = torch.zeros(total, dtype=dtype, device=device)
        self.steps = torch.zeros(self.n, dtype=torch.float32)  # on the CPU, like torch's non-capturable AdamW
        self.missing = list(range(self.n))  # parameters with no state entry yet (no grad seen)

    def adopt(self, state, i, p):
        """Point state[p] at slot i; a state that already exists (loaded, or from before a rebuild) is copied in."""
        old, n, o = state[p], p.numel(), self.offsets[i]
        if old:
            self.exp_avg[o:o + n].copy_(old["exp_avg"].reshape(-1))
            self.exp_avg_sq[o:o + n].copy_(old["exp_avg_sq"].reshape(-1))
            self.steps[i] = float(old["step"])
        state[p] = {"step": self.steps[i], "exp_avg": self.exp_avg[o:o + n].view_as(p),
                    "exp_avg_sq": self.exp_avg_sq[o:o + n].view_as(p)}


class FusedAdamW(torch.optim.Optimizer):
    """AdamW whose step is one call per param group into our kernel (`torch.ops.minillm.adamw_`).

    State per parameter is torch.optim.AdamW's: 'step' (a float32 scalar tensor on the CPU), 'exp_avg',
    'exp_avg_sq'; so `state_dict()` loads into torch.optim.AdamW and back. Those tensors are views into one flat
    buffer per group (see _FlatState and the module docstring for why).
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        if lr < 0 or eps < 0 or weight_decay < 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise MiniLLMError(f"invalid AdamW hyper-parameters lr={lr} betas={betas} eps={eps} wd={weight_decay}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)  # state[p] now holds the loaded tensors ...
        self._flat = None                    # ... which the next step copies into fresh flat buffers

    def _flat_states(self):
        """One _FlatState per group (None for an empty group), rebuilt when a group or its parameter list changed."""
        key = [(id(g["params"]), len(g["params"])) for g in self.param_groups]
        if self.__dict__.get("_flat") is None or key != self._flat_key:
            for g in self.param_groups:
                for p in g["params"]:
                    if not p.is_contiguous():
                        raise MiniLLMError("FusedAdamW needs contiguous parameters; use backend='torch' for this model")
            self._flat = [_FlatState(g["params"]) if g["params"] else None for g in self.param_groups]
            self._flat_key = key
        return self._flat

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group, flat in zip(self.param_groups, self._flat_states()):
            if flat is None:
                continue
            params = group["params"]
            grads = [p.grad for p in params]
            if flat.missing:  # first step(s): give each parameter that now has a grad its state entry
                for i in [i for i in flat.missing if grads[i] is not None]:
                    if grads[i].is_sparse:
                        raise MiniLLMError("FusedAdamW does not support sparse gradients; use backend='torch'")
                    flat.adopt(self.state, i, params[i])
                    flat.missing.remove(i)
            b1, b2 = group["betas"]
            torch.ops.minillm.adamw_(params, grads, flat.exp_avg, flat.exp_avg_sq, flat.steps, float(group["lr"]),
                                     float(b1), float(b2), float(group["eps"]), float(group["weight_decay"]))
        return loss
