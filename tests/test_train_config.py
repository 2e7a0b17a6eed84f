"""Config layering: preset -> file -> --set, with unknown keys and wrong types refused."""
import json

import pytest

from minillm.config import PRESETS, RunConfig, config_from_dict, load_config
from minillm.errors import MiniLLMError


def test_presets_layer_under_files_and_overrides(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('objective = "mlm"\n[model]\nn_layer = 3\n[train]\nlr = 5e-4\nbatch_size = 4\n')
    cfg = load_config("smoke", str(f), ["train.lr=1e-2", "model.pos=learned", "train.lr_decay_steps=none",
                                        "train.compile=true"])
    assert cfg.objective == "mlm" and cfg.model.n_layer == 3 and cfg.train.batch_size == 4
    assert cfg.train.lr == 1e-2 and cfg.model.pos == "learned" and cfg.train.compile is True
    assert cfg.model.n_embd == PRESETS["smoke"]["model"]["n_embd"]  # from the preset
    assert cfg.train.lr_decay_steps is None


def test_json_config_and_round_trip(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"train": {"max_steps": 7, "lr": 1}}))
    cfg = load_config("tiny", str(f))
    assert cfg.train.max_steps == 7 and cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert config_from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("overrides, match", [
    (["train.lrr=1"], "unknown config key"),
    (["optim.lr=1"], "unknown config key"),
    (["train.max_steps=ten"], "not a valid int"),
    (["train.compile=maybe"], "not a valid bool"),
    (["train=3"], "is a section"),
    (["train.lr"], "section.key=value"),
    (["model.pos=alibi"], "not one of"),
])
def test_bad_overrides_are_clear_errors(overrides, match):
    with pytest.raises(MiniLLMError, match=match):
        load_config("smoke", None, overrides)


def test_bad_files_and_presets_are_clear_errors(tmp_path):
    with pytest.raises(MiniLLMError, match="unknown preset"):
        load_config("huge")
    bad_key = tmp_path / "a.toml"
    bad_key.write_text("[train]\nlearning_rate = 1.0\n")
    with pytest.raises(MiniLLMError, match="unknown config key 'train.learning_rate'"):
        load_config("smoke", str(bad_key))
    bad_type = tmp_path / "b.toml"
    bad_type.write_text('[train]\nmax_steps = "10"\n')
    with pytest.raises(MiniLLMError, match="should be int"):
        load_config("smoke", str(bad_type))
    broken = tmp_path / "c.toml"
    broken.write_text("[train\n")
    with pytest.raises(MiniLLMError, match="cannot parse"):
        load_config("smoke", str(broken))
    with pytest.raises(MiniLLMError, match="does not exist"):
        load_config("smoke", str(tmp_path / "missing.toml"))


def test_stage_sections_extend_the_run_config():
    from dataclasses import dataclass, field

    @dataclass
    class Extra:
        beta: float = 0.1

    @dataclass
    class StageConfig(RunConfig):
        dpo: Extra = field(default_factory=Extra)

    cfg = load_config("smoke", None, ["dpo.beta=0.5"], cls=StageConfig, stage_defaults={"train": {"lr": 1e-5}})
    assert cfg.dpo.beta == 0.5 and cfg.train.lr == 1e-5
