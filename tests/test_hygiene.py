"""Data hygiene: checksums, PII redaction, MinHash accuracy, dedup, quality filters, leakage refusal, CLI."""
import json
import random

import numpy as np
import pytest

from minillm.data import minhash, pii
from minillm.data.hygiene import HygieneConfig, clean, exact_key, planted_found, quality_reasons
from minillm.data.leakage import check_leakage, leakage_report
from minillm.errors import MiniLLMError

VALID_CARDS = ["4539 1488 0343 6467", "4111111111111111", "5555555555554444", "378282246310005",
               "6011111111111117", "79927398713"]
VALID_IBANS = ["GB82 WEST 1234 5698 7654 32", "DE89370400440532013000", "FR1420041010050500013M02606",
               "NL91ABNA0417164300", "CH9300762011623852957"]


@pytest.mark.parametrize("number", VALID_CARDS)
def test_luhn_accepts_known_valid_and_rejects_every_single_digit_change(number):
    assert pii.luhn_valid(number)
    digits = [i for i, c in enumerate(number) if c.isdigit()]
    for i in digits:
        for d in "0123456789":
            if d != number[i]:
                assert not pii.luhn_valid(number[:i] + d + number[i + 1:])


@pytest.mark.parametrize("iban", VALID_IBANS)
def test_iban_mod97_accepts_known_valid_and_rejects_changes(iban):
    assert pii.iban_valid(iban)
    s = iban.replace(" ", "")
    bad_digit = s[:-1] + str((int(s[-1]) + 1) % 10)
    swapped = s[:5] + s[6] + s[5] + s[7:] if s[5] != s[6] else s[:5] + s[7] + s[6] + s[5] + s[8:]
    assert not pii.iban_valid(bad_digit)
    assert not pii.iban_valid(swapped)
    assert not pii.iban_valid("GB00" + s[4:])


def test_redaction_replaces_each_kind_with_its_placeholder_and_counts_it():
    text = ("Write to jane.doe@example.org or call +44 20 7946 0958. Pay 4539 1488 0343 6467 "
            "into GB82 WEST 1234 5698 7654 32; server 10.0.0.12.")
    out, spans = pii.redact(text)
    assert out == ("Write to [EMAIL] or call [PHONE]. Pay [CREDIT_CARD] into [IBAN]; server [IP_ADDRESS].")
    assert sorted(s["type"] for s in spans) == ["credit_card", "email", "iban", "ip_address", "phone"]


def test_redaction_leaves_checksum_failures_dates_and_versions_alone():
    text = "Card 4539 1488 0343 6468, IBAN GB82 WEST 1234 5698 7654 33, on 2024-01-31, version 1.2.3, 1,000 sold."
    out, spans = pii.redact(text)
    assert spans == [] and out == text


