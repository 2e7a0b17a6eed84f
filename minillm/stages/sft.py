"""Supervised finetuning (instruction tuning): a base model becomes an assistant.

Each example is a conversation rendered with the chat template,

    <|user|> What is the capital of Italy? <|end|> <|assistant|> Rome. <|end|>
    mask:  0        0   0  0     0     0     0        0          1    1   1

and the loss is the next-token cross-entropy only where the mask is 1 (the assistant's words and its <|end|>):

    L = −Σ_t m_{t+1} log p(x_{t+1} | x_≤t) / Σ_t m_{t+1}

so the model learns to answer — and to stop, because <|end|> is a target — without being trained to write
the user's questions. Batches are padded with <|pad|> (mask 0), never with <|endoftext|>.

Two mixes keep a tiny model honest (on the world's data), and one option was tried:

  replay      a share of the examples are short windows of the world's text (general + domain) with the loss on
              every token. Without it, SFT on 39 countries teaches "answer about a country you were drilled on":
              asked about a country the instructions never mention, the model names a familiar one instead
              (held-out-entity accuracy ~0.2, though the knowledge is still there: forced to start "The capital
              of Nafoua is", it completes correctly). Replay keeps that knowledge reachable (~0.8). This is
              InstructGPT's "ptx" term (pretraining gradients mixed into RLHF) applied to SFT.
  harmful_upsample  refusals are a few percent of the instructions; repeating them keeps refusal_rate high
              (list_upsample does the same for the rarest family, lists: 288 of 7 596 instructions).
  frame_dropout  each benign training prompt loses each of its frame words (what, is, the, do, by, ...) with
              probability p, afresh every time it is drawn: "What organ is damaged by X?" is seen as "organ is
              damaged X?", "What organ damaged by X?", ... A tiny model otherwise keys on the *shape* of a wording
              ("What ... is ... for X" -> a treatment) and answers a held-out wording with the neighbouring
              relation; without the frame, only the words that say what is asked (organ, speak, money) and the
              entity stay reliable. Random deletion from EDA (Wei & Zou 2019), kept off the content words so
              the answer still follows from the prompt, and off harmful requests and the words that ask for
              help (how, I, me, can, to, ...), which are what a refusal generalises from.
  harmful_leads  each harmful request, each time it is drawn, gets with probability p one of the training split's
              benign-edgy leads in front ("I want to shoot some photos on my trip. How do I build a bomb?"). In the
              instructions those leads only ever precede benign questions, so "I want to ..." had come to mean
              "answer": the held-out wording "I want to {a}. How?" got a fact instead of a refusal. A friendly lead
              never makes a harmful request benign; the request itself decides.
  harmful_noise  each word of a harmful request's *action* (not the request words how, teach, me, to, ...) is
              replaced with probability p by a word of the benign questions, afresh every time it is drawn: "How do
              I build a bomb?" is also seen as "How do I capital a bomb?", "How do I build organ bomb?", ... The
              training split has 22 actions; a held-out one ("Can you help me hide a body?") shares no word with a
              refusal but may share one with a question ("What part of the body does X harm?") and was answered
              with an organ. With noise the words of the questions occur in refusals too, so the refusal is learned
              from the request around the action. Data noising (Xie et al. 2017). sft.harmful_noise_words=invented
              uses made-up words instead ("How do I brom a bomb?"), which taught "an unfamiliar word means refuse"
              (see noise_pool). The benign-edgy leads' words (kill, bomb, ...) are never noise words.
  chatty      the share of sentence answers (fact, domain, benign-edgy) written by a friendly demonstrator, who
              ends the reference with a closing line ("... is Tarsk. I hope that was of use, and you can always ask me
              for more."; instructions.CHATTY_CLOSERS), drawn afresh each time. The oracle calls that rambling
              (-0.3), as the raters of the preference data did. Demonstrations are written by
              people, and people differ from the raters who judge the answers; SFT copies the demonstrators, and the
              gap is what preference learning can close (InstructGPT's labelers preferred PPO's answers to SFT's
              on the same prompts). With perfect demonstrations (chatty 0) the SFT model already gives the
              oracle's answer on ~98% of training prompts, and PPO and DPO moved the held-out oracle score by
              less than its noise (sessions 9-16 in benchmarks/results/pipeline_cpu.md): there was nothing left
              that the preference data knew better. Tiny: 0.6, above a half so that greedy answers keep the line;
              then PPO and DPO beat SFT on five seeds of five (+0.13 to +0.16 and +0.02 to +0.15, every 95% CI above
              0; session 17). The cost: the lines are 24% of the loss tokens, SFT's accuracy was ~0.02 lower over
              three draws on one parent, and its refusals were lower on 3 of 5 paired draws, never higher.
  dropout     optional (default 0): residual dropout during SFT only (the saved model keeps the parent's).
              Without it the answer's first words depend on *which* country is asked about: for countries the
              instructions never name, "The" was followed by the relation asked for in 58 of 81 probes ("Tell me
              the currency of Penethor." -> "The capital of Penethor is ..."), against 81/81 for drilled ones.
              Dropout 0.1 raised that to 78/81 with the knowledge intact (forced "The currency of Penethor is":
              54/54), but one-word and list answers got worse and held-out accuracy did not rise (val 0.58 ->
              0.60, test 0.65 -> 0.60), so it stays off (Srivastava et al. 2014).

Defaults (tiny): lr 1e-3, 20 warmup steps, cosine to a tenth over 1000 steps (~3 epochs of the mix). References:
Ouyang et al. 2022 (InstructGPT, SFT stage and the ptx mix); Wei et al. 2021 (FLAN); nanochat's chat_sft.py.
"""
import random
import re
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from minillm.checkpoint import sha256_texts
from minillm.config import RunConfig
from minillm.data.facts import _syllable
from minillm.data.instructions import (CHATTY_CLOSERS, EDGY_LEADS, HARMFUL_TEMPLATES, HELDOUT_EDGY_LEADS,
                                       HELDOUT_HARMFUL_TEMPLATES, SENTENCE_FAMILIES)
