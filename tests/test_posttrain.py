"""Post-training data and objectives on real tokenizers and models: chat masks, padding, learning to stop,
reward heads, DPO at its starting point, and the user's JSONL files (bad lines reported with numbers)."""
import json
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import torch

from minillm.errors import MiniLLMError
from minillm.model import ModelConfig, Transformer
from minillm.stages import chatdata, dpo, reward, sft

from chat_examples import CONVERSATIONS, chat_tokenizer


@pytest.fixture(scope="module")
def tok():
    return chat_tokenizer()


def small_model(tok, block_size=64):
    return Transformer(ModelConfig(vocab_size=tok.vocab_size, n_layer=2, n_head=2, n_embd=48, block_size=block_size))


def test_collate_trains_only_on_answers_and_pads_with_pad_not_eos(tok):
    examples = [chatdata.encode_chat(tok, c, 65) for c in CONVERSATIONS[:2]] + [
        chatdata.encode_chat(tok, CONVERSATIONS[3], 65)]
    batch = chatdata.collate_lm(examples, tok.pad_id)
    for b, (ids, mask) in enumerate(examples):
        n = len(ids) - 1
        assert batch["input_ids"][b, :n].tolist() == ids[:-1]
        assert batch["targets"][b, :n].tolist() == ids[1:]
        assert batch["loss_mask"][b, :n].tolist() == [float(m) for m in mask[1:]]
        assert batch["loss_mask"][b, n:].sum() == 0                          # padding is never a target
        assert set(batch["input_ids"][b, n:].tolist()) <= {tok.pad_id}       # padded with <|pad|> ...
    assert tok.eot_id not in batch["input_ids"].tolist()[0]                   # ... never <|endoftext|>
    # the targets under the mask are exactly the answer followed by <|end|>
    ids, mask = examples[0]
    answer = [t for t, m in zip(ids, mask) if m]
    assert tok.decode(answer[:-1]) == "Tarsk." and answer[-1] == tok.end_id
    assert tok.user_id not in answer and tok.assistant_id not in answer


def test_sft_loss_has_no_gradient_on_prompt_or_padding(tok):
    batch = chatdata.collate_lm([chatdata.encode_chat(tok, c, 65) for c in CONVERSATIONS], tok.pad_id)
    logits = torch.randn(*batch["input_ids"].shape, tok.vocab_size, requires_grad=True)
    sft.masked_lm_loss(logits, batch["targets"], batch["loss_mask"]).backward()
    grad_per_pos = logits.grad.abs().sum(-1)                                  # (B, T)
    assert (grad_per_pos[batch["loss_mask"] == 0] == 0).all()
    assert (grad_per_pos[batch["loss_mask"] == 1] > 0).all()
    # and its value is the mean NLL over answer tokens only, computed by hand
    logp = torch.log_softmax(logits.detach(), -1).gather(-1, batch["targets"][..., None])[..., 0]
    expected = -(logp * batch["loss_mask"]).sum() / batch["loss_mask"].sum()
    assert sft.masked_lm_loss(logits, batch["targets"], batch["loss_mask"]).item() == pytest.approx(expected.item(),
                                                                                                     rel=1e-5)


def test_sft_model_learns_to_answer_and_emit_end_of_turn(tok, tmp_path):
    from minillm.config import TrainConfig
    from minillm.train import train
    torch.manual_seed(0)
    model = small_model(tok)
    encoded = sft.encode_instructions(tok, [{"messages": c} for c in CONVERSATIONS], 64)
    stage = sft.SFTStage(tok, encoded, encoded, seed=0)
    cfg = TrainConfig(max_steps=120, batch_size=8, lr=3e-3, warmup_steps=5, eval_every=60, eval_batches=1,
                      log_every=20, weight_decay=0.0, progress=False)
    metrics = train(model, stage, cfg, str(tmp_path / "sft"))
    assert metrics["val_loss"] < 0.1
    gens = chatdata.generate_chat(model, tok, [c[:-1] for c in CONVERSATIONS], max_new_tokens=30)
    for c, g in zip(CONVERSATIONS, gens):
        assert g["text"] == c[-1]["content"]
        assert g["ended"] and g["response_ids"][-1] == tok.end_id             # it learned to stop


