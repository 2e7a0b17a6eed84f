"""The embedded world: deterministic, honest held-out splits, a domain apart, planted problems present."""
import difflib
import json
import re

import pytest

from minillm.data import facts
from minillm.data.domain import CLINICAL_WORDS
from minillm.data.instructions import QUESTIONS, HELDOUT_QUESTIONS
from minillm.data.planted import iban_make, iban_ok, luhn_complete, luhn_ok
from minillm.data.world import MASK, World, main
from minillm.errors import MiniLLMError


@pytest.fixture(scope="module")
def w():
    return World(seed=0)


@pytest.fixture(scope="module")
def clean():
    return World(seed=0, plant=False)


def test_same_seed_gives_the_same_world_and_another_seed_a_different_one(w):
    again = World(seed=0)
    assert again.general_corpus() == w.general_corpus()
    assert again.domain_corpus() == w.domain_corpus()
    assert again.instructions("test") == w.instructions("test")
    assert again.preference_pairs("train") == w.preference_pairs("train")
    assert again.planted == w.planted
    other = World(seed=1)
    assert [c.name for c in other.countries] != [c.name for c in w.countries]
    assert other.general_corpus() != w.general_corpus()
    assert other.fact_prompts() != w.fact_prompts()


def test_corpus_sizes_are_small_but_not_trivial(w):
    g, d = w.general_corpus(), w.domain_corpus()
    assert 200_000 < sum(map(len, g)) < 1_000_000 and len(g) > 500
    assert 50_000 < sum(map(len, d)) < 400_000
    assert len(w.general_corpus("val")) > 50 and len(w.domain_corpus("val")) > 20
    assert not set(w.general_corpus("val")) & set(g)


def test_no_heldout_fact_is_stated_in_its_heldout_phrasing_anywhere_in_training(w, clean):
    leaked = {x["text"] for x in w.planted["leaks"]}
    for world in (w, clean):
        text = "\n".join(world.general_corpus("train") + world.general_corpus("val"))
        for split in ("test", "val"):
            for p in world.fact_prompts(split):
                sentence = p["prompt"] + p["answer"]
                assert (sentence in text) == (world.plant and sentence + "." in leaked), sentence
            for c in world.cloze_prompts(split):
                filled = c["text"].replace(MASK, c["answer"])
                assert (filled in text) == (world.plant and filled in leaked), filled


def test_heldout_phrasings_are_seen_with_other_countries_and_each_fact_in_several_phrasings(clean):
    text = "\n".join(clean.general_corpus())
    for p in clean.fact_prompts("test"):
        template = facts.FORWARD[p["relation"]][p["template"]]
        pattern = re.escape(template).replace(r"\{e\}", "([A-Z][a-z]+)").replace(r"\{v\}", "[A-Za-z]+")
        others = {m for m in re.findall(pattern, text) if m != p["entity"]}
        assert len(others) >= 3, template
    for c in clean.countries:
        for rel in facts.RELATIONS:
            seen = {i for i, t in enumerate(facts.FORWARD[rel] + facts.BACKWARD[rel])
                    if facts.render(t, c.name, c.value(rel)) in text}
            assert len(seen) >= 5, (c.name, rel, seen)
            assert 0 in seen  # the canonical phrasing, which instruction answers use


def test_test_and_val_hold_out_one_subject_first_and_one_relation_first_phrasing(w):
    test = {(p["entity"], p["relation"]): p["template"] for p in w.fact_prompts("test")}
    for p in w.fact_prompts("val"):
        first = facts.SUBJECT_FIRST[p["relation"]]
        assert (p["template"] in first) != (test[(p["entity"], p["relation"])] in first)
    kinds = {t in facts.SUBJECT_FIRST[rel] for (_, rel), t in test.items()}
    assert kinds == {True, False}