def _random_pair(rng, j_target, size=400):
    """Two sets of ints with exact Jaccard j: |A∩B| = j |A∪B|."""
    union = rng.choice(10**9, size=size, replace=False).astype(np.uint64)
    inter = int(round(j_target * size))
    rest = size - inter
    a = np.concatenate([union[:inter], union[inter:inter + rest // 2]])
    b = np.concatenate([union[:inter], union[inter + rest // 2:]])
    return np.unique(a), np.unique(b)


def test_minhash_estimates_jaccard_within_its_standard_error():
    rng = np.random.default_rng(0)
    h = minhash.MinHasher(num_perm=256, seed=1)
    errors = []
    for j in [0.1, 0.3, 0.5, 0.7, 0.9]:
        for _ in range(8):
            a, b = _random_pair(rng, j)
            true = minhash.jaccard(a, b)
            est = minhash.estimate_jaccard(h.signature_of_hashes(a), h.signature_of_hashes(b))
            sigma = np.sqrt(true * (1 - true) / 256)
            assert abs(est - true) < 4 * sigma + 1e-9
            errors.append(est - true)
    assert abs(np.mean(errors)) < 0.01   # unbiased
    assert np.sqrt(np.mean(np.square(errors))) < 0.035  # ~ sqrt(J(1-J)/P) <= 0.031


def test_batched_signatures_equal_one_at_a_time():
    h = minhash.MinHasher(num_perm=64, seed=2)
    texts = ["the cat sat on the mat", "", "a", "another document entirely, longer than the others by far"]
    sets = [minhash.shingle_hashes(t) for t in texts]
    batched = h.batch_signatures(sets, chunk=8)
    for s, sig in zip(sets, batched):
        assert np.array_equal(sig, h.batch_signatures([s])[0])
    x = sets[0][:, None].astype(np.uint64)
    with np.errstate(over="ignore"):
        ref = ((h.a[None, :] * x + h.b[None, :]) >> np.uint64(32)).min(axis=0)
    assert np.array_equal(batched[0], ref)


def test_lsh_banding_s_curve_is_steep_around_the_threshold():
    b, r = minhash.lsh_params(128, 0.8)
    assert b * r == 128
    assert minhash.candidate_probability(0.9, b, r) > 0.99
    assert minhash.candidate_probability(0.8, b, r) > 0.8
    assert minhash.candidate_probability(0.3, b, r) < 0.01


def test_near_duplicates_finds_edited_copies_and_nothing_else():
    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(500)]
    docs = [" ".join(rng.choice(vocab) for _ in range(80)) for _ in range(300)]
    edited = docs[10].split()
    edited[5] = "changed"
    edited[40] = "again"
    docs.append(" ".join(edited))           # index 300 ~ docs[10]
    docs.append(docs[20] + " and a tail")   # index 301 ~ docs[20]
    pairs = minhash.near_duplicates(docs, threshold=0.8)
    assert {(i, j) for i, j, _ in pairs} == {(10, 300), (20, 301)}
    assert all(jac >= 0.8 for *_, jac in pairs)


def test_exact_key_ignores_case_punctuation_and_spacing():
    assert exact_key("Hello,  WORLD!") == exact_key("hello world")
    assert exact_key("hello world") != exact_key("hello word")


def test_quality_filters_flag_short_symbolic_and_repetitive_documents():
    cfg = HygieneConfig()
    assert quality_reasons("too short", cfg) == ["too_short"]
    assert "symbols" in quality_reasons("#### $$$$ %%%% &&&& **** ((((  a b c d e", cfg)
    assert quality_reasons("buy now " * 20, cfg) == ["repetition"]
    assert quality_reasons("The capital of Italy is Rome, and its language is Italian.", cfg) == []


def _corpus(n=200, seed=0):
    rng = random.Random(seed)
    vocab = [f"tok{i}" for i in range(2000)]
    return [" ".join(rng.choice(vocab) for _ in range(60)) + "." for _ in range(n)]


def test_leakage_check_refuses_contaminated_training_and_records_an_override():
    docs = _corpus()
    evals = {"test": [" ".join(_corpus(1, seed=s)[0].split()[:20]) for s in range(1, 11)]}
    docs[3] = docs[3] + " " + evals["test"][0]          # one of ten test items leaked: 10%
    rep = check_leakage(docs[:3] + docs[4:], evals, threshold=0.05)   # clean: passes
    assert rep["sets"]["test"]["contaminated"] == 0 and not rep["exceeded"]
    with pytest.raises(MiniLLMError, match="eval set 'test'.*allow-leakage"):
        check_leakage(docs, evals, threshold=0.05)
    rep = check_leakage(docs, evals, threshold=0.05, allow=True)
    assert rep["exceeded"] and rep["overridden"]
    assert rep["sets"]["test"]["rate"] == pytest.approx(0.1)
    assert leakage_report(docs, evals)["leaking_docs"] == [3]


def test_short_eval_items_leak_only_verbatim():
    evals = {"facts": ["the capital of italy is rome"]}
    assert leakage_report(["we know that the capital of italy is rome today"], evals, n=8)["sets"]["facts"]["contaminated"] == 1
    assert leakage_report(["the capital of france is paris"], evals, n=8)["sets"]["facts"]["contaminated"] == 0


def test_clean_finds_every_planted_item_in_a_synthetic_corpus():
    docs = _corpus(300)
    planted = {"exact_duplicates": [], "near_duplicates": [], "pii": [], "leaks": []}
    evals = {"test": [" ".join(_corpus(1, seed=100 + s)[0].split()[:15]) for s in range(20)]}
    for k in range(5):
        copy = docs[k * 7].upper()                          # exact modulo case
        docs.append(copy)
        planted["exact_duplicates"].append(copy)
        w = docs[k * 11 + 1].split()
        w[3], w[30] = "x", "y"
        docs.append(" ".join(w))
        planted["near_duplicates"].append(" ".join(w))
        leak = docs[50 + k] + " " + evals["test"][k]
        docs[50 + k] = leak
        planted["leaks"].append(leak)
    values = [("email", "ann.lee@example.com"), ("phone", "+1 415 555 0134"), ("credit_card", "4111 1111 1111 1111"),
              ("iban", "DE89 3704 0044 0532 0130 00"), ("ip_address", "172.16.254.1")]
    for k, (t, v) in enumerate(values):
        docs[100 + k] += f" Contact: {v}."
        planted["pii"].append({"type": t, "value": v})
    kept, rep = clean(docs, evals, HygieneConfig())
    found = planted_found(rep, planted, docs)
    for cat, v in found.items():
        assert v["found"] == v["planted"] > 0, (cat, v)
    assert rep["leakage"]["before"]["sets"]["test"]["contaminated"] == 5
    assert rep["leakage"]["after"]["max_rate"] == 0.0
    assert rep["pii"] == {"email": 1, "iban": 1, "credit_card": 1, "ip_address": 1, "phone": 1}
    assert len(kept) == len(docs) - 15
    assert not any(v in " ".join(kept) for _, v in values)
    assert not any(v in json.dumps(rep) for _, v in values)   # the report itself does not leak what it removed


def test_world_planted_items_are_all_found():
    world_mod = pytest.importorskip("minillm.data.world")
    from minillm.data.hygiene import clean_world
    w = world_mod.World(seed=0)
    _, rep = clean_world(w)
    for cat, v in rep["planted"].items():
        assert v["planted"] > 0, f"the world plants no {cat}"
        assert v["found"] == v["planted"], (cat, v["missed"])
    assert rep["leakage"]["after"]["max_rate"] == 0.0
    # precision too: only the documents carrying a leaked item go, not every document stating a fact
    assert len(w.planted["leaks"]) <= rep["removed"]["leakage"] <= len(w.planted["leaks"]) + 2


def test_cli_data_clean_writes_corpus_and_report(tmp_path):
    from minillm.cli import main
    docs = _corpus(30)
    src = tmp_path / "in.jsonl"
    rows = docs + [docs[0], "Mail me at bob@example.com about the meeting tomorrow.", "tiny"]
    src.write_text("".join(json.dumps({"text": d}) + "\n" for d in rows))
    ev = tmp_path / "heldout.txt"
    ev.write_text(" ".join(docs[5].split()[:12]) + "\n")
    assert main(["data", "clean", "--input", str(src), "--out", str(tmp_path / "out"), "--eval", str(ev)]) == 0
    rep = json.loads((tmp_path / "out" / "hygiene.json").read_text())
    assert rep["removed"] == {"exact_duplicate": 1, "too_short": 1, "leakage": 1}
    assert rep["pii"]["email"] == 1
    assert rep["leakage"]["before"]["sets"]["heldout"]["contaminated"] == 1
    out = [json.loads(l)["text"] for l in (tmp_path / "out" / "corpus.jsonl").read_text().splitlines()]
    assert len(out) == 30 and out[-1] == "Mail me at [EMAIL] about the meeting tomorrow."
    assert main(["data", "clean", "--input", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "o")]) == 2
