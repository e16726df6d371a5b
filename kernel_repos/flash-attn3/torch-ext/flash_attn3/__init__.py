"""FlashAttention-3 API (flash_attn_interface) for Hopper (sm90), as Triton kernels.

``flash_attn_func``, ``flash_attn_varlen_func`` and ``flash_attn_with_kvcache`` (with ``page_table``) take
flash_attn's layouts; causal (bottom-right), sliding windows (blocks outside are skipped), softcap, GQA/MQA;
forward and backward through torch.library custom ops (torch.compile(fullgraph=True) traces through them).
Dense forward calls on sm90 run a warp-specialized Gluon kernel (_gluon_fwd.py: a TMA producer warp, two
ping-pong consumer warpgroups, register reallocation between them) when it computes the call exactly; softcap,
strides that are not one (batch*seq, heads*head_dim) matrix, and Tritons without its Gluon API go to the Triton
``tl`` kernels, which load Q/K/V with device-side TMA descriptors, tiles up to 128x128, wgmma on sm90.

No dropout (FA3 has none); fp8 (descale), ``qv``, rotary, ``cache_batch_idx``, ``cache_leftpad``,
``attention_chunk`` and ``num_splits`` are not supported (NotImplementedError when set). float16/bfloat16, head dims
64, 96, 128, 256.
"""

from .interface import SUPPORTED, flash_attn_func, flash_attn_varlen_func, flash_attn_with_kvcache

__all__ = ["flash_attn_func", "flash_attn_varlen_func", "flash_attn_with_kvcache", "SUPPORTED"]
