"""Run directories and checkpoints: atomic writes, safetensors weights, a manifest, and loading a trained model.

A run directory holds everything needed to use, audit and reproduce one training step:

    manifest.json        stage, parent, config, seed, data + tokenizer sha256, code version, packages, device, metrics
    config.json          the effective config (see minillm/config.py)
    model.safetensors    weights (safetensors: loading cannot run code, unlike pickle)
    state.safetensors    optimizer moments, RNG states, data-sampler state (tensors) ...
    state.json           ... and the step, schedule and every other number, as JSON
    tokenizer.json, metrics.jsonl, eval.json, plots/*.png

Atomic writes: each file is written to a temporary name in the same directory, flushed to disk, then renamed
over the old one (os.replace is atomic on POSIX), so a crash leaves either the old file or the new one.
A checkpoint is three files; each carries the step in its metadata, and loading refuses a set whose steps
disagree (a crash between the renames), so a half-written checkpoint is detected, never silently used.
"""
import datetime
import hashlib
import json
import os
import platform
import subprocess
import tempfile

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save as st_save

from minillm.errors import MiniLLMError

MODEL_FILE, STATE_FILE, STATE_JSON = "model.safetensors", "state.safetensors", "state.json"


# ---- atomic files -------------------------------------------------------------------------------------------
def atomic_write_bytes(path, data: bytes):
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; give the file ordinary permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_json(path, obj):
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def read_json(path, what="file"):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise MiniLLMError(f"{what} {path} is missing; is this a minillm run directory?") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise MiniLLMError(f"{what} {path} is corrupt ({e}); re-run the stage that wrote it") from None


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_texts(texts):
    """sha256 of a list of documents (each length-prefixed, so ['ab','c'] != ['a','bc'])."""
    h = hashlib.sha256()
    for t in texts:
        b = t.encode()
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


# ---- tensors <-> safetensors --------------------------------------------------------------------------------
def unique_state_dict(module):
    """state_dict without tied duplicates (the LM head shares the embedding; safetensors stores it once)."""
    seen, out = set(), {}
    for k, v in module.state_dict().items():
        key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape))
        if key not in seen:
            seen.add(key)
            out[k] = v.detach().cpu().contiguous()
    return out


def save_tensors(path, tensors: dict, metadata=None):
    atomic_write_bytes(path, st_save({k: v.detach().cpu().contiguous() for k, v in tensors.items()},
                                     metadata={k: str(v) for k, v in (metadata or {}).items()}))


def load_tensors(path):
    """-> (tensors, metadata). A damaged file is a MiniLLMError, not a traceback."""
    if not os.path.isfile(path):
        raise MiniLLMError(f"checkpoint file {path} is missing; train first or check --run")
    try:
        from safetensors import safe_open
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
        return load_file(path), metadata
    except (SafetensorError, OSError, ValueError) as e:
        raise MiniLLMError(f"checkpoint {path} is corrupt ({e}); delete it and retrain") from None


def save_model(run_dir, model, step=None):
    meta = {"config": json.dumps(model.cfg.to_dict())}
    if step is not None:
        meta["step"] = step
    save_tensors(os.path.join(run_dir, MODEL_FILE), unique_state_dict(model), meta)
    record_file_hashes(run_dir)


def record_file_hashes(run_dir):
    """manifest["files"] = sha256 of the weights and tokenizer now in run_dir (checked by load_model)."""
    from minillm.registry import file_hashes
    path = os.path.join(run_dir, "manifest.json")
    old = (read_json(path, "manifest").get("files") or {}) if os.path.exists(path) else {}
    write_manifest(run_dir, files={**old, **file_hashes(run_dir, (MODEL_FILE, "tokenizer.json"))})


def load_weights(model, path):
    """Load safetensors weights into model, checking names and shapes first (clear error on a mismatch)."""
    tensors, meta = load_tensors(path)
    expected = model.state_dict()
    tied = {k for k in expected if k not in unique_state_dict(model)}
    missing = sorted(set(expected) - set(tensors) - tied)
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise MiniLLMError(f"checkpoint {path} does not fit this model (missing {missing[:3]}, unexpected "
                           f"{unexpected[:3]}); was it written by a different model config?")
    for k, v in tensors.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise MiniLLMError(f"checkpoint {path}: {k} has shape {tuple(v.shape)} but the model expects "
                               f"{tuple(expected[k].shape)} (vocab or size mismatch); use the matching config")
    model.load_state_dict(tensors, strict=False)
    return meta


