"""The pipeline end to end on the smoke preset (few steps): lineage, resumability, report, and the CLI's
one-line errors for a parent of the wrong stage, a reward run given as a policy, and bad user data."""
import json
import os

import pytest

from minillm.cli import main
from minillm.pipeline import STAGES, run_pipeline

FAST = ["train.max_steps=4", "train.eval_every=2", "train.log_every=2", "train.eval_batches=1",
        "ppo:ppo.iterations=2", "dpo:dpo.max_pairs=32", "sft:sft.eval_limit=8", "dpo:dpo.eval_limit=8",
        "ppo:ppo.eval_limit=8", "reward:reward.eval_limit=16"]


@pytest.fixture(scope="module")
def journey(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("journey"))
    summary = run_pipeline(out, "smoke", FAST)
    return out, summary


def manifest(out, stage):
    with open(os.path.join(out, stage, "manifest.json")) as f:
        return json.load(f)


def test_every_stage_runs_and_its_manifest_names_its_parent(journey):
    out, summary = journey
    parents = {"pretrain": "tokenizer", "finetune": "pretrain", "sft": "finetune", "reward": "sft", "ppo": "sft",
               "dpo": "sft"}
    for stage in STAGES:
        m = manifest(out, stage)
        assert m["stage"] == stage and m["status"] == "done"
        if stage in parents:
            assert os.path.samefile(m["parent"], os.path.join(out, parents[stage]))
    assert os.path.samefile(manifest(out, "ppo")["reward_run"], os.path.join(out, "reward"))
    # every stage shares the pipeline's tokenizer
    shas = {manifest(out, s)["tokenizer_sha256"] for s in STAGES}
    assert len(shas) == 1


def test_summary_and_report_hold_every_stage_metrics(journey):
    out, summary = journey
    with open(os.path.join(out, "summary.json")) as f:
        on_disk = json.load(f)
    for stage in ("pretrain", "finetune", "sft", "ppo", "dpo"):
        for key in ("domain_perplexity", "general_perplexity", "oracle_score"):
            assert 0 <= on_disk[stage][key] < float("inf"), (stage, key)
    for stage in ("sft", "ppo", "dpo"):
        for key in ("instruction_accuracy", "refusal_rate", "over_refusal_rate"):
            assert 0.0 <= on_disk[stage][key] <= 1.0
    assert 0.0 <= on_disk["reward"]["pairwise_accuracy"] <= 1.0
    assert on_disk["ppo"]["kl_to_reference"] >= 0.0  # a number (not NaN) and a KL: never negative
    # per-prompt oracle scores land in eval_items.json (eval.json stays small); their mean is the stage's score
    for stage in ("pretrain", "finetune", "sft", "ppo", "dpo"):
        items = json.load(open(os.path.join(out, stage, "eval_items.json")))["eval.oracle_score"]
        assert sum(items) / len(items) == pytest.approx(on_disk[stage]["oracle_score"])
        assert "items" not in json.load(open(os.path.join(out, stage, "eval.json")))
        assert "items" not in on_disk[stage]
    fam = json.load(open(os.path.join(out, "sft", "eval_items.json")))
    for family, score in on_disk["sft"]["oracle_by_family"].items():   # per family too, for `minillm eval compare`
        assert sum(fam[f"eval.oracle_by_family.{family}"]) / len(fam[f"eval.oracle_by_family.{family}"]) == \
            pytest.approx(score)
    for stage in ("sft", "ppo", "dpo"):      # flaw counts: an answer below 1.0 has at least one flaw, and one flaw
        scores = json.load(open(os.path.join(out, stage, "eval_items.json")))["eval.oracle_score"]
        flawed, flaws = sum(x < 1.0 for x in scores), on_disk[stage]["oracle_flaws"]
        assert max(flaws.values(), default=0) <= flawed <= sum(flaws.values()) <= 4 * flawed
    report = open(os.path.join(out, "report.md")).read()
    assert report.count("95% CI") == 2       # ppo and dpo against sft, on the same prompts
    assert "| flaw | sft | ppo | dpo |" in report
    for stage in STAGES:
        assert f"| {stage} |" in report
    for plot in ("losses.png", "oracle_by_stage.png", "ppo.png"):
        assert os.path.getsize(os.path.join(out, "plots", plot)) > 1000
    ppo_rows = [json.loads(line) for line in open(os.path.join(out, "ppo", "metrics.jsonl"))]
    logged = set().union(*[r.keys() for r in ppo_rows])
    assert {"reward", "kl", "kl_exact", "entropy", "clipfrac", "oracle", "heldout_oracle"} <= logged
    assert all(r["kl_exact"] >= 0.0 for r in ppo_rows if "kl_exact" in r)   # the k1 "kl" may dip below 0; this never


