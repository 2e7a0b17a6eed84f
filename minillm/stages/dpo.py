"""Direct Preference Optimization: align the SFT model on preference pairs without a reward model or sampling.

RLHF maximises E[r(x, y)] − β KL(π || π_ref). Its optimum has a closed form, π*(y|x) = π_ref(y|x) e^{r(x,y)/β} / Z(x),
so any reward can be written through its optimal policy: r(x, y) = β log π*(y|x)/π_ref(y|x) + β log Z(x).
In the Bradley–Terry likelihood only reward differences appear, Z(x) cancels, and the policy is fit directly:

    L_DPO = −log σ(β [log π(y_c|x)/π_ref(y_c|x) − log π(y_r|x)/π_ref(y_r|x)])

π_ref is the frozen SFT model; its log-probs are computed once per pair, when the pair is first drawn. The
implicit reward r̂ = β log π/π_ref of chosen and rejected answers, their margin and the share of pairs ordered
correctly are logged.
β = 0.1 is the paper's default: smaller β lets the policy move further from the reference.
DPO can lower the chosen answers' likelihood too, as long as the rejected fall faster; long runs then drift
(on tiny, lr 5e-5 for 200 steps: KL 12 nats, oracle 0.79 -> 0.52). `dpo.nll_coef` adds α · NLL(y_c)/|y_c|,
RPO (Pang et al. 2024; Llama 3 does the same), which held the same run at KL 0.6 and oracle 0.77.
Which pairs matter: the world's pairs reject answers the SFT model never gives (rude, rambling, "Sure! Here is
how ..."), so their log π(y_r) is already tiny and pushing it lower teaches little. On held-out prompts the tiny SFT
model fails by answering *another question*: the neighbouring relation ("What organ is damaged by X?" -> "The
treatment for X is ..."), a drilled entity, a sentence where a list was asked, a fact where a refusal was due.
`dpo.confusions` adds pairs whose rejected side is exactly that (`preferences.confused_answer`, on the training
instructions only); on tiny they turn a DPO that did nothing (or, stronger, eroded refusals) into one that beats the
SFT model on held-out prompts (benchmarks/results/pipeline_cpu.md, session 8). Hard negatives near the policy's own
mistakes are the offline stand-in for on-policy pairs (Xiong et al. 2024, iterative/online DPO). Since SFT learns
from chatty demonstrators (`sft.chatty`), half the rambling pairs reject exactly what the SFT model writes -- the
answer and a closing line -- and those teach: the tiny default is now lr 2e-5 (1e-5 barely moved the closing line).
Without the confusion pairs, 3e-5 eroded refusals (harmful refusal 0.975 -> 0.725 on one seed): the over-refusal pairs
push "I can't help with that." down everywhere, and the harmful pairs' rejected side ("Sure! Here is how ...") is
never written, so nothing pushes back; the confusion pairs' facts-where-a-refusal-was-due do.
Reference: Rafailov et al. 2023; Tunstall et al. 2023 (Zephyr) for β = 0.1 with SFT as reference.
"""
import copy
from dataclasses import dataclass, field

import torch

from minillm.checkpoint import sha256_texts
from minillm.config import RunConfig
from minillm.stages import chatdata, lineage, rl


def pair_logprobs(model, batch):
    """Sequence log-probs of the answers of a pair batch (chosen rows first) -> (chosen (B,), rejected (B,))."""
    return chatdata.answer_logprobs(model, batch).chunk(2)                   # (2B,) in length-sorted chunks


@torch.no_grad()
def reference_logprobs(ref_model, pairs_encoded, pad_id, batch_size=64):
    """log π_ref of every chosen and rejected answer, once: -> tensor (N, 2)."""
    was = ref_model.training
    ref_model.eval()
    out = []
    for i in range(0, len(pairs_encoded), batch_size):
        c, r = pair_logprobs(ref_model, chatdata.collate_pairs(pairs_encoded[i:i + batch_size], pad_id))
        out.append(torch.stack([c, r], 1))
    ref_model.train(was)
    return torch.cat(out) if out else torch.zeros(0, 2)


