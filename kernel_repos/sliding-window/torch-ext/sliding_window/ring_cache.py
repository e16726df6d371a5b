"""Decode against a rolling (ring-buffer) KV cache: the cache holds the last ``window`` tokens of every sequence
in a fixed [batch, window, kv_heads, head_dim] buffer, so memory stays O(W) however long generation runs.

Attention is order-free once positions are in the keys (RoPE is applied before caching), so the ring is read in
slot order; a query sees exactly the last ``window`` tokens including its own (transformers' ``sliding_window``
semantics: key j is visible from query i when i - window < j <= i).

CUDA (fp16/bf16, head sizes that are multiples of 16): a split-K decode kernel over the filled slots (GQA-grouped,
softcap), precompiled in the stable-ABI variants, Triton JIT in torch-cuda; otherwise torch ops.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import _aot_dispatch


def _use_triton(q: torch.Tensor, head_dim: int) -> bool:
    if head_dim % 16 or not 32 <= head_dim <= 256:
        return False
    try:
        from . import _triton_impl  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass
class RingKVCache:
    k: torch.Tensor  # [batch, window, kv_heads, head_dim]
    v: torch.Tensor
    length: int = 0  # tokens appended so far (every sequence of the batch advances together)

    @classmethod
    def allocate(cls, batch: int, window: int, num_kv_heads: int, head_dim: int, *, dtype=torch.bfloat16,
                 device=None) -> "RingKVCache":
        if min(batch, window, num_kv_heads, head_dim) < 1:
            raise ValueError(f"RingKVCache.allocate: batch, window, num_kv_heads, head_dim must be >= 1, got "
                             f"{(batch, window, num_kv_heads, head_dim)}")
        shape = (batch, window, num_kv_heads, head_dim)
        return cls(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))

    @property
    def window(self) -> int:
        return self.k.shape[1]

    @property
    def filled(self) -> int:
        return min(self.length, self.window)

    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2


def ring_cache_append(cache: RingKVCache, k_new: torch.Tensor, v_new: torch.Tensor) -> None:
    """Append [batch, T, kv_heads, head_dim] tokens; token t goes to slot (length + t) % window (only the last
    ``window`` of them can survive, so only those are written)."""
    b, w, hk, d = cache.k.shape
    if k_new.dim() != 4 or k_new.shape != v_new.shape or (k_new.shape[0], k_new.shape[2], k_new.shape[3]) != (b, hk, d):
        raise ValueError(f"ring_cache_append: k/v must be [batch={b}, T, kv_heads={hk}, head_dim={d}], got "
                         f"{tuple(k_new.shape)} and {tuple(v_new.shape)}")
    if k_new.dtype != cache.k.dtype or k_new.device != cache.k.device:
        raise ValueError(f"ring_cache_append: k/v are {k_new.dtype} on {k_new.device}; the cache is "
                         f"{cache.k.dtype} on {cache.k.device}")
    t = k_new.shape[1]
    keep = min(t, w)
    slots = (cache.length + t - keep + torch.arange(keep, device=cache.k.device)) % w
    cache.k.index_copy_(1, slots, k_new[:, t - keep:])
    cache.v.index_copy_(1, slots, v_new[:, t - keep:])
    cache.length += t


def sliding_window_decode(q: torch.Tensor, cache: RingKVCache, *, softmax_scale: float | None = None,
                          softcap: float = 0.0) -> torch.Tensor:
    """One new query token per sequence, q [batch, 1, heads, head_dim] (flash layout), after its own K/V were
    appended; returns [batch, 1, heads, head_dim]. GQA when heads is a multiple of the cache's kv_heads."""
    b, w, hk, d = cache.k.shape
    if q.dim() != 4 or q.shape[0] != b or q.shape[1] != 1 or q.shape[3] != d or q.shape[2] % hk:
        raise ValueError(f"sliding_window_decode: q must be [batch={b}, 1, heads (multiple of {hk}), "
                         f"head_dim={d}], got {tuple(q.shape)}")
    if q.dtype != cache.k.dtype or q.device != cache.k.device:
        raise ValueError(f"sliding_window_decode: q is {q.dtype} on {q.device}; the cache is {cache.k.dtype} on "
                         f"{cache.k.device}")
    if cache.length == 0:
        raise ValueError("sliding_window_decode: the cache is empty; append the token's K/V first")
    n = cache.filled
    scale = d ** -0.5 if softmax_scale is None else softmax_scale
    if q.device.type == "cuda" and q.dtype != torch.float32 and cache.k.stride(-1) == 1 and cache.v.stride(-1) == 1:
        q = q if q.stride(-1) == 1 else q.contiguous()  # the kernels read head_dim rows
        tbl = _aot_dispatch.table()  # precompiled variants: a cubin for this GPU and head size, else the next path
        if tbl is not None and tbl.covers(q.device):
            out = _aot_dispatch.ring_decode(tbl, q, cache.k, cache.v, n, float(scale), float(softcap or 0.0))
            if out is not None:
                return out
        if _use_triton(q, d):
            from . import _triton_impl

            return _triton_impl.ring_decode(q, cache.k, cache.v, n, float(scale), float(softcap or 0.0))
    qh = q.transpose(1, 2)  # [b, h, 1, d]
    kh, vh = cache.k[:, :n].transpose(1, 2), cache.v[:, :n].transpose(1, 2)
    if softcap > 0:
        g = q.shape[2] // hk
        s = torch.matmul(qh.float(), kh.repeat_interleave(g, 1).float().transpose(-1, -2)) * scale
        s = softcap * torch.tanh(s / softcap)
        out = torch.matmul(torch.softmax(s, -1), vh.repeat_interleave(g, 1).float()).to(q.dtype)
    else:
        out = F.scaled_dot_product_attention(qh, kh, vh, scale=scale, enable_gqa=q.shape[2] != hk)
    return out.transpose(1, 2)
