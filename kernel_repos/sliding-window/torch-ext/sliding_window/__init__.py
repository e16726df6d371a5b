"""Sliding-window attention: prefill whose cost grows with S * W (key blocks outside the window are skipped) and
decode against a ring-buffer KV cache whose memory stays O(W).

- ``sliding_window_attn_func(q, k, v, window_size, causal=True, softmax_scale=None, softcap=0.0)``: flash layout
  (B, S, H, D), GQA, softcap; ``flash_attn_func`` is the same under flash_attn's signature (used by
  kernel_loader's transformers adapter, so ``attn_implementation="org/sliding-window"`` works for Mistral/Gemma
  style models with ``sliding_window``).
- ``RingKVCache.allocate(batch, window, kv_heads, head_dim)``, ``ring_cache_append(cache, k, v)``,
  ``sliding_window_decode(q, cache)``.

CUDA: a Triton prefill kernel (fp16/bf16): precompiled cubins in the torch-stable-abi210-cuXYZ variants (head dims
64/96/128/256; no Triton needed), Triton JIT in torch-cuda. CPU, float32 and other head dims: torch ops, bounded
to the window the same way.
"""

import torch

from .prefill import flash_attn_func, sliding_window_attn_func
from .ring_cache import RingKVCache, ring_cache_append, sliding_window_decode

SUPPORTED = {
    "dtypes": (torch.float16, torch.bfloat16, torch.float32),
    "head_dims": range(1, 257),
    "backward": False,
    "devices": ("cpu", "cuda"),
}

__all__ = ["RingKVCache", "SUPPORTED", "flash_attn_func", "ring_cache_append", "sliding_window_attn_func",
           "sliding_window_decode"]
