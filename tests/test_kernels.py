"""Our softmax and attention kernels equal the reference math, forward and backward, on awkward shapes.

The first test that needs the `cpp` backend compiles it (JIT, cached): ~15-60 s on a 2-core machine.
"""
import pytest
import torch

from minillm import kernels
from minillm.errors import MiniLLMError
from minillm.kernels import reference


@pytest.fixture(scope="module")
def cpp():
    ok, why = kernels.available("cpp")
    if not ok:
        pytest.skip(f"cpp backend unavailable: {why}")
    return "cpp"


def _grads(fn, *xs, seed=1):
    xs = [x.detach().clone().requires_grad_(x.is_floating_point()) for x in xs]
    out = fn(*xs)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    out.backward(g.to(out.device))
    return out.detach(), [x.grad for x in xs if x.requires_grad]


SOFTMAX_CASES = [  # (shape, scale, causal)
    ((1, 1), 1.0, False), ((3, 17), 0.5, False), ((64, 256), 1.0, False), ((5, 1000), 2.0, False),
    ((2, 5, 5), 1.0, True), ((4, 33, 33), 0.125, True), ((2, 3, 8, 20), 1.0, True), ((7, 1, 1), 1.0, True),
]


@pytest.mark.parametrize("shape,scale,causal", SOFTMAX_CASES)
def test_cpp_softmax_matches_reference_forward_and_backward(cpp, shape, scale, causal):
    x = torch.randn(shape) * 3
    y_ref, (g_ref,) = _grads(lambda x: reference.softmax(x, scale, causal), x)
    y, (g,) = _grads(lambda x: kernels.softmax(x, scale, causal, backend=cpp), x)
    torch.testing.assert_close(y, y_ref, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(g, g_ref, atol=2e-6, rtol=1e-5)


def test_cpp_softmax_survives_huge_logits_and_minus_inf(cpp):
    x = torch.tensor([[1e4, 1e4 - 1, -1e4], [float("-inf"), 0.0, 1.0]])
    y = kernels.softmax(x, backend=cpp)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, torch.softmax(x, -1))


ATTN_CASES = [  # (B, H, Tq, Tk, D, causal, padding)
    (1, 1, 1, 1, 32, True, False),     # T = 1
    (2, 3, 5, 5, 32, True, False),
    (2, 2, 64, 64, 64, True, False),   # exactly one tile
    (2, 2, 65, 65, 64, False, False),  # one past the tile
    (1, 2, 130, 130, 128, True, True),
    (3, 1, 37, 37, 20, False, True),   # head dim that is not a power of two
    (2, 2, 1, 70, 64, True, True),     # KV cache: one new query against 70 keys
    (1, 2, 9, 75, 32, True, False),    # KV cache: Tq < Tk, causal offset
    (2, 1, 33, 17, 16, False, False),  # cross-attention shape, Tq > Tk
]


@pytest.mark.parametrize("B,H,Tq,Tk,D,causal,padding", ATTN_CASES)
def test_cpp_attention_matches_reference_forward_and_backward(cpp, B, H, Tq, Tk, D, causal, padding):
    q, k, v = torch.randn(B, H, Tq, D), torch.randn(B, H, Tk, D), torch.randn(B, H, Tk, D)
    kpm = None
    if padding:
        kpm = torch.rand(B, Tk) > 0.3
        kpm[:, -1] = True  # keep the newest key so causal rows are never fully masked here
    o_ref, g_ref = _grads(lambda q, k, v: reference.attention(q, k, v, causal, kpm), q, k, v)
    o, g = _grads(lambda q, k, v: kernels.attention(q, k, v, causal, kpm, backend=cpp), q, k, v)
    torch.testing.assert_close(o, o_ref, atol=1e-5, rtol=1e-4)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, atol=3e-5, rtol=1e-4)


def test_cpp_attention_fully_masked_row_gives_zeros_like_reference(cpp):
    q, k, v = torch.randn(2, 1, 4, 8), torch.randn(2, 1, 4, 8), torch.randn(2, 1, 4, 8)
    kpm = torch.tensor([[True, True, False, False], [False, False, False, False]])
    o_ref, g_ref = _grads(lambda q, k, v: reference.attention(q, k, v, False, kpm), q, k, v)
    o, g = _grads(lambda q, k, v: kernels.attention(q, k, v, False, kpm, backend=cpp), q, k, v)
    assert o[1].abs().max() == 0
    torch.testing.assert_close(o, o_ref)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_cpp_kernels_pass_gradcheck_in_float64(cpp):
    x = torch.randn(3, 6, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: kernels.softmax(x, 0.7, True, backend=cpp), (x,))
    q, k, v = (torch.randn(1, 2, n, 5, dtype=torch.float64, requires_grad=True) for n in (7, 9, 9))
    kpm = torch.tensor([[True] * 8 + [False]])
    assert torch.autograd.gradcheck(lambda q, k, v: kernels.attention(q, k, v, True, kpm, backend=cpp), (q, k, v))
    assert torch.autograd.gradcheck(lambda q, k, v: kernels.attention(q, k, v, False, None, backend=cpp), (q, k, v))


