"""flash_attn 2.x API on CPU (compiled AVX-512 BF16 kernel with a portable fallback) and CUDA (sm80+: precompiled
Triton cubins in the CUDA variants, Triton JIT in the noarch torch-cuda variant).

Layouts are flash_attn's: ``q (batch, seqlen_q, heads_q, head_dim)``, ``k/v (batch, seqlen_k, heads_k, head_dim)``,
packed ``(total_tokens, heads, head_dim)`` with int32 ``cu_seqlens`` for the varlen call, and contiguous or paged
kv caches for ``flash_attn_with_kvcache``. Causal (aligned bottom-right), sliding windows (blocks outside the window
are skipped), softcap, GQA/MQA, ``return_softmax_lse``; forward and backward through torch.library custom ops.

- CPU: float32/bfloat16, head dims multiples of 8 up to 256. The compiled kernel is forward-only; gradients come
  from a float32 recompute (correct, not fast). ``FLASH_ATTN2_CPU_ISA=portable|avx512|auto``.
- CUDA: float16/bfloat16, head dims 64, 96, 128, 256 (the kernel_loader adapter sends others to SDPA per call).
  ``FLASH_ATTN2_CUDA_IMPL=auto|aot|triton`` (see _custom_ops.py).
Not supported (NotImplementedError): ``dropout_p > 0``, ``alibi_slopes``, ``return_attn_probs``.
"""

from .interface import (SUPPORTED, cpu_isa, flash_attn_func, flash_attn_varlen_func,
                        flash_attn_with_kvcache)

__all__ = ["flash_attn_func", "flash_attn_varlen_func", "flash_attn_with_kvcache", "cpu_isa", "SUPPORTED"]