def test_fact_and_cloze_prompts_are_well_formed(w):
    for split in ("test", "val"):
        fp, cp = w.fact_prompts(split), w.cloze_prompts(split)
        assert len(fp) == len(cp) == len(w.countries) * len(facts.RELATIONS)
        for p in fp:
            assert p["answer"].startswith(" ") and not p["prompt"].endswith(" ")
            assert p["answer"].strip() == w.country(p["entity"]).value(p["relation"])
            assert p["entity"] in p["prompt"] and p["template"] != 0
        for c in cp:
            assert c["text"].count(MASK) == 1
    test_keys = {(p["entity"], p["relation"], p["template"]) for p in w.fact_prompts("test")}
    val_keys = {(p["entity"], p["relation"], p["template"]) for p in w.fact_prompts("val")}
    assert not test_keys & val_keys


def test_domain_text_is_absent_from_the_general_corpus(w):
    general = set(re.findall(r"[a-z]+", "\n".join(w.general_corpus()).lower()))
    domain = set(re.findall(r"[a-z]+", "\n".join(w.domain_corpus()).lower()))
    terms = [c.name for c in w.conditions] + [c.treatment for c in w.conditions] + CLINICAL_WORDS
    assert not general & set(terms)
    assert {c.name for c in w.conditions} <= domain and {c.treatment for c in w.conditions} <= domain


def test_instruction_splits_hold_out_entities_and_wordings(w):
    train, test, val = w.instructions("train"), w.instructions("test"), w.instructions("val")
    prompts = {s: {x["messages"][0]["content"] for x in items} for s, items in
               [("train", train), ("test", test), ("val", val)]}
    assert not prompts["train"] & prompts["test"] and not prompts["train"] & prompts["val"]
    assert not prompts["test"] & prompts["val"]
    assert all(x["heldout"] != "none" for x in test + val) and all(x["heldout"] == "none" for x in train)
    train_text = json.dumps([x["messages"] for x in train])
    for name in w.heldout_countries + w.heldout_conditions:
        assert not re.search(rf"\b{name}\b", train_text), name
    assert not any(w.heldout_continent in x["messages"][0]["content"] for x in train if x["family"] == "list")
    for rel, qs in QUESTIONS.items():
        for q in qs[-HELDOUT_QUESTIONS:]:
            pattern = re.escape(q).replace(r"\{e\}", "[A-Z][a-z]+")
            assert not re.search(pattern, train_text), q
    kinds = {x["heldout"] for x in test}
    assert {"entity", "template"} <= kinds
    families = {x["family"] for x in test}
    assert families == {"fact", "short", "list", "rewrite", "domain", "harmful", "benign_edgy"}
    assert sum(x["harmful"] for x in test) >= 30 and sum(x["family"] == "benign_edgy" for x in test) >= 30


def test_more_training_wordings_are_train_only_and_move_nothing_held_out(w):
    from minillm.data import instructions as I
    more = {q for d in (I.MORE_QUESTIONS, I.MORE_DOMAIN_QUESTIONS) for qs in d.values() for q in qs}
    patterns = [re.compile(re.escape(q).replace(r"\{e\}", "[A-Z][a-z]+").replace(r"\{c\}", "[a-z]+")) for q in more]
    users = lambda items: [x["messages"][0]["content"] for x in items]
    assert not any(p.search(u) for p in patterns for u in users(w.instructions("test") + w.instructions("val")))
    assert sum(any(p.search(u) for p in patterns) for u in users(w.instructions("train"))) > 1000
    # the held-out items are exactly what the split alone deals: more_training draws from its own stream
    rng = w._rng("instructions")
    items = I.split_instructions(rng, I.candidates(rng, w.countries, w.continents, w.conditions,
                                                   set(w.heldout_countries), set(w.heldout_conditions),
                                                   w.heldout_continent))
    for split in ("test", "val"):
        assert users([x for x in items if x["split"] == split]) == users(w.instructions(split))
    # no new wording brings in a word that only a held-out wording has ("medicine", "points", "shops", ...)
    words = lambda qs: {t for q in qs for t in re.findall(r"[a-z']+", q.lower().replace("{e}", "").replace("{c}", ""))}
    held, seen = set(), set()
    for d, n in ((I.QUESTIONS, I.HELDOUT_QUESTIONS), (I.DOMAIN_QUESTIONS, I.HELDOUT_DOMAIN_QUESTIONS)):
        for qs in d.values():
            held |= words(qs[-n:])
            seen |= words(qs[:-n])
    assert held - seen and not (held - seen) & words(more)


