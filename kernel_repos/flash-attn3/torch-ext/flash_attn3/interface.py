"""FA3's flash_attn_interface on the shared Triton kernels, Hopper tiles and TMA loads switched on.

CUDA calls run the precompiled sm_90 cubins of an AOT variant (torch-stable-abi210-cuXYZ: no Triton, no JIT; the
dense forward loads through TMA descriptors the kernel builds on the device) or, in the noarch ``torch-cuda``
variant, Triton JIT with the Gluon warp-specialized dense forward. ``FLASH_ATTN2_CUDA_IMPL=auto|aot|triton`` (the
shared _custom_ops.py) forces one.
"""

import os
from typing import Optional

import torch

from . import _aot_dispatch, _checks, _custom_ops, _gluon_op, _kvcache

try:
    from ._ops import ops
except ImportError:
    ops = None

SUPPORTED = {
    # CUDA: the variant's cubins, or the Triton kernels it ships (noarch) with a Triton installed.
    "devices": ("cuda",) if _aot_dispatch.table(ops) is not None or _custom_ops.triton_shipped() else (),
    "dtypes": _checks.GPU_DTYPES,
    "head_dims": _checks.GPU_HEAD_DIMS,
    "backward": True,
}

# The custom ops run the AOT variant's cubins (``ops``: the launcher) or Triton on CUDA tensors (and, for tests,
# Triton on CPU tensors under TRITON_INTERPRET=1 with FLASH_ATTN2_CPU_IMPL=triton). No CPU kernel.
_OPS = _custom_ops.register(__name__, ops, hopper_tiles=True)
# Dense calls on sm90: the Gluon warp-specialized kernel where it applies, else _OPS.fwd (see _gluon_op.py). A
# precompiled variant ships no Gluon kernel: its dense calls go straight to _OPS.fwd (no second op layer).
_DENSE_FWD = _gluon_op.register(_custom_ops.namespace(__name__), _OPS.fwd) if _gluon_op.shipped() else _OPS.fwd
# A plain eager call without gradients may skip the custom-op dispatcher (_custom_ops.direct); the Gluon op has no
# separate implementation to call, so only the shared op's is used directly.
_DENSE_IMPL = _OPS.fwd_impl if _DENSE_FWD is _OPS.fwd else None


def _device_ok(who: str, q: torch.Tensor):
    if q.device.type == "cuda":
        major = torch.cuda.get_device_capability(q.device)[0]
        if major != 9 and os.environ.get("FLASH_ATTN3_ANY_GPU") != "1":
            raise RuntimeError(f"{who}: flash-attn3 is built for Hopper (sm90); this GPU is sm{major}x. Use "
                               f"flash-attn2 (or set FLASH_ATTN3_ANY_GPU=1 to run the kernels without TMA)")
        return _checks.GPU_DTYPES, _checks.GPU_HEAD_DIMS
    if q.device.type == "cpu" and _custom_ops._use_triton(q.device, None):
        return _checks.GPU_DTYPES + (torch.float32,), (16, 32) + _checks.GPU_HEAD_DIMS
    raise ValueError(f"{who}: q is on {q.device}; flash-attn3 runs on CUDA (sm90) tensors only")


def _unsupported(who, **kwargs):
    defaults = {"num_splits": (0, 1), "attention_chunk": (0,)}
    for name, value in kwargs.items():
        if value is None or value is False or (isinstance(value, int) and value in defaults.get(name, ())):
            continue
        raise NotImplementedError(f"{who}: {name}={value!r} is not supported by this build; leave it at its default")


def _common(who, q, softmax_scale, softcap):
    softcap = float(softcap)
    if softcap < 0:
        raise ValueError(f"{who}: softcap must be >= 0 (0 = off), got {softcap}")
    return (q.shape[-1] ** -0.5 if softmax_scale is None else float(softmax_scale)), softcap


