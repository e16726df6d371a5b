"""Sliding-window prefill in flash layout: q (B, Sq, Hq, D), k/v (B, Sk, Hk, D), bottom-right aligned."""

from __future__ import annotations

import torch

from . import _aot_dispatch, _torch_impl
from ._window import normalize_window

DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _use_triton(q: torch.Tensor) -> bool:
    if q.device.type != "cuda" or q.dtype == torch.float32:
        return False
    try:
        from . import _triton_impl  # noqa: F401
    except ImportError:
        return False
    return True


def sliding_window_attn_func(q, k, v, window_size=-1, causal: bool = True, softmax_scale: float | None = None,
                             softcap: float = 0.0) -> torch.Tensor:
    """Attention where query i (at key position i + Sk - Sq) sees keys j with i - left <= j <= i + right.
    ``window_size``: int W (W keys ending at the query, transformers' ``sliding_window``), a flash-attn
    (left, right) pair, or -1 for no window. Cost grows with S * W: key blocks outside every row's window are
    never loaded. GQA/MQA when Hq is a multiple of Hk; ``softcap`` > 0 applies softcap * tanh(s / softcap)."""
    if isinstance(window_size, int) and not isinstance(window_size, bool) and window_size == -1:
        window_size = (-1, -1)
    left, right = normalize_window(window_size, causal)
    _check(q, k, v)
    scale = q.shape[-1] ** -0.5 if softmax_scale is None else float(softmax_scale)
    if q.shape[1] == 0 or k.shape[1] == 0:
        return torch.zeros_like(q)
    if q.device.type == "cuda" and q.dtype != torch.float32:
        tbl = _aot_dispatch.table()  # precompiled variants: cubins for this GPU and head dim, else the torch path
        if tbl is not None and tbl.covers(q.device):
            out = _aot_dispatch.prefill(tbl, q, k, v, scale, left, right, float(softcap or 0.0))
            if out is not None:
                return out
    if _use_triton(q):
        from . import _triton_impl

        return _triton_impl.prefill(q, k, v, scale, left, right, float(softcap or 0.0))
    return _torch_impl.prefill(q, k, v, scale, left, right, float(softcap or 0.0))


def flash_attn_func(q, k, v, dropout_p: float = 0.0, softmax_scale: float | None = None, causal: bool = False,
                    window_size=(-1, -1), softcap: float = 0.0, alibi_slopes=None, deterministic: bool = False,
                    return_attn_probs: bool = False):
    """flash_attn's signature on top of :func:`sliding_window_attn_func` (what kernel_loader's adapter calls)."""
    if dropout_p:
        raise NotImplementedError("sliding-window: dropout_p > 0 is not supported")
    if alibi_slopes is not None or return_attn_probs:
        raise NotImplementedError("sliding-window: alibi_slopes and return_attn_probs are not supported")
    return sliding_window_attn_func(q, k, v, window_size=tuple(window_size), causal=causal,
                                    softmax_scale=softmax_scale, softcap=softcap)


def _check(q, k, v) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.shape != k.shape:
        raise ValueError(f"sliding_window_attn_func: q (B, Sq, Hq, D) and k, v (B, Sk, Hk, D) expected; got q "
                         f"{tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3] or q.shape[2] % k.shape[2]:
        raise ValueError(f"sliding_window_attn_func: batch and head_dim must match and Hq a multiple of Hk; got q "
                         f"{tuple(q.shape)}, k {tuple(k.shape)}")
    if q.dtype not in DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"sliding_window_attn_func: q/k/v dtypes {q.dtype}/{k.dtype}/{v.dtype}; all must be one of "
                         "float16, bfloat16, float32")
    if q.device != k.device or q.device != v.device:
        raise ValueError("sliding_window_attn_func: q, k, v must be on one device")
    if q.shape[-1] > 256 or q.stride(-1) != 1 or k.stride(-1) != 1 or v.stride(-1) != 1:
        raise ValueError("sliding_window_attn_func: head_dim <= 256 with a contiguous last dimension")
