"""FlashAttention-3 API (flash_attn_interface) for Hopper (sm90), as Triton kernels.

``flash_attn_func``, ``flash_attn_varlen_func`` and ``flash_attn_with_kvcache`` (with ``page_table``) take
flash_attn's layouts; causal (bottom-right), sliding windows (blocks outside are skipped), softcap, GQA/MQA;
forward and backward through torch.library custom ops (torch.compile(fullgraph=True) traces through them).
Hopper features through Triton: Q/K/V tiles are loaded with device-side TMA tensor descriptors
(``tl.make_tensor_descriptor``, the bulk tensor copy engine) for dense inputs, tiles up to 128x128, and Triton
emits wgmma for the block products on sm90. Triton 3.6 does not warp-specialize loops on Hopper (Blackwell only),
so producer/consumer warp specialization is not used.

No dropout (FA3 has none); fp8 (descale), ``qv``, rotary, ``cache_batch_idx``, ``cache_leftpad``,
``attention_chunk`` and ``num_splits`` are not supported (NotImplementedError when set). float16/bfloat16, head dims
64, 96, 128, 256.
"""

from .interface import SUPPORTED, flash_attn_func, flash_attn_varlen_func, flash_attn_with_kvcache

__all__ = ["flash_attn_func", "flash_attn_varlen_func", "flash_attn_with_kvcache", "SUPPORTED"]
