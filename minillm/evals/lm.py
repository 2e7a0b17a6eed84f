"""Language-model metrics: validation loss, perplexity, bits per byte, and the world's fact and cloze accuracy.

    val_loss   = mean over predicted tokens of -log p(token)           (nats per token)
    perplexity = exp(val_loss)                                         (the effective branching factor)
    val_bpb    = sum(-log p) / ln 2 / sum(UTF-8 bytes of those tokens) (bits per byte: comparable across tokenizers;
                 tokens with no bytes -- specials -- are left out of both sums, as in nanochat)
fact_accuracy: greedy completion of held-out prompts ("The capital of Italy is") matches the answer (" Rome")
up to a word boundary. fill_mask_accuracy: the masked LM predicts, in one pass, every token of the answer
written as that many <|mask|> tokens ("The capital of <|mask|> is Rome." -> "Italy").
Prompts are read as running text, with the leading space a word has after a previous sentence: byte-level BPE
spells a word differently at the very start of a text ("Italy" -> 'I','taly' but " Italy" -> ' Italy'), and in
multi-sentence documents nearly every occurrence of a name is the spaced one (running_text=False turns this off).
"""
import math

import torch
import torch.nn.functional as F

from minillm.data.shards import IGNORE, mlm_mask, word_pieces


@torch.no_grad()
def lm_losses(model, tokens, tok, objective="clm", batch_size=16, max_windows=64, mlm_prob=0.15, seed=0):
    """val_loss, perplexity, val_bpb over up to max_windows windows spread evenly over the token stream."""
    model.eval()
    device = next(model.parameters()).device
    T = model.cfg.block_size
    n_windows = max(1, min(max_windows, (len(tokens) - 1) // T))
    starts = torch.linspace(0, len(tokens) - T - 1, n_windows).long().tolist()
    token_bytes = torch.tensor(tok.token_bytes, dtype=torch.float64)  # (V,)
    gen = torch.Generator().manual_seed(seed)
    pieces = word_pieces(tok) if objective == "mlm" else None
    nats, count, bpb_nats, n_bytes = 0.0, 0, 0.0, 0.0
    for i in range(0, len(starts), batch_size):
        w = torch.stack([torch.as_tensor(tokens[s:s + T + 1].astype("int64")) for s in starts[i:i + batch_size]])
        if objective == "mlm":
            idx, targets = mlm_mask(w[:, :-1], tok.mask_id, set(tok.special_ids.values()), tok.vocab_size,
                                    mlm_prob, gen, pieces)  # (B, T) each, whole words as in training
        else:
            idx, targets = w[:, :-1], w[:, 1:]  # (B, T) each
        logits = model(idx.to(device)).float().cpu()  # (B, T, V)
        ce = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE, reduction="none")
        keep = targets.flatten() != IGNORE  # (B*T,)
        nats += ce[keep].sum().item()
        count += int(keep.sum())
        nbytes = token_bytes[targets.flatten().clamp_min(0)] * keep  # (B*T,)
        bpb_nats += ce[nbytes > 0].sum().item()
        n_bytes += nbytes.sum().item()
    val_loss = nats / max(count, 1)
    return {"val_loss": val_loss, "perplexity": math.exp(min(val_loss, 50)),
            "val_bpb": bpb_nats / math.log(2) / max(n_bytes, 1)}


def _left_pad(rows, pad_id):
    L = max(len(r) for r in rows)
    idx = torch.tensor([[pad_id] * (L - len(r)) + r for r in rows])  # (B, L)
    mask = torch.tensor([[False] * (L - len(r)) + [True] * len(r) for r in rows])  # (B, L)
    return idx, mask


def _matches(text, answer):
    """text starts with answer and the answer ends on a word boundary (' Rome' does not match ' Romeo')."""
    return text.startswith(answer) and (len(text) == len(answer) or not text[len(answer)].isalnum())


def _running(text, running_text):
    return " " + text if running_text and not text[:1].isspace() else text


@torch.no_grad()
def fact_accuracy(model, tok, prompts, batch_size=64, return_rows=False, running_text=True):
    """Share of {'prompt', 'answer'} items whose greedy completion starts with the answer."""
    model.eval()
    device = next(model.parameters()).device
    rows, correct = [], 0
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i:i + batch_size]
        ids = [tok.encode(_running(p["prompt"], running_text)) for p in chunk]
        n_new = max(len(tok.encode(p["answer"])) for p in chunk) + 1
        idx, mask = _left_pad(ids, tok.pad_id)
        out = model.generate(idx.to(device), n_new, temperature=0, attention_mask=mask.to(device))
        for p, row in zip(chunk, out[:, idx.size(1):].tolist()):
            specials = set(tok.special_ids.values())
            cut = next((j for j, t in enumerate(row) if t in specials), len(row))  # stop at <|endoftext|> etc.
            text = tok.decode(row[:cut])
            ok = _matches(text, p["answer"])
            correct += ok
            rows.append({"prompt": p["prompt"], "answer": p["answer"], "completion": text, "correct": ok})
    acc = correct / max(len(prompts), 1)
    return (acc, rows) if return_rows else acc


