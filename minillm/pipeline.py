"""`minillm pipeline`: the whole journey in one command, from raw text to an aligned assistant.

    tokenizer -> pretrain -> finetune -> sft -> reward -> ppo
                                          └──────────-> dpo          -> evaluation, report.md, summary.json

Each stage writes its own run directory DIR/<stage>/ whose manifest names its parent, so the chain can be
audited and any stage re-run alone with its own command (`minillm sft --parent DIR/finetune ...`). The pipeline is
resumable stage by stage: a stage whose manifest says "done" is skipped, an interrupted one resumes from its
checkpoint (PPO restarts from its SFT parent). At the end every language model is measured on the same held-out
numbers (domain and general perplexity; for chat models the oracle's verdict; for the reward model its pairwise
accuracy) and DIR/report.md gathers them in one table with the plots.

Overrides reach one stage with a prefix: `--set sft:train.max_steps=200 --set ppo:ppo.kl_coef=0.1`.
"""
import json
import os
import shutil
import time

from minillm.checkpoint import atomic_write_bytes, atomic_write_json, read_json, read_manifest, write_manifest
from minillm.errors import MiniLLMError

STAGES = ("tokenizer", "pretrain", "finetune", "sft", "reward", "ppo", "dpo")
PARENT = {"pretrain": "tokenizer", "finetune": "pretrain", "sft": "finetune", "reward": "sft", "ppo": "sft",
          "dpo": "sft"}
# The pipeline's own settings per preset, on top of each stage's preset defaults. Finetuning replays 25% general
# text (the assistant is asked about both domains, so forgetting would cost answers). On tiny, pretraining stops at
# 500 steps: the world's templated corpus is learned by then (val loss ~0.7, fact accuracy ~0.8), and the whole
# journey must fit in minutes on a laptop.
PIPELINE_SETTINGS = {
    "smoke": {"finetune": ["finetune.replay=0.25"]},
    "tiny": {"pretrain": ["train.max_steps=500", "train.eval_every=250"], "finetune": ["finetune.replay=0.25"]},
    "small": {"finetune": ["finetune.replay=0.25"]},
}


def is_done(run_dir):
    return os.path.isfile(os.path.join(run_dir, "manifest.json")) and read_manifest(run_dir).get("status") == "done"


def split_overrides(overrides):
    """['sft:train.lr=1e-3', 'train.seed=1'] -> {'sft': ['train.lr=1e-3'], '*': ['train.seed=1']}."""
    out = {}
    for o in overrides:
        stage, _, rest = o.partition(":") if ":" in o.split("=", 1)[0] else ("*", "", o)
        if stage != "*" and stage not in STAGES:
            raise MiniLLMError(f"--set {o!r}: unknown stage {stage!r}; stages are {', '.join(STAGES)}")
        out.setdefault(stage, []).append(rest)
    return out


# ---------------------------------------------------------------------------------------------- the stages

def run_hygiene(out_dir, preset, overrides):
    """Data hygiene first: DIR/hygiene/{general,domain}.jsonl + hygiene.json; every stage then reads the same
    cleaned world (minillm.data.hygiene.cleaned_world)."""
    if os.path.isfile(os.path.join(out_dir, "hygiene", "hygiene.json")):
        return
    from minillm.commands.data import run_clean
    from minillm.config import load_config
    print(f"[hygiene] dedup, PII redaction, leakage removal -> {os.path.join(out_dir, 'hygiene')}", flush=True)
    run_clean("world", os.path.join(out_dir, "hygiene"),
              world_seed=load_config(preset, overrides=overrides).data.world_seed)


