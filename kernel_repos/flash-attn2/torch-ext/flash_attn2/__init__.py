"""flash_attn 2.x forward API on CPU (x86-64; AVX-512 BF16 kernel with a portable fallback).

Layouts are flash_attn's: ``q (batch, seqlen_q, heads_q, head_dim)``, ``k/v (batch, seqlen_k,
heads_k, head_dim)`` and, for the varlen call, packed ``(total_tokens, heads, head_dim)`` with int32
``cu_seqlens``. Supported: float32 and bfloat16, head dims that are multiples of 8 up to 256,
causal (aligned bottom-right), sliding windows, softcap, GQA/MQA, ``return_softmax_lse``.

The compiled kernel is forward-only. Backward works, but through a reference path: when autograd
needs gradients, they are computed by recomputing attention with plain torch ops in float32,
which materialises the (seqlen_q x seqlen_k) score matrix per head. It is correct, not fast.
Not supported (NotImplementedError): ``dropout_p > 0``, ``alibi_slopes``, ``return_attn_probs``.

``FLASH_ATTN2_CPU_ISA=portable|avx512|auto`` forces the portable or the AVX-512 kernel (default
auto: AVX-512 when the CPU has AVX512F/BW/VL/DQ/BF16 and the head dim is a multiple of 16).
"""

from .interface import SUPPORTED, cpu_isa, flash_attn_func, flash_attn_varlen_func

__all__ = ["flash_attn_func", "flash_attn_varlen_func", "cpu_isa", "SUPPORTED"]