def test_reward_model_keeps_the_sft_trunk_and_reads_the_last_token(tok):
    policy = small_model(tok)
    rm = reward.reward_model_from(policy)
    ids = torch.randint(0, tok.vocab_size, (3, 10))
    assert torch.allclose(rm.forward_hidden(ids), policy.forward_hidden(ids))
    assert rm(ids).abs().max() == 0                                            # a new head starts indifferent
    torch.nn.init.normal_(rm.score_head.weight)
    last = torch.tensor([9, 4, 0])
    all_scores = rm(ids)
    assert reward.scores_at(rm, ids, last).tolist() == pytest.approx(all_scores[[0, 1, 2], last].tolist())
    # right padding does not change the score of the real tokens (causal attention)
    padded = torch.cat([ids[1:2, :5], torch.full((1, 5), tok.pad_id)], 1)
    assert reward.scores_at(rm, padded, torch.tensor([4])).item() == pytest.approx(all_scores[1, 4].item(), abs=1e-5)


def test_likelihood_reward_head_adds_the_sft_models_token_logprobs(tok):
    """head "scalar_lm": s_t = w·h_t + b + c · log p(x_t | x_<t), the log-prob from the policy's own LM head."""
    torch.manual_seed(0)
    policy = small_model(tok)
    rm = reward.reward_model_from(policy, likelihood=True)
    assert rm.cfg.head == "scalar_lm" and rm.score_lm_coef.item() == 1.0
    ids = torch.randint(0, tok.vocab_size, (3, 10))
    with torch.no_grad():
        logp = torch.log_softmax(policy(ids), -1)                               # (3, 10, V)
    by_hand = torch.zeros(3, 10)
    for b in range(3):
        for t in range(1, 10):
            by_hand[b, t] = logp[b, t - 1, ids[b, t]]
    assert torch.allclose(rm(ids), by_hand, atol=1e-5)                          # a zero head: the log-probs alone
    torch.nn.init.normal_(rm.score_head.weight)
    with torch.no_grad():
        rm.score_lm_coef.fill_(0.5)
        head = rm.score_head(rm.forward_hidden(ids)).squeeze(-1)
    assert torch.allclose(rm(ids), head + 0.5 * by_hand, atol=1e-5)
    # a wrong answer the policy finds unlikely scores lower before any reward training
    pairs = [{"prompt": c[:-1], "chosen": c[-1]["content"], "rejected": "Ugh. whatever."} for c in CONVERSATIONS]
    trained = small_model(tok)
    opt = torch.optim.AdamW(trained.parameters(), lr=3e-3)
    batch = chatdata.collate_lm([chatdata.encode_chat(tok, c, 65) for c in CONVERSATIONS], tok.pad_id)
    for _ in range(60):
        loss = sft.sft_loss(trained, batch)[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
    rm = reward.reward_model_from(trained, likelihood=True)
    enc = reward.encode_pairs(tok, pairs, 64)
    assert reward.pairwise_accuracy(rm, tok, enc, pool="mean")["pairwise_accuracy"] == 1.0


def test_sequence_scores_pool_over_the_answer_tokens_only(tok):
    torch.manual_seed(0)
    rm = reward.reward_model_from(small_model(tok))
    torch.nn.init.normal_(rm.score_head.weight)
    pairs = [{"prompt": c[:-1], "chosen": c[-1]["content"], "rejected": "No."} for c in CONVERSATIONS]
    batch = reward.collate(reward.encode_pairs(tok, pairs, 64), tok.pad_id)
    all_scores = rm(batch["input_ids"])                                           # (2B, T)
    for b, ((ids, mask), _) in enumerate(chatdata.encode_pair(tok, p, 64) for p in pairs):
        answer = [t for t, m in enumerate(mask) if m]                             # the answer's positions
        assert batch["answer_mask"][b].nonzero().flatten().tolist() == answer
        mean = reward.sequence_scores(rm, batch["input_ids"], batch["answer_mask"], pool="mean")[b]
        assert mean.item() == pytest.approx(all_scores[b, answer].mean().item(), abs=1e-5)
    last = reward.sequence_scores(rm, batch["input_ids"], batch["answer_mask"], pool="last")
    assert torch.allclose(last, reward.scores_at(rm, batch["input_ids"], batch["last_index"]))
    with pytest.raises(MiniLLMError, match="reward.pool"):
        reward.sequence_scores(rm, batch["input_ids"], batch["answer_mask"], pool="max")


def test_extra_wrong_fact_pairs_are_wrong_facts_the_oracle_ranks_below_the_reference():
    from minillm.data.oracle import Oracle
    from minillm.data.preferences import wrong_fact_pairs
    from minillm.data.world import World
    world = World(seed=0)
    oracle = Oracle(world)
    pairs = wrong_fact_pairs(random.Random(0), world.instructions("train"), world, 40)
    assert len(pairs) == 40 and len({p["id"] for p in pairs}) == 40 and {p["kind"] for p in pairs} == {"wrong_fact"}
    for p in pairs:
        assert oracle.score(p["prompt"], p["chosen"])[0] > oracle.score(p["prompt"], p["rejected"])[0]


def test_confusion_pairs_answer_another_question_and_the_oracle_ranks_them_below_the_reference():
    from minillm.data.oracle import Oracle
    from minillm.data.preferences import confusion_pairs
    from minillm.data.world import World
    world = World(seed=0)
    oracle = Oracle(world)
    items = world.instructions("train")
    pairs = confusion_pairs(random.Random(0), items, world, len(items))      # every training instruction once
    assert len({p["id"] for p in pairs}) == len(items) and {p["kind"] for p in pairs} == {"confusion"}
    by_id = {it["id"]: it for it in items}
    for p in pairs:
        assert p["rejected"] != p["chosen"]
        assert oracle.score(p["prompt"], p["chosen"])[0] > oracle.score(p["prompt"], p["rejected"])[0], p
        task = by_id[p["id"]]["task"]
        if task["type"] == "harmful":                                       # a fact where a refusal was due
            assert not oracle.is_refusal(p["rejected"])
        elif task["type"] == "list":                                        # a sentence where a list was asked
            assert p["rejected"].startswith("The continent of ")
        elif task["format"] != "one_word":                                  # another relation or another entity
            g = oracle.grade(p["prompt"], p["rejected"])
            assert any(r.startswith(("missing answer", "answers about")) for r in g["reasons"]), g["reasons"]
    mirrored = confusion_pairs(random.Random(0), items, world, 2000, mirrored=True)
    assert all(oracle.score(p["prompt"], p["chosen"])[0] > oracle.score(p["prompt"], p["rejected"])[0]
               for p in mirrored)
    mirrors = [b for a, b in zip(mirrored, mirrored[1:]) if (b["chosen"], b["rejected"]) == (a["rejected"], a["chosen"])]
    assert len(mirrors) > 800                                           # most of the 1000 pairs got their mirror,
    assert all(by_id[b["id"]]["messages"] == b["prompt"] + [{"role": "assistant", "content": b["chosen"]}]
               for b in mirrors)                                        # asked by a training question it answers
    sentence = lambda side: sum(p[side].startswith("The continent of ") for p in mirrored)
    plain = confusion_pairs(random.Random(0), items, world, 2000)
    plain_gap = sum(p["rejected"].startswith("The continent of ") for p in plain) - \
        sum(p["chosen"].startswith("The continent of ") for p in plain)
    assert plain_gap > 100 and abs(sentence("rejected") - sentence("chosen")) < plain_gap / 3  # as often chosen


@pytest.mark.parametrize("pool", ["last", "mean"])
def test_reward_training_orders_pairs(tok, pool):
    torch.manual_seed(0)
    rm = reward.reward_model_from(small_model(tok))
    pairs = [{"prompt": c[:-1], "chosen": c[-1]["content"], "rejected": "Ugh. whatever."} for c in CONVERSATIONS]
    enc = reward.encode_pairs(tok, pairs, 64)
    opt = torch.optim.AdamW(rm.parameters(), lr=3e-3)
    first = None
    for _ in range(40):
        loss, m = reward.reward_loss(rm, reward.collate(enc, tok.pad_id), pool=pool)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first == pytest.approx(math.log(2), abs=1e-4)                     # all scores 0 at the start
    assert loss.item() < 0.05
    assert reward.pairwise_accuracy(rm, tok, enc, pool=pool)["pairwise_accuracy"] == 1.0


def test_length_sorted_chunks_give_the_whole_batch_numbers_and_gradients(tok):
    """sft_loss, DPO's pair log-probs and the reward loss run rows in length-sorted chunks cut after their last
    position (chatdata.by_length); a causal model must give the same values and gradients as on the padded batch."""
    torch.manual_seed(0)
    model = small_model(tok)
    convs = CONVERSATIONS * 5                                                  # 20 rows of 4 lengths
    batch = chatdata.collate_lm([chatdata.encode_chat(tok, c, 65) for c in convs], tok.pad_id)
    whole = sft.masked_lm_loss(model(batch["input_ids"]), batch["targets"], batch["loss_mask"])
    grads = torch.autograd.grad(whole, list(model.parameters()))
    chunked = sft.sft_loss(model, batch)[0]
    for g, h in zip(grads, torch.autograd.grad(chunked, list(model.parameters()))):
        assert torch.allclose(g, h, atol=1e-6)
    assert chunked.item() == pytest.approx(whole.item(), abs=1e-6)
    pairs = [{"prompt": c[:-1], "chosen": c[-1]["content"], "rejected": "Ugh. whatever." * (i % 3 + 1)}
             for i, c in enumerate(convs)]
    pb = chatdata.collate_pairs(reward.encode_pairs(tok, pairs, 65), tok.pad_id)
    from minillm.stages import rl
    by_hand = rl.sequence_logprobs(model(pb["input_ids"]), pb["targets"], pb["loss_mask"])   # (2B,)
    assert torch.allclose(torch.cat(dpo.pair_logprobs(model, pb)), by_hand, atol=1e-5)
    rm = reward.reward_model_from(model)
    torch.nn.init.normal_(rm.score_head.weight)
    rb = reward.collate(reward.encode_pairs(tok, pairs, 64), tok.pad_id)
    for pool in reward.POOLS:
        r_c, r_r = reward.sequence_scores(rm, rb["input_ids"], rb["answer_mask"], pool=pool).chunk(2)
        expected = rl.bradley_terry_loss(r_c, r_r)[0]
        assert reward.reward_loss(rm, rb, pool=pool)[0].item() == pytest.approx(expected.item(), abs=1e-6)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 90), min_size=1, max_size=9), st.integers(0, 400))
