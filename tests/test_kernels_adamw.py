"""Our fused AdamW takes the same steps as torch.optim.AdamW, and its checkpoints move between backends."""
import io

import pytest
import torch
from torch import nn

from minillm import kernels


class TinyLM(nn.Module):
    """A real little model: token + position embeddings, a causal attention layer, an MLP, LayerNorm, a head."""

    def __init__(self, vocab=37, d=32, T=12):
        super().__init__()
        self.emb, self.pos = nn.Embedding(vocab, d), nn.Parameter(torch.randn(T, d) * 0.02)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.norm, self.head = nn.LayerNorm(d), nn.Linear(d, vocab)

    def forward(self, idx):
        x = self.emb(idx) + self.pos[: idx.shape[1]]  # (B, T, C)
        q, k, v = self.qkv(x).unflatten(-1, (3, 4, -1)).permute(2, 0, 3, 1, 4)  # each (B, H, T, C/H)
        x = x + self.proj(kernels.attention(q, k, v, backend="reference").transpose(1, 2).flatten(2))
        x = x + self.mlp(x)
        return self.head(self.norm(x))  # (B, T, V)


def _groups(model, wd):
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    return [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]


def _train(model, opt, steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, 37, (4, 12), generator=g)
        loss = nn.functional.cross_entropy(model(idx).flatten(0, 1), idx.roll(1, 1).flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Training loops on a shared 2-core machine: one thread avoids spin-wait contention (results are equal)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def cpp():
    ok, why = kernels.available("cpp")
    if not ok:
        pytest.skip(f"cpp backend unavailable: {why}")
    return "cpp"


def test_cpp_adamw_matches_torch_adamw_for_100_steps_with_weight_decay(cpp):
    torch.manual_seed(0)
    a = TinyLM()
    b = TinyLM()
    b.load_state_dict(a.state_dict())
    hp = dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-8)
    opt_a = kernels.make_adamw(_groups(a, 0.1), weight_decay=0.1, backend=cpp, **hp)
    opt_b = torch.optim.AdamW(_groups(b, 0.1), weight_decay=0.1, **hp)
    # Both optimizers get the gradients of model a, so the comparison measures the optimizer's arithmetic,
    # not the chaos of two training runs amplifying last-bit differences through the loss.
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(100):
        idx = torch.randint(0, 37, (4, 12), generator=g)
        loss = nn.functional.cross_entropy(a(idx).flatten(0, 1), idx.roll(1, 1).flatten())
        opt_a.zero_grad()
        opt_b.zero_grad()
        loss.backward()
        for pa, pb in zip(a.parameters(), b.parameters()):
            pb.grad = pa.grad.clone()
        opt_a.step()
        opt_b.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.2  # it really trained
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        rel = ((pa - pb).norm() / pb.norm()).item()
        assert rel < 1e-6, f"{n}: relative difference {rel:.2e}"
    sa, sb = opt_a.state_dict()["state"], opt_b.state_dict()["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        assert set(sa[i]) == {"step", "exp_avg", "exp_avg_sq"} and torch.is_tensor(sa[i]["step"])
        assert sa[i]["step"].item() == sb[i]["step"].item() == 100
        torch.testing.assert_close(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"], rtol=1e-5, atol=1e-12)


def _roundtrip(state_dict):
    buf = io.BytesIO()
    torch.save(state_dict, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)  # what a checkpoint does: no pickled code


@pytest.mark.parametrize("first,second", [("cpp", "torch"), ("torch", "cpp"), ("cpp", "reference")])
def test_adamw_checkpoint_moves_between_backends(cpp, first, second):
    """Train with one backend, save its state dict, load it into another: both continue identically."""
    torch.manual_seed(1)
    model, clone = TinyLM(), TinyLM()
    hp = dict(lr=2e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.05)
    opt = kernels.make_adamw(model.parameters(), backend=first, **hp)
    _train(model, opt, 10)
    clone.load_state_dict(model.state_dict())
    opt2 = kernels.make_adamw(clone.parameters(), backend=second, **hp)
    opt2.load_state_dict(_roundtrip(opt.state_dict()))
    g = torch.Generator().manual_seed(5)
    for _ in range(5):  # same gradients into both: the continuation must agree step for step
        idx = torch.randint(0, 37, (4, 12), generator=g)
        loss = nn.functional.cross_entropy(model(idx).flatten(0, 1), idx.roll(1, 1).flatten())
        opt.zero_grad()
        loss.backward()
        for pa, pb in zip(model.parameters(), clone.parameters()):
            pb.grad = pa.grad.clone()
        opt.step()
        opt2.step()
    for pa, pb in zip(model.parameters(), clone.parameters()):
        assert ((pa - pb).norm() / pa.norm()).item() < 1e-6
    assert all(s["step"].item() == 15 for s in opt2.state_dict()["state"].values())


def test_cpp_adamw_steps_are_as_accurate_as_torch_against_float64(cpp):
    """Three steps on 100K parameters vs the same formula in float64: our error is no larger than torch's own.
    (Computing 1 - beta2 in float instead of double made it 3x larger, which the 100-step test did not see.)"""
    g = torch.Generator().manual_seed(0)
    p0, grads = torch.randn(100_000, generator=g), [torch.randn(100_000, generator=g) for _ in range(3)]
    lr, b1, b2, eps, wd = 0.1, 0.9, 0.999, 1e-8, 0.1
    p, m, v = p0.double(), torch.zeros(100_000, dtype=torch.float64), torch.zeros(100_000, dtype=torch.float64)
    for t, gr in enumerate(grads, 1):
        gr = gr.double()
        m, v = b1 * m + (1 - b1) * gr, b2 * v + (1 - b2) * gr * gr
        p = p * (1 - lr * wd) - lr / (1 - b1 ** t) * m / ((v / (1 - b2 ** t)).sqrt() + eps)
    errs = {}
    for backend in (cpp, "torch"):
        q = p0.clone().requires_grad_()
        opt = kernels.make_adamw([q], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd, backend=backend)
        for gr in grads:
            q.grad = gr.clone()
            opt.step()
        errs[backend] = (q.detach().double() - p).abs().max().item()
    assert errs[cpp] <= 1.25 * errs["torch"], errs


def test_cpp_adamw_skips_parameters_without_grad_exactly_as_torch(cpp):
    """A parameter whose grad is None takes no step and gets no state, in torch and in our flat state alike."""
    torch.manual_seed(2)
    a, b = TinyLM(), TinyLM()
    b.load_state_dict(a.state_dict())
    hp = dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    opt_a, opt_b = kernels.make_adamw(a.parameters(), backend=cpp, **hp), torch.optim.AdamW(b.parameters(), **hp)
    g = torch.Generator().manual_seed(0)
    for step in range(8):
        idx = torch.randint(0, 37, (4, 12), generator=g)
        loss = nn.functional.cross_entropy(a(idx).flatten(0, 1), idx.roll(1, 1).flatten())
        opt_a.zero_grad(set_to_none=True)
        loss.backward()
        a.pos.grad = None if step < 3 else a.pos.grad   # pos gets its first grad at step 3
        a.head.bias.grad = None if step % 2 else a.head.bias.grad  # head.bias on every other step
        for pa, pb in zip(a.parameters(), b.parameters()):
            pb.grad = None if pa.grad is None else pa.grad.clone()
        opt_a.step()
        opt_b.step()
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert ((pa - pb).norm() / pb.norm()).item() < 1e-6, n
    sa, sb = opt_a.state_dict()["state"], opt_b.state_dict()["state"]
    assert sa.keys() == sb.keys()
    assert {i: s["step"].item() for i, s in sa.items()} == {i: s["step"].item() for i, s in sb.items()}
    steps = {s["step"].item() for s in sa.values()}
    assert steps == {8.0, 5.0, 4.0}  # most params, pos (steps 3-7), head.bias (even steps)


def test_cpp_adamw_checkpoint_survives_safetensors_and_resumes(cpp, tmp_path):
    """The run's own checkpoint path (safetensors, state as views of one buffer) saves and resumes exactly."""
    from minillm.model import ModelConfig, Transformer
    from minillm.train import load_checkpoint, save_checkpoint
    torch.manual_seed(3)
    cfg = ModelConfig(vocab_size=64, n_layer=1, n_head=2, n_embd=32, block_size=16)
    model, clone = Transformer(cfg), Transformer(cfg)
    hp = dict(lr=3e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    opt, opt2 = kernels.make_adamw(model.parameters(), backend=cpp, **hp), kernels.make_adamw(clone.parameters(),
                                                                                           backend=cpp, **hp)
    idx = torch.randint(0, 64, (2, 16))

    def train_step(m, o):
        o.zero_grad(set_to_none=True)
        m(idx).float().logsumexp(-1).mean().backward()
        o.step()

    for _ in range(3):
        train_step(model, opt)
    save_checkpoint(tmp_path, model, opt, step=3)
    load_checkpoint(tmp_path, clone, opt2)
    for _ in range(2):
        train_step(model, opt)
        train_step(clone, opt2)
    for pa, pb in zip(model.parameters(), clone.parameters()):
        assert torch.equal(pa, pb)
    assert all(s["step"].item() == 5 for s in opt2.state_dict()["state"].values())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_adamw_matches_torch_adamw():
    torch.manual_seed(0)
    a, b = TinyLM().cuda(), TinyLM().cuda()
    b.load_state_dict(a.state_dict())
    hp = dict(lr=3e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    opt_a, opt_b = kernels.make_adamw(a.parameters(), backend="cuda", **hp), torch.optim.AdamW(b.parameters(), **hp)
    for _ in range(30):
        idx = torch.randint(0, 37, (4, 12), device="cuda")
        for m, o in ((a, opt_a), (b, opt_b)):
            loss = nn.functional.cross_entropy(m(idx).flatten(0, 1), idx.roll(1, 1).flatten())
            o.zero_grad()
            loss.backward()
            o.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert ((pa - pb).norm() / pb.norm()).item() < 1e-5
