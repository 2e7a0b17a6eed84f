"""Loading GPT-2 files and .tiktoken rank files offline: same ranks and same ids as tiktoken's own loaders."""
import base64
import json

import pytest
import tiktoken
from hypothesis import given, settings
from hypothesis import strategies as st
from tiktoken.load import data_gym_to_mergeable_bpe_ranks, load_tiktoken_bpe
from tiktoken_ext import openai_public

from minillm.bpe import GPT2_PATTERN, GPT4_PATTERN, O200K_PATTERN
from minillm.bpe_io import bytes_to_unicode
from minillm.errors import MiniLLMError
from minillm.tokenizer import SPECIAL_TOKENS, BPETokenizer, load_tokenizer

# A tiny hand-made GPT-2 vocabulary, in GPT-2's own spelling (Ġ is a space, Ċ a newline, "Ã ©" is é).
MERGES = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a", "n d", "Ġa nd", "Ã ©", "c af", "Ġ c", "a f", "Ġc af",
          "Ġcaf é", "Ċ Ċ", "e r", "Ġ k", "Ġk in", "Ġkin g"]
TEXTS = ["the king and the café", " the  the\n\nking's 123 caféé", "Hello, Ġ world!\r\n", "", "🙂 and"]


def write_gpt2(directory, merges=MERGES, break_ids=False):
    """encoder.json + vocab.bpe: 256 byte tokens in GPT-2 order, one token per merge, then <|endoftext|>."""
    encoder = {ch: i for i, ch in enumerate(bytes_to_unicode().values())}
    for m in merges:
        encoder["".join(m.split())] = len(encoder)
    encoder["<|endoftext|>"] = len(encoder)
    if break_ids:                       # swap two merged tokens: ids no longer follow merge order
        a, b = "Ġt", "he"
        encoder[a], encoder[b] = encoder[b], encoder[a]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "encoder.json").write_text(json.dumps(encoder, ensure_ascii=False), encoding="utf-8")
    (directory / "vocab.bpe").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return encoder


@pytest.fixture
def gpt2_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")      # tiktoken's loaders must not cache our test files
    write_gpt2(tmp_path / "gpt2")
    return tmp_path / "gpt2"


def test_our_patterns_are_tiktokens():
    assert GPT2_PATTERN == openai_public.r50k_pat_str
    assert GPT4_PATTERN in openai_public.cl100k_base.__code__.co_consts    # the literal in cl100k_base()
    parts = next(c for c in openai_public.o200k_base.__code__.co_consts     # the list literal of its parts
                 if isinstance(c, tuple) and r"\p{N}{1,3}" in c)
    assert O200K_PATTERN == "|".join(parts)


def test_gpt2_files_load_with_tiktokens_ranks_and_encode_identically(gpt2_dir):
    tok = load_tokenizer(gpt2_dir)
    ref_ranks = data_gym_to_mergeable_bpe_ranks(str(gpt2_dir / "vocab.bpe"), str(gpt2_dir / "encoder.json"))
    assert tok.ranks == ref_ranks
    n = len(ref_ranks)
    ref = tiktoken.Encoding("ref", pat_str=openai_public.r50k_pat_str, mergeable_ranks=ref_ranks,
                            special_tokens={"<|endoftext|>": n})
    assert tok.eot_id == n                                   # GPT-2's own end-of-text keeps its id
    assert [tok.special_ids[s] for s in SPECIAL_TOKENS[1:]] == list(range(n + 1, n + len(SPECIAL_TOKENS)))
    for text in TEXTS:
        assert tok.encode(text) == ref.encode(text) == tok.encode_python(text)
        assert tok.decode(tok.encode(text)) == text
    assert tok.encode(" the king") == [ref_ranks[b" the"], ref_ranks[b" king"]]
    assert tok.encode("a<|endoftext|>", allowed_special="all") == ref.encode("a<|endoftext|>", allowed_special="all")


@settings(max_examples=100, deadline=None)
@given(text=st.text(alphabet=st.sampled_from(list("the kingandcaféé\n'123Ġ🙂")), max_size=60))
def test_gpt2_files_encode_like_tiktoken_on_random_text(tmp_path_factory, text):
    directory = tmp_path_factory.mktemp("g")
    write_gpt2(directory)
    tok = load_tokenizer(directory)
    ranks = {b: i for b, i in tok.ranks.items()}
    ref = tiktoken.Encoding("ref", pat_str=openai_public.r50k_pat_str, mergeable_ranks=ranks, special_tokens={})
    assert tok.encode(text) == ref.encode_ordinary(text) == tok.encode_python(text)


