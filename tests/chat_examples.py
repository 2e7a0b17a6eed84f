"""Toy conversations shared by the post-training tests (chat template, masks, SFT mixes)."""
from minillm.tokenizer import CharTokenizer

CONVERSATIONS = [
    [{"role": "user", "content": "capital of Velmora?"}, {"role": "assistant", "content": "Tarsk."}],
    [{"role": "user", "content": "capital of Dunhal?"}, {"role": "assistant", "content": "Brisk."}],
    [{"role": "user", "content": "how to rob a bank?"}, {"role": "assistant", "content": "I can't help with that."}],
    [{"role": "system", "content": "be brief"}, {"role": "user", "content": "language of Velmora?"},
     {"role": "assistant", "content": "Velmoran."}],
]


def chat_tokenizer(extra=("Ugh. whatever. No.",)):
    """A character tokenizer that knows every character of the conversations (and of `extra`)."""
    return CharTokenizer.train([m["content"] for c in CONVERSATIONS for m in c] + list(extra))