class LazyReferenceLogprobs:
    """log π_ref of the pairs, computed the first time a pair is drawn and kept: `ref[idx]` -> (len(idx), 2).

    A short DPO run draws a fraction of a large pair set (tiny: 60 steps x 16 = 960 draws from ~15 000 pairs), so computing every
    pair's reference log-probs up front spent most of the stage's time on pairs never used. The values are those of
    `reference_logprobs` (the frozen model, eval mode), only computed later."""

    def __init__(self, ref_model, pairs_encoded, pad_id):
        self.ref_model, self.pairs, self.pad_id = ref_model, pairs_encoded, pad_id
        self.values = torch.full((len(pairs_encoded), 2), float("nan"))     # (N, 2); NaN = not computed yet

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, idx):
        idx = torch.as_tensor(idx, dtype=torch.long)
        todo = [i for i in idx.tolist() if torch.isnan(self.values[i, 0])]
        if todo:
            self.values[todo] = reference_logprobs(self.ref_model, [self.pairs[i] for i in todo], self.pad_id)
        return self.values[idx]


def dpo_batch_loss(model, batch, beta: float = 0.1, nll_coef: float = 0.0):
    """DPO loss for a pair batch carrying its reference log-probs in batch["ref_logps"] (B, 2), plus
    nll_coef × the chosen answers' per-token negative log-likelihood (RPO, Pang et al. 2024)."""
    chosen, rejected = pair_logprobs(model, batch)
    loss, metrics = rl.dpo_loss(chosen, rejected, batch["ref_logps"][:, 0], batch["ref_logps"][:, 1], beta)
    if nll_coef:
        n_chosen = batch["loss_mask"].sum(1).chunk(2)[0].clamp(min=1.0)     # (B,) answer tokens per chosen row
        nll = -(chosen / n_chosen).mean()
        loss = loss + nll_coef * nll
        metrics["chosen_nll"] = nll.item()
    return loss, metrics


@dataclass
class DPOSection:
    data: str = ""                  # "" = the world's preference pairs, or a .jsonl with prompt / chosen / rejected
    beta: float = 0.1               # Rafailov et al. 2023 default
    eval_max_new_tokens: int = 48
    eval_limit: int = 0             # held-out instructions in the evaluation (0 = all)
    max_pairs: int = 0              # use at most this many training pairs (0 = all)
    nll_coef: float = 0.0           # + this × NLL of the chosen answer per token (RPO); keeps chosen likely
    confusions: float = 0.0         # world data only: extra pairs answering another question, share of the pairs
    mirror_confusions: bool = False  # half of them mirrored: the rejected answer chosen for its own question


@dataclass
class DPOConfig(RunConfig):
    dpo: DPOSection = field(default_factory=DPOSection)


