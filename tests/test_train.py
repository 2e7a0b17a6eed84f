"""The training loop: schedule, optimizer groups, exact resume, determinism, DDP, checkpoints and their errors."""
import json
import math
import os

import numpy as np
import pytest
import torch

from minillm.checkpoint import load_model, load_tensors
from minillm.config import TrainConfig
from minillm.errors import MiniLLMError
from minillm.model import ModelConfig, Transformer
from minillm.stages.pretrain import PretrainStage
from minillm.train import configure_optimizer, load_checkpoint, lr_at, train

TEXT = "the cat sat on the mat. the dog sat on the log. " * 200


class ToyTok:
    """A byte-level stand-in with the tokenizer interface the stage needs (no training, no files)."""
    special_ids = {"<|endoftext|>": 256, "<|pad|>": 257, "<|mask|>": 258}
    eot_id, pad_id, mask_id, vocab_size = 256, 257, 258, 259
    token_bytes = [1] * 256 + [0] * 3

    def encode(self, text):
        return list(text.encode())

    def decode(self, ids):
        return bytes(i for i in ids if i < 256).decode(errors="replace")


def make(tmp_path, name="run", seed=0, dropout=0.1, objective="clm", **train_kw):
    tok = ToyTok()
    ids = np.frombuffer(TEXT.encode(), dtype=np.uint8).astype(np.uint16)
    stage = PretrainStage(ids[:8000], ids[8000:], tok, 16, objective, seed=seed)
    torch.manual_seed(seed)
    model = Transformer(ModelConfig(vocab_size=259, n_layer=2, n_head=2, n_embd=32, block_size=16, dropout=dropout,
                                    causal=objective == "clm"))
    kw = dict(batch_size=8, max_steps=12, lr=3e-3, warmup_steps=3, eval_every=6, eval_batches=2, log_every=1,
              seed=seed, progress=False)
    kw.update(train_kw)
    return model, stage, TrainConfig(**kw), str(tmp_path / name)


def weights(run_dir):
    return load_tensors(os.path.join(run_dir, "model.safetensors"))[0]


def test_schedule_warms_up_linearly_then_follows_a_cosine_to_the_floor():
    cfg = TrainConfig(lr=1.0, warmup_steps=10, max_steps=110, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(60, cfg) == pytest.approx(0.1 + 0.9 * 0.5)  # halfway through the cosine
    assert lr_at(110, cfg) == pytest.approx(0.1) and lr_at(500, cfg) == pytest.approx(0.1)
    assert all(lr_at(s, cfg) >= lr_at(s + 1, cfg) for s in range(10, 120))


def test_weight_decay_applies_to_matrices_only():
    model = Transformer(ModelConfig(vocab_size=50, n_layer=1, n_head=2, n_embd=16, block_size=8))
    opt = configure_optimizer(model, TrainConfig(weight_decay=0.1, optimizer="torch"))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and all(p.dim() == 2 for p in decay["params"])
    assert no_decay["weight_decay"] == 0.0 and all(p.dim() == 1 for p in no_decay["params"])
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == model.num_params()


def test_loss_falls_and_the_run_directory_is_complete(tmp_path):
    model, stage, cfg, run = make(tmp_path, max_steps=40, eval_every=20)
    final = train(model, stage, cfg, run)
    rows = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]
    assert [r["step"] for r in rows] == list(range(1, 41))
    assert rows[-1]["loss"] < 0.6 * rows[0]["loss"]  # from ln(259) = 5.6 towards the text's entropy
    assert final["val_loss"] < 0.6 * math.log(259)
    for f in ("config.json", "manifest.json", "model.safetensors", "state.safetensors", "state.json",
              "plots/loss.png"):
        assert os.path.exists(os.path.join(run, f)), f
    manifest = json.load(open(os.path.join(run, "manifest.json")))
    assert manifest["status"] == "done" and manifest["metrics"]["val_loss"] == final["val_loss"]
    assert set(manifest["packages"]) >= {"python", "torch"} and "commit" in manifest["code_version"]


def test_interrupted_and_resumed_run_is_bit_identical(tmp_path):
    # dropout > 0 so that the restored RNG state matters, and a stop off the checkpoint grid
    model, stage, cfg, full = make(tmp_path, "full")
    train(model, stage, cfg, full)
    model, stage, cfg, part = make(tmp_path, "part")
    train(model, stage, cfg, part, stop_after=7)
    assert json.load(open(os.path.join(part, "state.json")))["step"] == 7
    model, stage, cfg, part = make(tmp_path, "part", seed=0)
    torch.manual_seed(123)  # the resumed process starts with a different RNG state: the checkpoint must restore it
    train(model, stage, cfg, part, resume=True)
    a, b = weights(full), weights(part)
    assert all(torch.equal(a[k], b[k]) for k in a)
    losses = lambda r: [json.loads(line)["loss"] for line in open(os.path.join(r, "metrics.jsonl"))]
    assert losses(full) == losses(part)


