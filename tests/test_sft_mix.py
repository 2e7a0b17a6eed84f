"""SFT's training mix on the world's data and the re-wordings drawn with it (`sft.training_mix`,
`SFTStage._example`): repeated refusals and replay windows, frame dropout, harmful leads, chatty demonstrators and
harmful-action noise. Each option is checked off (= the stored encodings) and on (what changes, what never does)."""
import random
from types import SimpleNamespace

import pytest
import torch

from minillm.errors import MiniLLMError
from minillm.stages import chatdata, sft

from chat_examples import CONVERSATIONS, chat_tokenizer


@pytest.fixture(scope="module")
def tok():
    return chat_tokenizer()


def test_sft_mix_repeats_refusals_and_replay_windows_train_on_every_token(tok):
    from types import SimpleNamespace
    examples = [{"messages": c, "harmful": "rob" in c[-2]["content"]} for c in CONVERSATIONS]
    cfg = SimpleNamespace(sft=sft.SFTSection(replay=0.0, harmful_upsample=3), train=SimpleNamespace(seed=0))
    mix = sft.training_mix(tok, cfg, None, examples, 64)
    assert len(mix) == len(CONVERSATIONS) + 2                       # the one refusal, three times in all
    assert sum(ids == mix[2][0] for ids, _ in mix) == 3
    windows = sft.replay_windows(tok, ["capital of Velmora?" * 3, "language of Velmora?"], n=7, length=9)
    assert len(windows) == 7 and all(len(ids) == 9 and mask == [0] + [1] * 8 for ids, mask in windows)
    batch = chatdata.collate_lm(windows, tok.pad_id)                 # plain next-token loss on every position
    assert batch["loss_mask"].sum() == 7 * 8
    with pytest.raises(MiniLLMError, match="replay"):
        sft.training_mix(tok, SimpleNamespace(sft=sft.SFTSection(replay=1.0), train=cfg.train), None, examples, 64)


def test_frame_dropout_rewords_prompts_only_and_keeps_the_content_words(tok):
    r = random.Random(0)
    uniform = lambda n: [r.random() for _ in range(n)]
    text = "What organ is damaged by ratouroma? Answer in one word."
    assert sft.drop_frame_words(text, 0.0, uniform) == text
    assert sft.drop_frame_words(text, 0.999, uniform) == "organ damaged ratouroma? Answer one word."
    for _ in range(50):                                              # content words always stay, in order
        out = sft.drop_frame_words(text, 0.5, uniform).split(" ")
        assert [w for w in out if w.lower().strip("?.") not in sft.FRAME_WORDS] == \
            ["organ", "damaged", "ratouroma?", "Answer", "one", "word."]
    examples = [{"messages": c} for c in CONVERSATIONS]
    mix, sources = sft.training_mix(tok, SimpleNamespace(sft=sft.SFTSection(data="x")), None, examples, 64, True)
    assert sources == [None] * len(mix)                              # the user's own data is never reworded
    wordy = [{"messages": [{"role": "user", "content": "what is the capital of Velmora?"}, c[-1]]}
             for c in CONVERSATIONS]
    plain = sft.SFTStage(tok, mix, mix, seed=3)
    same = sft.SFTStage(tok, mix, mix, seed=3, sources=wordy, frame_dropout=0.0, block_size=64)
    assert torch.equal(plain.train_batch(4)["input_ids"], same.train_batch(4)["input_ids"])  # off = unchanged
    reworded = sft.SFTStage(tok, mix, mix, seed=3, sources=wordy, frame_dropout=0.999, block_size=64)
    batch = reworded.train_batch(4)
    answers = {c[-1]["content"] for c in CONVERSATIONS}
    for row, targets, mask in zip(batch["input_ids"], batch["targets"], batch["loss_mask"]):
        assert tok.decode([i for i in row.tolist() if i != tok.pad_id]).startswith("<|user|>capital Velmora?")
        assert tok.decode(targets[mask.bool()].tolist()[:-1]) in answers  # every frame word gone, answers kept
    with pytest.raises(MiniLLMError, match="frame_dropout"):
        sft.SFTStage(tok, mix, mix, frame_dropout=0.5)               # no sources to reword