def cloze_inputs(tok, text, answer, block_size=None):
    """'The capital of <|mask|> is Rome.', 'Italy' -> (ids with k masks, positions, answer ids).

    The space before the mask belongs to the answer's first token (' Italy'), as in the training text."""
    left, right = text.split("<|mask|>", 1)
    answer_text = answer
    if left.endswith(" "):
        left, answer_text = left[:-1], " " + answer
    answer_ids = tok.encode(answer_text)
    left_ids = tok.encode(left)
    ids = left_ids + [tok.mask_id] * len(answer_ids) + tok.encode(right)
    start = len(left_ids)
    if block_size is not None and len(ids) > block_size:  # keep a window of the context around the masks
        cut = max(0, min(start, len(ids) - block_size))
        ids, start = ids[cut:cut + block_size], start - cut
    return ids, list(range(start, start + len(answer_ids))), answer_ids


@torch.no_grad()
def fill_masks(model, tok, ids_list, positions_list):
    """Predict the tokens at the given positions (specials excluded) in one bidirectional pass per batch."""
    device = next(model.parameters()).device
    L = max(len(r) for r in ids_list)
    idx = torch.tensor([r + [tok.pad_id] * (L - len(r)) for r in ids_list])  # (B, L) right-padded
    mask = torch.tensor([[True] * len(r) + [False] * (L - len(r)) for r in ids_list])  # (B, L)
    logits = model(idx.to(device), mask.to(device)).float()  # (B, L, V)
    logits[..., list(tok.special_ids.values())] = float("-inf")
    pred = logits.argmax(-1).cpu()  # (B, L)
    return [[int(pred[b, p]) for p in pos] for b, pos in enumerate(positions_list)]


@torch.no_grad()
def fill_mask_accuracy(model, tok, clozes, batch_size=64, return_rows=False, running_text=True):
    """Share of {'text', 'answer'} cloze items whose masks are filled with exactly the answer's tokens."""
    model.eval()
    rows, correct = [], 0
    for i in range(0, len(clozes), batch_size):
        chunk = clozes[i:i + batch_size]
        built = [cloze_inputs(tok, _running(c["text"], running_text), c["answer"], model.cfg.block_size)
                 for c in chunk]
        preds = fill_masks(model, tok, [b[0] for b in built], [b[1] for b in built])
        for c, (_, _, answer_ids), pred in zip(chunk, built, preds):
            ok = pred == answer_ids
            correct += ok
            rows.append({"text": c["text"], "answer": c["answer"], "prediction": tok.decode(pred).strip(),
                         "correct": ok})
    acc = correct / max(len(clozes), 1)
    return (acc, rows) if return_rows else acc
