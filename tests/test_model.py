"""The Transformer: masks do what they say, the KV cache changes nothing, counts are right, it can learn."""
import pytest
import torch
import torch.nn.functional as F

from minillm.errors import MiniLLMError
from minillm.model import ModelConfig, Transformer


def tiny(**kw):
    base = dict(vocab_size=61, n_layer=2, n_head=2, n_embd=32, block_size=24)
    base.update(kw)
    return Transformer(ModelConfig(**base)).eval()


VARIANTS = [dict(), dict(pos="learned", norm="layer", mlp="gelu"), dict(attention="reference")]


@pytest.mark.parametrize("kw", VARIANTS)
def test_changing_a_future_token_never_changes_earlier_logits(kw):
    model = tiny(**kw)
    idx = torch.randint(0, 61, (2, 16))
    for t in (0, 5, 15):
        other = idx.clone()
        other[:, t] = (other[:, t] + 1) % 61
        a, b = model(idx), model(other)
        assert torch.equal(a[:, :t], b[:, :t])
        assert not torch.allclose(a[:, t:], b[:, t:])


def test_bidirectional_model_sees_future_tokens():
    model = tiny(causal=False)
    idx = torch.randint(0, 61, (1, 10))
    other = idx.clone()
    other[0, 9] = (other[0, 9] + 1) % 61
    assert (model(idx)[0, 0] - model(other)[0, 0]).abs().max() > 1e-4


def test_reference_and_torch_attention_give_the_same_logits():
    torch.manual_seed(1)
    a = tiny()
    b = tiny(attention="reference")
    b.load_state_dict(a.state_dict())
    idx = torch.randint(0, 61, (3, 20))
    mask = torch.ones(3, 20, dtype=torch.bool)
    mask[1, 15:] = False
    torch.testing.assert_close(a(idx, mask), b(idx, mask), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("softmax", ["reference", "torch"])
@pytest.mark.parametrize("causal", [True, False])
def test_unfused_attention_through_a_softmax_backend_equals_the_fused_kernel(softmax, causal):
    torch.manual_seed(2)
    a = tiny(causal=causal)
    b = tiny(causal=causal, softmax=softmax)
    b.load_state_dict(a.state_dict())
    idx = torch.randint(0, 61, (3, 20))
    mask = torch.ones(3, 20, dtype=torch.bool)
    mask[1, 15:] = False
    torch.testing.assert_close(a(idx, mask)[mask], b(idx, mask)[mask], atol=1e-5, rtol=1e-4)
    prompt = idx[:1, :5]
    assert a.generate(prompt, 8, temperature=0.0).tolist() == b.generate(prompt, 8, temperature=0.0).tolist()


@pytest.mark.parametrize("kw", VARIANTS)
def test_kv_cache_logits_match_a_full_forward(kw):
    from minillm.model import KVCache
    model = tiny(**kw)
    idx = torch.randint(0, 61, (2, 12))
    full = model(idx)  # (B, T, V)
    cache = KVCache(model.cfg.n_layer)
    parts = [model(idx[:, :7], cache=cache)] + [model(idx[:, t:t + 1], cache=cache) for t in range(7, 12)]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kw", VARIANTS)
def test_cached_and_uncached_generation_give_the_same_tokens(kw):
    model = tiny(**kw)
    prompt = torch.randint(0, 61, (3, 5))
    greedy = [model.generate(prompt, 30, temperature=0, use_cache=c) for c in (True, False)]  # slides past 24
    assert greedy[0].shape == (3, 35) and torch.equal(*greedy)
    sampled = [model.generate(prompt, 15, temperature=1.0, top_k=20, top_p=0.9, use_cache=c,
                              generator=torch.Generator().manual_seed(3)) for c in (True, False)]
    assert torch.equal(*sampled)


def test_left_padded_prompt_generates_like_the_unpadded_prompt():
    model = tiny()
    prompt = torch.randint(1, 61, (1, 6))
    alone = model.generate(prompt, 8, temperature=0)
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), prompt], 1)
    mask = torch.tensor([[False] * 3 + [True] * 6])
    batch = model.generate(torch.cat([padded, torch.randint(1, 61, (1, 9))]), 8, temperature=0,
                           attention_mask=torch.cat([mask, torch.ones(1, 9, dtype=torch.bool)]))
    assert torch.equal(batch[0, 3:], alone[0])


def test_top_k_1_and_tiny_top_p_are_greedy_and_stop_ids_end_rows():
    model = tiny()
    prompt = torch.randint(0, 61, (2, 4))
    greedy = model.generate(prompt, 10, temperature=0)
    assert torch.equal(model.generate(prompt, 10, temperature=1.0, top_k=1), greedy)
    assert torch.equal(model.generate(prompt, 10, temperature=1.0, top_p=1e-6), greedy)
    stop = int(greedy[0, 6])
    out = model.generate(prompt, 10, temperature=0, stop_ids=[stop])
    first = (out[0, 4:] == stop).nonzero()[0].item()
    assert torch.equal(out[0, 4:4 + first + 1], greedy[0, 4:4 + first + 1])
    assert (out[0, 4 + first:] == stop).all()


def test_num_params_matches_a_hand_count_and_flops_follow_6n():
    C, L, V, T = 32, 2, 61, 24
    model = tiny(pos="learned", norm="layer", mlp="gelu")
    per_block = 4 * C * C + 2 * 4 * C * C + 2 * C  # attention qkv+proj, MLP, two LayerNorm weights
    assert model.num_params() == V * C + T * C + L * per_block + C
    assert model.num_params(non_embedding=True) == L * per_block + C
    assert model.flops_per_token() == 6 * (L * per_block + C + V * C) + 12 * L * C * T
    swiglu = tiny()  # SwiGLU hidden = 8 * ceil(8C/3 / 8) = 88 for C = 32: three C x 88 matrices
    assert swiglu.num_params(non_embedding=True) == L * (4 * C * C + 3 * C * 88 + 2 * C) + C


def test_lm_head_is_tied_and_init_scales_residual_projections():
    model = Transformer(ModelConfig(vocab_size=500, n_layer=8, n_head=4, n_embd=256, block_size=32))
    assert model.lm_head.weight is model.wte.weight
    assert abs(model.h[0].attn.c_attn.weight.std().item() - 0.02) < 0.002
    assert abs(model.h[0].attn.c_proj.weight.std().item() - 0.02 / 4) < 0.0005  # 0.02 / sqrt(2 * 8)


def test_scalar_head_gives_one_number_per_position():
    model = tiny(head="scalar")
    assert model(torch.randint(0, 61, (3, 7))).shape == (3, 7)
    assert model.forward_hidden(torch.randint(0, 61, (3, 7))).shape == (3, 7, 32)
    with pytest.raises(MiniLLMError):
        model.generate(torch.zeros(1, 2, dtype=torch.long), 3)


def test_sequence_longer_than_the_context_is_a_clear_error():
    with pytest.raises(MiniLLMError, match="context"):
        tiny()(torch.zeros(1, 25, dtype=torch.long))


def test_bad_model_config_is_a_clear_error():
    for kw in (dict(pos="alibi"), dict(n_embd=30, n_head=4), dict(norm="batch")):
        with pytest.raises(MiniLLMError):
            tiny(**kw)


def test_tiny_model_overfits_one_batch():
    torch.manual_seed(0)
    model = tiny().train()
    idx = torch.randint(0, 61, (4, 17))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        logits = model(idx[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, 61), idx[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05  # from ln(61) = 4.1