def test_length_chunks_is_the_cheapest_cut_of_the_sorted_rows(lengths, chunk_cost):
    """Every row in exactly one chunk, chunks contiguous in sorted order, and no other cut of the sorted rows
    (all 2^(B-1) of them, by brute force) pads less: sum of n * longest + chunk_cost."""
    import itertools
    order, chunks = chatdata.length_chunks(torch.tensor(lengths), chunk_cost)
    assert torch.equal(torch.cat(chunks), order)
    srt = sorted(lengths)
    cost = lambda parts: sum(len(p) * max(p) + chunk_cost for p in parts)
    got = cost([[lengths[i] for i in c.tolist()] for c in chunks])
    best = min(cost([srt[a:b] for a, b in zip((0,) + cuts, cuts + (len(srt),))])
               for k in range(len(srt)) for cuts in itertools.combinations(range(1, len(srt)), k))
    assert got == best
    if chunk_cost > 90 * len(lengths):
        assert len(chunks) == 1                                                   # one pass beats any split


def test_dpo_starts_at_log2_and_its_reference_logprobs_are_the_policys(tok):
    policy = small_model(tok)
    pairs = [{"prompt": c[:-1], "chosen": c[-1]["content"], "rejected": "No."} for c in CONVERSATIONS]
    enc = reward.encode_pairs(tok, pairs, 65)
    ref = dpo.reference_logprobs(policy, enc, tok.pad_id)                     # (N, 2)
    stage = dpo.DPOStage(tok, enc, ref, [], None, beta=0.1)
    batch = stage._batch(enc, ref, [0, 1, 2, 3])
    loss, m = dpo.dpo_batch_loss(policy, batch, beta=0.1)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-5)
    assert m["reward_margin"] == pytest.approx(0.0, abs=1e-5)
    # the reference log-prob of an answer is the sum of its token log-probs, <|end|> included
    ids, mask = enc[0][0]
    with torch.no_grad():
        logp = torch.log_softmax(policy(torch.tensor([ids[:-1]])), -1)[0]
    by_hand = sum(logp[t, ids[t + 1]].item() for t in range(len(ids) - 1) if mask[t + 1])
    assert ref[0, 0].item() == pytest.approx(by_hand, abs=1e-4)
    # computed on first draw, the same numbers: rows asked for are filled, the others stay unknown
    lazy = dpo.LazyReferenceLogprobs(policy, enc, tok.pad_id)
    assert torch.allclose(lazy[[2, 0]], ref[[2, 0]], atol=1e-5)
    assert torch.isnan(lazy.values[1]).all() and not torch.isnan(lazy.values[[0, 2]]).any()
    assert torch.allclose(lazy[list(range(len(enc)))], ref, atol=1e-5)


