"""Model shapes the benchmark builds from local configs (random weights, no download)."""

from __future__ import annotations


import torch


SDPA = "sdpa"

# ------------------------------------------------------------------------------------------------ model shapes

# name -> (description, config kwargs). "small" sizes keep the attention shape of the real model (head dim, GQA
# ratio, window layers) with fewer, narrower layers so a 2-core CPU measures attention rather than the MLP.
MODELS = {
    "llama-1b": ("Llama-3.2-1B shape: hidden 2048, 16 layers, 32 q / 8 kv heads x 64, MLP 8192, vocab 128256",
                 dict(family="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                      num_attention_heads=32, num_key_value_heads=8, head_dim=64, vocab_size=128256,
                      rope_theta=500000.0, tie_word_embeddings=True, max_position_embeddings=32768)),
    "llama-small": ("Llama-3.2-1B attention shape (head dim 64, GQA 4:1), narrow: hidden 512, 4 layers, 8 q / 2 kv "
                    "heads, MLP 1024, vocab 1000",
                    dict(family="llama", hidden_size=512, intermediate_size=1024, num_hidden_layers=4,
                         num_attention_heads=8, num_key_value_heads=2, head_dim=64, vocab_size=1000,
                         rope_theta=500000.0, max_position_embeddings=8192)),
    "qwen3-small": ("Qwen3-like: head dim 128, GQA 2:1, q/k norms, sliding-window (512) and full layers "
                    "alternating; hidden 512, 4 layers, 4 q / 2 kv heads, MLP 1024, vocab 1000",
                    dict(family="qwen3", hidden_size=512, intermediate_size=1024, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=128, vocab_size=1000,
                         use_sliding_window=True, sliding_window=512, max_window_layers=0,
                         layer_types=["sliding_attention", "full_attention"] * 2, max_position_embeddings=8192)),
    "tiny": ("tiny Llama for tests: hidden 128, 2 layers, 4 q / 2 kv heads x 32, vocab 160",
             dict(family="llama", hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=32, vocab_size=160, max_position_embeddings=2048)),
}


def build_model(name: str, dtype: torch.dtype, device: str, *, head_dim: int | None = None, seed: int = 0):
    """A transformers causal LM with random weights from one of :data:`MODELS` (``head_dim`` overrides)."""
    if name not in MODELS:
        raise ValueError(f"unknown model shape {name!r}; valid: {', '.join(MODELS)}")
    kw = dict(MODELS[name][1])
    family = kw.pop("family")
    if head_dim is not None:
        kw["head_dim"] = int(head_dim)
    if family == "llama":
        from transformers import LlamaConfig as Config, LlamaForCausalLM as Model
    else:
        from transformers import Qwen3Config as Config, Qwen3ForCausalLM as Model
    torch.manual_seed(seed)
    cfg = Config(**kw)
    with torch.device(device):
        model = Model(cfg)
    return model.to(dtype).eval()
