"""Pretraining data and CLI: readers, shards, CLM windows, MLM masking statistics, runs on the world, bad input."""
import json
import math
import os

import numpy as np
import pytest
import torch

from minillm.cli import main
from minillm.data.readers import read_documents, split_documents
from minillm.data.shards import IGNORE, CLMBatcher, mlm_mask, open_shard, write_shards
from minillm.errors import MiniLLMError
from minillm.tokenizer import CharTokenizer

SMOKE = ["--preset", "smoke", "--set", "train.progress=false", "--samples", "0"]


def test_mlm_masks_15_percent_as_80_10_10_and_never_specials():
    V, specials = 300, {0, 1, 2}
    gen = torch.Generator().manual_seed(0)
    idx = torch.randint(3, V, (64, 256), generator=gen)  # (B, T)
    idx[:, ::7] = 1  # padding / specials sprinkled in
    inputs, targets = mlm_mask(idx, mask_id=2, special_ids=specials, vocab_size=V, p=0.15, gen=gen)
    ordinary = idx != 1
    selected = targets != IGNORE
    assert not selected[~ordinary].any() and torch.equal(inputs[~ordinary], idx[~ordinary])
    assert torch.equal(targets[selected], idx[selected])
    assert selected.sum() / ordinary.sum() == pytest.approx(0.15, abs=0.01)
    masked = (inputs[selected] == 2).float().mean()
    kept = (inputs[selected] == idx[selected]).float().mean()
    assert masked == pytest.approx(0.8, abs=0.02) and kept == pytest.approx(0.1, abs=0.015)
    assert 1 - masked - kept == pytest.approx(0.1, abs=0.015)  # random replacements...
    assert not torch.isin(inputs[selected & (inputs != 2)], torch.tensor([0, 1])).any()  # ...never a special
    assert torch.equal(inputs[~selected], idx[~selected])


def test_clm_windows_are_the_stream_shifted_by_one():
    tokens = np.arange(1000, dtype=np.uint16)
    b = CLMBatcher(tokens, block_size=16, seed=0).batch(4)
    assert b["idx"].shape == (4, 16)
    assert torch.equal(b["targets"], b["idx"] + 1)
    assert torch.equal(b["idx"][:, 1:], b["idx"][:, :-1] + 1)  # contiguous windows


def test_readers_take_txt_folders_and_jsonl_and_refuse_empty_data(tmp_path):
    (tmp_path / "a.txt").write_text("first doc")
    (tmp_path / "b.txt").write_text("second doc")
    (tmp_path / "skip.md").write_text("not text data")
    assert read_documents(str(tmp_path)) == ["first doc", "second doc"]
    assert read_documents(str(tmp_path / "a.txt")) == ["first doc"]
    (tmp_path / "d.jsonl").write_text('{"text": "one"}\n\n{"text": "two", "id": 3}\n')
    assert read_documents(str(tmp_path / "d.jsonl")) == ["one", "two"]
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / "bad.jsonl").write_text('{"body": "x"}\n')
    (tmp_path / "e").mkdir()
    for path, match in (("empty.txt", "empty"), ("bad.jsonl", "no string field"), ("e", "empty"),
                        ("nope.txt", "does not exist"), ("skip.md", "unsupported")):
        with pytest.raises(MiniLLMError, match=match):
            read_documents(str(tmp_path / path))


def test_split_is_by_document_or_one_cut_at_a_line_boundary():
    docs = [f"doc {i}" for i in range(20)]
    train, val = split_documents(docs, 0.1)
    assert train == docs[:18] and val == docs[18:]
    text = "".join(f"line {i}\n" for i in range(100))
    train, val = split_documents([text], 0.1)
    assert train[0] + val[0] == text and val[0].startswith("line 9") and train[0].endswith("\n")
    assert len(val[0]) == pytest.approx(0.1 * len(text), rel=0.1)


def test_shards_round_trip_with_the_smallest_dtype_and_are_written_once(tmp_path):
    tok = CharTokenizer.train(["hello world"])
    meta = write_shards(str(tmp_path), {"train": ["hello", "world"], "val": ["hold"]}, tok)
    assert meta["dtype"] == "uint16" and meta["splits"]["train"] == {"tokens": 12, "documents": 2}
    train = open_shard(str(tmp_path), "train")
    assert train.tolist() == tok.encode("hello") + [tok.eot_id] + tok.encode("world") + [tok.eot_id]
    mtime = os.path.getmtime(tmp_path / "train.bin")
    write_shards(str(tmp_path), {"train": ["hello", "world"], "val": ["hold"]}, tok)
    assert os.path.getmtime(tmp_path / "train.bin") == mtime
    big = type("Big", (), {"vocab_size": 70000, "eot_id": 69999,
                           "encode_batch": lambda self, docs: [[65536 + len(d)] for d in docs]})()
    assert write_shards(str(tmp_path / "big"), {"train": ["ab"]}, big)["dtype"] == "uint32"
    assert open_shard(str(tmp_path / "big"), "train").tolist() == [65538, 69999]


