"""flash_attn 2.x API: ``flash_attn_func``, ``flash_attn_varlen_func``, ``flash_attn_with_kvcache``.

CPU tensors run the compiled CPU kernel (forward; gradients by a float32 recompute). CUDA tensors run the
precompiled cubins of an AOT variant (forward and backward; sm80/sm90/sm100, no Triton needed) or, in the noarch
``torch-cuda`` variant, the Triton kernels (JIT). ``FLASH_ATTN2_CUDA_IMPL=auto|aot|triton`` (see _custom_ops.py).
Every entry point is a torch.library custom op (see _custom_ops.py), so torch.compile(fullgraph=True) traces
through it; a plain eager call without gradients runs the op's implementation directly (``_custom_ops.direct``).
"""

from typing import Optional

import torch

from . import _aot_dispatch, _checks, _custom_ops, _kvcache

try:
    from ._ops import ops
except ImportError:  # a package-only (noarch) build may ship no _ops
    ops = None

CPU_DTYPES = (torch.float32, torch.bfloat16)
CPU_HEAD_DIMS = tuple(range(8, 257, 8))


def _devices() -> tuple:
    devices = []
    if ops is not None and _custom_ops.has_kernel(ops, "fwd", "CPU"):
        devices.append("cpu")
    if _aot_dispatch.table(ops) is not None or _custom_ops.triton_shipped():
        devices.append("cuda")
    return tuple(devices)


_DEVICES = _devices()
SUPPORTED = {
    "devices": _DEVICES,
    # Union over devices for readers that know only "dtypes"; the per-device keys are what the adapter uses.
    "dtypes": tuple(dict.fromkeys((CPU_DTYPES if "cpu" in _DEVICES else ())
                                  + (_checks.GPU_DTYPES if "cuda" in _DEVICES else ()))),
    "head_dims": tuple(sorted(set(CPU_HEAD_DIMS if "cpu" in _DEVICES else ())
                              | set(_checks.GPU_HEAD_DIMS if "cuda" in _DEVICES else ()))),
    "dtypes_by_device": {"cpu": CPU_DTYPES, "cuda": _checks.GPU_DTYPES},
    "head_dims_by_device": {"cpu": CPU_HEAD_DIMS, "cuda": _checks.GPU_HEAD_DIMS},
    "backward": True,
}

_OPS = _custom_ops.register(__name__, ops)


def cpu_isa(head_dim: int = 128) -> str:
    """Kernel a CPU call with this head dim uses now: "avx512" or "portable" (see FLASH_ATTN2_CPU_ISA)."""
    if ops is None:
        raise RuntimeError("flash_attn2: this build has no compiled CPU kernel")
    return ops.cpu_isa(int(head_dim))


def _limits(device: torch.device):
    """(dtypes, head dims) a call on this device accepts."""
    if device.type == "cuda":
        return _checks.GPU_DTYPES, _checks.GPU_HEAD_DIMS
    if device.type == "cpu":
        if _custom_ops._use_triton(device, ops):  # Triton on CPU tensors: the interpreter, for tests
            return _checks.GPU_DTYPES + (torch.float32,), (16, 32) + _checks.GPU_HEAD_DIMS
        if "cpu" in _DEVICES:
            return CPU_DTYPES, CPU_HEAD_DIMS
    raise ValueError(f"flash_attn2: tensors on device '{device}'; this build runs on "
                     f"{', '.join(_DEVICES) or 'no device (no CPU kernel, no Triton)'} tensors")


def _reject_unsupported(who, dropout_p: float, alibi_slopes, return_attn_probs: bool) -> None:
    if dropout_p != 0.0:
        raise NotImplementedError(f"{who}: dropout_p={dropout_p} is not supported; only dropout_p=0.0 is")
    if alibi_slopes is not None:
        raise NotImplementedError(f"{who}: alibi_slopes is not supported; pass alibi_slopes=None")
    if return_attn_probs:
        raise NotImplementedError(
            f"{who}: return_attn_probs=True is not supported (probabilities are never materialised); "
            "use return_softmax_lse=True to get the log-sum-exp")