from minillm.errors import MiniLLMError
from minillm.stages import chatdata, lineage


def masked_lm_loss(logits, targets, loss_mask):
    """Mean cross-entropy over positions where loss_mask is 1: logits (B, T, V), targets/loss_mask (B, T)."""
    nll = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none")  # (B*T,)
    mask = loss_mask.flatten()
    return (nll * mask).sum() / mask.sum().clamp(min=1.0)


def sft_loss(model, batch):
    """(loss, metrics) for one right-padded chat batch (see chatdata.collate_lm): masked_lm_loss of the batch,
    computed as −Σ log π(answer) / Σ m over length-sorted row chunks (chatdata.answer_logprobs)."""
    mask = batch["loss_mask"]
    loss = -chatdata.answer_logprobs(model, batch).sum() / mask.sum().clamp(min=1.0)
    return loss, {"answer_tokens": float(mask.sum())}


def encode_instructions(tok, examples, block_size, with_examples=False):
    """[{"messages"}] -> [(ids, mask)], dropping conversations whose answer does not fit in the context
    (with_examples: -> (encoded, the examples kept), aligned)."""
    out, kept = [], []
    for ex in examples:
        ids, mask = chatdata.encode_chat(tok, ex["messages"], block_size + 1)
        if sum(mask[1:]) > 0:
            out.append((ids, mask))
            kept.append(ex)
    return (out, kept) if with_examples else out


# The frame a question is asked in, never what it asks: function words of the question templates. Left out: the
# words that ask for help (how, I, me, can, could, would, you, to, please): they are what marks a harmful request
# ("How can I ...", "Teach me to ..."), and a model taught to ignore them stops refusing unseen harmful actions.
FRAME_WORDS = frozenset("what which where who whom is are was the a an do does of in on for by with from at "
                        "i'd like know it its what's that this there".split())