def test_cpp_ops_pass_torch_library_opcheck(cpp):
    """Schemas, fake (meta) kernels and autograd registration are consistent, so torch.compile can trace them."""
    x = torch.randn(4, 9)
    torch.library.opcheck(torch.ops.minillm.softmax_fwd.default, (x, 0.5, True),
                          test_utils=("test_schema", "test_faketensor"))
    q, k, v = torch.randn(1, 2, 5, 8), torch.randn(1, 2, 7, 8), torch.randn(1, 2, 7, 8)
    torch.library.opcheck(torch.ops.minillm.attn_fwd.default, (q, k, v, True, None),
                          test_utils=("test_schema", "test_faketensor"))


def test_torch_compile_traces_our_ops_in_one_graph_with_the_same_gradients(cpp):
    def f(q, k, v, x):
        return kernels.attention(q, k, v, True, backend=cpp).sum() + kernels.softmax(x, 0.5, True, backend=cpp).sum()

    q, k, v = (torch.randn(1, 2, 9, 8, requires_grad=True) for _ in range(3))
    x = torch.randn(2, 5, 5, requires_grad=True)
    out = torch.compile(f, backend="aot_eager", fullgraph=True)(q, k, v, x)  # fullgraph: no graph breaks allowed
    out.backward()
    compiled = [t.grad.clone() for t in (q, k, v, x)]
    for t in (q, k, v, x):
        t.grad = None
    eager = f(q, k, v, x)
    eager.backward()
    torch.testing.assert_close(out, eager)
    for a, t in zip(compiled, (q, k, v, x)):
        torch.testing.assert_close(a, t.grad)


def test_every_backend_matches_reference_on_a_causal_padded_batch(cpp):
    q, k, v = torch.randn(2, 2, 11, 16), torch.randn(2, 2, 11, 16), torch.randn(2, 2, 11, 16)
    kpm = torch.ones(2, 11, dtype=torch.bool)
    kpm[1, 7:] = False
    ref = reference.attention(q, k, v, True, kpm)
    for b in ("torch", "cpp", "auto"):
        torch.testing.assert_close(kernels.attention(q, k, v, True, kpm, backend=b), ref, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(kernels.softmax(q, 0.3, True, backend=b), reference.softmax(q, 0.3, True))


def test_auto_falls_back_with_one_line_and_explicit_backend_raises(monkeypatch, capsys):
    monkeypatch.setattr(kernels, "available", lambda b: (False, "no C++ compiler found (test)"))
    monkeypatch.setattr(kernels, "_warned", set())
    x = torch.randn(3, 5)
    for _ in range(3):
        torch.testing.assert_close(kernels.softmax(x), reference.softmax(x))
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'cpp' unavailable (no C++ compiler found (test))" in err
    with pytest.raises(MiniLLMError, match=r"not available: no C\+\+ compiler found"):
        kernels.softmax(x, backend="cpp")


def test_unusable_inputs_are_refused_explicitly_and_routed_by_auto(cpp):
    x = torch.randn(4, 8, dtype=torch.bfloat16)
    with pytest.raises(MiniLLMError, match="float32/float64"):
        kernels.softmax(x, backend="cpp")
    torch.testing.assert_close(kernels.softmax(x), reference.softmax(x))  # auto -> reference for bf16 on CPU
    with pytest.raises(MiniLLMError, match="cannot run on cpu"):
        kernels.softmax(torch.randn(2, 2), backend="cuda")
    with pytest.raises(MiniLLMError, match="unknown kernel backend"):
        kernels.attention(x, x, x, backend="triton")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-4), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("B,H,Tq,Tk,D,causal,padding", [c for c in ATTN_CASES if c[4] in (32, 64, 128)])
def test_cuda_attention_matches_reference(B, H, Tq, Tk, D, causal, padding, dtype, tol):
    dev = "cuda"
    q, k, v = (torch.randn(B, H, n, D, device=dev) for n in (Tq, Tk, Tk))
    kpm = (torch.rand(B, Tk, device=dev) > 0.3) if padding else None
    if kpm is not None:
        kpm[:, -1] = True
    o_ref, g_ref = _grads(lambda q, k, v: reference.attention(q, k, v, causal, kpm), q, k, v)
    o, g = _grads(lambda q, k, v: kernels.attention(q, k, v, causal, kpm, backend="cuda"),
                  q.to(dtype), k.to(dtype), v.to(dtype))
    torch.testing.assert_close(o.float(), o_ref, atol=tol, rtol=tol)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a.float(), b, atol=5 * tol, rtol=5 * tol)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("shape,scale,causal", SOFTMAX_CASES)
def test_cuda_softmax_matches_reference(shape, scale, causal):
    x = torch.randn(shape, device="cuda") * 3
    y_ref, (g_ref,) = _grads(lambda x: reference.softmax(x, scale, causal), x)
    y, (g,) = _grads(lambda x: kernels.softmax(x, scale, causal, backend="cuda"), x)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(g, g_ref, atol=1e-5, rtol=1e-4)