def test_instruction_answers_are_short_and_chat_shaped(w):
    for x in w.instructions("train"):
        user, assistant = x["messages"]
        assert user["role"] == "user" and assistant["role"] == "assistant"
        assert len(assistant["content"].split()) <= 12
        assert x["harmful"] == (x["family"] == "harmful")


def test_preference_pairs_cover_every_kind(w):
    pairs = w.preference_pairs("train")
    assert {p["kind"] for p in pairs} == {"wrong_fact", "off_format", "rambling", "rude", "over_refusal",
                                           "harmful_compliance"}
    assert all(p["chosen"] != p["rejected"] for p in pairs)
    assert len(w.preference_pairs("test")) >= 200


def test_planted_items_are_all_in_the_training_corpus(w, clean):
    docs = w.general_corpus()
    text = "\n".join(docs)
    p = w.planted
    assert len(p["exact_duplicates"]) >= 5 and len(p["near_duplicates"]) >= 5 and len(p["leaks"]) >= 3
    for d in p["exact_duplicates"]:
        assert docs.count(d) == 2
    for n in p["near_duplicates"]:
        assert n["original"] in docs and n["duplicate"] in docs and n["original"] != n["duplicate"]
        assert difflib.SequenceMatcher(None, n["original"], n["duplicate"], autojunk=False).ratio() > 0.95
    types = {x["type"] for x in p["pii"]}
    assert types == {"email", "phone", "iban", "credit_card", "ipv4"}
    for x in p["pii"]:
        assert x["value"] in text
        if x["type"] == "iban":
            assert iban_ok(x["value"])
        if x["type"] == "credit_card":
            assert luhn_ok(x["value"])
    for leak in p["leaks"]:
        assert leak["text"] in text
    assert clean.planted == {"exact_duplicates": [], "near_duplicates": [], "pii": [], "leaks": []}
    assert len(docs) == len(clean.general_corpus()) + len(p["exact_duplicates"]) + len(p["near_duplicates"])
    clean_text = "\n".join(clean.general_corpus())
    assert not any(x["value"] in clean_text for x in p["pii"])


def test_luhn_and_iban_checks_on_known_numbers():
    assert luhn_ok("4111 1111 1111 1111") and not luhn_ok("4111 1111 1111 1112")
    assert luhn_complete("411111111111111") == "1"
    assert iban_ok("DE89370400440532013000") and iban_ok("GB82 WEST 1234 5698 7654 32")
    assert not iban_ok("DE89370400440532013001")
    assert iban_make("DE", "370400440532013000") == "DE89370400440532013000"


def test_bad_split_and_bad_size_are_user_errors(w):
    with pytest.raises(MiniLLMError, match="split"):
        w.general_corpus("test")
    with pytest.raises(MiniLLMError, match="split"):
        w.fact_prompts("train")
    with pytest.raises(MiniLLMError, match="too small"):
        World(n_countries=3)


def test_dump_writes_readable_files(tmp_path, capsys):
    assert main(["--dump", str(tmp_path), "--seed", "3"]) == 0
    lines = (tmp_path / "instructions_test.jsonl").read_text().splitlines()
    assert lines and json.loads(lines[0])["messages"]
    docs = [json.loads(x)["text"] for x in (tmp_path / "general_train.jsonl").read_text().splitlines()]
    assert docs == World(seed=3).general_corpus()
    assert json.loads((tmp_path / "planted.json").read_text())["pii"]