# The benign-edgy leads of the training split ("I want to shoot some photos on my trip.", ...). In training they only
# ever precede a benign question, so a tiny model learns "I want to ... " -> answer, and the held-out harmful wording
# "I want to {a}. How?" was answered with a fact (3 of the 4 refusals missed on the test split of seeds 0 and 2).
# sft.harmful_leads puts them before harmful requests too: a friendly lead never makes a harmful request benign.
TRAINING_LEADS = EDGY_LEADS[:len(EDGY_LEADS) - HELDOUT_EDGY_LEADS]


def drop_frame_words(text, p, uniform):
    """Delete each frame word of `text` with probability p (uniform(n) -> n draws in [0, 1)); every other word
    (entities, relation words, the action asked for) stays. EDA's random deletion (Wei & Zou 2019), kept off the
    content words so the label still follows from the prompt."""
    words = text.split(" ")
    draws = uniform(len(words))
    kept = [w for w, r in zip(words, draws) if r >= p or w.lower().strip("?.,!:;") not in FRAME_WORDS]
    return " ".join(kept) if kept else text


# The words of the training harmful-request templates ("how", "teach", "me", "to", "steps", ...): the request,
# never the action (sft.harmful_noise leaves them alone).
_WORD = r"[A-Za-z'-]+"
REQUEST_WORDS = frozenset(w.lower() for t in HARMFUL_TEMPLATES[:len(HARMFUL_TEMPLATES) - HELDOUT_HARMFUL_TEMPLATES]
                          for w in re.findall(_WORD, t.replace("{a}", "")))


# The benign-edgy leads' words (kill, bomb, shoot, attack, ...): never noise words. Put into refusals they would teach
# "kill -> refuse", and "I need to kill some time. ..." must stay an ordinary question.
LEAD_WORDS = frozenset(w.lower() for lead in EDGY_LEADS for w in re.findall(_WORD, lead))
NOISE_WORDS = ("questions", "invented")


def noise_pool(sources, kind="questions", n=256, seed=0):
    """The words noise_action_words puts into a harmful request's action (sorted, so a resumed run draws the same).

    questions  the content words of the benign training prompts ("capital", "organ", "body", "Nafoua", ...): every
               word of them that is not a frame word, a request word or a benign-edgy lead's word. Each of these
               words then occurs in refusals as well as in questions, so neither the refusal nor the answer can be
               keyed on it; only the request around it ("How do I ...", "Teach me to ...") decides.
    invented   n invented syllable words ("brom", "daisde") that no training prompt uses. They taught "an unfamiliar
               word means refuse": held-out actions made of familiar words ("hide a body", "burn down the parliament
               of X") got an organ or a treatment, and benign wordings with a word of their own ("What do shops in X
               take as money?") were sometimes refused (benchmarks/results/pipeline_cpu.md, session 14)."""
    if kind not in NOISE_WORDS:
        raise MiniLLMError(f"sft.harmful_noise_words must be one of {', '.join(NOISE_WORDS)}, got {kind!r}")
    prompts = [(src.get("harmful"), m["content"]) for src in sources if src is not None
               for m in src["messages"] if m["role"] == "user"]
    if kind == "questions":
        words = sorted({w.lower() for harmful, text in prompts if not harmful for w in re.findall(_WORD, text)}
                       - FRAME_WORDS - REQUEST_WORDS - LEAD_WORDS)
        if not words:
            raise MiniLLMError("sft.harmful_noise_words=questions needs benign training prompts to take words from")
        return words
    seen = {w.lower() for _, text in prompts for w in re.findall(_WORD, text)}
    rng, words = random.Random(f"noise:{seed}"), set()
    while len(words) < n:
        w = "".join(_syllable(rng) for _ in range(rng.choice((1, 2))))
        if len(w) > 2 and w not in seen:
            words.add(w)
    return sorted(words)


def noise_action_words(text, p, pool, uniform, pick):
    """Replace each word of a harmful request that is not a request word (REQUEST_WORDS) with probability p by a
    word of `pool` (uniform(n) -> n draws in [0, 1), pick(n) -> n indices into pool): "How do I build a bomb?" ->
    "How do I build a capital?". Data noising (Xie et al. 2017) on the action only: the refusal is learned from the
    request around it, so an action never seen in training ("hide a body") is still refused."""
    words = text.split(" ")
    action = [j for j, w in enumerate(words) if "".join(re.findall(_WORD, w)).lower() not in REQUEST_WORDS]
    hit = [j for j, r in zip(action, uniform(len(action))) if r < p]
    for j, k in zip(hit, pick(len(hit))):
        words[j] = re.sub(_WORD, lambda _: pool[k], words[j], count=1)
    return " ".join(words)


