"""Registry, integrity checks, release gates and model cards on small hand-made run directories."""
import json
import os

import pytest
import torch
from safetensors.torch import save_file

from minillm.cli import main
from minillm.errors import MiniLLMError
from minillm.registry import (Registry, ReleaseGate, check_gate, load_gate, release, sha256_file, verify_files,
                              verify_release)

PASSING = {"refusal_rate": 0.95, "refusal_n": 40, "over_refusal_rate": 0.05, "over_refusal_n": 80,
           "pii_regurgitation_rate": 0.0, "pii_regurgitation_n": 20}


def make_run(root, name, safety=None, parent=None, leakage=None, stage="sft", metrics=None):
    d = os.path.join(root, name)
    os.makedirs(d)
    save_file({"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)}, os.path.join(d, "model.safetensors"))
    with open(os.path.join(d, "tokenizer.json"), "w") as f:
        json.dump({"type": "char"}, f)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump({"model": {"n_layer": 2}}, f)
    files = {n: sha256_file(os.path.join(d, n)) for n in ("model.safetensors", "tokenizer.json", "config.json")}
    manifest = {"stage": stage, "parent": parent, "config": {"model": {"n_layer": 2}}, "seed": 0,
                "data_sha256": "ab" * 32, "tokenizer_sha256": files["tokenizer.json"], "files": files,
                "metrics": metrics or {"val_loss": 2.0, "fact_accuracy": 0.5}}
    if leakage is not None:
        manifest["leakage"] = leakage
    with open(os.path.join(d, "manifest.json"), "w") as f:
        json.dump(manifest, f)
    if safety is not None:
        with open(os.path.join(d, "safety.json"), "w") as f:
            json.dump(safety, f)
    return d


def test_release_with_a_passing_gate_writes_a_verifiable_artifact_and_model_card(tmp_path):
    base = make_run(tmp_path, "base", stage="pretrain")
    run = make_run(tmp_path, "chat", safety=PASSING, parent=base)
    info = release(run, str(tmp_path / "rel"))
    assert info["gate_passed"] and not info["forced"]
    assert {"model.safetensors", "tokenizer.json", "manifest.json", "MODEL_CARD.md", "release.json",
            "safety.json"} <= set(os.listdir(tmp_path / "rel"))
    assert set(verify_release(str(tmp_path / "rel"))) == set(info["files"])
    card = (tmp_path / "rel" / "MODEL_CARD.md").read_text()
    for section in ("## Intended use", "## Data", "## Evaluations", "## Safety", "## Limitations", "## Lineage"):
        assert section in card
    assert "95.0%" in card and "pretrain: base" in card
    with open(tmp_path / "rel" / "model.safetensors", "ab") as f:   # alter the artifact: detected
        f.write(b"\0")
    with pytest.raises(MiniLLMError, match="model.safetensors fails its sha256 check"):
        verify_release(str(tmp_path / "rel"))


@pytest.mark.parametrize("safety,why", [
    (None, "no safety results"),
    (dict(PASSING, refusal_rate=0.5), "refusal_rate 0.500 is not >= 0.8"),
    (dict(PASSING, over_refusal_rate=0.6), "over_refusal_rate 0.600 is not <= 0.2"),
    (dict(PASSING, pii_regurgitation_rate=0.1), "pii_regurgitation_rate 0.100 is not <= 0.0"),
])
def test_release_is_refused_when_the_safety_gate_fails_unless_forced(tmp_path, safety, why):
    run = make_run(tmp_path, "chat", safety=safety)
    with pytest.raises(MiniLLMError, match="release refused: .*" + why.replace("(", r"\(")):
        release(run, str(tmp_path / "rel"))
    assert not os.path.exists(tmp_path / "rel")
    info = release(run, str(tmp_path / "rel"), force=True)
    assert info["forced"] and not info["gate_passed"]
    assert json.loads((tmp_path / "rel" / "release.json").read_text())["forced"] is True
    assert "released with --force" in (tmp_path / "rel" / "MODEL_CARD.md").read_text()


def test_release_is_refused_when_leakage_was_overridden_anywhere_in_the_lineage(tmp_path):
    base = make_run(tmp_path, "base", stage="pretrain", leakage={"exceeded": True, "overridden": True})
    run = make_run(tmp_path, "chat", safety=PASSING, parent=base)
    ok, reasons, _ = check_gate(run, ReleaseGate())
    assert not ok and reasons == ["the leakage check was overridden in base"]
    assert check_gate(run, ReleaseGate(allow_leakage_override=True))[0]


def test_gate_thresholds_come_from_a_config_file(tmp_path):
    p = tmp_path / "gate.toml"
    p.write_text("[release]\nmin_refusal = 0.4\nmax_over_refusal = 0.5\n")
    gate = load_gate(str(p))
    assert gate.min_refusal == 0.4 and gate.max_over_refusal == 0.5 and gate.max_pii_regurgitation == 0.0
    run = make_run(tmp_path, "chat", safety=dict(PASSING, refusal_rate=0.5))
    assert check_gate(run, gate)[0] and not check_gate(run, ReleaseGate())[0]
    p.write_text("[release]\nmin_refusl = 0.4\n")
    with pytest.raises(MiniLLMError, match="unknown release gate keys"):
        load_gate(str(p))


def test_a_tampered_file_is_refused_with_a_clear_error(tmp_path):
    run = make_run(tmp_path, "chat", safety=PASSING)
    assert verify_files(run) == ["config.json", "model.safetensors", "tokenizer.json"]
    save_file({"w": torch.zeros(2, 3)}, os.path.join(run, "model.safetensors"))   # same shape, other weights
    with pytest.raises(MiniLLMError, match=r"model.safetensors fails its sha256 check .*restore the original"):
        verify_files(run)
    with pytest.raises(MiniLLMError, match="fails its sha256 check"):
        release(run, str(tmp_path / "rel"))


def test_registry_add_list_diff_and_gated_promotion(tmp_path, capsys):
    reg_dir = str(tmp_path / "reg")
    good = make_run(tmp_path, "good", safety=PASSING)
    bad = make_run(tmp_path, "bad", safety=dict(PASSING, refusal_rate=0.1),
                   metrics={"val_loss": 2.5, "fact_accuracy": 0.3})
    reg = Registry(reg_dir)
    reg.add(good)
    reg.add(bad, name="risky")
    with pytest.raises(MiniLLMError, match="already registered"):
        reg.add(good)
    e = reg.promote("good", "staging")
    assert e["status"] == "staging"
    assert reg.promote("good", "production")["status"] == "production"
    with pytest.raises(MiniLLMError, match="only moves forward"):
        reg.promote("good", "staging")
    with pytest.raises(MiniLLMError, match="refused: refusal_rate 0.100"):
        reg.promote("risky", "production")
    e = reg.promote("risky", "production", force=True)
    assert e["history"][-1]["forced"] and not e["history"][-1]["gate"]["passed"]
    index = json.loads((tmp_path / "reg" / "index.json").read_text())
    assert [x["name"] for x in index["entries"]] == ["good", "risky"]
    assert index["entries"][0]["lineage"] == [os.path.abspath(good)]
    assert main(["registry", "--registry", reg_dir, "list"]) == 0
    out = capsys.readouterr().out
    assert "risky" in out and "production" in out
    assert main(["registry", "--registry", reg_dir, "diff", "good", "risky"]) == 0
    out = capsys.readouterr().out
    assert "⚠ regression" in out and "fact_accuracy" in out
    assert main(["registry", "--registry", reg_dir, "show", "nope"]) == 2


def test_cli_release_refusal_is_one_line_exit_2_and_eval_compare_flags(tmp_path, capsys):
    run = make_run(tmp_path, "chat", safety=dict(PASSING, refusal_rate=0.2))
    assert main(["release", run, "--out", str(tmp_path / "rel")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: release refused: refusal_rate 0.200") and "\n" not in err
    assert main(["release", run, "--out", str(tmp_path / "rel"), "--set", "release.min_refusal=0.1"]) == 0
    other = make_run(tmp_path, "other", safety=PASSING, metrics={"val_loss": 3.0, "fact_accuracy": 0.5})
    assert main(["eval", "compare", run, other]) == 1
    assert "val_loss" in capsys.readouterr().out
    assert main(["eval", "compare", run, run]) == 0


def test_reproduce_rewrites_the_recorded_command():
    from minillm.registry import _with_out
    assert _with_out(["pretrain", "--out", "a", "--resume", "--seed", "1"], "/x") == ["pretrain", "--seed", "1",
                                                                                      "--out", "/x"]
    assert _with_out(["sft", "--out=a", "--parent", "p"], "/x") == ["sft", "--parent", "p", "--out", "/x"]


def test_reproduce_without_a_recorded_command_is_a_clear_error(tmp_path):
    from minillm.registry import reproduce
    run = make_run(tmp_path, "old")
    with pytest.raises(MiniLLMError, match="records no command"):
        reproduce(run, str(tmp_path / "again"))


def test_machine_differences_name_what_changes_floating_point_results():
    from minillm.checkpoint import device_info, machine_differences
    here = device_info()
    assert here["cpu_capability"] and here["threads"] >= 1 and here["cpu"]
    assert machine_differences(here, device_info()) == []
    avx2 = dict(here, cpu_capability="AVX2", threads=here["threads"] + 1)
    assert machine_differences(avx2, here) == [("cpu_capability", "AVX2", here["cpu_capability"]),
                                              ("threads", here["threads"] + 1, here["threads"])]
    old = {"platform": "Linux", "processor": "x86_64", "cpu_count": 2, "device": "cpu"}   # a manifest from before
    assert machine_differences(old, here) == []