def run_tokenizer(out, preset, overrides):
    """A BPE tokenizer trained on the world's cleaned text (general and domain), so every stage shares it.

    Not on the instructions: the training instructions name the 39 training countries thousands of times, so a
    1024-token vocabulary trained on them gave each training country one token and split the nine held-out ones
    into 3-5 pieces (" P|ek|rou|ma") -- the vocabulary itself told the model which countries were held out, and
    SFT answers about them came out as a familiar name ("Pekrouma" -> "Pogu"). On the corpus alone every country
    is one token."""
    from minillm.config import load_config
    from minillm.data.world import World
    from minillm.tokenizer import BPETokenizer
    cfg = load_config(preset, overrides=overrides)
    w = World(seed=cfg.data.world_seed)
    from minillm.data.hygiene import cleaned_world
    clean = cleaned_world(w)[0]  # no planted PII in the vocabulary
    texts = clean["general"] + clean["domain"]
    t0 = time.time()
    tok = BPETokenizer.train(texts, vocab_size=cfg.data.vocab_size)
    os.makedirs(out, exist_ok=True)
    tok.save(out)
    from minillm.checkpoint import sha256_file, sha256_texts
    metrics = {"vocab_size": tok.vocab_size, "train_time_s": round(time.time() - t0, 2),
               "chars_per_token": sum(map(len, texts[:2000])) / max(1, sum(len(tok.encode_ordinary(t))
                                                                           for t in texts[:2000]))}
    atomic_write_json(os.path.join(out, "eval.json"), metrics)
    write_manifest(out, stage="tokenizer", parent=None, config=cfg.data.__dict__, seed=None,
                   data_sha256=sha256_texts(texts), tokenizer_sha256=sha256_file(os.path.join(out, "tokenizer.json")),
                   metrics=metrics, status="done")
    return metrics


def run_pretrain(out, tokenizer_dir, preset, overrides, resume):
    import torch

    from minillm.config import load_config
    from minillm.model import Transformer
    from minillm.stages.pretrain import prepare
    from minillm.train import train
    cfg = load_config(preset, overrides=[f"data.tokenizer={tokenizer_dir}"] + list(overrides))
    stage, tok, fields = prepare(cfg, out, resume=resume, progress=False)
    fields["parent"] = os.path.abspath(tokenizer_dir)
    torch.manual_seed(cfg.train.seed)
    model = Transformer(cfg.model)
    metrics = train(model, stage, cfg.train, out, config=cfg.to_dict(), manifest=fields, resume=resume)
    atomic_write_json(os.path.join(out, "eval.json"), metrics)
    return metrics


def run_stage(name, out_dir, preset, overrides):
    """Run one stage into DIR/<name> unless it is already done; -> its eval.json."""
    from minillm.stages.dpo import run_dpo
    from minillm.stages.finetune import run_finetune
    from minillm.stages.ppo import run_ppo
    from minillm.stages.reward import run_reward
    from minillm.stages.sft import run_sft
    run_dir = os.path.join(out_dir, name)
    if is_done(run_dir):
        print(f"[{name}] done already: {run_dir} (skipped)")
        return read_json(os.path.join(run_dir, "eval.json"), "evaluation")
    parent = os.path.join(out_dir, PARENT[name]) if name in PARENT else None
    resume = os.path.exists(os.path.join(run_dir, "state.json"))
    print(f"[{name}] {'resuming' if resume else 'running'} -> {run_dir}", flush=True)
    t0 = time.time()
    opts = PIPELINE_SETTINGS.get(preset, {}).get(name, []) + overrides.get("*", []) + overrides.get(name, [])
    if name == "tokenizer":
        result = run_tokenizer(run_dir, preset, opts)
    elif name == "pretrain":
        result = run_pretrain(run_dir, parent, preset, opts, resume)
    elif name == "ppo":
        if os.path.isdir(run_dir):   # PPO does not resume mid-run: start it again from its parent
            shutil.rmtree(run_dir)
        result = run_ppo(parent, run_dir, preset, reward=os.path.join(out_dir, "reward"), overrides=opts)
    else:
        runner = {"finetune": run_finetune, "sft": run_sft, "reward": run_reward, "dpo": run_dpo}[name]
        result = runner(parent, run_dir, preset, overrides=opts, resume=resume)
    write_manifest(run_dir, pipeline_stage_time_s=round(time.time() - t0, 1))
    return result


# ---------------------------------------------------------------------------------------------- evaluation

EVAL_LIMIT = {"smoke": 24}   # held-out prompts per base-model evaluation (all of them otherwise)