# ---- manifest -----------------------------------------------------------------------------------------------
def code_version():
    """{'commit': git HEAD of the minillm source or None, 'dirty': uncommitted changes?, 'version': package}."""
    import minillm
    root = os.path.dirname(os.path.dirname(os.path.abspath(minillm.__file__)))
    out = {"version": minillm.__version__, "commit": None, "dirty": None}
    try:
        run = lambda *a: subprocess.run(["git", "-C", root, *a], capture_output=True, text=True, timeout=10)
        head = run("rev-parse", "HEAD")
        if head.returncode == 0:
            out["commit"] = head.stdout.strip()
            out["dirty"] = bool(run("status", "--porcelain", "--untracked-files=no").stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def package_versions():
    from importlib.metadata import PackageNotFoundError, version
    out = {"python": platform.python_version()}
    for name in ("torch", "numpy", "tiktoken", "safetensors"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def cpu_model():
    """The CPU's model name ("AMD EPYC 9B14"), from /proc/cpuinfo where there is one."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info(device=None):
    """Where a run ran. cpu_capability (torch's vector ISA: AVX2, AVX512, ...) and threads decide the order of
    floating-point sums in the CPU kernels, so the same command and seed can end in different metrics on a machine
    that differs in them: `minillm reproduce` names such differences (MACHINE_KEYS)."""
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "device": str(device) if device is not None else "cpu"}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


MACHINE_KEYS = ("cpu", "cpu_capability", "threads", "gpu", "device")


def machine_differences(recorded: dict, current: dict) -> list[tuple]:
    """(key, recorded, current) for each MACHINE_KEYS entry that differs (keys an older manifest lacks are skipped)."""
    return [(k, recorded.get(k), current.get(k)) for k in MACHINE_KEYS
            if k in recorded and recorded.get(k) != current.get(k)]


def _invocation():
    """The `minillm ...` command line (argv + working directory) of this process, for `minillm reproduce`."""
    import sys
    cli = sys.modules.get("minillm.cli")
    return getattr(cli, "INVOCATION", None)


def write_manifest(run_dir, **fields):
    """Create or update run_dir/manifest.json with fields (merged over what is there)."""
    path = os.path.join(run_dir, "manifest.json")
    manifest = read_json(path, "manifest") if os.path.exists(path) else {
        "stage": None, "parent": None, "config": None, "seed": None, "data_sha256": None,
        "tokenizer_sha256": None, "code_version": code_version(), "packages": package_versions(),
        "device": None, "metrics": {}, "command": _invocation(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    manifest.update(fields)
    atomic_write_json(path, manifest)
    return manifest


def read_manifest(run_dir):
    return read_json(os.path.join(run_dir, "manifest.json"), "manifest")


# ---- loading a trained model --------------------------------------------------------------------------------
def load_model(run_dir, device="cpu", cls=None):
    """-> (model, tokenizer, manifest) of a finished (or checkpointed) run, in eval mode."""
    from minillm.model import ModelConfig, Transformer
    if not os.path.isdir(run_dir):
        raise MiniLLMError(f"run directory {run_dir} does not exist")
    manifest = read_manifest(run_dir)
    from minillm.registry import verify_files
    verify_files(run_dir, manifest)  # sha256 of weights, tokenizer, config vs the manifest: refuse tampered files
    config = read_json(os.path.join(run_dir, "config.json"), "config")
    try:
        mcfg = ModelConfig(**config["model"])
    except (KeyError, TypeError) as e:
        raise MiniLLMError(f"{run_dir}/config.json has no valid model section ({e})") from None
    model = (cls or Transformer)(mcfg)
    load_weights(model, os.path.join(run_dir, MODEL_FILE))
    tokenizer = load_run_tokenizer(run_dir)
    if tokenizer is not None and tokenizer.vocab_size > mcfg.vocab_size:
        raise MiniLLMError(f"tokenizer in {run_dir} has {tokenizer.vocab_size} tokens but the model only "
                           f"{mcfg.vocab_size}; the run directory mixes files from different runs")
    return model.to(device).eval(), tokenizer, manifest


def load_run_tokenizer(run_dir):
    path = os.path.join(run_dir, "tokenizer.json")
    if not os.path.exists(path):
        return None
    from minillm.tokenizer import load_tokenizer
    try:
        return load_tokenizer(run_dir)
    except MiniLLMError:
        raise
    except Exception as e:  # a damaged tokenizer.json
        raise MiniLLMError(f"tokenizer in {run_dir} is corrupt ({e}); re-run the stage") from None
