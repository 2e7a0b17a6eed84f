"""Evaluation suites on stub responders: safety rates, PII extraction, robustness drops, cost, regression compare,
and the reward model on the policy's own answers (best-of-n, caught mistakes)."""
import os
import json
import random

import pytest
import torch

from minillm.data.oracle import Oracle
from minillm.data.world import World
from minillm.evals import best_of_n as bon
from minillm.evals import compare, cost, robustness, safety
from minillm.stages import chatdata
from minillm.tokenizer import CharTokenizer


@pytest.fixture(scope="module")
def world():
    return World(seed=0)


@pytest.fixture(scope="module")
def oracle(world):
    return Oracle(world)


def _reference_chat(oracle, refuse_all=False, robust=True):
    """A perfect assistant: the catalogue's reference answer, identified robustly (by the oracle), or a
    brittle one that answers only the test questions' exact text (memorised, not understood)."""
    exact = {it["messages"][0]["content"]: it["messages"][1]["content"] for it in oracle.items
             if it["split"] == "test"}

    def chat(prompts):
        out = []
        for m in prompts:
            if refuse_all:
                out.append("I can't help with that.")
                continue
            text = m[-1]["content"]
            if robust:
                it = oracle.identify(m)
                out.append(it["messages"][1]["content"] if it else "I do not know.")
            else:
                out.append(exact.get(text, "I do not know."))
        return out
    return chat


def test_safety_rates_separate_a_good_assistant_from_one_that_refuses_everything(world, oracle):
    good = safety.safety_eval(world, chat=_reference_chat(oracle), oracle=oracle, max_items=30)
    assert good["refusal_rate"] == 1.0 and good["over_refusal_rate"] == 0.0
    assert good["refusal_n"] == 30 and good["over_refusal_n"] == 60
    wall = safety.safety_eval(world, chat=_reference_chat(oracle, refuse_all=True), oracle=oracle, max_items=30)
    assert wall["refusal_rate"] == 1.0 and wall["over_refusal_rate"] == 1.0 and wall["over_refusal_edgy_rate"] == 1.0
    assert good["pii_regurgitation_rate"] == 0.0


def test_pii_probes_catch_a_model_that_recites_planted_values(world):
    planted = world.planted["pii"]
    probes = safety.pii_probes(planted, world.general_corpus("train"))
    assert len(probes) == len(planted) and all(p["prefix"] and p["value"] not in p["prefix"] for p in probes)
    assert len({p["prefix"] for p in probes}) >= len(probes) - 2    # the document context tells most apart
    assert all(p["prefix"] in " ".join(world.general_corpus("train")) for p in probes)
    # stubs that answer the probes in order: one recites every value, one half of them
    leaky = lambda prompts: [" " + p["value"] + "." for p in probes]
    half = lambda prompts: [" " + p["value"] if i % 2 else " [EMAIL]" for i, p in enumerate(probes)]
    assert safety.safety_eval(world, complete=leaky)["pii_regurgitation_rate"] == 1.0
    assert safety.safety_eval(world, complete=half)["pii_regurgitation_rate"] == pytest.approx(0.5)
    assert safety.regurgitated("call +31 55 123 4567 now", "+31 55 123 4567")
    assert safety.regurgitated("it is 4111-1111-1111-1111", "4111 1111 1111 1111")
    assert not safety.regurgitated("call [PHONE] now", "+31 55 123 4567")


def test_robustness_reports_the_drop_of_a_brittle_model_and_none_for_a_robust_one(world, oracle):
    robust = robustness.robustness_eval(world, chat=_reference_chat(oracle), oracle=oracle, n=24)
    brittle = robustness.robustness_eval(world, chat=_reference_chat(oracle, robust=False), oracle=oracle, n=24)
    assert robust["clean"] == brittle["clean"] == 1.0
    for kind in ("typos", "lowercase", "distractor"):
        assert robust["perturbations"][kind]["drop"] <= 0.1, kind
    assert brittle["perturbations"]["uppercase"]["drop"] == 1.0
    assert brittle["perturbations"]["paraphrase"]["drop"] >= 0.9
    assert brittle["perturbations"]["typos"]["drop"] > 0.2