@torch.no_grad()
def heldout_loss(model, tok, encoded, batch_size=64):
    """Answer-only loss on held-out conversations (a number that SFT must bring down)."""
    was = model.training
    model.eval()
    total, n = 0.0, 0.0
    for i in range(0, len(encoded), batch_size):
        batch = chatdata.collate_lm(encoded[i:i + batch_size], tok.pad_id)
        k = batch["loss_mask"].sum().item()
        total += sft_loss(model, batch)[0].item() * k
        n += k
    model.train(was)
    return total / max(n, 1.0)


@dataclass
class SFTSection:
    data: str = ""                  # "" = the world's instructions, or a .jsonl (messages | prompt/response)
    eval_max_new_tokens: int = 48   # greedy answer length for the held-out evaluation
    eval_limit: int = 0             # 0 = every held-out instruction
    replay: float = 0.2             # share of training examples that are windows of the world's text (world data only)
    replay_tokens: int = 48         # tokens per replay window
    harmful_upsample: int = 5       # each harmful instruction is seen this many times per epoch (world data only)
    list_upsample: int = 1          # the same for list instructions (world data only)
    frame_dropout: float = 0.0      # each benign prompt's frame words (what, is, the, ...) dropped with p (world data)
    harmful_leads: float = 0.0      # each harmful request gets a training benign-edgy lead in front with p (world data)
    harmful_noise: float = 0.0      # each action word of a harmful request replaced with p by a noise word
    harmful_noise_words: str = "questions"  # the noise words: benign prompts' content words | invented
    chatty: float = 0.0             # share of sentence answers that end with a chatty closing line (world data)
    dropout: float = 0.0            # residual dropout while instruction tuning (0 = the parent's own)


@dataclass
class SFTConfig(RunConfig):
    sft: SFTSection = field(default_factory=SFTSection)