def test_clm_on_the_world_learns_and_evaluates(tmp_path, capsys):
    run = str(tmp_path / "clm")
    assert main(["pretrain", *SMOKE, "--out", run, "--max-steps", "60", "--set", "train.eval_every=30"]) == 0
    rows = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]
    assert rows[-1]["val_loss"] < math.log(300) - 1.5  # from the uniform guess, ln(300) = 5.7 nats
    capsys.readouterr()
    assert main(["eval", "--run", run, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) >= {"val_loss", "val_bpb", "perplexity", "fact_accuracy"}
    assert result["val_loss"] == pytest.approx(rows[-1]["val_loss"], rel=0.3)
    manifest = json.load(open(os.path.join(run, "manifest.json")))
    assert manifest["stage"] == "pretrain" and len(manifest["tokenizer_sha256"]) == 64
    assert main(["generate", "--run", run, "--prompt", "The capital of", "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out.startswith("The capital of")
    # bad input through the CLI: one line, exit 2
    assert main(["generate", "--run", run, "--prompt", "x " * 40]) == 2
    assert main(["fill-mask", "--run", run, "--text", "The <|mask|> of"]) == 2
    assert main(["pretrain", *SMOKE, "--out", run, "--resume", "--set", "model.n_embd=64"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(e.startswith("error: ") for e in err)
    assert "context" in err[0] and "different config" in err[2]


def test_mlm_on_the_world_fills_masks(tmp_path, capsys):
    run = str(tmp_path / "mlm")
    assert main(["pretrain", *SMOKE, "--objective", "mlm", "--out", run, "--max-steps", "20"]) == 0
    capsys.readouterr()
    assert main(["eval", "--run", run, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert "fill_mask_accuracy" in result and "fact_accuracy" not in result
    assert main(["fill-mask", "--run", run, "--text", "The capital of <|mask|> is"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("The capital of") and "<|mask|>" not in out


def test_bad_inputs_are_one_line_errors(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    run = tmp_path / "r"
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "manifest.json").write_text("{not json")
    cases = [["pretrain", "--preset", "huge", "--out", str(run)],
             ["pretrain", *SMOKE, "--data", str(empty), "--out", str(run)],
             ["pretrain", *SMOKE, "--data", str(tmp_path / "missing.txt"), "--out", str(run)],
             ["pretrain", *SMOKE, "--out", str(run), "--set", "train.nope=1"],
             ["eval", "--run", str(tmp_path / "nothing")],
             ["eval", "--run", str(bad)]]
    for argv in cases:
        assert main(argv) == 2, argv
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == len(cases) and all(e.startswith("error: ") for e in err)
    assert "unknown preset" in err[0] and "empty" in err[1] and "corrupt" in err[5]


def test_whole_word_masking_selects_every_piece_of_a_word_together():
    from minillm.data.shards import word_ids, word_pieces
    tok = CharTokenizer.train(["the cat sat. a dog ran!"])
    ids = torch.tensor([tok.encode("the cat sat. a dog ran!")] * 400)  # (B, T)
    pieces = word_pieces(tok)
    wid = word_ids(ids[:1], pieces)[0].tolist()
    assert wid == [0, 0, 0, 1, 2, 2, 2, 3, 4, 4, 4, 5, 6, 7, 8, 9, 9, 9, 10, 11, 11, 11, 12]
    inputs, targets = mlm_mask(ids, tok.mask_id, set(tok.special_ids.values()), tok.vocab_size, 0.15,
                               torch.Generator().manual_seed(0), pieces)
    selected = targets != IGNORE
    for w in set(wid):  # a word is selected whole or not at all
        cols = [t for t, x in enumerate(wid) if x == w]
        assert (selected[:, cols].all(1) | ~selected[:, cols].any(1)).all()
    assert selected[:, 0].float().mean() == pytest.approx(0.15, abs=0.05)  # the rate per word is still p
