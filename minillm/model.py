"""The Transformer: a decoder (causal) or encoder (bidirectional) language model, in one readable file.

    x_0 = E[idx] (+ P[pos] for learned positions)                      token (+ position) embedding
    x_{l+1/2} = x_l + Attn(Norm(x_l))                                  pre-norm residual blocks
    x_{l+1}   = x_{l+1/2} + MLP(Norm(x_{l+1/2}))
    logits = Norm(x_L) E^T                                             LM head tied to the embedding

Attention: softmax(q k^T / sqrt(d) + mask) v per head, computed by `minillm.kernels.attention` so that the
backend (reference / torch / cpp / cuda) is a config switch. RoPE rotates each pair (x_i, x_{i+d/2}) of q and k
by the angle pos * theta^(-2i/d), so q.k depends only on the relative position.
RMSNorm(x) = x / sqrt(mean(x^2) + eps) * g.   SwiGLU(x) = W2 (silu(W1 x) * W3 x);  GELU MLP: W2 gelu(W1 x).
Init (GPT-2): N(0, 0.02) everywhere, residual output projections N(0, 0.02 / sqrt(2 n_layer)).

Generation keeps a KV cache: each step feeds only the new token and attends to the stored k, v, so a step costs
O(T) instead of O(T^2); cached and uncached generation give the same tokens.

References: Vaswani et al. 2017 (Attention Is All You Need); Radford et al. 2019 (GPT-2); Su et al. 2021
(RoFormer, RoPE); Zhang & Sennrich 2019 (RMSNorm); Shazeer 2020 (GLU variants); Devlin et al. 2019 (BERT);
Holtzman et al. 2019 (top-p); Karpathy's nanoGPT model.py.
"""
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from minillm import kernels
from minillm.errors import MiniLLMError


@dataclass
class ModelConfig:
    vocab_size: int = 512
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 128      # the context: the longest sequence the model reads
    dropout: float = 0.0
    pos: str = "rope"          # "rope" | "learned"
    norm: str = "rms"          # "rms" | "layer"
    mlp: str = "swiglu"        # "swiglu" | "gelu"
    causal: bool = True        # False: bidirectional encoder (masked LM)
    attention: str = "torch"   # kernel backend for attention
    softmax: str = "none"      # "none": the fused attention kernel; a backend name: q k^T -> kernels.softmax -> @ v
    head: str = "lm"           # "lm" (logits over the vocabulary) | "scalar" (one number per position) |
    #                            "scalar_lm" (the scalar plus a learned multiple of log p(token) from the tied LM head)
    rope_theta: float = 10000.0

    def validate(self):
        choices = dict(pos=("rope", "learned"), norm=("rms", "layer"), mlp=("swiglu", "gelu"),
                       head=("lm", "scalar", "scalar_lm"))
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise MiniLLMError(f"model.{name}={getattr(self, name)!r} is not one of {', '.join(allowed)}")
        if self.n_embd % self.n_head:
            raise MiniLLMError(f"model.n_embd={self.n_embd} must be divisible by model.n_head={self.n_head}")
        if self.pos == "rope" and (self.n_embd // self.n_head) % 2:
            raise MiniLLMError("RoPE needs an even head size (n_embd / n_head); change n_embd or n_head")
        if min(self.vocab_size, self.n_layer, self.n_head, self.n_embd, self.block_size) < 1:
            raise MiniLLMError("model sizes (vocab_size, n_layer, n_head, n_embd, block_size) must be positive")
        return self

    def to_dict(self):
        return asdict(self)


class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        rms = torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)  # (..., 1)
        return (x.float() * rms).type_as(x) * self.weight


def make_norm(cfg):
    return RMSNorm(cfg.n_embd) if cfg.norm == "rms" else nn.LayerNorm(cfg.n_embd, bias=False)


