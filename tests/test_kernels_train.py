"""A tiny Transformer trained with our cpp kernels follows the reference run's loss curve; the bench CLIs work."""
import json

import pytest
import torch

from minillm import kernels
from minillm.cli import main


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # a loaded shared CI machine: one thread is fastest and deterministic
    yield
    torch.set_num_threads(n)


def test_tiny_model_trained_with_cpp_kernels_reaches_the_reference_loss():
    pytest.importorskip("minillm.model")
    ok, why = kernels.available("cpp")
    if not ok:
        pytest.skip(f"cpp backend unavailable: {why}")
    from minillm.kernels.bench_train import batches, make_runs, train_step
    cfg = dict(vocab_size=64, n_layer=2, n_head=2, n_embd=32, block_size=32)
    runs = make_runs([("reference", "reference"), ("cpp", "cpp")], cfg, lr=1e-2)
    data = batches(64, 4, 32, 200)
    curves = {c: [train_step(m, o, b) for b in data] for c, (m, o) in runs.items()}
    ref, cpp = curves[("reference", "reference")], curves[("cpp", "cpp")]
    tail = lambda xs: sum(xs[-20:]) / 20  # noqa: E731
    assert tail(ref) < 0.5 * ref[0]  # it learned the pattern (loss from ~4.2 to well under half)
    assert abs(tail(cpp) - tail(ref)) < 0.02 * tail(ref)
    assert abs(cpp[50] - ref[50]) < 1e-3 * ref[50]  # early on, the curves agree to rounding


def test_bench_kernels_cli_writes_rows_with_the_promised_fields(tmp_path, capsys):
    out, png = tmp_path / "rows.json", tmp_path / "speed.png"
    assert main(["bench", "kernels", "--quick", "--ops", "softmax,adamw", "--repeat", "2",
                 "--json", str(out), "--plot", str(png)]) == 0
    rows = json.loads(out.read_text())
    need = {"op", "backend", "shape", "median_ms", "speedup_vs_torch", "speedup_vs_reference", "max_abs_err"}
    assert rows and all(need <= set(r) for r in rows)
    assert {r["backend"] for r in rows} >= {"reference", "torch"}
    assert all(r["max_abs_err"] < 1e-5 for r in rows if r["max_abs_err"] is not None)
    assert png.stat().st_size > 1000
    assert "| op |" in capsys.readouterr().out


def test_kernels_info_lists_every_backend(capsys):
    assert main(["kernels", "info"]) == 0
    out = capsys.readouterr().out
    for b in ("reference", "torch", "cpp", "cuda"):
        assert f"  {b}" in out


def test_bench_rejects_bad_flags_with_one_line(capsys):
    assert main(["bench", "kernels", "--ops", "matmul"]) == 2
    assert "unknown op" in capsys.readouterr().err