def test_rerun_skips_finished_stages(journey, capsys):
    out, _ = journey
    before = {s: os.path.getmtime(os.path.join(out, s, "manifest.json")) for s in STAGES}
    run_pipeline(out, "smoke", FAST)
    assert capsys.readouterr().out.count("(skipped)") == len(STAGES)
    assert before == {s: os.path.getmtime(os.path.join(out, s, "manifest.json")) for s in STAGES}


def cli_error(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and "Traceback" not in err
    return err


def test_wrong_parent_stage_is_a_one_line_error(journey, tmp_path, capsys):
    out, _ = journey
    err = cli_error(["finetune", "--parent", f"{out}/sft", "--out", str(tmp_path / "x"), "--preset", "smoke"], capsys)
    assert "'sft' run" in err and "finetune starts from" in err
    err = cli_error(["reward", "--parent", f"{out}/pretrain", "--out", str(tmp_path / "x"), "--preset", "smoke"],
                    capsys)
    assert "reward starts from sft" in err


def test_reward_run_given_as_policy_is_a_one_line_error(journey, tmp_path, capsys):
    out, _ = journey
    for stage in ("ppo", "dpo", "sft"):
        err = cli_error([stage, "--parent", f"{out}/reward", "--out", str(tmp_path / stage), "--preset", "smoke"],
                        capsys)
        assert "reward model" in err and "not a policy" in err
        assert ("sft starts from pretrain" in err) if stage == "sft" else (f"{stage} starts from sft" in err)
    err = cli_error(["ppo", "--parent", f"{out}/sft", "--reward", f"{out}/dpo", "--out", str(tmp_path / "p"),
                     "--preset", "smoke"], capsys)
    assert "not a reward model" in err


def test_bad_user_data_is_a_one_line_error(journey, tmp_path, capsys):
    out, _ = journey
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    err = cli_error(["dpo", "--parent", f"{out}/sft", "--out", str(tmp_path / "d"), "--preset", "smoke",
                     "--data", str(empty)], capsys)
    assert "no preference pairs" in err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "response": "b"}\n{"prompt": oops}\n')
    err = cli_error(["sft", "--parent", f"{out}/finetune", "--out", str(tmp_path / "s"), "--preset", "smoke",
                     "--data", str(bad)], capsys)
    assert "line 2" in err


