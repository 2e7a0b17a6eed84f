"""Evaluate a run directory: `evaluate_run(run_dir) -> dict`, dispatching on the manifest's stage.

Each stage registers one function `(run_dir, model, tok, manifest, config) -> dict` in EVALUATORS; post-training
stages add theirs here. The result is also written to <run>/eval.json (per-prompt scores to eval_items.json).
"""
import os

from minillm.checkpoint import load_model, read_json
from minillm.errors import MiniLLMError


def eval_pretrain(run_dir, model, tok, manifest, config):
    from minillm.data.shards import open_shard
    from minillm.stages.pretrain import evaluate_pretrain
    world = None
    if config["data"]["source"] == "world":
        from minillm.data.world import World
        world = World(seed=config["data"]["world_seed"])
    val = open_shard(os.path.join(run_dir, "data"), "val")
    out = evaluate_pretrain(model, tok, val, config["objective"], world, config["data"]["mlm_prob"])
    if world is not None and config["objective"] == "clm":  # domain/general perplexity, as for every LM
        from minillm.evals.chat import lm_metrics
        out.update(lm_metrics(model, tok, world))
    return out


EVALUATORS = {
    "pretrain": eval_pretrain,
}
from minillm.evals.chat import POST_EVALUATORS  # noqa: E402  finetune, sft, reward, ppo, dpo (evals/chat.py)

EVALUATORS.update(POST_EVALUATORS)


def evaluate_run(run_dir, device="cpu"):
    model, tok, manifest = load_model(run_dir, device)
    config = read_json(os.path.join(run_dir, "config.json"), "config")
    stage = manifest.get("stage")
    if stage not in EVALUATORS:
        raise MiniLLMError(f"no evaluation for stage {stage!r} (known: {', '.join(EVALUATORS)})")
    result = EVALUATORS[stage](run_dir, model, tok, manifest, config)
    from minillm.evals.safety import save_results
    save_results(run_dir, "eval.json", result)            # per-prompt scores ("items") go to eval_items.json
    return {k: v for k, v in result.items() if k != "items"}
