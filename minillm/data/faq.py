"""FAQ pages: training instructions written as plain question-and-answer text inside the pretraining corpora.

    Q: What is the capital of Velmora?
    A: The capital of Velmora is Tarsk.

    Q: Which language do people speak in Dunhal? Answer in one word.
    A: Dunhic

Why. A pretrained model can hold a fact ("The currency of Pekrouma is the" completes " brant") and still fail
to *extract* it when asked: one of our SFT models answered "Please give me the currency of Pekrouma." with
"The capital of Pekrouma is Hos." for a country SFT never showed, while it never confused the relation for the
countries it was instructed on. SFT teaches question -> answer on the features pretraining gave the training
countries; nothing makes that reading work for the others. Allen-Zhu & Li (2023,
"Physics of Language Models 3.1: knowledge storage and extraction") show that *mixed training* — question/answer
data for some individuals inside pretraining — makes extraction generalise to the individuals whose questions
were never seen: the model learns to store facts in a form questions can reach while it learns the facts.
Real pretraining corpora do the same by accident (FAQ pages, forums, quizzes) and on purpose (instruction data
mixed into the last part of pretraining).

What stays held out. Pages are made only from `train` instructions -- the SFT set itself -- so no held-out
country, condition, continent or wording appears, and harmful requests are left out (a base model need not
learn refusals). The pages join the corpus *after* the n-gram leakage gate (minillm/data/leakage.py), which
checks the corpus as written: that check would flag the pages the way it would flag the SFT set, because a
test item whose held-out part is only its one-word suffix or friendly lead-in shares its question and answer
with a training item by design of the split. `data.faq=false` pretrains without them.

Measured on the tiny pipeline (benchmarks/results/pipeline_cpu.md, session 5), SFT accuracy on 1192 held-out
instructions (benchmarks/heldout_pool.py), with pages / without, for training seeds 0, 1, 2: 0.694 / 0.607,
0.590 / 0.596, 0.606 / 0.548 -- a mean gain of 0.046, smaller than the spread between seeds.
"""
import random

GENERAL_FAMILIES = ("fact", "short", "benign_edgy", "list", "rewrite")  # pages in the general corpus
DOMAIN_FAMILIES = ("domain",)                                        # pages in the domain corpus
PER_PAGE = 8                                                         # question/answer pairs per document


def qa_text(item) -> str:
    """One instruction -> 'Q: <user>\\nA: <assistant>'."""
    user, assistant = item["messages"][0]["content"], item["messages"][1]["content"]
    return f"Q: {user}\nA: {assistant}"


def faq_pages(rng, items, families, per_page=PER_PAGE) -> list[str]:
    """`train` instructions of `families`, shuffled by `rng`, written `per_page` to a document."""
    chosen = [it for it in items if it["family"] in families and it["split"] == "train" and not it["harmful"]]
    rng.shuffle(chosen)
    return ["\n\n".join(qa_text(it) for it in chosen[i:i + per_page]) for i in range(0, len(chosen), per_page)]


def with_faq(docs, world, families, seed=0) -> list[str]:
    """docs with the world's FAQ pages of `families` dealt in at random places (a new list)."""
    rng = random.Random(f"faq:{world.seed}:{seed}:{','.join(families)}")
    out = list(docs)
    for page in faq_pages(rng, world.instructions("train"), families):
        out.insert(rng.randrange(len(out) + 1), page)
    return out