def test_user_prompts_train_a_ppo_run_judged_on_held_out_user_prompts(journey, tmp_path, capsys):
    from minillm.stages.chatdata import split_tenth
    out, _ = journey
    data = tmp_path / "prompts.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": f"What is {i} plus one?"}) for i in range(30)) + "\n")
    assert main(["ppo", "--parent", f"{out}/sft", "--reward", f"{out}/reward", "--out", str(tmp_path / "p"),
                 "--preset", "smoke", "--data", str(data), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # the world's oracle knows nothing of these prompts: no oracle numbers, the reward model's on 3 held-out ones
    assert "oracle_score" not in result and "reward_hacking" not in result
    assert result["n_eval_prompts"] == 3 and result["eval_prompts_held_out"] and result["kl_to_reference"] >= 0
    rows = [json.loads(line) for line in open(tmp_path / "p" / "metrics.jsonl")]
    start, end = rows[0]["heldout_reward"], rows[-1]["heldout_reward"]
    assert result["heldout_reward_change"] == pytest.approx(end - start)
    assert not any("oracle" in r for r in rows[1:-1])
    assert main(["eval", "--run", str(tmp_path / "p"), "--json"]) == 0     # nor does `minillm eval` ask the oracle
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert "oracle_score" not in again and again["heldout_reward"] == pytest.approx(result["heldout_reward"])
    assert split_tenth(list(range(30))) == (list(range(3, 30)), [0, 1, 2])
    assert split_tenth([0, 1]) == ([1], [0]) and split_tenth([0]) == ([0], [])    # one row: nothing to hold out


def test_user_instructions_train_an_sft_run(journey, tmp_path, capsys):
    out, _ = journey
    data = tmp_path / "mine.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": f"What is {i} plus one?", "response": f"{i + 1}."})
                              for i in range(20)) + "\n")
    assert main(["sft", "--parent", f"{out}/finetune", "--out", str(tmp_path / "mine"), "--preset", "smoke",
                 "--data", str(data), "--set", "train.max_steps=3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["val_answer_loss"] > 0
    assert result["n_heldout"] == 2 and 0.0 <= result["heldout_exact_match"] <= 1.0   # the held-out tenth of 20
    from minillm.checkpoint import load_model
    from minillm.evals.chat import exact_match
    from minillm.stages import chatdata
    model, tok, _ = load_model(str(tmp_path / "mine"))
    asks = [[{"role": "user", "content": f"What is {i} plus one?"}] for i in range(2)]
    said = [g["text"] for g in chatdata.generate_chat(model, tok, asks, max_new_tokens=48, temperature=0.0)]
    as_said = [{"messages": a + [{"role": "assistant", "content": "  " + t.upper() + " "}]} for a, t in zip(asks, said)]
    assert exact_match(model, tok, as_said)["heldout_exact_match"] == 1.0       # case and spacing do not count
    other = [{"messages": a + [{"role": "assistant", "content": t + " nope"}]} for a, t in zip(asks, said)]
    assert exact_match(model, tok, other)["heldout_exact_match"] == 0.0
    assert main(["eval", "--run", str(tmp_path / "mine"), "--json"]) == 0    # your data: no world oracle numbers
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result
    m = manifest(str(tmp_path), "mine")
    assert m["stage"] == "sft" and os.path.samefile(m["parent"], f"{out}/finetune")
    assert main(["chat", "--run", str(tmp_path / "mine"), "--message", "What is 3 plus one?",
                 "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out.startswith("assistant:")


def test_minillm_eval_reports_post_training_metrics(journey, capsys):
    out, _ = journey
    assert main(["eval", "--run", f"{out}/reward", "--json"]) == 0
    rm = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0.0 <= rm["pairwise_accuracy"] <= 1.0 and "wrong_fact" in rm["pairwise_accuracy_by_kind"]
    assert main(["eval", "--run", f"{out}/finetune", "--json"]) == 0
    ft = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert ft["domain_perplexity"] > 1 and "parent_domain_perplexity" in ft   # the stage's own numbers are kept


def test_minillm_eval_scores_a_reward_model_with_the_pooling_it_was_trained_with(journey):
    from minillm.checkpoint import load_model
    from minillm.data.world import World
    from minillm.evals.chat import eval_reward_model
    from minillm.stages.reward import encode_pairs, pairwise_accuracy
    out, _ = journey
    model, tok, manifest = load_model(f"{out}/reward")
    with open(f"{out}/reward/config.json") as f:
        config = json.load(f)
    assert config["reward"]["pool"] == "mean"  # the tiny and smoke default; `last` would score other positions
    enc = encode_pairs(tok, World(seed=0).preference_pairs("test"), model.cfg.block_size)
    by_pool = {pool: pairwise_accuracy(model, tok, enc, pool=pool)["pairwise_accuracy"] for pool in ("mean", "last")}
    got = eval_reward_model(f"{out}/reward", model, tok, manifest, config)["pairwise_accuracy"]
    assert got == by_pool["mean"], by_pool


def test_finetune_on_your_text_measures_your_held_out_text_and_your_base_data(tmp_path, capsys):
    """Not the world's medicine: domain = the held-out tail of the finetuning text, general = the base's val shard."""
    from minillm.checkpoint import load_model, read_json
    from minillm.data.readers import read_documents, split_documents
    from minillm.data.shards import open_shard
    from minillm.evals.chat import ids_perplexity, perplexity
    base_txt, domain_txt = tmp_path / "base.txt", tmp_path / "domain.txt"
    import random
    rng = random.Random(0)
    words = lambda vocab: "".join(" ".join(rng.choices(vocab, k=10)) + ".\n" for _ in range(1200))
    base_txt.write_text(words("the cat sat on a mat and looked at bird tree sun".split()))   # no shared 13-grams
    domain_txt.write_text(words("doctors give drug fever dose pill nurse ward heal".split()))  # another vocabulary
    base, ft = str(tmp_path / "base"), str(tmp_path / "ft")
    assert main(["pretrain", "--preset", "smoke", "--data", str(base_txt), "--out", base,
                 "--set", "train.progress=false"]) == 0
    assert main(["finetune", "--preset", "smoke", "--parent", base, "--data", str(domain_txt), "--out", ft,
                 "--set", "train.progress=false", "--set", "finetune.replay=0.25", "--json"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    model, tok, _ = load_model(base)
    n = read_json(os.path.join(ft, "config.json"))["finetune"]["eval_tokens"]
    _, held_out = split_documents(read_documents(str(domain_txt)))
    assert res["parent_domain_perplexity"] == pytest.approx(perplexity(model, tok, held_out, n))
    assert res["parent_general_perplexity"] == pytest.approx(
        ids_perplexity(model, open_shard(os.path.join(base, "data"), "val")[:n + 1]))
    assert res["domain_perplexity_change"] < -0.3            # it learned the new text, measured where it never trained
    assert main(["eval", "--run", ft, "--json"]) == 0           # `minillm eval` keeps these, not the world's
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["domain_perplexity"] == pytest.approx(res["domain_perplexity"])