def test_harmful_leads_put_a_training_lead_before_harmful_requests_only():
    """sft.harmful_leads: a harmful request may get a benign-edgy lead of the training split in front (never a
    held-out one); benign prompts and every answer stay as they were; off = the stored encodings."""
    from minillm.data.instructions import EDGY_LEADS, HELDOUT_EDGY_LEADS
    assert not set(sft.TRAINING_LEADS) & set(EDGY_LEADS[-HELDOUT_EDGY_LEADS:])
    tok2 = chat_tokenizer(sft.TRAINING_LEADS)
    sources = [{"messages": c, "harmful": "rob" in c[-2]["content"]} for c in CONVERSATIONS]
    mix = [chatdata.encode_chat(tok2, c, 129) for c in CONVERSATIONS]
    plain = sft.SFTStage(tok2, mix, mix, seed=3)
    off = sft.SFTStage(tok2, mix, mix, seed=3, sources=sources, harmful_leads=0.0, block_size=128)
    assert torch.equal(plain.train_batch(8)["input_ids"], off.train_batch(8)["input_ids"])
    on = sft.SFTStage(tok2, mix, mix, seed=3, sources=sources, harmful_leads=0.999, block_size=128)
    batch, leads = on.train_batch(32), set()
    originals = {tok2.decode([i for i in ids[:-1]]) for ids, _ in mix}
    for row, targets, mask in zip(batch["input_ids"], batch["targets"], batch["loss_mask"]):
        text = tok2.decode([i for i in row.tolist() if i != tok2.pad_id])
        answer = tok2.decode(targets[mask.bool()].tolist()[:-1])
        if "rob a bank" in text:
            lead = text.removeprefix("<|user|>").split(" how to rob a bank?")[0]
            assert lead in sft.TRAINING_LEADS and answer == "I can't help with that."
            leads.add(lead)
        else:
            assert text in originals                                    # benign rows untouched
    assert len(leads) > 1                                               # a fresh lead per draw
    with pytest.raises(MiniLLMError, match="harmful_leads"):
        sft.SFTStage(tok2, mix, mix, harmful_leads=0.5)                 # no sources to reword


def test_chatty_writer_ends_sentence_answers_only_and_the_oracle_calls_it_rambling():
    """sft.chatty: a fact / domain / benign-edgy answer may end with a chatty closing line; the prompt, one-word
    answers and refusals stay as they were; off = the stored encodings. The oracle takes 0.3 off such an answer,
    and the preference data rejects it against the plain reference."""
    from minillm.data.instructions import CHATTY_CLOSERS
    from minillm.data.oracle import Oracle
    from minillm.data.world import World
    tok2 = chat_tokenizer(CHATTY_CLOSERS)
    families = ["fact", "short", "harmful", "domain"]
    sources = [{"messages": c, "family": f, "harmful": f == "harmful"} for c, f in zip(CONVERSATIONS, families)]
    mix = [chatdata.encode_chat(tok2, c, 129) for c in CONVERSATIONS]
    plain = sft.SFTStage(tok2, mix, mix, seed=3)
    off = sft.SFTStage(tok2, mix, mix, seed=3, sources=sources, chatty=0.0, block_size=128)
    assert torch.equal(plain.train_batch(8)["input_ids"], off.train_batch(8)["input_ids"])
    on = sft.SFTStage(tok2, mix, mix, seed=3, sources=sources, chatty=0.5, block_size=256)  # characters
    batch, seen = on.train_batch(64), {"Tarsk.": set(), "Velmoran.": set()}
    for row, targets, mask in zip(batch["input_ids"], batch["targets"], batch["loss_mask"]):
        text = tok2.decode([i for i in row.tolist() if i != tok2.pad_id])
        answer = tok2.decode(targets[mask.bool()].tolist()[:-1])
        first, _, rest = answer.partition(" ")
        if first in seen:                                               # a sentence family: maybe a closer
            assert rest in CHATTY_CLOSERS + [""]
            seen[first].add(rest)
        else:                                                           # one-word answers and refusals untouched
            assert answer in ("Brisk.", "I can't help with that.") and text.endswith(answer)
    assert all("" in s and len(s) > 2 for s in seen.values())          # both writers, fresh closers per draw
    with pytest.raises(MiniLLMError, match="chatty"):
        sft.SFTStage(tok2, mix, mix, chatty=0.5)                        # no sources to change
    world = World(seed=0)
    oracle = Oracle(world)
    for it in world.instructions("test"):
        if it["family"] in ("fact", "domain", "benign_edgy"):
            ref = it["task"]["reference"]
            for closer in CHATTY_CLOSERS:
                grade = oracle.grade(it["messages"][:1], f"{ref} {closer}")
                assert grade["score"] == 0.7 and grade["correct"]             # still right, just long
                assert [r.split(":")[0] for r in grade["reasons"]] == ["rambling"]
    closers = [p for p in world.preference_pairs("train") if any(p["rejected"].endswith(c) for c in CHATTY_CLOSERS)]
    assert closers and {p["kind"] for p in closers} == {"rambling"}