def _scale(q: torch.Tensor, softmax_scale: Optional[float]) -> float:
    return q.shape[-1] ** -0.5 if softmax_scale is None else float(softmax_scale)


def _softcap(who, softcap) -> float:
    softcap = float(softcap)
    if softcap < 0:
        raise ValueError(f"{who}: softcap must be >= 0 (0 = off), got {softcap}")
    return softcap


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                    softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False,
                    return_softmax_lse=False):
    """q (B, Sq, Hq, D), k/v (B, Sk, Hk, D) -> out (B, Sq, Hq, D) [, lse float32 (B, Hq, Sq)].

    Causal and windows are aligned bottom-right (query i sits on key i + Sk - Sq); rows that see
    no key give out 0 and lse -inf. ``deterministic`` is accepted and ignored (no atomics anywhere).
    """
    who = "flash_attn_func"
    _reject_unsupported(who, dropout_p, alibi_slopes, return_attn_probs)
    _checks.dense(who, q, k, v, *_limits(q.device))
    window = _checks.window(who, window_size)
    op = _OPS.fwd_impl if _OPS.fwd_impl and _custom_ops.direct(q, k, v) else _OPS.fwd
    out, lse = op(q, k, v, _scale(q, softmax_scale), bool(causal), window[0], window[1], _softcap(who, softcap))
    return (out, lse) if return_softmax_lse else out


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                           dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                           softcap=0.0, alibi_slopes=None, deterministic=False,
                           return_attn_probs=False, return_softmax_lse=False):
    """Packed q (total_q, Hq, D), k/v (total_k, Hk, D), int32 cu_seqlens (batch+1)
    -> out (total_q, Hq, D) [, lse float32 (Hq, total_q)]. Packed rows after the last sequence get 0 / -inf."""
    who = "flash_attn_varlen_func"
    _reject_unsupported(who, dropout_p, alibi_slopes, return_attn_probs)
    _checks.varlen(who, q, k, v, cu_seqlens_q, cu_seqlens_k, *_limits(q.device))
    window = _checks.window(who, window_size)
    op = _OPS.varlen_fwd_impl if _OPS.varlen_fwd_impl and _custom_ops.direct(q, k, v) else _OPS.varlen_fwd
    out, lse = op(q, k, v, cu_seqlens_q, cu_seqlens_k, int(max_seqlen_q), int(max_seqlen_k),
                               _scale(q, softmax_scale), bool(causal), window[0], window[1], _softcap(who, softcap))
    return (out, lse) if return_softmax_lse else out


def flash_attn_with_kvcache(q, k_cache, v_cache, k=None, v=None, cache_seqlens=None, block_table=None,
                            softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                            return_softmax_lse=False):
    """Attention of q (B, Sq, Hq, D) over a kv cache, appending new k/v (B, S_new, Hk, D) in place first.

    ``k_cache/v_cache``: (B, cache_len, Hk, D), or paged (num_pages, page_size, Hk, D) with int32
    ``block_table (B, pages_per_seq)``. ``cache_seqlens`` (int or int32 (B,)) counts tokens already cached (None:
    the whole cache). Keys seen: cache_seqlens + S_new per sequence; causal/windows aligned bottom-right.
    -> out (B, Sq, Hq, D) [, lse float32 (B, Hq, Sq)]. Forward only (no gradients), like flash_attn's.
    """
    who = _kvcache.WHO
    dtypes, head_dims = _limits(q.device)
    seqlens = _kvcache.check_shapes(q, k_cache, v_cache, k, v, cache_seqlens, block_table, dtypes, head_dims)
    window = _checks.window(who, window_size)
    op = _OPS.kvcache_fwd_impl if _OPS.kvcache_fwd_impl and _custom_ops.direct(q, k_cache, v_cache, k, v) \
        else _OPS.kvcache_fwd
    out, lse = op(q, k_cache, v_cache, k, v, seqlens, block_table, _scale(q, softmax_scale),
                                bool(causal), window[0], window[1], _softcap(who, softcap))
    return (out, lse) if return_softmax_lse else out