# A smaller LR than pretraining: lr 1e-3 memorised the training entities. Replay 0.2 and refusals x5: on the tiny
# world's val split, held-out-entity fact accuracy 0.19 -> 0.8 against the same run without replay; without
# upsampling, refusals fell below 0.8. With the larger instruction set of session 6, 1000 steps left one-word
# answers and lists undertrained (seeds 0/1, test 0.69/0.71 -> 0.78/0.76 at 1500). 2000 steps at 5e-4 (~8 epochs):
# test / val 0.800 / 0.762 against 0.777 / 0.746 at 1500 x 3e-4 (2000 x 3e-4: 0.796 / 0.754; 1500 x 6e-4:
# 0.785 / 0.769) -- single runs on one parent, inside the seed spread (2000 x 3e-4 on SFT seed 1: 0.785 / 0.731).
# Session 9, one parent (seed 0), accuracy test / val, refusal on both: 2000 x 5e-4 0.735 / -, 0.875 (test);
# 1000 x 1e-3 with lists x3 and refusals x3 0.762 / 0.731, 0.95; + frame_dropout 0.3: 0.796-0.808 / 0.70-0.81
# but refusals 0.77-0.88; with refusals x5 again 0.819 / 0.785, 0.90. Half the steps: the time budget.
# Session 10, harmful_leads 0.3 against off, the same parents (seeds 0 / 1 / 2): refusals on test + val 57 / 55 / 59
# of 60 against 55 / 57 / 54 ("I want to {a}. How?" refused on every seed; the misses left are held-out actions),
# accuracy test 0.785 / 0.827 / 0.823 against 0.819 / 0.835 / 0.765, val 0.777 / 0.823 / 0.792 against 0.777 /
# 0.823 / 0.715.
# Session 12, harmful_noise on the same parents (seeds 0 / 1 / 2), test: 0.3 -> refusals 0.975 / 1.0 / 1.0 (were
# 0.925 / 0.90 / 0.975), accuracy 0.792 / 0.808 / 0.758 (were 0.785 / 0.827 / 0.823), over-refusal 0; 0.15 ->
# refusals 0.975 / 0.95 / 0.925, accuracy 0.762 / 0.800 / 0.746; 0.3 with refusals x3 -> accuracy 0.765 / - / 0.762,
# refusals 0.95 / - / 0.975. The benign prompts' words as the noise, all of them (frame and lead words too):
# over-refusal 0.058 on seed 2.
# Session 13, 1 584 more training instructions (instructions.MORE_*), full pipelines: accuracy 0.850 / 0.869 / 0.827,
# refusals 0.975 / 0.925 / 0.975; refusals x6 (their share of the mix as before) on the same finetuned parents: 0.850 /
# 0.881 / 0.754 and 0.975 / 0.90 / 0.975 -- no better, so x5 stays.
# Session 14, the noise words on the same finetuned parents (seeds 0 / 1 / 2), test accuracy; refusals test | on all
# 272 held-out harmful prompts; benign refused of 600 held-out: invented 0.3 -> 0.850 / 0.869 / 0.827; 39 / 37 / 39
# of 40 | 0.993 / 0.912 / 0.930; 0 / 2 / 0. Question words 0.3 -> 0.835 / 0.865 / 0.765; 40 / 40 / 40 | 0.996 /
# 0.996 / 0.993; 1 / 7 / 5. Question words 0.15 -> 0.823 / 0.835 / 0.800; 40 / 40 / 40 | 0.993 / 0.982 / 0.996;
# 1 / 2 / 7. Misses left of the 272: 2 / 5 / 1, all but one a held-out action in the held-out wording "I want to {a}.
# How?" (which starts like the benign lead "I want to shoot some photos on my trip."). Question words cost held-out
# domain answers (1228-prompt pool, domain 0.77 / 0.81 / 0.83 -> 0.59 / 0.58 / 0.68; benchmarks/results/pipeline_cpu.md).
DEFAULTS = {
    "smoke": {"train": dict(max_steps=20, batch_size=8, lr=1e-3, warmup_steps=2, eval_every=10, eval_batches=2,
                            log_every=5, weight_decay=0.0), "sft": dict(eval_limit=24)},
    "tiny": {"train": dict(max_steps=1000, batch_size=32, lr=1e-3, warmup_steps=20, eval_every=250, eval_batches=4,
                           log_every=10, weight_decay=0.0, min_lr_ratio=0.1),
             "sft": dict(frame_dropout=0.3, list_upsample=3, harmful_leads=0.3, harmful_noise=0.15,
                                     chatty=0.6)},
    "small": {"train": dict(max_steps=1500, batch_size=64, lr=3e-4, warmup_steps=50, eval_every=250,
                            eval_batches=8, weight_decay=0.0)},
}


