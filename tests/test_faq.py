"""FAQ pages (mixed training): the SFT training questions, and nothing held out, as plain Q/A text in the corpora."""
import random
import re

import pytest

from minillm.data import faq
from minillm.data.instructions import DOMAIN_QUESTIONS, HELDOUT_DOMAIN_QUESTIONS, HELDOUT_QUESTIONS, QUESTIONS
from minillm.data.world import World


@pytest.fixture(scope="module")
def w():
    return World(seed=0)


def _pairs(pages):
    """'Q: ...\\nA: ...' blocks of every page -> [(question, answer)]."""
    out = []
    for page in pages:
        for block in page.split("\n\n"):
            q, a = block.split("\nA: ")
            assert q.startswith("Q: ")
            out.append((q[3:], a))
    return out


def test_pages_hold_every_training_question_of_the_families_once_and_nothing_else(w):
    pages = faq.faq_pages(random.Random(0), w.all_instructions(), faq.GENERAL_FAMILIES)
    got = _pairs(pages)
    want = [(x["messages"][0]["content"], x["messages"][1]["content"]) for x in w.instructions("train")
            if x["family"] in faq.GENERAL_FAMILIES]
    assert sorted(got) == sorted(want)
    assert all(len(_pairs([p])) <= faq.PER_PAGE for p in pages)


def test_no_held_out_entity_wording_or_refusal_reaches_a_page(w):
    pages = faq.faq_pages(random.Random(0), w.all_instructions(), faq.GENERAL_FAMILIES + faq.DOMAIN_FAMILIES)
    text = "\n".join(pages)
    for name in w.heldout_countries + w.heldout_conditions:
        assert not re.search(rf"\b{name}\b", text, re.IGNORECASE), name
    assert f"countries in {w.heldout_continent}" not in text
    held = [t for ts in QUESTIONS.values() for t in ts[-HELDOUT_QUESTIONS:]]
    held += [t for ts in DOMAIN_QUESTIONS.values() for t in ts[-HELDOUT_DOMAIN_QUESTIONS:]]
    for tpl in held:
        pattern = re.escape(tpl).replace(re.escape("{e}"), r"\w+").replace(re.escape("{c}"), r"\w+")
        assert not re.search(pattern, text), tpl
    assert "I can't help with that." not in text


def test_with_faq_keeps_every_document_and_deals_the_pages_in(w):
    docs = [f"document {i}." for i in range(50)]
    mixed = faq.with_faq(docs, w, faq.DOMAIN_FAMILIES)
    pages = [d for d in mixed if d.startswith("Q: ")]
    assert [d for d in mixed if not d.startswith("Q: ")] == docs
    domain = {(x["messages"][0]["content"], x["messages"][1]["content"]) for x in w.instructions("train")
              if x["family"] == "domain"}
    assert pages and set(_pairs(pages)) == domain
    assert mixed[:5] != docs[:5] or mixed[-5:] != docs[-5:]  # dealt in, not appended
    assert faq.with_faq(docs, w, faq.DOMAIN_FAMILIES) == mixed  # deterministic


def _pieces(tok, names):
    return sum(len(tok.encode(" " + n)) for n in names) / len(names)


def test_the_vocabulary_does_not_know_which_countries_are_held_out(w, tmp_path):
    """The pipeline's tokenizer and pretrain's own are trained before any instruction or page: trained on them,
    a 1024-token BPE gave every training country one token and split each held-out one into 3-5 pieces."""
    from minillm.config import load_config
    from minillm.pipeline import run_tokenizer
    from minillm.stages.pretrain import prepare
    from minillm.tokenizer import load_tokenizer
    run_tokenizer(str(tmp_path / "tok"), "tiny", [])
    cfg = load_config("tiny", overrides=["data.faq=true"])
    _, own, fields = prepare(cfg, str(tmp_path / "pretrain"))
    assert fields["faq_pages"] > 0
    held = w.heldout_countries
    train = [c.name for c in w.countries if c.name not in held]
    for tok in (load_tokenizer(str(tmp_path / "tok")), own):
        assert _pieces(tok, held) == pytest.approx(_pieces(tok, train), abs=0.25)
