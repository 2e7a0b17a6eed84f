"""Cost of a run and of its whole lineage: wall time, tokens per second, training FLOPs, peak memory, per stage.

Training compute of a dense Transformer is, to a good approximation (Kaplan et al. 2020, "Scaling Laws for
Neural Language Models", section 2.1),

    C ≈ 6 · N · D   FLOPs

with N the non-embedding parameters and D the training tokens: a forward pass costs 2 FLOPs per parameter
per token (one multiply-add) and the backward pass twice that. When the model reports its own
flops_per_token (which adds the attention term 12·L·C·T) we use that instead of 6N.

Everything is read from what the training loop already wrote (manifest.json, metrics.jsonl, config.json);
no model is loaded. A number the run did not record is reported as None, never guessed.
"""
from __future__ import annotations

import json
import os

from minillm.errors import MiniLLMError
from minillm.evals.report import read_json_or_none

# Names the training loop may use for the same quantity; the first one present wins.
KEYS = {
    "wall_time_s": ("wall_time_s", "train_time_s", "time_s", "elapsed_s", "seconds"),
    "tokens": ("tokens", "tokens_seen", "train_tokens", "tokens_processed"),
    "tokens_per_s": ("tokens_per_s", "tok_per_s", "tokens_per_sec", "throughput"),
    "peak_memory_bytes": ("peak_memory_bytes", "peak_mem_bytes", "max_rss_bytes", "peak_memory"),
    "params": ("params", "num_params", "n_params", "non_embedding_params"),
    "flops_per_token": ("flops_per_token",),
}


def _last_metrics(run_dir):
    """The last line of metrics.jsonl (cumulative counters such as tokens are there)."""
    last = {}
    try:
        with open(os.path.join(run_dir, "metrics.jsonl")) as f:
            for line in f:
                if line.strip():
                    try:
                        last.update(json.loads(line))
                    except ValueError:
                        pass
    except OSError:
        pass
    return last


def _pick(sources, key):
    for src in sources:
        for name in KEYS[key]:
            v = src.get(name)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                return v
    return None


def _model_counts(run_dir):
    """(params, flops_per_token) of the run's model from its config.json, built on the 'meta' device
    (shapes only, no memory, no weights read); (None, None) when there is no model config."""
    cfg = read_json_or_none(os.path.join(run_dir, "config.json")) or {}
    if not isinstance(cfg.get("model"), dict):
        return None, None
    try:
        import torch

        from minillm.model import ModelConfig, Transformer
        with torch.device("meta"):
            model = Transformer(ModelConfig(**cfg["model"]))
        return model.num_params(), model.flops_per_token()
    except Exception:  # an old or foreign config: report the cost without FLOPs rather than fail
        return None, None


def stage_cost(run_dir: str) -> dict:
    """{"run", "stage", "wall_time_s", "tokens", "tokens_per_s", "params", "flops", "peak_memory_mb"} of one run."""
    manifest = read_json_or_none(os.path.join(run_dir, "manifest.json"))
    if manifest is None:
        raise MiniLLMError(f"{run_dir}/manifest.json is missing; is it a minillm run directory?")
    m = manifest.get("metrics") or {}
    sources = [m, m.get("cost") or {}, manifest.get("cost") or {}, _last_metrics(run_dir)]
    wall, tokens, tps = _pick(sources, "wall_time_s"), _pick(sources, "tokens"), _pick(sources, "tokens_per_s")
    if tokens is None and wall and tps:
        tokens = round(tps * wall)   # the loop logs a rate and a time; their product is the tokens seen
    if tps is None and wall and tokens:
        tps = tokens / wall
    if wall is None and tps and tokens:
        wall = tokens / tps
    params, fpt = _pick(sources, "params"), _pick(sources, "flops_per_token")
    if params is None and fpt is None:
        params, fpt = _model_counts(run_dir)
    if fpt is None and params:
        fpt = 6 * params
    peak = _pick(sources, "peak_memory_bytes")
    return {"run": os.path.basename(os.path.normpath(run_dir)), "stage": manifest.get("stage"),
            "wall_time_s": wall, "tokens": tokens, "tokens_per_s": tps, "params": params,
            "flops": (fpt * tokens) if (fpt and tokens) else None,
            "peak_memory_mb": (peak / 2**20) if peak else None}


def lineage(run_dir: str, max_depth: int = 32) -> list[str]:
    """[root, ..., run_dir]: follow manifest["parent"] links upwards (parents given relative to the run or absolute)."""
    chain, cur = [], os.path.abspath(run_dir)
    while cur and len(chain) < max_depth:
        chain.append(cur)
        manifest = read_json_or_none(os.path.join(cur, "manifest.json")) or {}
        parent = manifest.get("parent")
        if isinstance(parent, dict):
            parent = parent.get("run_dir") or parent.get("path")
        if not parent:
            break
        cand = [parent, os.path.join(os.path.dirname(cur), parent), os.path.join(cur, parent)]
        cur = next((os.path.abspath(c) for c in cand if os.path.isdir(c)), None)
        if cur in chain:
            break
    return chain[::-1]


def lineage_cost(run_dir: str) -> dict:
    """Per-stage costs along the lineage plus totals (None totals where a stage did not record the number)."""
    stages = [stage_cost(r) for r in lineage(run_dir)]
    total = {}
    # a stage with no model, tokens or FLOPs recorded (the tokenizer) trains nothing: it adds only wall time
    trained = [s for s in stages if any(s[k] is not None for k in ("params", "tokens", "flops"))]
    for key in ("wall_time_s", "tokens", "flops"):
        pool = stages if key == "wall_time_s" else trained
        vals = [s[key] for s in pool if s[key] is not None or s in trained]
        total[key] = sum(vals) if vals and all(v is not None for v in vals) else None
    peaks = [s["peak_memory_mb"] for s in stages if s["peak_memory_mb"] is not None]
    total["peak_memory_mb"] = max(peaks) if peaks else None
    return {"stages": stages, "total": total}


def render_cost_table(cost: dict) -> str:
    def f(x, spec):
        return "—" if x is None else format(x, spec)
    lines = ["| stage | run | wall time (s) | tokens | tokens/s | training FLOPs (≈6ND) | peak memory (MB) |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for s in cost["stages"]:
        lines.append(f"| {s['stage']} | {s['run']} | {f(s['wall_time_s'], '.1f')} | {f(s['tokens'], ',.0f')} | "
                     f"{f(s['tokens_per_s'], ',.0f')} | {f(s['flops'], '.3e')} | {f(s['peak_memory_mb'], '.0f')} |")
    t = cost["total"]
    lines.append(f"| **total** | | {f(t['wall_time_s'], '.1f')} | {f(t['tokens'], ',.0f')} | | "
                 f"{f(t['flops'], '.3e')} | {f(t['peak_memory_mb'], '.0f')} |")
    return "\n".join(lines)
