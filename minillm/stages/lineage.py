"""What every post-training stage shares: reading its parent run, building its config, seeded batches, finishing.

A post-training run is always a child: `finetune` of a base (pretrain) run, `sft` of a base or finetuned run,
`reward`, `ppo` and `dpo` of an SFT run. The child reads the parent's weights and tokenizer, keeps the parent's
model architecture (the preset only sets training defaults), and records `parent` in its manifest, so any run
can be traced back to its pretraining data (`minillm registry` walks that chain).

The config of a stage is the project's RunConfig plus one section of its own (config.py), built in layers:
preset -> the stage's defaults for that preset -> --config FILE -> --set k=v.
"""
import os

import torch

from minillm.checkpoint import atomic_write_json, load_model, read_manifest, sha256_file, write_manifest
from minillm.config import load_config
from minillm.errors import MiniLLMError

# which parents each stage accepts (a stage may also continue a run of its own kind)
PARENTS = {
    "finetune": ("pretrain", "finetune"),
    "sft": ("pretrain", "finetune", "sft"),
    "reward": ("sft",),
    "ppo": ("sft",),
    "dpo": ("sft",),
}
CHAT_STAGES = ("sft", "ppo", "dpo")


def load_parent(parent_dir: str, stage: str):
    """-> (model, tokenizer, manifest) of a finished parent run, after checking it may parent `stage`."""
    if not parent_dir:
        raise MiniLLMError(f"{stage} needs --parent RUN_DIR (a finished {' or '.join(PARENTS[stage])} run)")
    if not os.path.isfile(os.path.join(parent_dir, "manifest.json")):
        raise MiniLLMError(f"--parent {parent_dir} is not a minillm run directory (no manifest.json)")
    manifest = read_manifest(parent_dir)
    kind = manifest.get("stage")
    if kind == "reward" and stage != "reward":
        raise MiniLLMError(f"--parent {parent_dir} is a reward model (a scalar head), not a policy; "
                           f"{stage} starts from {' or '.join(PARENTS[stage])}"
                           + (" (pass the reward run to ppo as --reward)" if stage == "ppo" else ""))
    if kind not in PARENTS[stage]:
        raise MiniLLMError(f"--parent {parent_dir} is a {kind!r} run but {stage} starts from "
                           f"{' or '.join(PARENTS[stage])}; run the stages in order (see `minillm pipeline`)")
    if manifest.get("status") not in (None, "done"):
        raise MiniLLMError(f"--parent {parent_dir} is unfinished (status {manifest.get('status')!r}); "
                           "finish or resume it first")
    model, tok, _ = load_model(parent_dir)
    if tok is None:
        raise MiniLLMError(f"--parent {parent_dir} has no tokenizer.json")
    if stage in CHAT_STAGES + ("reward",) and not hasattr(tok, "render_chat"):
        raise MiniLLMError(f"the tokenizer of {parent_dir} has no chat template")
    return model, tok, manifest


def stage_config(cls, stage, preset, defaults: dict, parent_model, file=None, overrides=()):
    """The effective config: preset -> stage defaults -> file -> --set; the model section is the parent's."""
    if preset not in defaults:
        raise MiniLLMError(f"{stage} has no defaults for preset {preset!r}; choose one of {', '.join(defaults)}")
    model_keys = [o for o in overrides if o.strip().startswith("model.")]
    if model_keys:
        raise MiniLLMError(f"{stage} keeps the parent's architecture; drop {model_keys[0]!r}")
    cfg = load_config(preset, file=file, overrides=overrides, cls=cls, stage_defaults=defaults[preset])
    cfg.model = parent_model.cfg
    cfg.stage = stage
    return cfg


def start_run(out_dir, tok, parent_dir, resume):
    """Create the run dir (refusing to overwrite a finished run) and store the tokenizer; -> resume flag."""
    if not out_dir:
        raise MiniLLMError("give --out DIR for the new run")
    if os.path.isfile(os.path.join(out_dir, "manifest.json")):
        if read_manifest(out_dir).get("status") == "done" and not resume:
            raise MiniLLMError(f"{out_dir} already holds a finished run; choose a new --out")
        resume = resume or os.path.exists(os.path.join(out_dir, "state.json"))
    if os.path.abspath(out_dir) == os.path.abspath(parent_dir):
        raise MiniLLMError("--out must differ from --parent (a stage never overwrites its parent)")
    os.makedirs(out_dir, exist_ok=True)
    tok.save(out_dir)
    return resume


def manifest_fields(stage, parent_dir, out_dir, data_sha256, **extra):
    return {"stage": stage, "parent": os.path.abspath(parent_dir), "data_sha256": data_sha256,
            "tokenizer_sha256": sha256_file(os.path.join(out_dir, "tokenizer.json")), **extra}


def finish_run(out_dir, metrics: dict, evaluation: dict):
    """Write eval.json (per-prompt scores, evaluation["items"], go to eval_items.json) and fold the evaluation into
    the manifest's metrics. Returns the evaluation without the per-prompt scores."""
    from minillm.evals.safety import save_results
    save_results(out_dir, "eval.json", evaluation)
    evaluation = {k: v for k, v in evaluation.items() if k != "items"}
    write_manifest(out_dir, metrics={**metrics, **{k: v for k, v in evaluation.items() if not isinstance(v, (list,))}})
    return evaluation


class Sampler:
    """Seeded random batches of example indices (with replacement); its RNG state is saved for exact resume."""

    def __init__(self, n: int, seed: int):
        if n == 0:
            raise MiniLLMError("no training examples; check the data")
        self.n, self.g = n, torch.Generator().manual_seed(seed)

    def sample(self, batch_size: int) -> list[int]:
        return torch.randint(self.n, (batch_size,), generator=self.g).tolist()

    def state_dict(self):
        return {"rng": self.g.get_state()}

    def load_state_dict(self, d):
        self.g.set_state(d["rng"])


class SampledStage:
    """What the chat stages share: a Sampler over their examples (its state is the stage's resume state),
    the batch's token count for tokens/s, and an optional evaluate(model) run once at the end."""

    sampler: Sampler
    _evaluate = None

    def tokens(self, batch):
        return int(batch["input_ids"].numel())

    def state_dict(self):
        return self.sampler.state_dict()

    def load_state_dict(self, d):
        self.sampler.load_state_dict(d)

    def evaluate(self, model):
        return self._evaluate(model) if self._evaluate else {}
