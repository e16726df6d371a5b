"""Host side of the Triton kernels: allocate outputs, pick flags and grids, launch.

Inputs arrive validated (see _checks.py). Layouts: dense (B, S, H, D), varlen (total, H, D) with int32
cu_seqlens, kv cache (B, S_cache, Hk, D) or paged (num_pages, page_size, Hk, D) + int32 block_table.
"""

import torch
import triton

from . import _triton_bwd as bwd
from . import _triton_fwd as fwd
from ._aot_keys import SHORT_Q

_allocator_set = False


def _ensure_allocator():
    """Device-side tensor descriptors need global scratch; Triton asks for it through this hook."""
    global _allocator_set
    if not _allocator_set:
        def alloc(size: int, alignment: int, stream):
            return torch.empty(size, device="cuda", dtype=torch.int8)

        triton.set_allocator(alloc)
        _allocator_set = True


def _bucket(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _window_flags(causal, window):
    left, right = int(window[0]), int(window[1])
    if causal:
        right = 0
    return left, right, left >= 0, right >= 0


def _head_dim_p(d: int) -> int:
    return max(16, triton.next_power_of_2(d))


def _tma_ok(*tensors) -> bool:
    """TMA needs 16-byte aligned base addresses and strides (all but the last, which must be 1)."""
    for t in tensors:
        if t.data_ptr() % 16 or any((s * t.element_size()) % 16 for s in t.stride()[:-1]) or t.stride(-1) != 1:
            return False
    return True


def forward(q, k, v, *, scale, causal, window, softcap, cu_q=None, cu_k=None, max_q=None, max_k=None,
            seqused_k=None, block_table=None, use_tma=False, hopper_tiles=False):
    """-> out (like q), lse float32: dense (B, H, Sq), varlen (H, total_q)."""
    varlen = cu_q is not None
    paged = block_table is not None
    d = q.shape[-1]
    left, right, has_left, has_right = _window_flags(causal, window)
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    if varlen:
        total_q, hq = q.shape[0], q.shape[1]
        batch = cu_q.shape[0] - 1
        hk = k.shape[1]
        lse = torch.empty((hq, total_q), device=q.device, dtype=torch.float32)
        sq_, sk_ = int(max_q), int(max_k)
        qs = (0, q.stride(0), q.stride(1))
        ks = (0, k.stride(0), k.stride(1))
        vs = (0, v.stride(0), v.stride(1))
        os_ = (0, out.stride(0), out.stride(1))
        ls = (0, lse.stride(0))
    else:
        batch, sq_, hq = q.shape[0], q.shape[1], q.shape[2]
        hk = k.shape[2]
        sk_ = k.shape[1] if not paged else block_table.shape[1] * k.shape[1]
        lse = torch.empty((batch, hq, sq_), device=q.device, dtype=torch.float32)
        qs = (q.stride(0), q.stride(1), q.stride(2))
        ks = (k.stride(0), k.stride(1), k.stride(2))
        vs = (v.stride(0), v.stride(1), v.stride(2))
        os_ = (out.stride(0), out.stride(1), out.stride(2))
        ls = (lse.stride(0), lse.stride(1))
    if out.numel() == 0:
        return out, lse.fill_(float("-inf"))
    pack = sq_ <= SHORT_Q  # decode-like: the query heads of a KV head share one tile (see attn_fwd_kernel)
    use_tma = bool(use_tma and not pack and not varlen and not paged and seqused_k is None and _tma_ok(q, k, v))
    if use_tma:
        _ensure_allocator()
    dummy = cu_q if varlen else lse  # never read when its flag is off
    page = k.shape[1] if paged else 1
    kernel = fwd.tuned_kernel(hopper_tiles, d)
    softcap = float(softcap)

    def grid(meta):
        if pack:
            return (triton.cdiv(sq_ * (hq // hk), meta["BLOCK_M"]), batch * hk)
        return (triton.cdiv(sq_, meta["BLOCK_M"]), batch * hq)

    kernel[grid](
        q, k, v, out, lse,
        cu_q if varlen else dummy, cu_k if varlen else dummy,
        seqused_k if seqused_k is not None else dummy, block_table if paged else dummy,
        *qs, *ks, *vs, *os_, *ls,
        block_table.stride(0) if paged else 0, k.stride(0) if paged else 0, v.stride(0) if paged else 0,
        sq_, sk_, hq, hq // hk, batch,
        (softcap and 1.0 / softcap * scale) or scale * fwd.LOG2E, softcap, left, right, _bucket(sk_), page,
        VARLEN=varlen, SEQUSED=seqused_k is not None, PAGED=paged, PAGE=page,
        HAS_LEFT=has_left, HAS_RIGHT=has_right, SOFTCAP=softcap > 0, USE_TMA=use_tma,
        HEAD_DIM=d, HEAD_DIM_P=_head_dim_p(d), PACK_GQA=pack,
    )
    return out, lse


def backward(dout, q, k, v, out, lse, *, scale, causal, window, softcap, cu_q=None, cu_k=None, max_q=None,
             max_k=None, dlse=None):
    """-> dq, dk, dv (like q, k, v). ``dlse``: gradient of the returned lse (d lse / d s = p folds into delta)."""
    varlen = cu_q is not None
    d = q.shape[-1]
    left, right, has_left, has_right = _window_flags(causal, window)
    if dout.stride(-1) != 1:
        dout = dout.contiguous()
    alloc = torch.zeros_like if varlen else torch.empty_like  # varlen: packed rows after the last sequence stay 0
    dq, dk, dv = (alloc(t, memory_format=torch.contiguous_format) for t in (q, k, v))
    delta = torch.empty_like(lse)
    if varlen:
        batch = cu_q.shape[0] - 1
        hq, hk = q.shape[1], k.shape[1]
        sq_, sk_ = int(max_q), int(max_k)

        def st(t):
            return (0, t.stride(0), t.stride(1))
        ls = (0, lse.stride(0))
    else:
        batch, sq_, hq = q.shape[0], q.shape[1], q.shape[2]
        sk_, hk = k.shape[1], k.shape[2]

        def st(t):
            return (t.stride(0), t.stride(1), t.stride(2))
        ls = (lse.stride(0), lse.stride(1))
    if q.numel() == 0 or k.numel() == 0:
        return dq.zero_(), dk.zero_(), dv.zero_()
    hdp = _head_dim_p(d)
    dummy = cu_q if varlen else lse
    block_m = 64
    bwd.bwd_delta_kernel[(triton.cdiv(sq_, block_m), batch * hq)](
        out, dout, delta, *st(out), *st(dout), *ls, dummy, sq_, hq,
        VARLEN=varlen, HEAD_DIM=d, HEAD_DIM_P=hdp, BLOCK_M=block_m)
    if dlse is not None:
        delta.sub_(dlse.float().masked_fill(lse == float("-inf"), 0.0))
    softcap = float(softcap)
    qk_scale = (softcap and scale / softcap) or scale * fwd.LOG2E
    flags = dict(VARLEN=varlen, HAS_LEFT=has_left, HAS_RIGHT=has_right, SOFTCAP=softcap > 0, HEAD_DIM=d,
                 HEAD_DIM_P=hdp)
    bwd.tuned("dkdv", d)[lambda m: (triton.cdiv(sk_, m["BLOCK_N"]), batch * hk)](
        q, k, v, dout, lse, delta, dk, dv, dummy if not varlen else cu_q, dummy if not varlen else cu_k,
        *st(q), *st(k), *st(v), *st(dout), *st(dk), *st(dv), *ls,
        sq_, sk_, hk, hq // hk, scale, qk_scale, softcap, left, right, _bucket(sk_), **flags)
    bwd.tuned("dq", d)[lambda m: (triton.cdiv(sq_, m["BLOCK_M"]), batch * hq)](
        q, k, v, dout, lse, delta, dq, dummy if not varlen else cu_q, dummy if not varlen else cu_k,
        *st(q), *st(k), *st(v), *st(dout), *st(dq), *ls,
        sq_, sk_, hq, hq // hk, scale, qk_scale, softcap, left, right, _bucket(sk_), **flags)
    return dq, dk, dv


def flops(b, h, sq, sk, d, causal=False, window=(-1, -1)) -> float:
    """Forward FLOPs, 4*b*h*d times the exact count of visible (query, key) pairs (bottom-right alignment)."""
    left, right = window
    if causal:
        right = 0
    pairs = 0
    off = sk - sq
    if left < 0 and right < 0:
        pairs = sq * sk
    else:
        for i in range(sq):
            lo = 0 if left < 0 else max(0, i + off - left)
            hi = sk - 1 if right < 0 else min(sk - 1, i + off + right)
            pairs += max(0, hi - lo + 1)
    return 4.0 * b * h * d * pairs