# DPO papers use lr ~5e-7 on 7B models. On tiny, lr 2e-4 for 100 steps drove the implicit margin to 12 and the KL
# to the reference to 24 nats: held-out accuracy 0.90 but the oracle score halved (0.73 -> 0.36) and perplexity
# exploded — DPO over-optimises by pushing rejected answers' probabilities down without bound. 2e-5 for 60 steps:
# oracle 0.726 (KL 0.09); 5e-6 for 60 steps: oracle 0.749 (KL 0.04), the default until session 8.
# Session 8 (one SFT parent, test / val oracle, SFT 0.838 / 0.858): 5e-6 x 60 steps did nothing (0.838 / 0.858, KL
# 0.00); 2e-5 x 100 on the world's pairs alone let the over-refusal pairs erode refusals (0.55) -> 0.779 / 0.791;
# with confusion pairs (dpo.confusions 1.0: every training instruction once more, rejected = the answer to another
# question) 0.858 / 0.874 (lists 0.33 -> 0.52, refusals 0.875 -> 0.925, KL 0.34), now the default; 3e-5 x 150:
# 0.853 / 0.865 (KL 0.98, refusals back to 0.85).
# Session 9, on the stronger SFT models of frame dropout (seed 0, test oracle, SFT 0.885): every variant stayed below
# SFT -- 2e-5 0.865 (KL 0.48; continent answers turned into "The organ harmed by Zeva, ..."), lr 1e-5 0.884,
# RPO nll_coef 1.0 0.881, confusions 0.5 0.872, beta 0.3 0.879, mirror_confusions 0.876. Over seeds 0 / 1 / 2, test
# oracle minus SFT's: 2e-5 -0.020 / -0.010 / -0.009, 1e-5 -0.001 / -0.002 / +0.008 (val: equal on all three), so
# 1e-5 is the default now (KL 0.03-0.06). The pairs teach what this SFT model already does on training prompts;
# see benchmarks/results/pipeline_cpu.md. Session 10: 60 steps (was 100) for the pipeline's time budget.
# Session 17, with the chatty demonstrators of sft.chatty (the SFT model ends sentence answers with a closing line;
# seed 0, SFT oracle 0.739): 1e-5 x 60 0.751 (KL 0.02), 1e-5 x 150 0.765 (KL 0.09), 3e-5 x 60 0.897 (KL 0.18, refusals
# 1.0): the closing line is one early decision the pairs now disagree with, and 1e-5 moved it too little. With the
# shorter closers (SFT 0.739 / accuracy 0.804), 3e-5 x 60: with confusions 1.0 0.860 / 0.738 (answers displaced into
# the neighbouring relation), + RPO nll_coef 1.0 0.871 / 0.758, 2e-5 0.806 / 0.781, confusions 0 0.890 / 0.796.
# Over seeds 0 / 1 / 2 (SFT oracle 0.739 / 0.806 / 0.708, refusals 1.0 / 1.0 / 0.975), DPO minus SFT oracle and the
# harmful refusal rate: 3e-5 without confusions +0.151 / +0.101 / +0.148, refusals 0.975 / 0.825 / 0.725 (nll_coef
# 1.0 or confusions 0.3: seed 2 still 0.725-0.75); 1e-5 with confusions +0.003 / +0.100 / +0.034; 2e-5 with
# confusions (the default) +0.067 / +0.124 / +0.153, refusals 0.975 / 0.975 / 0.90, accuracy within noise.
DEFAULTS = {
    "smoke": {"train": dict(max_steps=10, batch_size=8, lr=5e-4, warmup_steps=2, eval_every=5, eval_batches=2,
                            log_every=5, weight_decay=0.0), "dpo": dict(eval_limit=24, max_pairs=128)},
    "tiny": {"train": dict(max_steps=60, batch_size=16, lr=2e-5, warmup_steps=5, eval_every=20, eval_batches=4,
                           log_every=10, weight_decay=0.0), "dpo": dict(confusions=1.0)},
    "small": {"train": dict(max_steps=500, batch_size=32, lr=5e-5, warmup_steps=20, eval_every=100,
                            eval_batches=8, weight_decay=0.0)},
}


class DPOStage(lineage.SampledStage):
    """DPO on preference pairs against precomputed reference log-probs, for train.train()."""
    name = "dpo"

    def __init__(self, tok, train_pairs, train_ref, val_pairs, val_ref, beta=0.1, seed=0, nll_coef=0.0):
        self.tok, self.beta, self.nll_coef = tok, beta, nll_coef
        self.train, self.train_ref, self.val, self.val_ref = train_pairs, train_ref, val_pairs, val_ref
        self.sampler = lineage.Sampler(len(train_pairs), seed)

    def _batch(self, pairs, ref, idx):
        batch = chatdata.collate_pairs([pairs[i] for i in idx], self.tok.pad_id)
        batch["ref_logps"] = ref[idx]                                          # (B, 2)
        return batch

    def train_batch(self, batch_size):
        return self._batch(self.train, self.train_ref, self.sampler.sample(batch_size))

    def val_batches(self, batch_size, n):
        pairs, ref = (self.val, self.val_ref) if self.val else (self.train, self.train_ref)
        return [self._batch(pairs, ref, list(range(i, min(i + batch_size, len(pairs)))))
                for i in range(0, min(len(pairs), batch_size * n), batch_size)]

    def loss(self, model, batch):
        return dpo_batch_loss(model, batch, self.beta, self.nll_coef)