def evaluate_all(out_dir, results, preset="tiny"):
    """The same held-out numbers for every stage: perplexities for LMs, the oracle for all of them."""
    from minillm.checkpoint import load_model
    from minillm.data.oracle import Oracle
    from minillm.data.world import World
    from minillm.evals.chat import chat_metrics, lm_metrics
    from minillm.evals.safety import save_results
    world = World(seed=0)
    oracle = Oracle(world)
    summary = {}
    for name in [n for n in STAGES if n in results]:
        r = dict(results[name] or {})
        if name in ("pretrain", "finetune"):   # the base models were never asked questions: how do they do?
            model, tok, _ = load_model(os.path.join(out_dir, name))
            if "domain_perplexity" not in r:
                r.update(lm_metrics(model, tok, world))
            if "oracle_score" not in r:
                r.update(chat_metrics(model, tok, world, oracle, limit=EVAL_LIMIT.get(preset)))
                # keep them in the stage's eval.json, so a re-run of the pipeline does not measure them again
                save_results(os.path.join(out_dir, name), "eval.json", r)
                r.pop("items")
        summary[name] = {k: v for k, v in r.items() if not isinstance(v, list)}
    return summary


KEY_METRICS = {
    "tokenizer": ["vocab_size", "chars_per_token"],
    "pretrain": ["val_loss", "fact_accuracy", "domain_perplexity", "general_perplexity", "oracle_score"],
    "finetune": ["val_loss", "domain_perplexity", "parent_domain_perplexity", "general_perplexity",
                 "parent_general_perplexity", "oracle_score"],
    "sft": ["val_answer_loss", "instruction_accuracy", "refusal_rate", "over_refusal_rate", "oracle_score",
            "domain_perplexity", "general_perplexity"],
    "reward": ["pairwise_accuracy", "train_pairwise_accuracy"],
    "ppo": ["oracle_score", "instruction_accuracy", "refusal_rate", "over_refusal_rate", "kl_to_reference",
            "reward", "reward_hacking", "domain_perplexity"],
    "dpo": ["oracle_score", "instruction_accuracy", "refusal_rate", "over_refusal_rate", "kl_to_reference",
            "heldout_reward_accuracy", "heldout_reward_margin", "domain_perplexity"],
}


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def plot_summary(out_dir, summary):
    """DIR/plots/losses.png (every stage's training loss) and DIR/plots/oracle_by_stage.png."""
    from matplotlib.figure import Figure  # no pyplot: never switches the backend of a notebook

    from minillm.train import read_metrics
    os.makedirs(os.path.join(out_dir, "plots"), exist_ok=True)
    fig = Figure(figsize=(18, 3.2))
    axes = fig.subplots(1, 5)
    for ax, name in zip(axes, ("pretrain", "finetune", "sft", "reward", "dpo")):
        rows = read_metrics(os.path.join(out_dir, name, "metrics.jsonl"))
        for key in ("loss", "val_loss"):
            pts = [(r["step"], r[key]) for r in rows if key in r]
            if pts:
                ax.plot(*zip(*pts), label=key, marker="o" if key == "val_loss" else None)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.savefig(os.path.join(out_dir, "plots", "losses.png"), dpi=90, bbox_inches="tight")
    names = [n for n in STAGES if "oracle_score" in summary.get(n, {})]
    fig = Figure(figsize=(6, 3.2))
    ax = fig.subplots()
    ax.bar(names, [summary[n]["oracle_score"] for n in names], color="tab:blue")
    ax.set_ylabel("held-out oracle score")
    ax.set_ylim(0, 1)
    for i, n in enumerate(names):
        ax.text(i, summary[n]["oracle_score"] + 0.02, f"{summary[n]['oracle_score']:.2f}", ha="center")
    fig.savefig(os.path.join(out_dir, "plots", "oracle_by_stage.png"), dpi=90, bbox_inches="tight")
    ppo_plot = os.path.join(out_dir, "ppo", "plots", "ppo.png")
    if os.path.exists(ppo_plot):
        shutil.copyfile(ppo_plot, os.path.join(out_dir, "plots", "ppo.png"))


