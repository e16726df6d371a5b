"""Input validation for the GPU path: a clear ValueError naming the argument, never a device fault.

Shape/dtype/stride checks are cheap and run on every call (also under torch.compile tracing). Checks that read
index values (cu_seqlens, cache_seqlens, block_table) run inside the ops, eagerly, right before the launch, when
``values_now`` says so: on CUDA they cost a device->host copy that makes the host wait for the GPU.
"""

import os
from typing import Iterable

import torch

VALUES_ENV = "FLASH_ATTN2_CHECK_VALUES"
_values_seen: set = set()


def values_now(who: str, device: torch.device) -> bool:
    """Whether this call reads its index tensors to check them. CPU: always (no sync). CUDA: reading them syncs
    the device on every call (measured on an H200: a decode step's host time 2-3x, and no CUDA graph capture), so
    by default only the first call of each entry point per process checks them -- it catches the usual mistakes
    (lengths instead of offsets, a cache too short); ``FLASH_ATTN2_CHECK_VALUES=1`` checks every call, ``0`` none.
    Never during graph capture (a sync there invalidates the capture)."""
    if device.type != "cuda":
        return True
    mode = os.environ.get(VALUES_ENV, "first")
    if mode not in ("first", "0", "1"):
        raise ValueError(f"{VALUES_ENV}={mode!r}; valid: first (default), 1 (every call), 0 (never)")
    if mode == "0" or torch.cuda.is_current_stream_capturing():
        return False
    if mode == "1":
        return True
    if who in _values_seen:
        return False
    _values_seen.add(who)
    return True

GPU_DTYPES = (torch.float16, torch.bfloat16)
GPU_HEAD_DIMS = (64, 96, 128, 256)


def fail(who: str, message: str):
    raise ValueError(f"{who}: {message}")


def window(who: str, window_size) -> tuple:
    """window_size as (left, right) ints, -1 = unbounded side."""
    try:
        left, right = (int(w) for w in window_size)
    except (TypeError, ValueError):
        raise ValueError(f"{who}: window_size must be a pair (left, right) of ints, -1 = unbounded; "
                         f"got {window_size!r}") from None
    if left < -1 or right < -1:
        fail(who, f"window_size entries must be >= -1 (-1 = unbounded), got {window_size!r}")
    return left, right


def tensor(who: str, name: str, t, ndim: int, layout: str):
    if not isinstance(t, torch.Tensor):
        fail(who, f"{name} must be a torch.Tensor {layout}, got {type(t).__name__}")
    if t.dim() != ndim:
        fail(who, f"{name} must be {ndim}-D {layout}, got shape {tuple(t.shape)}")
    if t.numel() and t.stride(-1) != 1:
        fail(who, f"{name} must be contiguous in its last dim (stride 1), got strides {t.stride()}; "
                  f"call .contiguous() first")


def same_device(who: str, **tensors):
    devices = {n: t.device for n, t in tensors.items() if isinstance(t, torch.Tensor)}
    first = next(iter(devices.values()))
    for n, dev in devices.items():
        if dev != first:
            fail(who, f"all tensors must be on one device; {next(iter(devices))} is on {first}, {n} on {dev}")


def qkv_common(who: str, q, k, v, head_axis: int, dtypes: Iterable[torch.dtype], head_dims: Iterable[int]):
    dtypes, head_dims = tuple(dtypes), tuple(head_dims)
    if q.dtype not in dtypes:
        fail(who, f"q has dtype {q.dtype}; supported on {q.device.type}: {', '.join(map(str, dtypes))}")
    for n, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            fail(who, f"{n} has dtype {t.dtype} but q has {q.dtype}; q, k and v must share one dtype")
    d = q.shape[-1]
    if d not in head_dims:
        fail(who, f"head dim {d} is not supported on {q.device.type}; supported: {', '.join(map(str, head_dims))}")
    if k.shape[-1] != d or v.shape[-1] != d:
        fail(who, f"head dims differ: q {d}, k {k.shape[-1]}, v {v.shape[-1]}")
    hq, hk = q.shape[head_axis], k.shape[head_axis]
    if v.shape[head_axis] != hk:
        fail(who, f"k has {hk} heads but v has {v.shape[head_axis]}")
    if hk == 0 or hq % hk:
        fail(who, f"query heads ({hq}) must be a multiple of key/value heads ({hk}) (GQA/MQA)")


def dense(who: str, q, k, v, dtypes, head_dims):
    for n, t in (("q", q), ("k", k), ("v", v)):
        tensor(who, n, t, 4, "(batch, seqlen, heads, head_dim)")
    same_device(who, q=q, k=k, v=v)
    if k.shape[:2] != v.shape[:2]:
        fail(who, f"k {tuple(k.shape)} and v {tuple(v.shape)} must have the same (batch, seqlen)")
    if q.shape[0] != k.shape[0]:
        fail(who, f"batch sizes differ: q {q.shape[0]}, k {k.shape[0]}")
    qkv_common(who, q, k, v, 2, dtypes, head_dims)


def varlen(who: str, q, k, v, cu_q, cu_k, dtypes, head_dims):
    for n, t in (("q", q), ("k", k), ("v", v)):
        tensor(who, n, t, 3, "(total_tokens, heads, head_dim)")
    same_device(who, q=q, k=k, v=v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k)
    if k.shape[0] != v.shape[0]:
        fail(who, f"k has {k.shape[0]} tokens but v has {v.shape[0]}")
    for n, c in (("cu_seqlens_q", cu_q), ("cu_seqlens_k", cu_k)):
        if not isinstance(c, torch.Tensor) or c.dtype != torch.int32 or c.dim() != 1 or c.numel() < 1:
            fail(who, f"{n} must be a 1-D int32 tensor (batch + 1 offsets), got "
                      f"{getattr(c, 'dtype', type(c).__name__)} {tuple(getattr(c, 'shape', ()))}")
    if cu_q.numel() != cu_k.numel():
        fail(who, f"cu_seqlens_q has {cu_q.numel()} entries but cu_seqlens_k has {cu_k.numel()}; "
                  f"both are batch + 1 offsets")
    qkv_common(who, q, k, v, 1, dtypes, head_dims)


def cu_values(who: str, cu_q, cu_k, total_q: int, total_k: int, max_q: int, max_k: int):
    """Offsets start at 0, never decrease, end inside the packed tensors; lengths fit max_seqlen (else rows would
    be skipped silently). -> where cu_seqlens_q ends (packed rows after it get out 0 / lse -inf)."""
    ends = []
    for n, c, total, mx, mname in (("cu_seqlens_q", cu_q, total_q, max_q, "max_seqlen_q"),
                                   ("cu_seqlens_k", cu_k, total_k, max_k, "max_seqlen_k")):
        vals = c.tolist()
        if vals[0] != 0 or any(b < a for a, b in zip(vals, vals[1:])):
            fail(who, f"{n} must start at 0 and never decrease, got {vals[:8]}{'...' if len(vals) > 8 else ''}")
        if vals[-1] > total:
            fail(who, f"{n} ends at {vals[-1]} but the packed tensor has {total} tokens")
        longest = max((b - a for a, b in zip(vals, vals[1:])), default=0)
        if longest > mx:
            fail(who, f"{n} has a sequence of {longest} tokens but {mname}={mx}; pass the true maximum")
        ends.append(vals[-1])
    return ends[0]
