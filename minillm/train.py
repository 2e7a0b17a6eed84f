"""The one training loop: every stage (pretrain, finetune, sft, reward, dpo) runs through `train`.

    for step in range(start, max_steps):
        lr = schedule(step)                                   linear warmup, then cosine to lr * min_lr_ratio
        for micro in range(grad_accum):                       gradient accumulation: a bigger batch in pieces
            loss = stage.loss(model, stage.train_batch(B)) / grad_accum;  loss.backward()
        clip ||g|| to grad_clip; AdamW step (weight decay on matrices only); zero grads
        every log_every: metrics.jsonl;  every eval_every: val loss, checkpoint, loss-curve PNG

A stage is any object with
    train_batch(batch_size) -> dict of tensors (leading dim = batch_size)   its own seeded sampler
    val_batches(batch_size, n) -> list of such dicts                        the same every call
    loss(model, batch) -> (loss tensor, {name: float})                      must call model(...) (forward)
    state_dict() -> dict, load_state_dict(d)                                 sampler state (tensors or JSON values)
and optionally evaluate(model) -> dict (run once at the end) and tokens(batch) -> int (default idx.numel()).

Exact resume: a checkpoint holds weights, optimizer moments, the step (the schedule is a function of it), the
global torch RNG (dropout), and the stage's sampler state, so a resumed CPU run replays the very same numbers.
DDP: under `torchrun --nproc_per_node=N`, every process draws the same global batch and keeps its 1/N slice;
gradients are averaged, so N processes with batch B equal one process with batch B (up to float summation order).

Exported for stages with their own loop (PPO): resolve_device, autocast, configure_optimizer, lr_at,
save_checkpoint, load_checkpoint, MetricsLogger, plot_metrics, ddp_setup.
References: Loshchilov & Hutter 2019 (AdamW, SGDR cosine); Goyal et al. 2017 (warmup); nanoGPT train.py.
"""
import contextlib
import math
import os
import time

import torch

from minillm import kernels
from minillm.checkpoint import (MODEL_FILE, STATE_FILE, STATE_JSON, atomic_write_json, device_info, load_tensors,
                                load_weights, read_json, save_model, save_tensors, write_manifest)
from minillm.config import TrainConfig
from minillm.errors import MiniLLMError

# Keys that may change between an interrupted run and its resumption (they do not change the numbers).
RESUME_MAY_CHANGE = {"train.max_steps", "train.progress", "train.device", "train.compile", "train.eval_every",
                     "train.log_every", "train.threads"}