def rope_tables(head_size, n_pos, theta):
    """cos, sin of pos * theta^(-2i/d): each (n_pos, head_size // 2)."""
    inv_freq = theta ** (-torch.arange(0, head_size, 2, dtype=torch.float32) / head_size)  # (D/2,)
    angles = torch.outer(torch.arange(n_pos, dtype=torch.float32), inv_freq)  # (n_pos, D/2)
    return angles.cos(), angles.sin()


def apply_rope(x, cos, sin):
    """Rotate pairs (x1_i, x2_i) = (x[..., i], x[..., i + D/2]) by the angle of their position.

    x (B, H, T, D); cos, sin (B or 1, 1, T, D/2)."""
    x1, x2 = x.chunk(2, dim=-1)  # (B, H, T, D/2) each
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).type_as(x)  # (B, H, T, D)


class KVCache:
    """Keys and values of the tokens seen so far, per layer, plus their padding mask."""

    def __init__(self, n_layer):
        self.k = [None] * n_layer  # each (B, H, Tk, D)
        self.v = [None] * n_layer
        self.mask = None           # (B, Tk) bool, True = real token; None = no padding
        self.length = 0


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention; causal or bidirectional by config (the name is nanoGPT's)."""

    def __init__(self, cfg):
        super().__init__()
        self.n_head, self.causal, self.backend = cfg.n_head, cfg.causal, cfg.attention
        self.softmax = getattr(cfg, "softmax", "none")
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=False)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)
        self.c_proj.residual = True  # scaled init
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x, rope, key_padding_mask, cache, layer):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)  # (B, T, C) each
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            if cache.k[layer] is not None:
                k = torch.cat([cache.k[layer], k], dim=2)  # (B, H, Tk, D)
                v = torch.cat([cache.v[layer], v], dim=2)
            cache.k[layer], cache.v[layer] = k, v
        if self.softmax == "none":  # one fused kernel (flash-style or SDPA)
            y = kernels.attention(q, k, v, causal=self.causal, key_padding_mask=key_padding_mask,
                                  backend=self.backend)  # (B, H, T, D)
        else:  # unfused: scores, then scale + causal mask + softmax in one softmax kernel, then the weighted sum
            att = q @ k.transpose(-2, -1)  # (B, H, T, Tk)
            if key_padding_mask is not None:
                att = att.masked_fill(~key_padding_mask[:, None, None, :].bool(), float("-inf"))
            att = kernels.softmax(att, scale=1.0 / math.sqrt(q.shape[-1]), causal=self.causal,
                                  backend=self.softmax)  # (B, H, T, Tk)
            y = att @ v  # (B, H, T, D)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C) heads side by side again
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        C, self.swiglu = cfg.n_embd, cfg.mlp == "swiglu"
        # SwiGLU has three matrices; 2/3 of 4C keeps its parameter count equal to the GELU MLP's.
        hidden = 4 * C if not self.swiglu else 8 * ((8 * C // 3 + 7) // 8)
        self.c_fc = nn.Linear(C, hidden, bias=False)
        if self.swiglu:
            self.c_gate = nn.Linear(C, hidden, bias=False)
        self.c_proj = nn.Linear(hidden, C, bias=False)
        self.c_proj.residual = True
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        if self.swiglu:
            h = F.silu(self.c_gate(x)) * self.c_fc(x)  # (B, T, hidden)
        else:
            h = F.gelu(self.c_fc(x))  # (B, T, hidden)
        return self.dropout(self.c_proj(h))  # (B, T, C)


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.ln_1, self.attn = make_norm(cfg), CausalSelfAttention(cfg)
        self.ln_2, self.mlp = make_norm(cfg), MLP(cfg)

    def forward(self, x, rope, key_padding_mask, cache, layer):
        x = x + self.attn(self.ln_1(x), rope, key_padding_mask, cache, layer)  # (B, T, C)
        return x + self.mlp(self.ln_2(x))  # (B, T, C)


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg.validate()
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd) if cfg.pos == "learned" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.h = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = make_norm(cfg)
        if cfg.head == "lm":
            self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
            self.lm_head.weight = self.wte.weight  # tied: the same matrix reads and writes tokens
        else:
            self.score_head = nn.Linear(cfg.n_embd, 1)
        if cfg.head == "scalar_lm":  # weight of log p(x_t | x_<t) in the score (the LM head is the tied wte)
            self.score_lm_coef = nn.Parameter(torch.ones(()))
        if cfg.pos == "rope":
            cos, sin = rope_tables(cfg.n_embd // cfg.n_head, cfg.block_size, cfg.rope_theta)
            self.register_buffer("rope_cos", cos, persistent=False)  # (block_size, D/2), not saved
            self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            std = 0.02 / math.sqrt(2 * self.cfg.n_layer) if getattr(module, "residual", False) else 0.02
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    # ---- counting -------------------------------------------------------------------------------------------
    def num_params(self, non_embedding=False):
        """Parameters (the tied embedding counted once). non_embedding drops token/position embeddings."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.wte.weight.numel() + (self.wpe.weight.numel() if self.wpe is not None else 0)
        return n

    def flops_per_token(self, T=None):
        """Training FLOPs per token (forward + backward): 6 N + 12 L C T (Kaplan et al. 2020; PaLM appendix B).

        6N: each weight does one multiply-add forward and two backward; 12 L C T: the attention scores and the
        weighted sum, which grow with the context T. N includes the LM head (the tied embedding used as a matmul)."""
        T = T or self.cfg.block_size
        N = self.num_params(non_embedding=True) + (self.wte.weight.numel() if self.cfg.head != "scalar" else 0)
        return 6 * N + 12 * self.cfg.n_layer * self.cfg.n_embd * T

    # ---- forward ----------------------------------------------------------------------------------------------
    def forward_hidden(self, idx, attention_mask=None, cache=None):
        """idx (B, T) token ids -> (B, T, C) final-normed hidden states.

        attention_mask (B, T) bool, True = real token (padding may be on either side: positions count real
        tokens only, so a left-padded prompt gets the same positions as an unpadded one). cache: a KVCache that
        holds the earlier tokens; it is extended in place."""
        B, T = idx.shape
        past = cache.length if cache is not None else 0
        if past + T > self.cfg.block_size:
            raise MiniLLMError(f"sequence length {past + T} is above the model's context "
                               f"(block_size={self.cfg.block_size}); shorten the input or crop it")
        key_mask = None if attention_mask is None else attention_mask.to(torch.bool)  # (B, T)
        if cache is not None:
            if cache.mask is not None or key_mask is not None:
                old = cache.mask if cache.mask is not None else idx.new_ones(B, past, dtype=torch.bool)
                new = key_mask if key_mask is not None else idx.new_ones(B, T, dtype=torch.bool)
                key_mask = torch.cat([old, new], dim=1)  # (B, Tk) over all keys
                cache.mask = key_mask
            cache.length += T
        if key_mask is not None:
            pos = (key_mask.long().cumsum(1) - 1).clamp_min(0)[:, past:]  # (B, T) counts real tokens only
        else:
            pos = torch.arange(past, past + T, device=idx.device)[None]  # (1, T)

        x = self.wte(idx)  # (B, T, C)
        if self.wpe is not None:
            x = x + self.wpe(pos)  # (B, T, C)
        rope = None
        if self.cfg.pos == "rope":
            rope = (self.rope_cos[pos][:, None], self.rope_sin[pos][:, None])  # (B or 1, 1, T, D/2) each
        x = self.drop(x)
        for layer, block in enumerate(self.h):
            x = block(x, rope, key_mask, cache, layer)  # (B, T, C)
        return self.ln_f(x)  # (B, T, C)

    def forward(self, idx, attention_mask=None, cache=None):
        """(B, T) ids -> logits (B, T, V) for the LM head, or scores (B, T) for the scalar heads.

        scalar_lm: s_t = w·h_t + b + c · log p(x_t | x_<t), the log-prob read from the tied LM head at t − 1
        (0 at t = 0). A linear head on h_t cannot see how surprising token x_t was -- the sign of a wrong fact --
        while the LM head's log-prob is exactly that (see stages/reward.py)."""
        h = self.forward_hidden(idx, attention_mask, cache)  # (B, T, C)
        if self.cfg.head == "lm":
            return self.lm_head(h)  # (B, T, V)
        scores = self.score_head(h).squeeze(-1)  # (B, T)
        if self.cfg.head == "scalar_lm":
            logp = F.log_softmax(F.linear(h[:, :-1], self.wte.weight).float(), -1)  # (B, T-1, V)
            token_logp = logp.gather(-1, idx[:, 1:, None]).squeeze(-1)            # (B, T-1)
            scores = scores + self.score_lm_coef * F.pad(token_logp, (1, 0))    # (B, T)
        return scores

    # ---- generation ---------------------------------------------------------------------------------------------
    @staticmethod
    def sample_next(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
        """logits (B, V) -> next ids (B,). temperature 0 = greedy (argmax)."""
        if temperature == 0:
            return logits.argmax(-1)  # (B,)
        logits = logits.float() / temperature
        if top_k is not None:
            kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]  # (B, 1)
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if top_p is not None and top_p < 1.0:
            sorted_logits, order = logits.sort(dim=-1, descending=True)  # (B, V)
            cum = sorted_logits.softmax(-1).cumsum(-1)  # (B, V)
            drop = cum - sorted_logits.softmax(-1) > top_p  # keep the smallest prefix whose mass reaches top_p
            sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
            logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
        probs = logits.softmax(-1)  # (B, V)
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # (B,)

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, stop_ids=(),
                 use_cache=True, attention_mask=None, generator=None):
        """Extend idx (B, T) by up to max_new_tokens sampled tokens -> (B, T + n).

        A row that emits a token in stop_ids is finished: it keeps that token and is padded with it afterwards;
        generation ends when every row is finished. attention_mask (B, T) marks real prompt tokens (left padding).
        Past the context, the window slides (the cache is dropped and the last block_size tokens are re-read)."""
        if self.cfg.head != "lm":
            raise MiniLLMError("generate needs a model with an LM head, not a scalar head")
        if idx.size(1) == 0:
            raise MiniLLMError("generate needs a non-empty prompt")
        was_training = self.training
        self.eval()
        stop = torch.tensor(sorted(set(stop_ids)), dtype=torch.long, device=idx.device)
        finished = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
        last = torch.zeros_like(finished, dtype=torch.long)
        mask = attention_mask.to(torch.bool) if attention_mask is not None else None
        cache, fed = None, 0  # fed: how many tokens of idx the cache already holds
        for _ in range(max_new_tokens):
            if idx.size(1) > self.cfg.block_size:  # slide the window
                idx_in = idx[:, -self.cfg.block_size:]
                mask_in = mask[:, -self.cfg.block_size:] if mask is not None else None
                logits = self(idx_in, mask_in)[:, -1]  # (B, V)
            elif use_cache:
                if cache is None:
                    cache = KVCache(self.cfg.n_layer)
                new_mask = mask[:, fed:] if mask is not None else None
                logits = self(idx[:, fed:], new_mask, cache)[:, -1]  # (B, V)
                fed = idx.size(1)
            else:
                logits = self(idx, mask)[:, -1]  # (B, V)
            nxt = self.sample_next(logits, temperature, top_k, top_p, generator)  # (B,)
            nxt = torch.where(finished, last, nxt)
            idx = torch.cat([idx, nxt[:, None]], dim=1)  # (B, T + 1)
            if mask is not None:
                mask = torch.cat([mask, mask.new_ones(mask.size(0), 1)], dim=1)
            last = nxt
            finished |= torch.isin(nxt, stop)
            if finished.all():
                break
        self.train(was_training)
        return idx
