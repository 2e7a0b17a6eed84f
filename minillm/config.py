"""Configuration as data: dataclasses, named presets, TOML/JSON files and `--set section.key=value` overrides.

The effective config of a run is built in layers, each overriding the one before:

    dataclass defaults  ->  preset (smoke | tiny | small)  ->  stage defaults  ->  --config FILE  ->  --set k=v

Every layer is a plain dict like {"model": {"n_layer": 4}, "train": {"lr": 1e-3}}. Unknown sections or keys and
values of the wrong type are errors (MiniLLMError), so a typo never silently does nothing. Nothing is executed:
TOML is read with tomllib, JSON with json.

A stage with options of its own subclasses RunConfig and adds a section, e.g.

    @dataclass
    class SFTConfig(RunConfig):
        sft: SFTSection = field(default_factory=SFTSection)

    cfg = load_config("tiny", cls=SFTConfig, overrides=["sft.mask_prompt=true"])
"""
import dataclasses
import json
import os
import typing
from dataclasses import dataclass, field

from minillm.errors import MiniLLMError
from minillm.model import ModelConfig


@dataclass
class TrainConfig:
    batch_size: int = 16          # sequences per micro-step, summed over all DDP processes
    grad_accum: int = 1           # micro-steps per optimizer step
    max_steps: int = 1000         # optimizer steps
    lr: float = 1e-3              # peak learning rate
    min_lr_ratio: float = 0.1     # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 100       # linear warmup from ~0 to lr
    lr_decay_steps: typing.Optional[int] = None  # end of the cosine; None = max_steps
    weight_decay: float = 0.1     # on matrices only (not norms, biases)
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0        # max global gradient norm; 0 = no clipping
    eval_every: int = 200         # steps between validation losses (and checkpoints)
    eval_batches: int = 10        # validation batches per evaluation
    log_every: int = 10           # steps between lines in metrics.jsonl
    seed: int = 0
    device: str = "auto"          # auto | cpu | cuda | mps
    dtype: str = "auto"           # auto (bf16 autocast on CUDA, else fp32) | float32 | bfloat16
    compile: bool = False         # torch.compile the model
    threads: int = 0              # CPU threads for torch (0 = torch's default; 1 is faster on a busy machine)
    optimizer: str = "torch"      # AdamW kernel backend (minillm.kernels.make_adamw): torch, reference, cpp, cuda, auto
    progress: bool = True         # tqdm bar


@dataclass
class DataConfig:
    source: str = "world"         # "world" or a path: .txt, folder of .txt, .jsonl with "text"
    tokenizer: str = ""           # "" = train BPE on the data, "char" = train a CharTokenizer, or a directory
    vocab_size: int = 1024        # BPE vocabulary to train (specials included)
    val_fraction: float = 0.1     # held-out documents for user data (the world has its own val split)
    world_seed: int = 0
    mlm_prob: float = 0.15        # masked LM: fraction of tokens selected for prediction
    allow_leakage: bool = False   # train even when the data contains too much of an eval set (recorded)
    leakage_threshold: float = 0.01  # largest share of any eval set allowed inside the training data
    faq: bool = True              # world only: the training instructions as Q/A pages in the corpora (data/faq.py)


@dataclass
class RunConfig:
    stage: str = "pretrain"
    objective: str = "clm"        # clm (next token) | mlm (masked LM)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def to_dict(self):
        return dataclasses.asdict(self)


# Presets: smoke = tests (seconds), tiny = a laptop CPU (minutes), small = a GPU or a patient CPU.
PRESETS = {
    "smoke": {
        "model": dict(n_layer=2, n_head=2, n_embd=32, block_size=32),
        "train": dict(batch_size=8, max_steps=30, lr=3e-3, warmup_steps=5, eval_every=10, eval_batches=2,
                      log_every=5, threads=1),
        "data": dict(vocab_size=300),
    },
    "tiny": {
        "model": dict(n_layer=4, n_head=4, n_embd=128, block_size=128),
        "train": dict(batch_size=32, max_steps=450, lr=2e-3, warmup_steps=100, eval_every=150, eval_batches=10,
                      log_every=10, weight_decay=0.1),
        "data": dict(vocab_size=1024),
    },
    "small": {
        "model": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, dropout=0.1),
        "train": dict(batch_size=64, max_steps=5000, lr=1e-3, warmup_steps=200, eval_every=500, eval_batches=20),
        "data": dict(vocab_size=4096),
    },
}