def test_perturbations_are_deterministic_and_do_what_they_say(world):
    t = "What is the capital of Velmora today?"
    assert robustness.typos(t, random.Random(1)) == robustness.typos(t, random.Random(1))
    assert sorted(robustness.typos(t, random.Random(1), rate=1.0)) == sorted(t)
    assert robustness.typos(t, random.Random(1), rate=1.0) != t
    item = [x for x in world.instructions("test") if x["family"] == "fact"][0]
    p = robustness.perturb("paraphrase", item["messages"][0]["content"], random.Random(0), world, item)
    assert p != item["messages"][0]["content"] and item["task"]["entity"] in p


def _run(tmp_path, name, metrics, items=None, extra=None, parent=None):
    d = tmp_path / name
    d.mkdir()
    (d / "manifest.json").write_text(json.dumps({"stage": "pretrain", "parent": parent, "metrics": metrics,
                                                 **(extra or {})}))
    if items:
        (d / "eval_items.json").write_text(json.dumps(items))
    return str(d)


def test_compare_flags_a_real_regression_but_not_noise(tmp_path):
    rng = random.Random(0)
    a_items = [float(rng.random() < 0.8) for _ in range(200)]
    ones, zeros = [i for i, x in enumerate(a_items) if x], [i for i, x in enumerate(a_items) if not x]
    noisy = list(a_items)                      # 20 answers lost, 15 gained: -2.5%, beyond tolerance, but noise
    for i in ones[:20]:
        noisy[i] = 0.0
    for i in zeros[:15]:
        noisy[i] = 1.0
    worse = [x if rng.random() > 0.5 else 0.0 for x in a_items]      # half the right answers lost
    mean = lambda v: sum(v) / len(v)
    a = _run(tmp_path, "a", {"val_loss": 2.00, "fact_accuracy": mean(a_items), "tok_per_s": 1000.0, "step": 100},
             {"fact_accuracy": a_items})
    b = _run(tmp_path, "b", {"val_loss": 2.30, "fact_accuracy": mean(noisy), "tok_per_s": 1500.0, "step": 50},
             {"fact_accuracy": noisy})
    c = _run(tmp_path, "c", {"val_loss": 1.99, "fact_accuracy": mean(worse), "tok_per_s": 900.0, "step": 100},
             {"fact_accuracy": worse})
    rows = {r["metric"]: r for r in compare.compare_runs(a, b)}
    assert rows["val_loss"]["regression"] and rows["val_loss"]["better"] == "lower"
    assert not rows["tok_per_s"]["regression"] and not rows["step"]["regression"]
    assert rows["fact_accuracy"]["delta"] == pytest.approx(-0.025)
    assert not rows["fact_accuracy"]["regression"]       # the paired bootstrap CI includes 0: noise
    rows = {r["metric"]: r for r in compare.compare_runs(a, c)}
    assert rows["fact_accuracy"]["regression"] and rows["fact_accuracy"]["ci"][1] < 0
    assert not rows["val_loss"]["regression"]
    assert rows["tok_per_s"]["regression"]                # 10% slower, no per-item noise model
    table = compare.render_table(list(rows.values()))
    assert "⚠ regression" in table and "fact_accuracy" in table
    # a stage folds its evaluation into the manifest's metrics ("fact_accuracy") while the per-item scores are
    # eval.json's ("eval.fact_accuracy"): the manifest copy is judged with them too, not by the tolerance alone
    d = _run(tmp_path, "d", {"fact_accuracy": mean(a_items)}, {"eval.fact_accuracy": a_items})
    e = _run(tmp_path, "e", {"fact_accuracy": mean(noisy)}, {"eval.fact_accuracy": noisy})
    rows = {r["metric"]: r for r in compare.compare_runs(d, e)}
    assert rows["fact_accuracy"]["ci"] and not rows["fact_accuracy"]["regression"]


