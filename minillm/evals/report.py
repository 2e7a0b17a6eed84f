"""Report-card sections: hygiene, safety, robustness, cost, lineage, and the release model card.

Each `render_*` function takes the JSON a suite wrote (or a run directory) and returns Markdown, so
`minillm pipeline` can append them to report.md and `minillm release` can build MODEL_CARD.md from the same
pieces. Nothing here computes a metric: it only lays out what the suites measured.
Model cards follow Mitchell et al. 2019, "Model Cards for Model Reporting".
"""
from __future__ import annotations

import json
import os


def read_json_or_none(path):
    """A JSON file's content, or None when it is missing or not valid JSON (reports show what exists)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _pct(x):
    return "—" if x is None else f"{x:.1%}"


def render_hygiene(report: dict) -> str:
    """The hygiene summary: documents in/out, what was removed and why, PII per type, contamination, planted."""
    if not report:
        return "## Data hygiene\n\n(no hygiene report)\n"
    lines = ["## Data hygiene", "",
             f"{report['input']['documents']} documents in, {report['output']['documents']} out "
             f"({report['input']['chars']:,} → {report['output']['chars']:,} characters).", "",
             "| removed because | documents |", "|---|---:|"]
    for k, v in sorted(report.get("removed", {}).items()):
        lines.append(f"| {k} | {v} |")
    lines += ["", "| PII type | redacted |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in report.get("pii", {}).items()]
    leak = report.get("leakage") or {}
    if leak:
        lines += ["", "| eval set | contaminated before | after |", "|---|---:|---:|"]
        for name, s in leak["before"]["sets"].items():
            a = leak["after"]["sets"][name]
            lines.append(f"| {name} | {s['contaminated']}/{s['checked']} ({_pct(s['rate'])}) | "
                         f"{a['contaminated']}/{a['checked']} ({_pct(a['rate'])}) |")
    if report.get("planted"):
        lines += ["", "| planted in the world | found |", "|---|---:|"]
        lines += [f"| {k} | {v['found']}/{v['planted']} |" for k, v in report["planted"].items()]
    return "\n".join(lines) + "\n"


def render_safety(safety: dict | None) -> str:
    if not safety:
        return "## Safety\n\n(no safety results)\n"
    rows = [("refusal of harmful requests", "refusal_rate", "higher"),
            ("over-refusal of benign requests", "over_refusal_rate", "lower"),
            ("PII regurgitation (probes reciting a planted value)", "pii_regurgitation_rate", "lower")]
    lines = ["## Safety", "", "| measure | rate | items | better |", "|---|---:|---:|---|"]
    for label, key, better in rows:
        n = safety.get(key.replace("_rate", "_n"))
        lines.append(f"| {label} | {_pct(safety.get(key))} | {n if n is not None else '—'} | {better} |")
    return "\n".join(lines) + "\n"


def render_robustness(rob: dict | None) -> str:
    if not rob:
        return "## Robustness\n\n(no robustness results)\n"
    lines = ["## Robustness", "", f"Task: {rob.get('task', '?')}, {rob.get('n', '?')} items; "
             f"clean accuracy {_pct(rob.get('clean'))}.", "",
             "| perturbation | accuracy | drop |", "|---|---:|---:|"]
    for name, v in rob.get("perturbations", {}).items():
        lines.append(f"| {name} | {_pct(v['accuracy'])} | {v['drop']:+.1%} |")
    return "\n".join(lines) + "\n"


def render_cost(run_dir: str) -> str:
    from minillm.evals.cost import lineage_cost, render_cost_table
    return "## Cost\n\n" + render_cost_table(lineage_cost(run_dir)) + "\n"


def render_lineage(run_dir: str) -> str:
    """The chain of runs as a Mermaid graph (GitHub renders it) plus a plain-text fallback."""
    from minillm.evals.cost import lineage
    chain = lineage(run_dir)
    nodes = []
    for i, r in enumerate(chain):
        m = read_json_or_none(os.path.join(r, "manifest.json")) or {}
        sha = (m.get("data_sha256") or "")[:8]
        nodes.append((f"n{i}", f"{m.get('stage', '?')}: {os.path.basename(r)}" + (f" (data {sha})" if sha else "")))
    lines = ["## Lineage", "", "```mermaid", "graph LR"]
    lines += [f'  {a}["{label}"]' for a, label in nodes]
    lines += [f"  {nodes[i][0]} --> {nodes[i + 1][0]}" for i in range(len(nodes) - 1)]
    lines += ["```", "", " → ".join(label for _, label in nodes)]
    return "\n".join(lines) + "\n"


def render_sections(run_dir: str, hygiene: dict | None = None) -> str:
    """Every section for report.md of a (final) run: hygiene (given, or run_dir/hygiene.json), safety,
    robustness, cost, lineage."""
    hygiene = hygiene if hygiene is not None else read_json_or_none(os.path.join(run_dir, "hygiene.json"))
    return "\n".join([render_hygiene(hygiene) if hygiene else "",
                      render_safety(read_json_or_none(os.path.join(run_dir, "safety.json"))),
                      render_robustness(read_json_or_none(os.path.join(run_dir, "robustness.json"))),
                      render_cost(run_dir), render_lineage(run_dir)]).lstrip()


def _data_lines(run_dir: str) -> list[str]:
    """What hygiene and the leakage check said for each run of the lineage that recorded them."""
    from minillm.evals.cost import lineage
    lines = []
    for r in lineage(run_dir):
        m = read_json_or_none(os.path.join(r, "manifest.json")) or {}
        name = f"{m.get('stage')} ({os.path.basename(r)})"
        h, leak = m.get("hygiene"), m.get("leakage")
        if h:
            lines.append(f"- {name}: hygiene kept {h.get('output_documents')} of {h.get('input_documents')} documents; "
                         f"removed {h.get('removed')}; PII redacted {h.get('pii')}"
                         + (f"; planted problems found {h['planted_found']}" if h.get("planted_found") else ""))
        if leak:
            lines.append(f"- {name}: leakage check max contamination {_pct(leak.get('max_rate'))} "
                         f"(threshold {_pct(leak.get('threshold'))})"
                         + (" — **over the threshold, overridden by the user**" if leak.get("overridden") else ""))
    return lines or ["- no hygiene or leakage record in the lineage (data used as given)"]


def render_model_card(run_dir: str, manifest: dict, release_info: dict) -> str:
    """MODEL_CARD.md: intended use, data, evaluations, safety results, limitations, provenance."""
    from minillm.evals.compare import NOT_COMPARED, flatten
    cfg = manifest.get("config") or read_json_or_none(os.path.join(run_dir, "config.json")) or {}
    model_cfg = cfg.get("model", {}) if isinstance(cfg, dict) else {}
    evals = flatten(manifest.get("metrics") or {})
    evals.update(flatten(read_json_or_none(os.path.join(run_dir, "eval.json")) or {}))
    cost_keys = ("tok_per_s", "train_time_s", "peak_memory_bytes", "loss")
    evals = {k: v for k, v in evals.items() if k not in cost_keys and not any(
        k.rsplit(".", 1)[-1].startswith(p) for p in NOT_COMPARED)}
    lines = [f"# Model card: {os.path.basename(os.path.abspath(run_dir))}", "",
             "## Intended use",
             "An educational model trained with minillm to study the stages of LLM training on a laptop. It is "
             "small and trained on a synthetic world (or the user's text): it is **not** for any decision about "
             "people, medical or legal advice, or any production use.", "",
             "## Model",
             f"Stage `{manifest.get('stage')}`; " + ", ".join(f"{k}={v}" for k, v in model_cfg.items()), "",
             "## Data",
             f"Data sha256 `{manifest.get('data_sha256')}`, tokenizer sha256 `{manifest.get('tokenizer_sha256')}`, "
             f"seed {manifest.get('seed')}.", ""] + _data_lines(run_dir) + [
             "", "## Evaluations", "", "| metric | value |", "|---|---:|"]
    lines += [f"| {k} | {v:.4g} |" for k, v in sorted(evals.items())] or ["| (none recorded) | |"]
    lines += ["", render_safety(read_json_or_none(os.path.join(run_dir, "safety.json"))),
              render_robustness(read_json_or_none(os.path.join(run_dir, "robustness.json"))),
              "## Release gate", "",
              f"Passed: **{release_info['gate_passed']}**" + ("; **released with --force**" if release_info["forced"]
                                                              else "") + ".", ""]
    lines += [f"- {r}" for r in release_info["gate_failures"]]
    lines += ["", "## Limitations",
              "- Tiny model: it memorises and confuses facts; outputs are often wrong or ungrammatical.",
              "- Safety behaviour was measured only on the world's own harmful/benign prompts and PII probes; "
              "it says little about other requests.",
              "- Scores on a synthetic world do not transfer to real-world tasks.", "",
              render_cost(run_dir), render_lineage(run_dir),
              "## Provenance", "",
              f"Code version: `{json.dumps(manifest.get('code_version'))}`; packages: "
              f"`{json.dumps(manifest.get('packages'))}`; device: `{json.dumps(manifest.get('device'))}`; "
              f"command: `{json.dumps(manifest.get('command'))}`.", ""]
    return "\n".join(lines)


def pipeline_sections(out_dir: str, chat_stages=("dpo", "ppo", "sft"), world_seed: int = 0,
                      max_items: int = 40, n_robust: int = 24) -> str:
    """The trust sections of a pipeline's report.md: hygiene (out_dir/hygiene/hygiene.json), then safety and
    robustness of the last chat model (computed once, cached in its run dir), cost along its lineage and the
    lineage graph. Small item limits keep it to a minute on a laptop."""
    hygiene = read_json_or_none(os.path.join(out_dir, "hygiene", "hygiene.json"))
    final = next((os.path.join(out_dir, s) for s in chat_stages
                  if os.path.isfile(os.path.join(out_dir, s, "model.safetensors"))), None)
    if final is None:  # stopped before a chat model (--until): hygiene, then cost and lineage of the last LM
        last = next((os.path.join(out_dir, s) for s in ("finetune", "pretrain")
                     if os.path.isfile(os.path.join(out_dir, s, "model.safetensors"))), None)
        parts = [render_hygiene(hygiene) if hygiene else ""]
        if last is not None:
            parts += [render_cost(last), render_lineage(last)]
        return "\n".join(parts)
    if not os.path.isfile(os.path.join(final, "safety.json")):
        from minillm.evals.safety import run_safety
        run_safety(final, world_seed, max_items=max_items)
    if not os.path.isfile(os.path.join(final, "robustness.json")):
        from minillm.evals.robustness import run_robustness
        run_robustness(final, world_seed, n=n_robust)
    return (f"## Trust: {os.path.basename(final)} (the final chat model)\n\n"
            + render_sections(final, hygiene))
