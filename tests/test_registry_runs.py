"""End to end on a real (smoke) pretraining run: leakage refusal and override, reproduce, tamper detection,
release refusal, suites, cost and HF export."""
import json
import os

import pytest

from minillm.checkpoint import load_model
from minillm.cli import main
from minillm.errors import MiniLLMError

SMOKE = ["--preset", "smoke", "--tokenizer", "char", "--max-steps", "4", "--set", "train.eval_every=4",
         "--set", "train.progress=false", "--samples", "0"]


@pytest.fixture(scope="module")
def raw_run(tmp_path_factory):
    """A run on the raw world (planted leaks kept), trained only because the override was given."""
    run = str(tmp_path_factory.mktemp("runs") / "raw")
    assert main(["pretrain", *SMOKE, "--data", "world-raw", "--allow-leakage", "--out", run]) == 0
    return run


def test_training_on_leaked_data_is_refused_unless_overridden_and_the_override_is_recorded(tmp_path, capsys,
                                                                                             raw_run):
    assert main(["pretrain", *SMOKE, "--data", "world-raw", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: training data contains") and "--allow-leakage" in err and "\n" not in err
    assert not os.path.exists(tmp_path / "r" / "model.safetensors")
    leak = json.load(open(os.path.join(raw_run, "manifest.json")))["leakage"]
    assert leak["exceeded"] and leak["overridden"] and leak["max_rate"] > 0.01


def test_the_default_world_is_cleaned_so_training_passes_the_leakage_check(tmp_path):
    from minillm.data.hygiene import check_leakage, world_eval_sets
    from minillm.data.world import World
    from minillm.stages.pretrain import load_documents
    from minillm.config import load_config
    train, _, world = load_documents(load_config("smoke").data)
    assert check_leakage(train, world_eval_sets(world))["max_rate"] == 0.0
    assert not any(p["value"] in " ".join(train) for p in World(seed=0).planted["pii"])


def test_reproduce_matches_and_release_is_refused_for_an_overridden_leak(tmp_path, capsys, raw_run):
    import shutil
    from minillm.checkpoint import read_manifest, write_manifest
    out = str(tmp_path / "again")
    # the same machine: metrics match and no machine difference is reported; a copy whose manifest says it ran on
    # another vector ISA gets the same match, plus the line that explains why metrics could have differed
    elsewhere = str(tmp_path / "elsewhere")
    shutil.copytree(raw_run, elsewhere)
    device = read_manifest(elsewhere)["device"]
    write_manifest(elsewhere, device=dict(device, cpu_capability="OTHER-ISA"))
    from minillm.commands.registry import _isa_hint
    assert "ATEN_CPU_CAPABILITY=avx2" in _isa_hint([("cpu_capability", "AVX2", "AVX512")])
    assert _isa_hint([("cpu_capability", "AVX512", "AVX2")]) == ""     # a lower ISA cannot run a higher one's kernels
    assert main(["reproduce", raw_run, "--out", out]) == 0
    text = capsys.readouterr().out
    assert "reproduced: every metric matches" in text and "val_loss" in text
    assert "machine differs" not in text
    assert main(["reproduce", elsewhere, "--out", str(tmp_path / "again2")]) == 0
    text = capsys.readouterr().out
    assert "reproduced: every metric matches" in text
    assert f"machine differs from the original run's (cpu_capability: OTHER-ISA -> {device['cpu_capability']})" in text
    with open(os.path.join(raw_run, "safety.json"), "w") as f:
        json.dump({"refusal_rate": 1.0, "over_refusal_rate": 0.0, "pii_regurgitation_rate": 0.0}, f)
    assert main(["release", raw_run, "--out", str(tmp_path / "rel")]) == 2
    assert "leakage check was overridden" in capsys.readouterr().err


def test_a_tampered_checkpoint_is_refused_before_loading(tmp_path, raw_run):
    import shutil
    run = str(tmp_path / "copy")
    shutil.copytree(raw_run, run)
    model, tok, manifest = load_model(run)
    assert set(manifest["files"]) == {"model.safetensors", "tokenizer.json"}
    path = os.path.join(run, "model.safetensors")
    data = bytearray(open(path, "rb").read())
    data[-3] ^= 0x01                                  # one bit of one weight
    open(path, "wb").write(bytes(data))
    with pytest.raises(MiniLLMError, match="model.safetensors fails its sha256 check"):
        load_model(run)


def test_suites_cost_and_export_on_a_real_run(tmp_path, capsys, raw_run):
    assert main(["eval", "safety", "--run", raw_run]) == 0
    safety = json.load(open(os.path.join(raw_run, "safety.json")))
    assert safety["pii_regurgitation_n"] == 20 and 0.0 <= safety["pii_regurgitation_rate"] <= 1.0
    assert main(["eval", "cost", "--run", raw_run]) == 0
    cost = json.load(open(os.path.join(raw_run, "cost.json")))["stages"][0]
    assert cost["tokens"] == 4 * 8 * 32 and cost["flops"] > 6 * cost["params"] * cost["tokens"] * 0.99
    assert cost["peak_memory_mb"] > 10
    capsys.readouterr()
    out = str(tmp_path / "hf")
    assert main(["export", "--format", "hf", "--run", raw_run, "--out", out]) == 0
    assert json.load(open(os.path.join(out, "config.json")))["model_type"] == "llama"
    pytest.importorskip("transformers")
    from minillm.export import verify_hf
    assert verify_hf(raw_run, out) < 1e-5