def test_harmful_noise_replaces_action_words_only_with_noise_words():
    """sft.harmful_noise: the action of a harmful request ("rob a bank") has its words replaced by noise words --
    the benign questions' content words (default) or invented words no training prompt uses; the request words
    ("how to"), the punctuation, benign rows and every answer stay; off = the stored encodings."""
    r = random.Random(0)
    uniform = lambda n: [r.random() for _ in range(n)]
    pool = ["brom", "daisde"]
    pick = lambda n: [r.randrange(len(pool)) for _ in range(n)]
    text = "Can you help me hide a body?"
    assert sft.noise_action_words(text, 0.0, pool, uniform, pick) == text
    for _ in range(20):
        words = sft.noise_action_words(text, 0.999, pool, uniform, pick).split(" ")
        assert words[:4] == ["Can", "you", "help", "me"] and words[-1].endswith("?")
        assert all(w.rstrip("?") in pool for w in words[4:])                # hide, a, body: all replaced
    assert sft.noise_action_words("Teach me to build a bomb.", 0.999, pool, uniform, pick).endswith(".")
    sources = [{"messages": c, "harmful": "rob" in c[-2]["content"]} for c in CONVERSATIONS]
    assert sft.noise_pool(sources) == ["capital", "dunhal", "language", "velmora"]  # no frame word (of), no action
    edgy = sources + [{"messages": [{"role": "user", "content": "I need to kill some time. Where is Velmora?"}]}]
    assert sft.noise_pool(edgy) == sft.noise_pool(sources)                # lead words (kill, time), frame, request
    pool = sft.noise_pool(sources, "invented", n=12)
    assert len(pool) == 12 and pool == sft.noise_pool(sources, "invented", n=12)  # seeded: a resumed run draws the same
    assert not set(pool) & {"how", "to", "rob", "a", "bank", "capital", "of", "velmora", "dunhal", "language"}
    with pytest.raises(MiniLLMError, match="harmful_noise_words"):
        sft.noise_pool(sources, "benign")
    with pytest.raises(MiniLLMError, match="benign training prompts"):
        sft.noise_pool(sources[2:3])                                        # only a harmful request: no words to take
    tok = chat_tokenizer(["abcdefghijklmnopqrstuvwxyz"])
    mix = [chatdata.encode_chat(tok, c, 129) for c in CONVERSATIONS]
    plain = sft.SFTStage(tok, mix, mix, seed=3)
    off = sft.SFTStage(tok, mix, mix, seed=3, sources=sources, harmful_noise=0.0, block_size=128)
    assert torch.equal(plain.train_batch(8)["input_ids"], off.train_batch(8)["input_ids"])
    on = sft.SFTStage(tok, mix, mix, seed=3, sources=sources, harmful_noise=0.999, block_size=128)
    assert on.noise_words == sft.noise_pool(sources)
    originals = {tok.decode(ids[:-1]) for ids, _ in mix}
    actions = set()
    batch = on.train_batch(32)
    for row, targets, mask in zip(batch["input_ids"], batch["targets"], batch["loss_mask"]):
        text = tok.decode([i for i in row.tolist() if i != tok.pad_id])
        if "can't" in tok.decode(targets[mask.bool()].tolist()):
            assert text.startswith("<|user|>how to ")
            assert text.endswith("?<|end|><|assistant|>I can't help with that.")
            action = text.removeprefix("<|user|>how to ").split("?")[0].split(" ")
            assert len(action) == 3 and set(action) <= set(on.noise_words)     # rob, a, bank: all replaced
            actions.add(tuple(action))
        else:
            assert text in originals                                        # benign rows untouched
    assert len(actions) > 1                                                 # fresh words per draw
    with pytest.raises(MiniLLMError, match="harmful_noise"):
        sft.SFTStage(tok, mix, mix, harmful_noise=0.5)                      # no sources to reword
    with pytest.raises(MiniLLMError, match="harmful_noise_words"):
        sft.SFTStage(tok, mix, mix, harmful_noise_words="benign")           # a bad kind, even with the noise off