def flash_attn_func(q, k, v, softmax_scale=None, causal=False, qv=None, q_descale=None, k_descale=None,
                    v_descale=None, window_size=(-1, -1), attention_chunk=0, softcap=0.0, num_splits=1,
                    pack_gqa=None, deterministic=False, sm_margin=0, return_attn_probs=False):
    """q (B, Sq, Hq, D), k/v (B, Sk, Hk, D) -> out, or (out, softmax_lse (B, Hq, Sq)) with return_attn_probs."""
    who = "flash_attn3.flash_attn_func"
    _unsupported(who, qv=qv, q_descale=q_descale, k_descale=k_descale, v_descale=v_descale,
                 attention_chunk=attention_chunk, num_splits=num_splits)
    _checks.dense(who, q, k, v, *_device_ok(who, q))
    scale, softcap = _common(who, q, softmax_scale, softcap)
    left, right = _checks.window(who, window_size)
    op = _DENSE_IMPL if _DENSE_IMPL and _custom_ops.direct(q, k, v) else _DENSE_FWD
    out, lse = op(q, k, v, scale, bool(causal), left, right, softcap)
    return (out, lse) if return_attn_probs else out


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, seqused_q=None,
                           seqused_k=None, softmax_scale=None, causal=False, qv=None, q_descale=None,
                           k_descale=None, v_descale=None, window_size=(-1, -1), attention_chunk=0, softcap=0.0,
                           num_splits=1, pack_gqa=None, deterministic=False, sm_margin=0, return_attn_probs=False):
    """Packed q (total_q, Hq, D), k/v (total_k, Hk, D), int32 cu_seqlens -> out [, lse (Hq, total_q)]."""
    who = "flash_attn3.flash_attn_varlen_func"
    _unsupported(who, seqused_q=seqused_q, seqused_k=seqused_k, qv=qv, q_descale=q_descale, k_descale=k_descale,
                 v_descale=v_descale, attention_chunk=attention_chunk, num_splits=num_splits)
    _checks.varlen(who, q, k, v, cu_seqlens_q, cu_seqlens_k, *_device_ok(who, q))
    scale, softcap = _common(who, q, softmax_scale, softcap)
    left, right = _checks.window(who, window_size)
    op = _OPS.varlen_fwd_impl if _OPS.varlen_fwd_impl and _custom_ops.direct(q, k, v) else _OPS.varlen_fwd
    out, lse = op(q, k, v, cu_seqlens_q, cu_seqlens_k, int(max_seqlen_q), int(max_seqlen_k), scale, bool(causal),
                  left, right, softcap)
    return (out, lse) if return_attn_probs else out


def flash_attn_with_kvcache(q, k_cache, v_cache, k=None, v=None, qv=None, rotary_cos=None, rotary_sin=None,
                            cache_seqlens: Optional[torch.Tensor] = None, cache_batch_idx=None, cache_leftpad=None,
                            page_table=None, cu_seqlens_q=None, cu_seqlens_k_new=None, max_seqlen_q=None,
                            rotary_seqlens=None, q_descale=None, k_descale=None, v_descale=None,
                            softmax_scale=None, causal=False, window_size=(-1, -1), attention_chunk=0,
                            softcap=0.0, rotary_interleaved=True, scheduler_metadata=None, num_splits=0,
                            pack_gqa=None, sm_margin=0, return_softmax_lse=False):
    """q (B, Sq, Hq, D) over a kv cache (B, cache_len, Hk, D) or paged (num_pages, page_size, Hk, D) with int32
    ``page_table (B, pages_per_seq)``; new k/v are appended at ``cache_seqlens`` in place first."""
    who = "flash_attn3.flash_attn_with_kvcache"
    _unsupported(who, qv=qv, rotary_cos=rotary_cos, rotary_sin=rotary_sin, cache_batch_idx=cache_batch_idx,
                 cache_leftpad=cache_leftpad, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k_new=cu_seqlens_k_new,
                 rotary_seqlens=rotary_seqlens, q_descale=q_descale, k_descale=k_descale, v_descale=v_descale,
                 attention_chunk=attention_chunk, scheduler_metadata=scheduler_metadata, num_splits=num_splits)
    dtypes, head_dims = _device_ok(who, q)
    seqlens = _kvcache.check_shapes(q, k_cache, v_cache, k, v, cache_seqlens, page_table, dtypes, head_dims)
    scale, softcap = _common(who, q, softmax_scale, softcap)
    left, right = _checks.window(who, window_size)
    op = _OPS.kvcache_fwd_impl if _OPS.kvcache_fwd_impl and _custom_ops.direct(q, k_cache, v_cache, k, v) \
        else _OPS.kvcache_fwd
    out, lse = op(q, k_cache, v_cache, k, v, seqlens, page_table, scale, bool(causal), left, right, softcap)
    return (out, lse) if return_softmax_lse else out