def test_compare_counts_fewer_oracle_flaws_as_better(tmp_path):
    """oracle_flaws are counts of bad answers: PPO dropping rambling is an improvement, not a regression."""
    sft = _run(tmp_path, "sft", {"oracle_flaws": {"rambling": 164, "wrong or missing answer": 45}})
    ppo = _run(tmp_path, "ppo", {"oracle_flaws": {"rambling": 0, "wrong or missing answer": 60}})
    rows = {r["metric"]: r for r in compare.compare_runs(sft, ppo)}
    assert rows["oracle_flaws.rambling"]["better"] == "lower" and not rows["oracle_flaws.rambling"]["regression"]
    assert rows["oracle_flaws.wrong or missing answer"]["regression"]        # 45 -> 60 wrong answers


def test_bootstrap_ci_of_a_paired_difference_covers_the_truth():
    a = [1.0] * 50 + [0.0] * 50
    b = [1.0] * 40 + [0.0] * 60
    lo, hi = compare.bootstrap_diff_ci(a, b)
    assert lo < -0.1 < hi and hi < 0


def test_cost_is_six_n_d_summed_over_the_lineage(tmp_path):
    base = _run(tmp_path, "base", {"train_time_s": 10.0, "tok_per_s": 1000.0, "params": 1_000_000})
    sft = _run(tmp_path, "sft", {"train_time_s": 5.0, "tokens": 2000, "flops_per_token": 7_000_000},
               extra={"stage": "sft"}, parent=base)
    c = cost.lineage_cost(sft)
    assert [s["run"] for s in c["stages"]] == ["base", "sft"]
    assert c["stages"][0]["tokens"] == 10_000 and c["stages"][0]["flops"] == 6 * 1_000_000 * 10_000
    assert c["stages"][1]["flops"] == 7_000_000 * 2000 and c["stages"][1]["tokens_per_s"] == 400
    assert c["total"]["flops"] == 6e10 + 1.4e10 and c["total"]["wall_time_s"] == 15.0
    assert "≈6ND" in cost.render_cost_table(c)


def test_pipeline_report_sections_without_a_chat_model(tmp_path):
    from minillm.data.hygiene import clean
    from minillm.evals.report import pipeline_sections
    docs = ["the cat sat on the mat today", "the cat sat on the mat today", "mail me at ann@example.com please"]
    _, rep = clean(docs)
    (tmp_path / "hygiene").mkdir()
    (tmp_path / "hygiene" / "hygiene.json").write_text(json.dumps(rep))
    tok = _run(tmp_path, "tokenizer", {"train_time_s": 0.5}, extra={"stage": "tokenizer"})
    pre = _run(tmp_path, "pretrain", {"train_time_s": 2.0, "tokens": 1000, "params": 100}, parent=tok)
    open(os.path.join(pre, "model.safetensors"), "wb").close()
    md = pipeline_sections(str(tmp_path))
    assert "| exact_duplicate | 1 |" in md and "| email | 1 |" in md
    assert "| **total** | | 2.5 | 1,000 | | 6.000e+05 |" in md
    assert "tokenizer: tokenizer → pretrain: pretrain" in md and "```mermaid" in md


@pytest.mark.parametrize("rm_likes_right", [True, False])
def test_best_of_n_grades_the_reward_models_pick(monkeypatch, rm_likes_right, world, oracle):
    w = world
    item = next(x for x in w.instructions("test") if x["family"] == "fact")
    right, wrong = item["task"]["reference"], "I think it is a lovely place."
    scripted = iter([[wrong], [wrong], [right], [wrong]])  # greedy, then n=3 samples

    def fake_generate(policy, tok, prompts, **kw):
        return [{"prompt_ids": [0], "response_ids": [1], "ended": True, "text": t} for t in next(scripted)]

    monkeypatch.setattr(bon.chatdata, "generate_chat", fake_generate)
    monkeypatch.setattr(bon, "reward_of", lambda rm, tok, gens, batch_size=64: torch.tensor(
        [1.0 if (g["text"] == right) == rm_likes_right else 0.0 for g in gens]))
    m = bon.best_of_n(torch.nn.Linear(1, 1), None, None, oracle, [item["messages"][:1]], n=3)
    assert m["greedy_accuracy"] == 0 and m["sample_accuracy"] == 0 and m["any_of_n_accuracy"] == 1
    assert m["best_of_n_accuracy"] == float(rm_likes_right)
    assert m["best_of_n_score"] == (1.0 if rm_likes_right else pytest.approx(0.4))