def test_same_seed_same_weights_other_seed_other_weights(tmp_path):
    runs = []
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        model, stage, cfg, run = make(tmp_path, name, seed=seed, max_steps=5)
        train(model, stage, cfg, run)
        runs.append(weights(run))
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert not torch.equal(runs[0]["wte.weight"], runs[2]["wte.weight"])


class Halves:
    """Serves each batch of 2B sequences as two micro-batches of B, so accumulation sees the same data."""

    def __init__(self, stage):
        self.stage, self.queue = stage, []

    def train_batch(self, batch_size):
        if not self.queue:
            batch = self.stage.train_batch(2 * batch_size)
            self.queue = [{k: v[:batch_size] for k, v in batch.items()}, {k: v[batch_size:] for k, v in batch.items()}]
        return self.queue.pop(0)

    def __getattr__(self, name):
        return getattr(self.stage, name)


def test_gradient_accumulation_equals_the_bigger_batch(tmp_path):
    model, stage, cfg, run = make(tmp_path, "big", dropout=0.0, max_steps=3, batch_size=8)
    train(model, stage, cfg, run)
    model, stage, cfg, acc = make(tmp_path, "acc", dropout=0.0, max_steps=3, batch_size=4, grad_accum=2)
    train(model, Halves(stage), cfg, acc)
    a, b = weights(run), weights(acc)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)


def _ddp_worker(rank, world, port, tmp, result_file):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from pathlib import Path
    model, stage, cfg, run = make(Path(tmp), "ddp", dropout=0.0, max_steps=4)
    final = train(model, stage, cfg, run)
    if rank == 0:
        json.dump(final, open(result_file, "w"))
    import torch.distributed as dist
    dist.destroy_process_group()


def test_ddp_two_processes_match_one_process_with_the_whole_batch(tmp_path):
    import socket

    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path), str(tmp_path / "ddp.json")), nprocs=2, join=True)
    model, stage, cfg, run = make(tmp_path, "single", dropout=0.0, max_steps=4)
    single = train(model, stage, cfg, run)
    ddp = json.load(open(tmp_path / "ddp.json"))
    assert ddp["loss"] == pytest.approx(single["loss"], abs=1e-5)
    a, b = weights(run), weights(str(tmp_path / "ddp"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)


def test_checkpoint_round_trip_gives_the_same_logits(tmp_path):
    model, stage, cfg, run = make(tmp_path, max_steps=3)
    train(model, stage, cfg, run, config={"model": model.cfg.to_dict(), "train": vars(cfg)})
    loaded, tok, manifest = load_model(run)
    idx = torch.randint(0, 256, (2, 16))
    model.eval()
    assert torch.equal(model(idx), loaded(idx)) and tok is None and manifest["status"] == "done"


def test_bad_resumes_and_broken_checkpoints_are_clear_errors(tmp_path):
    model, stage, cfg, run = make(tmp_path, max_steps=3)
    train(model, stage, cfg, run, config={"model": model.cfg.to_dict(), "train": vars(cfg)})
    with pytest.raises(MiniLLMError, match="already holds a checkpoint"):
        train(*make(tmp_path, max_steps=3)[:3], run)
    with pytest.raises(MiniLLMError, match="nothing to resume"):
        train(*make(tmp_path, "empty")[:3], str(tmp_path / "empty"), resume=True)
    m, s, c, _ = make(tmp_path, lr=1e-2)
    with pytest.raises(MiniLLMError, match="different config"):
        train(m, s, c, run, config={"model": m.cfg.to_dict(), "train": vars(c)}, resume=True)
    # a model of another shape (vocab) cannot load these weights
    other = Transformer(ModelConfig(vocab_size=300, n_layer=2, n_head=2, n_embd=32, block_size=16))
    with pytest.raises(MiniLLMError, match="shape"):
        load_checkpoint(run, other)
    # a crash between the renames: state.json from another step
    state = json.load(open(os.path.join(run, "state.json")))
    json.dump(dict(state, step=99), open(os.path.join(run, "state.json"), "w"))
    with pytest.raises(MiniLLMError, match="inconsistent"):
        load_checkpoint(run, model)
    # a truncated weights file
    path = os.path.join(run, "model.safetensors")
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    with pytest.raises(MiniLLMError, match="corrupt"):
        load_model(run)
    open(path, "wb").write(b"\x00" * 16)
    with pytest.raises(MiniLLMError, match="corrupt"):
        load_model(run)
