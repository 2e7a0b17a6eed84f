"""Regression analysis between two runs: every metric side by side, the change, and a flag where B is worse.

A metric's *direction* comes from its name: losses, perplexities, bits per byte, over-refusal, flaw counts, PII
regurgitation, contamination, time and memory are better lower; everything else (accuracy, exact match,
oracle score, refusal of harmful requests, tokens/s) is better higher.

Noise-aware flagging. A difference is flagged as a regression only when it is worse than the tolerance
*and* — where both runs stored per-item scores (e.g. 0/1 per eval prompt, in `eval_items.json`) — the
bootstrap confidence interval of the difference excludes zero (Efron & Tibshirani 1993):

    resample items with replacement R times, Δ_r = mean(B*) - mean(A*);  CI = [q_{α/2}, q_{1-α/2}] of Δ_r.

When the items are the same prompts in the same order the resampling is *paired* (the same indices for
both runs), which cancels the per-item difficulty and gives a much narrower interval. Without per-item
scores only the tolerance applies (relative, with an absolute floor for metrics near zero).
"""
from __future__ import annotations

import math
import os

import numpy as np

from minillm.errors import MiniLLMError
from minillm.evals.report import read_json_or_none

LOWER_IS_BETTER = ("loss", "ppl", "perplexity", "bpb", "bits_per_byte", "over_refusal", "regurgitation",
                   "contamination", "time", "seconds", "memory", "bytes", "flops", "drop", "kl")
HIGHER_IS_BETTER = ("per_s", "per_sec", "throughput", "accuracy", "acc", "exact_match", "score")
NOT_COMPARED = ("step", "seed", "n_", "num_", "count", "items", "tokens", "epoch", "grad_norm", "lr", "elapsed",
                "vocab_size")  # bookkeeping and training diagnostics: shown, never flagged
RESULT_FILES = ("eval.json", "safety.json", "robustness.json", "cost.json")


def lower_is_better(name: str) -> bool:
    if any(part.endswith("flaws") for part in name.lower().split(".")[:-1]):   # eval.oracle_flaws.rambling: counts
        return True
    leaf = name.rsplit(".", 1)[-1].lower()
    if any(k in leaf for k in ("over_refusal", "regurgitation")):
        return True
    if any(k in leaf for k in HIGHER_IS_BETTER):
        return False
    return leaf.endswith("_s") or any(k in leaf for k in LOWER_IS_BETTER)


def flatten(obj, prefix="") -> dict[str, float]:
    """Nested dicts -> {"a.b.c": number}; lists and strings are skipped. {"eval": {"loss": 2.1}} -> {"eval.loss": 2.1}"""
    out = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}." if prefix or k else ""))
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool) and math.isfinite(obj):
        out[prefix[:-1]] = float(obj)
    return out


def run_metrics(run_dir: str) -> tuple[dict[str, float], dict[str, list[float]]]:
    """(metrics, per-item scores) of a run directory: manifest metrics + eval/safety/robustness/cost files."""
    if not os.path.isdir(run_dir):
        raise MiniLLMError(f"run directory {run_dir} does not exist")
    metrics = {}
    manifest = read_json_or_none(os.path.join(run_dir, "manifest.json")) or {}
    metrics.update(flatten(manifest.get("metrics") or {}, ""))
    for name in RESULT_FILES:
        data = read_json_or_none(os.path.join(run_dir, name))
        if isinstance(data, dict):
            data = {k: v for k, v in data.items() if k not in ("items", "config", "examples")}
            metrics.update(flatten(data, name.split(".")[0] + "."))
    items = read_json_or_none(os.path.join(run_dir, "eval_items.json")) or {}
    items = {k: [float(x) for x in v] for k, v in items.items() if isinstance(v, list)}
    if not metrics:
        raise MiniLLMError(f"{run_dir} has no metrics (manifest.json / eval.json); is it a finished minillm run?")
    return metrics, items


def bootstrap_diff_ci(a: list[float], b: list[float], reps: int = 2000, alpha: float = 0.05,
                      seed: int = 0) -> tuple[float, float]:
    """CI of mean(b) - mean(a) by bootstrap; paired when a and b have the same length (same items)."""
    rng = np.random.default_rng(seed)
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) == len(b):
        idx = rng.integers(0, len(a), size=(reps, len(a)))          # (R, n) the same items for both
        diffs = b[idx].mean(1) - a[idx].mean(1)
    else:
        diffs = (b[rng.integers(0, len(b), size=(reps, len(b)))].mean(1)
                 - a[rng.integers(0, len(a), size=(reps, len(a)))].mean(1))
    lo, hi = np.quantile(diffs, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def compare_metrics(a: dict, b: dict, items_a: dict | None = None, items_b: dict | None = None,
                    tolerance: float = 0.02, abs_floor: float = 1e-3) -> list[dict]:
    """One row per metric in either run: {"metric", "a", "b", "delta", "rel", "better", "regression", "ci"}.

    B regresses on a metric when it is worse than A by more than max(tolerance·|A|, abs_floor) and, if per-item
    scores exist for that metric in both runs, the bootstrap CI of the difference lies entirely on the bad side.
    """
    items_a, items_b = items_a or {}, items_b or {}
    rows = []
    for name in sorted(set(a) | set(b)):
        va, vb = a.get(name), b.get(name)
        row = {"metric": name, "a": va, "b": vb, "delta": None, "rel": None, "better": "lower" if lower_is_better(name)
               else "higher", "regression": False, "ci": None}
        leaf = name.rsplit(".", 1)[-1]
        if va is None or vb is None or any(leaf.startswith(p) or leaf.endswith("_" + p.strip("_")) for p in NOT_COMPARED):
            rows.append(row)
            continue
        delta = vb - va
        row["delta"], row["rel"] = delta, (delta / abs(va) if va else None)
        worse = -delta if row["better"] == "higher" else delta   # > 0 when B is worse
        regress = worse > max(tolerance * abs(va), abs_floor)
        # a manifest metric is the stage's own evaluation folded in: its per-item scores are eval.json's
        per_a, per_b = (d.get(name) or d.get("eval." + name) for d in (items_a, items_b))
        if regress and per_a and per_b:
            lo, hi = bootstrap_diff_ci(per_a, per_b)
            row["ci"] = [lo, hi]
            regress = hi < 0 if row["better"] == "higher" else lo > 0
        row["regression"] = bool(regress)
        rows.append(row)
    return rows


def compare_runs(run_a: str, run_b: str, tolerance: float = 0.02) -> list[dict]:
    (a, ia), (b, ib) = run_metrics(run_a), run_metrics(run_b)
    return compare_metrics(a, b, ia, ib, tolerance=tolerance)


def _fmt(x):
    if x is None:
        return "—"
    return f"{x:.4g}" if abs(x) < 1e5 else f"{x:.3e}"


def render_table(rows: list[dict], name_a="A", name_b="B") -> str:
    """A markdown table; regressions marked with '⚠ regression'."""
    lines = [f"| metric | {name_a} | {name_b} | change | better | flag |", "|---|---:|---:|---:|---|---|"]
    for r in rows:
        change = "—" if r["delta"] is None else (f"{r['delta']:+.4g}" + (f" ({r['rel']:+.1%})" if r["rel"] is not None else ""))
        flag = "⚠ regression" if r["regression"] else ""
        if r["ci"]:
            flag += f" CI [{r['ci'][0]:+.3f}, {r['ci'][1]:+.3f}]"
        lines.append(f"| {r['metric']} | {_fmt(r['a'])} | {_fmt(r['b'])} | {change} | {r['better']} | {flag.strip()} |")
    return "\n".join(lines)