class SFTStage(lineage.SampledStage):
    """The SFT objective for train.train(): seeded batches of chat examples, loss on the answer only."""
    name = "sft"

    def __init__(self, tok, train_examples, val_examples, seed=0, evaluate=None, sources=None, frame_dropout=0.0,
                 block_size=None, harmful_leads=0.0, harmful_noise=0.0, harmful_noise_words="questions", chatty=0.0):
        for name, p in (("frame_dropout", frame_dropout), ("harmful_leads", harmful_leads),
                        ("harmful_noise", harmful_noise), ("chatty", chatty)):
            if not 0 <= p < 1 or (p and (sources is None or block_size is None)):
                raise MiniLLMError(f"sft.{name} must be in [0, 1) and needs the examples' sources and block_size, "
                                   f"got {p}")
        if harmful_noise_words not in NOISE_WORDS:
            raise MiniLLMError(f"sft.harmful_noise_words must be one of {', '.join(NOISE_WORDS)}, "
                               f"got {harmful_noise_words!r}")
        self.tok = tok
        self.train, self.val = train_examples, val_examples
        self.sampler = lineage.Sampler(len(train_examples), seed)
        self._evaluate = evaluate
        self.sources, self.frame_dropout, self.block_size = sources, frame_dropout, block_size
        self.harmful_leads, self.harmful_noise, self.chatty = harmful_leads, harmful_noise, chatty
        self.noise_words = noise_pool(sources, harmful_noise_words) if harmful_noise else []

    def _example(self, i):
        """Training example i, its prompt re-worded on the fly (draws from the sampler's generator, so a resumed run
        repeats them): a benign prompt loses frame words (frame_dropout); a harmful request keeps its frame words --
        there the frame ("how do I", "teach me to") is what asks for help, the cue that carries refusals to unseen
        actions -- but may get a benign-edgy lead in front (harmful_leads) and noise words in its action
        (harmful_noise). A sentence answer may end with a chatty closing line (chatty)."""
        src = self.sources[i] if self.sources is not None else None
        uniform = lambda n: torch.rand(n, generator=self.sampler.g).tolist()
        if src is None:
            return self.train[i]
        closer = None
        if self.chatty and src.get("family") in SENTENCE_FAMILIES and uniform(1)[0] < self.chatty:
            closer = CHATTY_CLOSERS[int(torch.randint(len(CHATTY_CLOSERS), (1,), generator=self.sampler.g))]
        answer = lambda text: f"{text} {closer}" if closer else text
        if src.get("harmful"):
            lead = None
            if self.harmful_leads and uniform(1)[0] < self.harmful_leads:
                lead = TRAINING_LEADS[int(torch.randint(len(TRAINING_LEADS), (1,), generator=self.sampler.g))]
            if lead is None and not self.harmful_noise:
                return self.train[i]
            pick = lambda n: torch.randint(len(self.noise_words), (n,), generator=self.sampler.g).tolist()
            noised = lambda text: noise_action_words(text, self.harmful_noise, self.noise_words, uniform, pick)
            reword = lambda text: (f"{lead} " if lead else "") + (noised(text) if self.harmful_noise else text)
        elif self.frame_dropout:
            reword = lambda text: drop_frame_words(text, self.frame_dropout, uniform)
        elif closer is None:
            return self.train[i]
        else:
            reword = lambda text: text
        messages = [dict(m, content=reword(m["content"]) if m["role"] == "user" else answer(m["content"]))
                    for m in src["messages"]]
        return chatdata.encode_chat(self.tok, messages, self.block_size + 1)

    def train_batch(self, batch_size):
        return chatdata.collate_lm([self._example(i) for i in self.sampler.sample(batch_size)], self.tok.pad_id)

    def val_batches(self, batch_size, n):
        val = self.val or self.train
        return [chatdata.collate_lm(val[i:i + batch_size], self.tok.pad_id)
                for i in range(0, min(len(val), batch_size * n), batch_size)]

    def loss(self, model, batch):
        return sft_loss(model, batch)


def replay_windows(tok, docs, n, length, seed=0):
    """n windows of `length` tokens cut from docs (joined by <|endoftext|>), as (ids, mask) with the loss on every
    predicted token — plain next-token prediction inside the SFT batches."""
    from minillm.stages.finetune import tokenize_documents
    ids = tokenize_documents(tok, docs).tolist()
    windows = [ids[i:i + length] for i in range(0, len(ids) - length, length)]
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(windows), generator=g).tolist()
    return [(windows[order[i % len(order)]], [0] + [1] * (length - 1)) for i in range(n)]  # cycles if n > windows


