"""Export a minillm run to the Hugging Face `transformers` format, so the model works in the wider ecosystem.

Our default architecture (RoPE, RMSNorm, SwiGLU, no biases, tied embeddings, causal) *is* the Llama
architecture, so the export is a renaming of tensors plus a `config.json`:

    wte.weight                    -> model.embed_tokens.weight      (lm_head tied: tie_word_embeddings=true)
    h.{i}.ln_1.weight             -> model.layers.{i}.input_layernorm.weight
    h.{i}.attn.c_attn.weight      -> model.layers.{i}.self_attn.{q,k,v}_proj.weight   (split in three rows blocks)
    h.{i}.attn.c_proj.weight      -> model.layers.{i}.self_attn.o_proj.weight
    h.{i}.ln_2.weight             -> model.layers.{i}.post_attention_layernorm.weight
    h.{i}.mlp.c_gate.weight       -> model.layers.{i}.mlp.gate_proj.weight     silu(gate(x)) * up(x)
    h.{i}.mlp.c_fc.weight         -> model.layers.{i}.mlp.up_proj.weight
    h.{i}.mlp.c_proj.weight       -> model.layers.{i}.mlp.down_proj.weight
    ln_f.weight                   -> model.norm.weight

Both implementations rotate the two *halves* of each head (x[:D/2], x[D/2:]) by the angles pos·θ^(-2i/D)
("rotate_half"), so q and k need no permutation, and both compute RMSNorm in float32 with eps 1e-6.
Other variants (learned positions, LayerNorm, GELU, bidirectional, scalar head) have no Llama equivalent and
are refused with a message. `transformers` is an optional dependency (`pip install minillm[hf]`), needed only
to *load* the export (`verify_hf`), never to write it.
Reference: Touvron et al. 2023 (LLaMA); transformers' modeling_llama.py.
"""
from __future__ import annotations

import json
import os
import shutil

import torch

from minillm.errors import MiniLLMError


def llama_config(cfg, rms_eps: float = 1e-6) -> dict:
    """The transformers LlamaConfig (as JSON) equivalent to our ModelConfig; refuses what Llama cannot express."""
    problems = [f"{k}={getattr(cfg, k)!r} (Llama needs {v!r})" for k, v in
                [("pos", "rope"), ("norm", "rms"), ("mlp", "swiglu"), ("causal", True), ("head", "lm")]
                if getattr(cfg, k) != v]
    if problems:
        raise MiniLLMError("this model has no Llama equivalent: " + ", ".join(problems)
                           + "; export a model trained with the default rope/rms/swiglu causal architecture")
    C = cfg.n_embd
    hidden = 8 * ((8 * C // 3 + 7) // 8)  # as in minillm.model.MLP
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": cfg.vocab_size,
            "hidden_size": C, "intermediate_size": hidden, "num_hidden_layers": cfg.n_layer,
            "num_attention_heads": cfg.n_head, "num_key_value_heads": cfg.n_head, "head_dim": C // cfg.n_head,
            "max_position_embeddings": cfg.block_size, "rope_theta": cfg.rope_theta, "rms_norm_eps": rms_eps,
            "hidden_act": "silu", "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": True,
            "torch_dtype": "float32", "initializer_range": 0.02, "use_cache": True}


def llama_state_dict(model) -> dict:
    """Our tensors under Llama's names (tied lm_head omitted: transformers ties it from the config)."""
    cfg = model.cfg
    sd = model.state_dict()
    C = cfg.n_embd
    out = {"model.embed_tokens.weight": sd["wte.weight"], "model.norm.weight": sd["ln_f.weight"]}
    for i in range(cfg.n_layer):
        p, q = f"h.{i}.", f"model.layers.{i}."
        wq, wk, wv = sd[p + "attn.c_attn.weight"].split(C, dim=0)  # (C, C) each: rows of q, k, v
        out.update({q + "input_layernorm.weight": sd[p + "ln_1.weight"],
                    q + "self_attn.q_proj.weight": wq, q + "self_attn.k_proj.weight": wk,
                    q + "self_attn.v_proj.weight": wv, q + "self_attn.o_proj.weight": sd[p + "attn.c_proj.weight"],
                    q + "post_attention_layernorm.weight": sd[p + "ln_2.weight"],
                    q + "mlp.gate_proj.weight": sd[p + "mlp.c_gate.weight"],
                    q + "mlp.up_proj.weight": sd[p + "mlp.c_fc.weight"],
                    q + "mlp.down_proj.weight": sd[p + "mlp.c_proj.weight"]})
    return {k: v.detach().to(torch.float32).contiguous().clone() for k, v in out.items()}


def export_hf(run_dir: str, out_dir: str) -> dict:
    """Write out_dir/{config.json, model.safetensors, generation_config.json, minillm_tokenizer.json, README.md}."""
    from safetensors.torch import save_file

    from minillm.checkpoint import load_model
    from minillm.registry import verify_files
    verify_files(run_dir)
    model, tok, manifest = load_model(run_dir)
    cfg = llama_config(model.cfg)
    if tok is not None:
        cfg.update({"bos_token_id": None, "eos_token_id": tok.eot_id, "pad_token_id": tok.pad_id})
    if os.path.exists(out_dir) and os.listdir(out_dir):
        raise MiniLLMError(f"{out_dir} exists and is not empty; choose a new --out")
    os.makedirs(out_dir, exist_ok=True)
    save_file(llama_state_dict(model), os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
        json.dump({"eos_token_id": cfg.get("eos_token_id"), "pad_token_id": cfg.get("pad_token_id")}, f, indent=2)
    files = ["config.json", "model.safetensors", "generation_config.json"]
    if os.path.isfile(os.path.join(run_dir, "tokenizer.json")):
        shutil.copyfile(os.path.join(run_dir, "tokenizer.json"), os.path.join(out_dir, "minillm_tokenizer.json"))
        files.append("minillm_tokenizer.json")
    with open(os.path.join(out_dir, "README.md"), "w") as f:
        f.write(f"# {os.path.basename(os.path.abspath(run_dir))} (exported from minillm)\n\n"
                "```python\nfrom transformers import AutoModelForCausalLM\n"
                f"model = AutoModelForCausalLM.from_pretrained({out_dir!r})\n```\n\n"
                "Token ids: use minillm's tokenizer (`minillm.tokenizer.load_tokenizer` on minillm_tokenizer.json "
                "renamed to tokenizer.json in a folder); the ids are the same.\n")
    files.append("README.md")
    return {"architecture": "LlamaForCausalLM", "files": files, "stage": manifest.get("stage")}


def verify_hf(run_dir: str, out_dir: str, ids=None) -> float:
    """Max |logits_ours - logits_transformers| on a batch of token ids (needs `transformers`)."""
    try:
        from transformers import AutoModelForCausalLM
    except ImportError:
        raise MiniLLMError("verifying an HF export needs transformers: pip install 'minillm[hf]'") from None
    from minillm.checkpoint import load_model
    model, _, _ = load_model(run_dir)
    hf = AutoModelForCausalLM.from_pretrained(out_dir, attn_implementation="eager")  # float32.eval()
    if ids is None:
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, model.cfg.vocab_size, (2, min(16, model.cfg.block_size)), generator=g)  # (B, T)
    with torch.no_grad():
        ours = model(ids)                     # (B, T, V)
        theirs = hf(input_ids=ids).logits     # (B, T, V)
    return float((ours - theirs).abs().max())