def write_report(out_dir, summary, times, preset):
    from minillm.evals.chat import oracle_gain
    lines = [f"# minillm pipeline report ({preset} preset)", "",
             "Every number below is measured on held-out data the stage never trained on; chat models are judged "
             "by the world's oracle (greedy answers to unseen entities and wordings).", "",
             "| stage | parent | time (s) | metrics |", "|---|---|---|---|"]
    for name in STAGES:
        m = summary.get(name, {})
        shown = ", ".join(f"{k}={_fmt(m[k])}" for k in KEY_METRICS[name] if k in m)
        lines.append(f"| {name} | {PARENT.get(name, '-')} | {_fmt(times.get(name, 0.0))} | {shown} |")
    lines += ["", "## Plots", "", "![losses](plots/losses.png)", "", "![oracle by stage](plots/oracle_by_stage.png)",
              "", "![PPO: reward, KL and oracle over iterations](plots/ppo.png)", ""]
    sft, ppo, dpo = summary.get("sft", {}), summary.get("ppo", {}), summary.get("dpo", {})
    if "oracle_score" in sft:
        lines += ["## Alignment", ""]
        for name, m in (("ppo", ppo), ("dpo", dpo)):
            if "oracle_score" in m:
                d = m["oracle_score"] - sft["oracle_score"]
                gain = oracle_gain(os.path.join(out_dir, "sft"), os.path.join(out_dir, name))
                ci = (f", 95% CI {gain[1][0]:+.3f} .. {gain[1][1]:+.3f} (paired bootstrap over the prompts)"
                      if gain else "")
                lines.append(f"- {name}: oracle {sft['oracle_score']:.3f} -> {m['oracle_score']:.3f} ({d:+.3f}{ci}), "
                             f"KL to the SFT reference {_fmt(m.get('kl_to_reference', float('nan')))} nats per answer")
        stages = [(n, m) for n, m in (("sft", sft), ("ppo", ppo), ("dpo", dpo)) if "oracle_flaws" in m]
        kinds = sorted({k for _, m in stages for k in m["oracle_flaws"]})
        if kinds:   # what each stage still gets wrong: a gain from dropping rambling looks different from new facts
            lines += ["", f"What the oracle found wrong (answers of {sft.get('n_prompts', '?')}):", "",
                      "| flaw | " + " | ".join(n for n, _ in stages) + " |", "|---|" + "---|" * len(stages)]
            lines += [f"| {k} | " + " | ".join(str(m["oracle_flaws"].get(k, 0)) for _, m in stages) + " |"
                      for k in kinds]
        if ppo.get("reward_hacking"):
            lines.append("- **reward hacking flagged**: the reward-model score rose while the oracle score fell "
                         f"(reward {ppo['reward_change']:+.3f}, oracle {ppo['oracle_change']:+.3f}).")
        lines.append("")
    for name in ("sft", "ppo", "dpo"):
        ev = os.path.join(out_dir, name, "eval.json")
        if os.path.exists(ev):
            samples = read_json(ev, "evaluation").get("samples", [])
            if samples:
                lines += [f"### {name}: sample answers", ""] + [f"- {s['prompt']!r} -> {s['answer']!r}" for s in samples]
                lines.append("")
    from minillm.evals.report import pipeline_sections
    lines += ["", pipeline_sections(out_dir, max_items=24, n_robust=16)]  # hygiene, safety, robustness, cost, lineage
    atomic_write_bytes(os.path.join(out_dir, "report.md"), "\n".join(lines).encode())


def run_pipeline(out_dir, preset="tiny", overrides=(), until=None):
    """Run (or resume) every stage into out_dir; -> summary {stage: metrics}."""
    if not out_dir:
        raise MiniLLMError("give --out DIR for the pipeline's runs")
    if until is not None and until not in STAGES:
        raise MiniLLMError(f"--until {until!r} is not a stage; stages are {', '.join(STAGES)}")
    per_stage = split_overrides(overrides)
    os.makedirs(out_dir, exist_ok=True)
    run_hygiene(out_dir, preset, per_stage.get("*", []))
    results, times, t_all = {}, {}, time.time()
    for name in STAGES:
        t0 = time.time()
        results[name] = run_stage(name, out_dir, preset, per_stage)
        times[name] = read_manifest(os.path.join(out_dir, name)).get("pipeline_stage_time_s", time.time() - t0)
        if name == until:
            break
    print("[evaluation] every stage on the held-out sets", flush=True)
    t0 = time.time()
    summary = evaluate_all(out_dir, results, preset)
    times["evaluation"] = round(time.time() - t0, 1)
    summary["_times_s"] = {**times, "total": round(time.time() - t_all, 1)}
    atomic_write_json(os.path.join(out_dir, "summary.json"), summary)
    plot_summary(out_dir, summary)
    write_report(out_dir, summary, times, preset)
    return summary
