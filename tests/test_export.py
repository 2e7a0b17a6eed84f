"""HF export: our Transformer, renamed to Llama, gives the same logits in `transformers` (skipped without it)."""
import pytest
import torch

from minillm.errors import MiniLLMError
from minillm.export import llama_config, llama_state_dict
from minillm.model import ModelConfig, Transformer


def _tiny(**kw):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=97, n_layer=2, n_head=4, n_embd=32, block_size=24, **kw)
    return Transformer(cfg).eval()


def test_llama_state_dict_has_every_weight_once_with_llama_names():
    model = _tiny()
    sd = llama_state_dict(model)
    assert sum(v.numel() for v in sd.values()) == model.num_params()
    assert sd["model.layers.1.self_attn.k_proj.weight"].shape == (32, 32)
    assert torch.equal(sd["model.layers.0.mlp.gate_proj.weight"], model.h[0].mlp.c_gate.weight)


@pytest.mark.parametrize("kw", [dict(pos="learned"), dict(norm="layer"), dict(mlp="gelu"), dict(causal=False)])
def test_architectures_without_a_llama_equivalent_are_refused(kw):
    with pytest.raises(MiniLLMError, match="no Llama equivalent"):
        llama_config(_tiny(**kw).cfg)


def test_transformers_llama_gives_identical_logits():
    transformers = pytest.importorskip("transformers")
    model = _tiny()
    with torch.no_grad():                      # non-trivial norm weights, so a misplaced norm would show
        for n, p in model.named_parameters():
            if "ln" in n:
                p.add_(0.1 * torch.randn_like(p))
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**llama_config(model.cfg)))
    missing, unexpected = hf.load_state_dict(llama_state_dict(model), strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    hf.tie_weights()
    hf.eval()
    idx = torch.randint(0, 97, (3, 24), generator=torch.Generator().manual_seed(1))  # (B, T)
    with torch.no_grad():
        diff = (model(idx) - hf(input_ids=idx).logits).abs().max().item()
    assert diff < 1e-5
