"""vLLM-compatible paged attention: decode over a block-paged KV cache, and the cache ops around it.

- ``paged_attention_v1`` / ``paged_attention_v2``: vLLM's signatures and cache layouts (key_cache
  [num_blocks, num_kv_heads, head_size/x, block_size, x], value_cache [num_blocks, num_kv_heads, head_size,
  block_size]); block sizes 8/16/32; head sizes 64-256 (CUDA) / 32-256 (CPU); fp16/bf16 (and fp32 on the torch
  path) queries; ``kv_cache_dtype`` "auto" or "fp8"/"fp8_e4m3" (uint8 or float8_e4m3fn storage, k_scale/v_scale);
  ALiBi; GQA/MQA (each KV page is read once for all query heads that share it).
- ``reshape_and_cache`` / ``reshape_and_cache_flash``: write new tokens' K/V into their slots (negative slot =
  padding, skipped). ``copy_blocks`` / ``swap_blocks``: block copies within / between caches.
- ``paged_attention_flash`` and ``paged_attention_varlen``: decode and multi-token (prefill chunk) attention on
  flash-layout caches [num_blocks, block_size, num_kv_heads, head_size], used by transformers' continuous batching.

CUDA: Triton kernels (GQA-grouped, split-K), precompiled to cubins in the torch-stable-abi210-cuXYZ variants
(no Triton needed; head sizes that are multiples of 16), JIT in torch-cuda. CPU: torch ops. Every call checks dtypes and shapes and raises
``ValueError`` naming the bad one. Index values (block tables, lengths, slots): ``set_validation("device")``
(default: the CUDA decode kernel checks them without a host sync, never reads outside the cache, and the error is
raised by the next call or ``check_errors()``), ``"host"`` (checked before launch, one sync per call) or ``"off"``.
"""

from ._device_check import check_errors
from ._validate import (
    BLOCK_SIZES, KV_CACHE_DTYPES, PARTITION_SIZE, VALIDATION_MODES, set_validation, validation_enabled,
    validation_mode,
)
from .ops import (
    backend_for, copy_blocks, paged_attention_flash, paged_attention_v1, paged_attention_v2,
    paged_attention_varlen, reshape_and_cache, reshape_and_cache_flash, swap_blocks,
)

SUPPORTED = {
    "dtypes": ("float16", "bfloat16", "float32"),
    "block_sizes": BLOCK_SIZES,
    "kv_cache_dtypes": KV_CACHE_DTYPES,
    "devices": ("cpu", "cuda"),
}

__all__ = [
    "PARTITION_SIZE",
    "SUPPORTED",
    "VALIDATION_MODES",
    "backend_for",
    "check_errors",
    "copy_blocks",
    "paged_attention_flash",
    "paged_attention_v1",
    "paged_attention_v2",
    "paged_attention_varlen",
    "reshape_and_cache",
    "reshape_and_cache_flash",
    "set_validation",
    "swap_blocks",
    "validation_enabled",
    "validation_mode",
]