def test_left_padded_generation_matches_unpadded(tok):
    model = small_model(tok).eval()
    prompts = [CONVERSATIONS[0][:-1], CONVERSATIONS[3][:-1]]
    together = chatdata.generate_chat(model, tok, prompts, max_new_tokens=8)
    alone = [chatdata.generate_chat(model, tok, [p], max_new_tokens=8)[0] for p in prompts]
    assert [g["response_ids"] for g in together] == [g["response_ids"] for g in alone]


# ---------------------------------------------------------------------------------------------- user data

def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_instructions_accept_messages_and_prompt_response(tmp_path):
    path = write_lines(tmp_path / "ins.jsonl", [
        json.dumps({"prompt": "Hi?", "response": "Hello."}), "",
        json.dumps({"messages": CONVERSATIONS[0]})])
    got = chatdata.load_instructions(path)
    assert got[0]["messages"] == [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]
    assert got[1]["messages"] == CONVERSATIONS[0]


def test_malformed_jsonl_lines_are_reported_with_line_numbers(tmp_path):
    path = write_lines(tmp_path / "bad.jsonl", [json.dumps({"prompt": "a", "response": "b"}), "{not json",
                                               json.dumps({"prompt": "c", "response": "d"}), "[1, 2]"])
    with pytest.raises(MiniLLMError, match=r"line 2.*line 4"):
        chatdata.load_instructions(path)