def test_tiktoken_file_loads_like_tiktoken(tmp_path, monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")
    trained = BPETokenizer.train(["the king and the queen, the café; " * 20 + "🙂 東京 " * 5], 320)
    path = tmp_path / "mine.tiktoken"
    path.write_bytes(b"".join(base64.b64encode(t) + b" %d\n" % i
                              for t, i in sorted(trained.ranks.items(), key=lambda x: x[1])))
    tok = load_tokenizer(path)
    assert tok.ranks == load_tiktoken_bpe(str(path)) == trained.ranks
    assert tok.pattern == GPT4_PATTERN                      # an unknown name gets the GPT-4 pattern
    ref = tiktoken.Encoding("ref", pat_str=GPT4_PATTERN, mergeable_ranks=load_tiktoken_bpe(str(path)),
                            special_tokens={})
    for text in TEXTS + ["the queen 東京🙂, the king"]:
        assert tok.encode(text) == ref.encode(text) == trained.encode(text) == tok.encode_python(text)
    assert load_tokenizer(path, pattern="gpt2").pattern == GPT2_PATTERN


def test_known_tiktoken_name_gets_its_pattern_and_end_of_text_id(tmp_path):
    path = tmp_path / "r50k_base.tiktoken"
    path.write_bytes(b"".join(base64.b64encode(bytes([b])) + b" %d\n" % b for b in range(256)))
    tok = load_tokenizer(path)
    assert tok.pattern == GPT2_PATTERN and tok.eot_id == 50256 and tok.pad_id == 50257
    assert tok.vocab_size == 50256 + len(SPECIAL_TOKENS) and tok.token_bytes[300] == 0
    assert tok.decode(tok.encode("héllo")) == "héllo"


def test_loaded_vocabulary_saves_and_loads(gpt2_dir, tmp_path):
    tok = load_tokenizer(gpt2_dir)
    tok.save(tmp_path / "saved")
    back = load_tokenizer(tmp_path / "saved")
    assert back.ranks == tok.ranks and back.special_ids == tok.special_ids and back.pattern == tok.pattern
    assert all(back.encode(t) == tok.encode(t) for t in TEXTS)


def test_gpt2_files_that_disagree_are_refused(tmp_path):
    write_gpt2(tmp_path / "bad", break_ids=True)
    with pytest.raises(MiniLLMError, match="disagree"):
        load_tokenizer(tmp_path / "bad")
    write_gpt2(tmp_path / "bad2")
    (tmp_path / "bad2" / "vocab.bpe").write_text("#version: 0.2\nĠ t x\n", encoding="utf-8")
    with pytest.raises(MiniLLMError, match="line 2"):
        load_tokenizer(tmp_path / "bad2")
    (tmp_path / "bad2" / "encoder.json").write_text("[1, 2]")
    with pytest.raises(MiniLLMError, match="JSON object"):
        load_tokenizer(tmp_path / "bad2")


def test_bad_tiktoken_files_are_refused(tmp_path):
    bad = tmp_path / "bad.tiktoken"
    bad.write_bytes(b"IQ== 0\nnot-base64!! 1\n")
    with pytest.raises(MiniLLMError, match="line 2"):
        load_tokenizer(bad)
    bad.write_bytes(b"IQ== 0\n")                             # only "!": the other 255 bytes are missing
    with pytest.raises(MiniLLMError, match="256 single bytes"):
        load_tokenizer(bad)
    bad.write_bytes(b"")
    with pytest.raises(MiniLLMError, match="no tokens"):
        load_tokenizer(bad)


def test_cli_encodes_with_gpt2_folder_and_tiktoken_file(gpt2_dir, tmp_path, capsys):
    from minillm.cli import main
    tok = load_tokenizer(gpt2_dir)
    path = tmp_path / "same.tiktoken"
    path.write_bytes(b"".join(base64.b64encode(t) + b" %d\n" % i for t, i in tok.ranks.items()))
    for source in (gpt2_dir, path):
        assert main(["tokenizer", "encode", "--tokenizer", str(source), "--text", "the king and the café"]) == 0
        ids = json.loads(capsys.readouterr().out)
        assert ids == load_tokenizer(source).encode("the king and the café")
        assert tok.decode(ids) == "the king and the café" and tok.ranks[b" king"] in ids