def parse_value(text, typ, where):
    """'3' -> 3 for int, 'true' -> True for bool, 'none' -> None for Optional; errors name the key."""
    origin = typing.get_origin(typ)
    if origin is typing.Union:
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if text.lower() in ("none", "null"):
            return None
        return parse_value(text, args[0], where)
    try:
        if typ is bool:
            if text.lower() in ("true", "1", "yes"):
                return True
            if text.lower() in ("false", "0", "no"):
                return False
            raise ValueError
        if typ in (int, float):
            return typ(text)
        return text
    except ValueError:
        raise MiniLLMError(f"{where}={text!r} is not a valid {typ.__name__}") from None


def check_value(value, typ, where):
    """A value from a TOML/JSON file must already have the field's type (an int is accepted for a float)."""
    if typing.get_origin(typ) is typing.Union:
        if value is None:
            return None
        typ = [a for a in typing.get_args(typ) if a is not type(None)][0]
    ok = (isinstance(value, bool) if typ is bool else
          isinstance(value, int) and not isinstance(value, bool) if typ is int else
          isinstance(value, (int, float)) and not isinstance(value, bool) if typ is float else
          isinstance(value, typ))
    if not ok:
        raise MiniLLMError(f"{where} should be {typ.__name__}, got {value!r}")
    return float(value) if typ is float else value


def merge(obj, layer: dict, where=""):
    """Apply a dict layer onto a (nested) dataclass instance, in place, checking keys and types."""
    hints = typing.get_type_hints(type(obj))
    for key, value in layer.items():
        name = f"{where}{key}"
        if key not in hints:
            known = ", ".join(f.name for f in dataclasses.fields(obj))
            raise MiniLLMError(f"unknown config key {name!r}; known keys here: {known}")
        if dataclasses.is_dataclass(hints[key]):
            if not isinstance(value, dict):
                raise MiniLLMError(f"config section {name!r} should be a table of keys")
            merge(getattr(obj, key), value, name + ".")
        else:
            setattr(obj, key, check_value(value, hints[key], name))
    return obj


def overrides_to_layer(obj, overrides):
    """['train.lr=3e-4', 'objective=mlm'] -> {'train': {'lr': 0.0003}, 'objective': 'mlm'} (typed by the fields)."""
    layer = {}
    for item in overrides:
        if "=" not in item:
            raise MiniLLMError(f"--set expects section.key=value, got {item!r}")
        path, text = item.split("=", 1)
        target, node, hints = obj, layer, typing.get_type_hints(type(obj))
        parts = path.strip().split(".")
        for i, part in enumerate(parts):
            if part not in hints:
                known = ", ".join(f.name for f in dataclasses.fields(target))
                raise MiniLLMError(f"unknown config key {path!r}; known keys at {part!r}: {known}")
            if i == len(parts) - 1:
                if dataclasses.is_dataclass(hints[part]):
                    raise MiniLLMError(f"{path!r} is a section; set one of its keys, e.g. {path}.KEY=VALUE")
                node[part] = parse_value(text.strip(), hints[part], path)
            else:
                if not dataclasses.is_dataclass(hints[part]):
                    raise MiniLLMError(f"{'.'.join(parts[:i + 1])!r} is not a section")
                target = getattr(target, part)
                node = node.setdefault(part, {})
                hints = typing.get_type_hints(type(target))
    return layer


def read_config_file(path):
    """TOML (tomllib) or JSON -> dict. Nothing in the file is executed."""
    if not os.path.isfile(path):
        raise MiniLLMError(f"config file {path} does not exist")
    try:
        if path.endswith(".toml"):
            import tomllib
            with open(path, "rb") as f:
                return tomllib.load(f)
        if path.endswith(".json"):
            with open(path) as f:
                return json.load(f)
    except (ValueError, UnicodeDecodeError) as e:  # tomllib.TOMLDecodeError and JSONDecodeError are ValueErrors
        raise MiniLLMError(f"cannot parse config file {path}: {e}") from None
    raise MiniLLMError(f"config file {path} must end in .toml or .json")


def load_config(preset="tiny", file=None, overrides=(), cls=RunConfig, stage_defaults=None):
    """Build the effective config: defaults -> preset -> stage_defaults -> file -> overrides."""
    if preset not in PRESETS:
        raise MiniLLMError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    cfg = cls()
    merge(cfg, PRESETS[preset])
    if stage_defaults:
        merge(cfg, stage_defaults)
    if file:
        merge(cfg, read_config_file(file))
    merge(cfg, overrides_to_layer(cfg, overrides))
    cfg.model.validate()
    return cfg


def config_from_dict(d, cls=RunConfig):
    """The inverse of cfg.to_dict() (e.g. a run's config.json)."""
    return merge(cls(), d)