def peak_memory_bytes(device):
    """Peak memory of this process: CUDA's allocator peak on a GPU, else the resident set size (Linux/macOS)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    try:
        import resource
        import sys
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(rss if sys.platform == "darwin" else rss * 1024)  # bytes on macOS, KiB on Linux
    except (ImportError, OSError):
        return None


# ---- device, precision, processes ---------------------------------------------------------------------------
def resolve_device(name="auto"):
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MiniLLMError("device 'cuda' asked for but no CUDA GPU is available; use --set train.device=cpu")
    return torch.device(name)


def autocast(device, dtype="auto"):
    """bf16 autocast where it helps (CUDA with bf16 support, or when asked); otherwise a no-op (fp32)."""
    use_bf16 = dtype == "bfloat16" or (dtype == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported())
    if dtype not in ("auto", "float32", "bfloat16"):
        raise MiniLLMError(f"train.dtype={dtype!r} is not one of auto, float32, bfloat16")
    if use_bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def ddp_setup():
    """-> (rank, world_size). Starts the process group when launched by torchrun (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    import torch.distributed as dist
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size()


def all_reduce_mean(x: float, world):
    if world == 1:
        return x
    import torch.distributed as dist
    t = torch.tensor([x], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return t.item() / world


# ---- optimizer and schedule ---------------------------------------------------------------------------------
def configure_optimizer(model, cfg: TrainConfig):
    """AdamW with weight decay on matrices (dim >= 2: linear weights, embeddings) and none on norms / biases."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return kernels.make_adamw(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                              weight_decay=cfg.weight_decay, backend=cfg.optimizer)


def lr_at(step, cfg: TrainConfig):
    """Linear warmup to cfg.lr over warmup_steps, then cosine down to lr * min_lr_ratio at lr_decay_steps."""
    decay_steps = cfg.lr_decay_steps or cfg.max_steps
    min_lr = cfg.lr * cfg.min_lr_ratio
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if step >= decay_steps:
        return min_lr
    progress = (step - cfg.warmup_steps) / max(1, decay_steps - cfg.warmup_steps)  # 0 -> 1
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - min_lr)


# ---- logging ------------------------------------------------------------------------------------------------
class MetricsLogger:
    """Appends one JSON object per line to metrics.jsonl (only on rank 0)."""

    def __init__(self, path, enabled=True):
        self.path, self.enabled = path, enabled

    def log(self, **row):
        if self.enabled:
            import json
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")

    def truncate_after(self, step):
        """On resume: drop lines logged after the checkpoint, which the resumed run will log again."""
        if self.enabled and os.path.exists(self.path):
            import json
            with open(self.path) as f:
                rows = [line for line in f if line.strip() and json.loads(line).get("step", 0) <= step]
            with open(self.path, "w") as f:
                f.writelines(rows)


def read_metrics(path):
    import json
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_metrics(run_dir, keys=("loss", "val_loss"), name="loss.png"):
    """Plot keys of metrics.jsonl against step into run_dir/plots/name (matplotlib, no display needed)."""
    rows = read_metrics(os.path.join(run_dir, "metrics.jsonl"))
    if not rows:
        return None
    from matplotlib.figure import Figure  # no pyplot: never switches the backend of a notebook
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for key in keys:
        pts = [(r["step"], r[key]) for r in rows if key in r]
        if pts:
            ax.plot(*zip(*pts), label=key, marker="o" if key.startswith("val") else None)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats / token)")
    ax.legend()
    ax.grid(alpha=0.3)
    os.makedirs(os.path.join(run_dir, "plots"), exist_ok=True)
    path = os.path.join(run_dir, "plots", name)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return path


# ---- checkpoints --------------------------------------------------------------------------------------------
def _split_state(prefix, state: dict, tensors: dict, values: dict):
    """Nested dict -> tensors (safetensors) + values (JSON), keys joined with '/'."""
    for k, v in state.items():
        key = f"{prefix}/{k}"
        if isinstance(v, dict):
            _split_state(key, v, tensors, values)
        elif torch.is_tensor(v):
            tensors[key] = v
        else:
            values[key] = list(v) if isinstance(v, tuple) else v


def _join_state(prefix, tensors: dict, values: dict):
    out = {}
    for src in (tensors, values):
        for key, v in src.items():
            if key.startswith(prefix + "/"):
                node, parts = out, key[len(prefix) + 1:].split("/")
                for p in parts[:-1]:
                    node = node.setdefault(p, {})
                node[parts[-1]] = v
    return out


def save_checkpoint(run_dir, model, optimizer, step, stage=None, extra=None):
    """Weights, optimizer, RNG and sampler state at `step`, each file written atomically and tagged with step."""
    tensors, values = {}, {}
    opt = optimizer.state_dict()
    _split_state("optim", {str(i): s for i, s in opt["state"].items()}, tensors, values)
    values["param_groups"] = opt["param_groups"]
    tensors["rng/torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng/cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    if stage is not None:
        _split_state("stage", stage.state_dict(), tensors, values)
    save_model(run_dir, model, step=step)
    save_tensors(os.path.join(run_dir, STATE_FILE), tensors, {"step": step})
    atomic_write_json(os.path.join(run_dir, STATE_JSON), {"step": step, "values": values, **(extra or {})})


def load_checkpoint(run_dir, model, optimizer=None, stage=None):
    """Restore what save_checkpoint wrote; -> the state.json dict (with 'step')."""
    meta = read_json(os.path.join(run_dir, STATE_JSON), "checkpoint state")
    model_meta = load_weights(model, os.path.join(run_dir, MODEL_FILE))
    tensors, state_meta = load_tensors(os.path.join(run_dir, STATE_FILE))
    if not (str(meta.get("step")) == model_meta.get("step") == state_meta.get("step")):
        raise MiniLLMError(f"checkpoint in {run_dir} is inconsistent (steps {meta.get('step')}, "
                           f"{model_meta.get('step')}, {state_meta.get('step')}; a crash while saving?); "
                           "start a fresh run")
    values = meta["values"]
    if optimizer is not None:
        state = {int(k): v for k, v in _join_state("optim", tensors, values).items()}
        try:
            optimizer.load_state_dict({"state": state, "param_groups": values["param_groups"]})
        except (ValueError, KeyError) as e:
            raise MiniLLMError(f"optimizer state in {run_dir} does not fit this model ({e})") from None
    torch.set_rng_state(tensors["rng/torch"])
    if "rng/cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(tensors["rng/cuda"]))
    if stage is not None:
        stage.load_state_dict(_join_state("stage", tensors, values))
    return meta


def _config_diff(old: dict, new: dict, prefix=""):
    diffs = []
    for k in sorted(set(old) | set(new)):
        key = prefix + k
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += _config_diff(a, b, key + ".")
        elif a != b and key not in RESUME_MAY_CHANGE:
            diffs.append(f"{key}: {a!r} -> {b!r}")
    return diffs


# ---- the loop -----------------------------------------------------------------------------------------------
def _shard(batch, rank, world):
    if world == 1:
        return batch
    out = {}
    for k, v in batch.items():
        if v.size(0) % world:
            raise MiniLLMError(f"train.batch_size={v.size(0)} must be divisible by the {world} DDP processes")
        n = v.size(0) // world
        out[k] = v[rank * n:(rank + 1) * n]
    return out


def _to(batch, device):
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


@torch.no_grad()
def estimate_val_loss(model, stage, cfg, device):
    """Mean loss over the stage's fixed validation batches (model in eval mode: no dropout)."""
    was_training = model.training
    model.eval()
    losses = []
    for batch in stage.val_batches(cfg.batch_size, cfg.eval_batches):
        with autocast(device, cfg.dtype):
            loss, _ = stage.loss(model, _to(batch, device))
        losses.append(loss.item())
    model.train(was_training)
    return sum(losses) / max(1, len(losses))


def train(model, stage, cfg: TrainConfig, run_dir, *, config=None, manifest=None, resume=False, stop_after=None,
          final_eval=True):
    """Train `model` on `stage` into run_dir; -> final metrics dict.

    config: the full effective config dict, saved as config.json and compared on resume.
    manifest: fields for manifest.json (stage, parent, seed, data_sha256, tokenizer_sha256, ...).
    resume: continue from the checkpoint in run_dir. stop_after: stop (with a checkpoint) after this many steps
    in total, as an interruption would; the run can then be resumed. final_eval: run stage.evaluate at the end."""
    threads = torch.get_num_threads()
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    try:
        return _train(model, stage, cfg, run_dir, config, manifest, resume, stop_after, final_eval)
    finally:
        torch.set_num_threads(threads)


def _train(model, stage, cfg, run_dir, config, manifest, resume, stop_after, final_eval):
    rank, world = ddp_setup()
    main = rank == 0
    device = resolve_device(cfg.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    config = config if config is not None else {"train": vars(cfg)}
    os.makedirs(run_dir, exist_ok=True)
    has_ckpt = os.path.exists(os.path.join(run_dir, STATE_JSON))
    if resume and not has_ckpt:
        raise MiniLLMError(f"nothing to resume in {run_dir} (no {STATE_JSON}); drop --resume to start fresh")
    if not resume and has_ckpt:
        raise MiniLLMError(f"{run_dir} already holds a checkpoint; pass --resume to continue it or choose a new --out")
    if resume:
        diffs = _config_diff(read_json(os.path.join(run_dir, "config.json"), "config"), config)
        if diffs:
            raise MiniLLMError(f"cannot resume {run_dir} with a different config ({'; '.join(diffs[:3])}); "
                               "use the original settings or a new --out")

    model.to(device)
    optimizer = configure_optimizer(model, cfg)
    logger = MetricsLogger(os.path.join(run_dir, "metrics.jsonl"), enabled=main)
    start = 0
    if resume:
        start = load_checkpoint(run_dir, model, optimizer, stage)["step"]
        logger.truncate_after(start)
    else:
        torch.manual_seed(cfg.seed)  # dropout stream; the stage seeds its own sampler
        if main:
            atomic_write_json(os.path.join(run_dir, "config.json"), config)
            if os.path.exists(logger.path):
                os.remove(logger.path)
    if main:
        write_manifest(run_dir, config=config, seed=cfg.seed, device=device_info(device), world_size=world,
                       status="running", **(manifest or {}))

    net = model
    if cfg.compile:
        net = torch.compile(net)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP
        net = DDP(net, device_ids=[device.index] if device.type == "cuda" else None)

    end = cfg.max_steps if stop_after is None else min(cfg.max_steps, stop_after)
    bar = None
    if main and cfg.progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=cfg.max_steps, initial=start, desc=getattr(stage, "name", "train"), unit="step",
                   dynamic_ncols=True)
    tokens_of = getattr(stage, "tokens", lambda b: b["idx"].numel())
    t0, paused, tokens_seen, last = time.time(), 0.0, 0, {}  # paused: eval + checkpoint time, not training
    model.train()
    step = start
    while step < end:
        lr = lr_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        step_loss, step_metrics = 0.0, {}
        for micro in range(cfg.grad_accum):
            batch = _to(_shard(stage.train_batch(cfg.batch_size), rank, world), device)
            sync = contextlib.nullcontext() if world == 1 or micro == cfg.grad_accum - 1 else net.no_sync()
            with sync:
                with autocast(device, cfg.dtype):
                    loss, metrics = stage.loss(net, batch)
                (loss / cfg.grad_accum).backward()
            step_loss += loss.item() / cfg.grad_accum
            for k, v in metrics.items():
                step_metrics[k] = step_metrics.get(k, 0.0) + float(v) / cfg.grad_accum
            tokens_seen += tokens_of(batch) * world
        grad_norm = None
        if cfg.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip).item()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if not math.isfinite(step_loss):
            raise MiniLLMError(f"loss became {step_loss} at step {step}; lower train.lr or check the data")

        step_loss = all_reduce_mean(step_loss, world)
        elapsed = time.time() - t0
        tok_s = tokens_seen / max(elapsed - paused, 1e-9)
        last = {"step": step, "loss": step_loss, "lr": lr, "tok_per_s": round(tok_s, 1), **step_metrics}
        if grad_norm is not None:
            last["grad_norm"] = grad_norm
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.3f}", tok_s=f"{tok_s:,.0f}")
        is_eval = step % cfg.eval_every == 0 or step == cfg.max_steps
        t_pause = time.time()
        if step % cfg.log_every == 0 or is_eval or step == end:
            if is_eval:
                last["val_loss"] = estimate_val_loss(model, stage, cfg, device)
            logger.log(**last, elapsed_s=round(elapsed, 2))
        if (is_eval or step == end) and main:
            save_checkpoint(run_dir, model, optimizer, step, stage)
            plot_metrics(run_dir)
        paused += time.time() - t_pause
    if bar is not None:
        bar.close()

    final = {k: v for k, v in last.items() if k != "lr"}
    final["train_time_s"] = round(time.time() - t0, 2)
    final["tokens"] = tokens_seen                    # this process's session (for cost: FLOPs ≈ 6·N·tokens)
    final["peak_memory_bytes"] = peak_memory_bytes(device)
    if step >= cfg.max_steps:
        if "val_loss" not in final:
            final["val_loss"] = estimate_val_loss(model, stage, cfg, device)
        if final_eval and hasattr(stage, "evaluate") and main:
            final.update(stage.evaluate(model))
    if main:
        write_manifest(run_dir, metrics=final, status="done" if step >= cfg.max_steps else "interrupted")
    if world > 1:
        import torch.distributed as dist
        dist.barrier()
    return final