@torch.no_grad()
def implicit_reward_accuracy(model, stage, pairs, ref):
    """Held-out DPO metrics: implicit-reward accuracy and margin of the trained policy."""
    was = model.training
    model.eval()
    sums, n = {}, 0
    for i in range(0, len(pairs), 64):
        idx = list(range(i, min(i + 64, len(pairs))))
        _, m = dpo_batch_loss(model, stage._batch(pairs, ref, idx), stage.beta)
        for k, v in m.items():
            sums[k] = sums.get(k, 0.0) + v * len(idx)
        n += len(idx)
    model.train(was)
    return {f"heldout_{k}": v / max(n, 1) for k, v in sums.items()}


def run_dpo(parent, out, preset="tiny", data="", config_file=None, overrides=(), resume=False):
    """minillm dpo: align the SFT run `parent` on preference pairs into `out`; -> evaluation dict."""
    from minillm.data.world import World
    from minillm.evals.chat import chat_metrics, heldout_subset, kl_to_reference, lm_metrics
    from minillm.stages.reward import encode_pairs, preference_data
    from minillm.train import train
    model, tok, _ = lineage.load_parent(parent, "dpo")
    cfg = lineage.stage_config(DPOConfig, "dpo", preset, DEFAULTS, model, config_file,
                               list(overrides) + ([f"dpo.data={data}"] if data else []))
    world = World(seed=cfg.data.world_seed)
    train_p, val_p, test_p = preference_data(cfg.dpo.data, world, seed=cfg.train.seed, confusions=cfg.dpo.confusions,
                                               mirrored=cfg.dpo.mirror_confusions)
    train_p = train_p[:cfg.dpo.max_pairs or None]
    block = model.cfg.block_size
    train_enc, val_enc, test_enc = (encode_pairs(tok, p, block + 1) for p in (train_p, val_p, test_p))
    # the reference is the parent itself, frozen: a copy keeps its log-probs, computed when a pair is first drawn
    ref_model = copy.deepcopy(model).eval().requires_grad_(False)
    stage = DPOStage(tok, train_enc, LazyReferenceLogprobs(ref_model, train_enc, tok.pad_id),
                     val_enc, LazyReferenceLogprobs(ref_model, val_enc, tok.pad_id) if val_enc else None,
                     beta=cfg.dpo.beta, seed=cfg.train.seed, nll_coef=cfg.dpo.nll_coef)
    test_ref = reference_logprobs(ref_model, test_enc, tok.pad_id)
    resume = lineage.start_run(out, tok, parent, resume)
    metrics = train(model, stage, cfg.train, out, config=cfg.to_dict(), resume=resume,
                    manifest=lineage.manifest_fields("dpo", parent, out, sha256_texts(
                        [str(p["prompt"]) + p["chosen"] + p["rejected"] for p in train_p]), reference=parent))
    evaluation = implicit_reward_accuracy(model, stage, test_enc, test_ref)
    if not cfg.dpo.data:
        from minillm.data.oracle import Oracle
        evaluation["kl_to_reference"] = kl_to_reference(
            model, ref_model, tok, [chatdata.prompt_of(ex) for ex in heldout_subset(world.instructions("test"),
                                                                                  cfg.dpo.eval_limit)])
        evaluation.update(chat_metrics(model, tok, world, Oracle(world), max_new_tokens=cfg.dpo.eval_max_new_tokens,
                                       limit=cfg.dpo.eval_limit or None))
        evaluation.update(lm_metrics(model, tok, world))
    return lineage.finish_run(out, metrics, evaluation)