def test_instruction_without_answer_names_its_line(tmp_path):
    path = write_lines(tmp_path / "x.jsonl", [json.dumps({"prompt": "a", "response": "b"}), json.dumps({"text": 1})])
    with pytest.raises(MiniLLMError, match="line 2"):
        chatdata.load_instructions(path)


def test_empty_preference_file_is_a_clear_error(tmp_path):
    with pytest.raises(MiniLLMError, match="no preference pairs"):
        chatdata.load_preferences(write_lines(tmp_path / "empty.jsonl", [""]))
    path = write_lines(tmp_path / "p.jsonl", [json.dumps({"prompt": "q", "chosen": "a"})])
    with pytest.raises(MiniLLMError, match="line 1.*rejected"):
        chatdata.load_preferences(path)
    with pytest.raises(MiniLLMError, match="does not exist"):
        chatdata.load_preferences(str(tmp_path / "missing.jsonl"))


def test_sft_dropout_acts_in_training_only_and_leaves_the_config(tok):
    torch.manual_seed(0)
    model = small_model(tok)
    ids = torch.randint(0, tok.vocab_size, (2, 12))
    sft.set_dropout(model, 0.5)
    model.train()
    assert not torch.allclose(model(ids), model(ids))               # two different dropout masks
    model.eval()
    assert torch.allclose(model(ids), model(ids))
    sft.set_dropout(model, model.cfg.dropout)
    model.train()
    assert torch.allclose(model(ids), model(ids)) and model.cfg.dropout == 0.0
    with pytest.raises(MiniLLMError, match="sft.dropout"):
        sft.set_dropout(model, 1.0)


def test_dpo_nll_term_adds_the_chosen_answers_per_token_nll(tok):
    torch.manual_seed(0)
    model = small_model(tok)
    pairs = [chatdata.encode_pair(tok, {"prompt": "capital of Velmora?", "chosen": "Tarsk.", "rejected": "Brisk."}, 65),
             chatdata.encode_pair(tok, {"prompt": "capital of Dunhal?", "chosen": "Brisk.", "rejected": "No."}, 65)]
    batch = chatdata.collate_pairs(pairs, tok.pad_id)
    batch["ref_logps"] = torch.zeros(2, 2)
    plain, _ = dpo.dpo_batch_loss(model, batch, beta=0.1)
    with_nll, m = dpo.dpo_batch_loss(model, batch, beta=0.1, nll_coef=0.5)
    chosen, _ = dpo.pair_logprobs(model, batch)
    n = batch["loss_mask"].sum(1)[:2]
    assert math.isclose(with_nll.item(), plain.item() + 0.5 * (-(chosen / n).mean().item()), rel_tol=1e-5)
    assert m["chosen_nll"] > 0