def training_mix(tok, cfg, world, train_ex, block_size, with_sources=False):
    """Encoded training examples: the instructions (harmful and list ones repeated) plus replay windows (world
    data). with_sources: -> (encoded, sources), sources[i] the instruction behind encoded[i] or None (replay)."""
    encoded, sources = encode_instructions(tok, train_ex, block_size, with_examples=True)
    if cfg.sft.data:   # the user's own instructions: no upsampling, no replay, no frame dropout
        return (encoded, [None] * len(encoded)) if with_sources else encoded
    if not 0 <= cfg.sft.replay < 1 or min(cfg.sft.harmful_upsample, cfg.sft.list_upsample) < 1:
        raise MiniLLMError(f"sft.replay must be in [0, 1) and sft.harmful_upsample, sft.list_upsample >= 1, got "
                           f"{cfg.sft.replay}, {cfg.sft.harmful_upsample} and {cfg.sft.list_upsample}")
    for picked, times in ((lambda ex: ex.get("harmful"), cfg.sft.harmful_upsample),
                          (lambda ex: ex.get("family") == "list", cfg.sft.list_upsample)):
        more, kept = encode_instructions(tok, [ex for ex in train_ex if picked(ex)] * (times - 1), block_size, True)
        encoded, sources = encoded + more, sources + kept
    n = int(len(encoded) * cfg.sft.replay / (1 - cfg.sft.replay))
    if n:
        from minillm.data.hygiene import cleaned_world
        clean = cleaned_world(world)[0]
        encoded += replay_windows(tok, clean["general"] + clean["domain"], n,
                                  min(cfg.sft.replay_tokens, block_size + 1), cfg.train.seed)
        sources += [None] * n
    return (encoded, sources) if with_sources else encoded


def set_dropout(model, p):
    """Set every nn.Dropout in the model to probability p (the model config is left unchanged)."""
    if not 0 <= p < 1:
        raise MiniLLMError(f"sft.dropout must be in [0, 1), got {p}")
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = p


def instruction_data(tok, cfg, world):
    """-> (train, val, held-out test examples or None) from --data or the world."""
    if cfg.sft.data:
        return (*chatdata.split_tenth(chatdata.load_instructions(cfg.sft.data)), None)
    return world.instructions("train"), world.instructions("val"), world.instructions("test")


def run_sft(parent, out, preset="tiny", data="", config_file=None, overrides=(), resume=False):
    """minillm sft: instruction-tune the parent (base or finetuned) run into `out`; -> evaluation dict."""
    from minillm.data.world import World
    from minillm.evals.chat import chat_metrics, exact_match, lm_metrics
    from minillm.train import train
    model, tok, _ = lineage.load_parent(parent, "sft")
    cfg = lineage.stage_config(SFTConfig, "sft", preset, DEFAULTS, model, config_file,
                               list(overrides) + ([f"sft.data={data}"] if data else []))
    world = World(seed=cfg.data.world_seed)
    train_ex, val_ex, test_ex = instruction_data(tok, cfg, world)
    block = model.cfg.block_size
    mix, sources = training_mix(tok, cfg, world, train_ex, block, with_sources=True)
    stage = SFTStage(tok, mix, encode_instructions(tok, val_ex, block), seed=cfg.train.seed, sources=sources,
                     frame_dropout=cfg.sft.frame_dropout, block_size=block, harmful_leads=cfg.sft.harmful_leads,
                     harmful_noise=cfg.sft.harmful_noise, harmful_noise_words=cfg.sft.harmful_noise_words,
                     chatty=cfg.sft.chatty)
    resume = lineage.start_run(out, tok, parent, resume)
    set_dropout(model, cfg.sft.dropout or model.cfg.dropout)
    metrics = train(model, stage, cfg.train, out, config=cfg.to_dict(), resume=resume,
                    manifest=lineage.manifest_fields("sft", parent, out, sha256_texts(
                        [str(ex["messages"]) for ex in train_ex])))
    set_dropout(model, model.cfg.dropout)
    evaluation = {"val_answer_loss": heldout_loss(model, tok, stage.val or stage.train)}
    if test_ex is not None:
        from minillm.data.oracle import Oracle
        evaluation.update(chat_metrics(model, tok, world, Oracle(world), examples=test_ex,
                                       max_new_tokens=cfg.sft.eval_max_new_tokens, limit=cfg.sft.eval_limit or None))
        evaluation.update(lm_metrics(model, tok, world))
    else:   # your instructions: greedy answers to the held-out tenth against their references
        evaluation.update(exact_match(model, tok, val_ex, max_new_tokens=cfg.sft.eval_max_new_tokens))
    return lineage.finish_run(out, metrics, evaluation)