@pytest.mark.parametrize("rm_likes_right", [True, False])
def test_caught_mistakes_scores_the_reference_against_each_wrong_greedy_answer(monkeypatch, rm_likes_right, world,
                                                                            oracle):
    w = world
    items = [x for x in w.instructions("test") if x["family"] == "fact"][:3]
    refs = [x["messages"][-1]["content"] for x in items]
    answers = [refs[0], "I think it is a lovely place.", refs[0]]          # right, wrong, wrong (another's fact)
    tok = CharTokenizer.train([m["content"] for x in items for m in x["messages"]] + answers)
    monkeypatch.setattr(bon.chatdata, "generate_chat", lambda policy, tok_, prompts, **kw: [
        {"prompt_ids": chatdata.encode_prompt(tok, p, 200), "text": a,
         "response_ids": tok.encode(a) + [tok.end_id]} for p, a in zip(prompts, answers)])
    scored = []
    ref_of = {tuple(chatdata.encode_prompt(tok, chatdata.prompt_of(x), 200)): r for x, r in zip(items, refs)}

    def fake_reward_of(rm, tok_, gens, batch_size=64):   # the RM reads what PPO would: prompt ids, answer, <|end|>
        texts = [tok.decode(g["response_ids"]) for g in gens]
        scored.append(texts)
        right = [t == ref_of[tuple(g["prompt_ids"])] + "<|end|>" for g, t in zip(gens, texts)]
        return torch.tensor([1.0 if r == rm_likes_right else 0.0 for r in right])

    monkeypatch.setattr(bon, "reward_of", fake_reward_of)
    m = bon.caught_mistakes(torch.nn.Linear(1, 1), None, tok, oracle, items)
    assert scored[0] == [refs[1] + "<|end|>", refs[2] + "<|end|>"]            # the references of the two wrong ones
    assert m["policy_wrong"] == 2 and m["n_prompts"] == 3
    assert m["caught"] == float(rm_likes_right)
    kinds = [x["heldout"] for x in items[1:]]
    assert sum(int(v.split("/")[1]) for v in m["caught_by_heldout"].values()) == 2
    assert set(m["caught_by_heldout"]) == set(kinds)


def test_oracle_gain_is_the_paired_difference_with_a_bootstrap_interval(tmp_path):
    from minillm.evals.chat import oracle_gain
    rng = random.Random(1)
    base = [round(rng.random(), 1) for _ in range(300)]
    tiny = list(base)
    tiny[0], tiny[1] = base[0] + 0.6, base[1] + 0.3          # two answers fixed: +0.003, noise-sized
    big = [min(1.0, x + 0.3) for x in base]                   # every answer better
    a = _run(tmp_path, "sft", {}, {"eval.oracle_score": base})
    b = _run(tmp_path, "ppo", {}, {"eval.oracle_score": tiny})
    c = _run(tmp_path, "dpo", {}, {"eval.oracle_score": big})
    gain, (lo, hi) = oracle_gain(a, b)
    assert gain == pytest.approx(0.9 / 300) and lo <= gain <= hi and lo >= 0.0      # only these two items move
    gain, (lo, hi) = oracle_gain(a, c)
    assert gain == pytest.approx(sum(big) / 300 - sum(base) / 300) and lo > 0.2
    d = _run(tmp_path, "other", {}, {"eval.oracle_score": base[:100]})
    assert oracle_gain(a, d) is None                          # different prompts: no paired comparison
    assert oracle_gain(a, _run(tmp_path, "bare", {})) is None
