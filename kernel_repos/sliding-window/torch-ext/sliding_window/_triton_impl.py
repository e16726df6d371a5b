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


# ------------------------------------------------------------------------------------------------- ring decode

@triton.jit(do_not_specialize=["N", "PART", "G", "n_gchunks"])
def _ring_decode_partial(
    Q, K, V, OUT, M_OUT, L_OUT, ACC_OUT, sm_scale_log2, softcap, N, PART, G, n_gchunks, D, direct,
    sqb, sqh, skb, sks, skh, svb, svs, svh, sob, soh, smb, smh, sab, sah, sap,
    G_PAD: tl.constexpr, D_PAD: tl.constexpr, TILE: tl.constexpr, SOFTCAP: tl.constexpr,
):
    """One query token per sequence against the first N slots of its ring cache (slot order: attention does not
    depend on it). One program per (sequence, KV head x query-head chunk, partition of the slots); partials (max
    logit in the log2 domain, exp sum, normalised output) merged by _ring_decode_reduce unless ``direct``."""
    b = tl.program_id(0)
    kvh = tl.program_id(1) // n_gchunks
    chunk = tl.program_id(1) % n_gchunks
    p = tl.program_id(2)
    start = p * PART
    end = tl.minimum(start + PART, N)
    offs_g = chunk * G_PAD + tl.arange(0, G_PAD)
    mask_g = offs_g < G
    heads = kvh * G + offs_g
    offs_d = tl.arange(0, D_PAD)
    mask_d = offs_d < D
    q = tl.load(Q + b.to(tl.int64) * sqb + heads[:, None] * sqh + offs_d[None, :],
                mask=mask_g[:, None] & mask_d[None, :], other=0.0)
    m_i = tl.full([G_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([G_PAD], tl.float32)
    acc = tl.zeros([G_PAD, D_PAD], tl.float32)
    for t0 in range(start, end, TILE):
        offs_t = t0 + tl.arange(0, TILE)
        mask_t = offs_t < end
        mask = mask_t[:, None] & mask_d[None, :]
        k = tl.load(K + b.to(tl.int64) * skb + kvh * skh + offs_t[:, None].to(tl.int64) * sks + offs_d[None, :],
                    mask=mask, other=0.0)
        v = tl.load(V + b.to(tl.int64) * svb + kvh * svh + offs_t[:, None].to(tl.int64) * svs + offs_d[None, :],
                    mask=mask, other=0.0)
        s = tl.dot(q, tl.trans(k))
        if SOFTCAP:
            s = s * (sm_scale_log2 / 1.4426950408889634) / softcap
            s = softcap * (2.0 * tl.sigmoid(2.0 * s) - 1.0) * 1.4426950408889634  # softcap * tanh, log2 domain
        else:
            s = s * sm_scale_log2
        s = tl.where(mask_t[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        pr = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(pr, 1)
        acc = acc * alpha[:, None] + tl.dot(pr.to(v.dtype), v)
        m_i = m_new
    res = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    if direct != 0:
        tl.store(OUT + b.to(tl.int64) * sob + heads[:, None] * soh + offs_d[None, :], res.to(OUT.dtype.element_ty),
                 mask=mask_g[:, None] & mask_d[None, :])
    else:
        row = b.to(tl.int64) * smb + heads * smh + p
        tl.store(M_OUT + row, m_i, mask=mask_g)
        tl.store(L_OUT + row, l_i, mask=mask_g)
        tl.store(ACC_OUT + b.to(tl.int64) * sab + heads[:, None] * sah + p * sap + offs_d[None, :], res,
                 mask=mask_g[:, None] & mask_d[None, :])


@triton.jit(do_not_specialize=["nparts"])
def _ring_decode_reduce(
    OUT, M_IN, L_IN, ACC_IN, nparts, D, sob, soh, smb, smh, sab, sah, sap,
    D_PAD: tl.constexpr, P_BLOCK: tl.constexpr,
):
    """Merge the partitions of one (sequence, head), P_BLOCK at a time."""
    b = tl.program_id(0)
    h = tl.program_id(1)
    row = b.to(tl.int64) * smb + h * smh
    offs_p = tl.arange(0, P_BLOCK)
    big_m = tl.max(tl.full([P_BLOCK], float("-inf"), tl.float32), 0)
    for p0 in range(0, nparts, P_BLOCK):
        m = tl.load(M_IN + row + p0 + offs_p, mask=p0 + offs_p < nparts, other=float("-inf"))
        big_m = tl.maximum(big_m, tl.max(m, 0))
    big_m = tl.where(big_m > float("-inf"), big_m, 0.0)
    offs_d = tl.arange(0, D_PAD)
    mask_d = offs_d < D
    denom = tl.sum(tl.zeros([P_BLOCK], tl.float32), 0)
    acc = tl.zeros([D_PAD], tl.float32)
    for p0 in range(0, nparts, P_BLOCK):
        mask_p = p0 + offs_p < nparts
        m = tl.load(M_IN + row + p0 + offs_p, mask=mask_p, other=float("-inf"))
        l = tl.load(L_IN + row + p0 + offs_p, mask=mask_p, other=0.0)
        w = tl.where(mask_p, l * tl.exp2(m - big_m), 0.0)
        denom += tl.sum(w, 0)
        part = tl.load(ACC_IN + b.to(tl.int64) * sab + h * sah + (p0 + offs_p)[:, None] * sap + offs_d[None, :],
                       mask=mask_p[:, None] & mask_d[None, :], other=0.0)
        acc += tl.sum(part * w[:, None], 0)
    res = acc / tl.where(denom > 0, denom, 1.0)
    tl.store(OUT + b.to(tl.int64) * sob + h * soh + offs_d, res.to(OUT.dtype.element_ty), mask=mask_d)


def ring_decode(q, k, v, filled: int, scale: float, softcap: float) -> torch.Tensor:
    """q [B, 1, Hq, D] against the first ``filled`` slots of k/v [B, W, Hk, D]; returns [B, 1, Hq, D]."""
    from . import _decode_plan

    b, _, hq, d = q.shape
    hk = k.shape[2]
    plan = _decode_plan.plan_ring_decode(b, hq, hk, d, filled, q.device)
    out = torch.empty_like(q)
    if plan.direct:
        m = l = acc = out
    else:
        m = torch.empty(b, hq, plan.nparts, device=q.device, dtype=torch.float32)
        l = torch.empty_like(m)
        acc = torch.empty(b, hq, plan.nparts, d, device=q.device, dtype=torch.float32)
    sm = (m.stride(0), m.stride(1)) if not plan.direct else (0, 0)
    sa = (acc.stride(0), acc.stride(1), acc.stride(2)) if not plan.direct else (0, 0, 0)
    _ring_decode_partial[(b, hk * plan.n_gchunks, plan.nparts)](
        q, k, v, out, m, l, acc, scale * 1.4426950408889634, float(softcap), filled, plan.part, hq // hk,
        plan.n_gchunks, d, int(plan.direct), q.stride(0), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(2), *sm, *sa,
        G_PAD=16, D_PAD=plan.d_pad, TILE=plan.tile, SOFTCAP=softcap > 0, num_warps=4, num_stages=2)
    if not plan.direct:
        _ring_decode_reduce[(b, hq)](out, m, l, acc, plan.nparts, d, out.stride(0), out.stride(2), *sm, *sa,
                                     D_PAD=plan.d_pad, P_BLOCK=16, num_warps=4)
    return out
