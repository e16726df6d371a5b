"""Triton windowed flash-attention forward (CUDA). One program per (query block, batch x head); its key loop
runs only over [lo, hi), the keys its rows' windows reach, so the cost is O(S * (W + BLOCK_M)).

The GQA group size ``G`` is a run-time argument (one kernel serves every head ratio; the precompiled variants
compile one cubin per head dim, dtype and softcap flag, see _aot_keys.py)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _window_fwd(
    Q, K, V, O, sm_scale_log2, softcap,
    sqb, sqs, sqh, skb, sks, skh, svb, svs, svh, sob, sos, soh,
    SQ, SK, HQ, LEFT, RIGHT, G,
    D: tl.constexpr, D_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, SOFTCAP: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // HQ
    h = bh % HQ
    kvh = h // G
    off = SK - SQ
    m0 = pid_m * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D_PAD)
    mask_d = offs_d < D
    mask_m = offs_m < SQ
    q = tl.load(Q + b.to(tl.int64) * sqb + h * sqh + offs_m[:, None].to(tl.int64) * sqs + offs_d[None, :],
                mask=mask_m[:, None] & mask_d[None, :], other=0.0)
    lo = 0
    if HAS_LEFT:
        lo = tl.maximum(0, m0 + off - LEFT)
        lo = (lo // BLOCK_N) * BLOCK_N
    hi = SK
    if HAS_RIGHT:
        hi = tl.minimum(SK, m0 + BLOCK_M - 1 + off + RIGHT + 1)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D_PAD], tl.float32)
    row = offs_m + off
    for n0 in range(lo, hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < SK
        k = tl.load(K + b.to(tl.int64) * skb + kvh * skh + offs_n[:, None].to(tl.int64) * sks + offs_d[None, :],
                    mask=mask_n[:, None] & mask_d[None, :], other=0.0)
        v = tl.load(V + b.to(tl.int64) * svb + kvh * svh + offs_n[:, None].to(tl.int64) * svs + offs_d[None, :],
                    mask=mask_n[:, None] & mask_d[None, :], other=0.0)
        s = tl.dot(q, tl.trans(k))
        if SOFTCAP:
            s = s * (sm_scale_log2 / 1.4426950408889634) / softcap
            s = softcap * (2.0 * tl.sigmoid(2.0 * s) - 1.0) * 1.4426950408889634  # softcap * tanh, log2 domain
        else:
            s = s * sm_scale_log2
        allowed = mask_n[None, :]
        if HAS_LEFT:
            allowed = allowed & (offs_n[None, :] >= row[:, None] - LEFT)
        if HAS_RIGHT:
            allowed = allowed & (offs_n[None, :] <= row[:, None] + RIGHT)
        s = tl.where(allowed, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_use = tl.where(m_new > float("-inf"), m_new, 0.0)
        alpha = tl.exp2(m_i - m_use)
        p = tl.exp2(s - m_use[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    res = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    tl.store(O + b.to(tl.int64) * sob + h * soh + offs_m[:, None].to(tl.int64) * sos + offs_d[None, :],
             res.to(O.dtype.element_ty), mask=mask_m[:, None] & mask_d[None, :])


def prefill(q, k, v, scale: float, left: int, right: int, softcap: float) -> torch.Tensor:
    b, sq, hq, d = q.shape
    sk, hk = k.shape[1], k.shape[2]
    out = torch.empty(b, sq, hq, d, dtype=q.dtype, device=q.device)
    d_pad = triton.next_power_of_2(d)
    block_m = 128 if d_pad <= 128 else 64
    block_n = 64
    grid = (triton.cdiv(sq, block_m), b * hq)
    _window_fwd[grid](
        q, k, v, out, scale * 1.4426950408889634, float(softcap),
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2),
        sq, sk, hq, max(left, 0), max(right, 0), hq // hk,
        D=d, D_PAD=d_pad, BLOCK_M=block_m, BLOCK_N=block_n,
        HAS_LEFT=left >= 0, HAS_RIGHT=right >= 0, SOFTCAP=softcap > 0,
        num_warps=8 if block_m == 128 else 4, num_stages=3,
    )
    return out
