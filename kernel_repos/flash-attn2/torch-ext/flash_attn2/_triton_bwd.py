"""Triton flash-attention backward (dense and varlen), flash_attn 2 style.

Three launches: ``delta = rowsum(dO * O)``; dK/dV with one program per (key block, batch, key head) that walks the
query blocks of every query head in its GQA group (no atomics: each dK/dV row is written by one program); dQ with
one program per (query block, batch, query head) walking the key blocks. Both walks visit only the band of blocks
a query/key can see (causal, windows), split into masked edges and an unmasked middle like the forward.
The probabilities are recomputed from the forward's lse (natural log, -inf for rows that saw no key).
"""

import os

import triton
import triton.language as tl

from ._triton_fwd import INTERPRET, _band, _tanh


@triton.jit
def bwd_delta_kernel(O, DO, DELTA, stride_ob, stride_om, stride_oh, stride_db, stride_dm, stride_dh,
                     stride_lb, stride_lh, CU_Q, seqlen_q_max, n_heads,
                     VARLEN: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_P: tl.constexpr, BLOCK_M: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // n_heads
    h = pid_bh % n_heads
    if VARLEN:
        q_start = tl.load(CU_Q + b)
        seqlen_q = tl.load(CU_Q + b + 1) - q_start
    else:
        q_start = 0
        seqlen_q = seqlen_q_max
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM_P)
    rows = (q_start + offs_m).to(tl.int64)[:, None]
    mask = (offs_m[:, None] < seqlen_q) & (offs_d[None, :] < HEAD_DIM)
    o = tl.load(O + b.to(tl.int64) * stride_ob + h * stride_oh + rows * stride_om + offs_d[None, :], mask=mask,
                other=0.0).to(tl.float32)
    do = tl.load(DO + b.to(tl.int64) * stride_db + h * stride_dh + rows * stride_dm + offs_d[None, :], mask=mask,
                 other=0.0).to(tl.float32)
    tl.store(DELTA + b.to(tl.int64) * stride_lb + h * stride_lh + q_start + offs_m, tl.sum(o * do, 1),
             mask=offs_m < seqlen_q)


@triton.jit
def _scores(q, k, qk_scale, softcap, SOFTCAP: tl.constexpr):
    """Scores in base-2 units (scale folded in), and for softcap the tanh value needed by the chain rule."""
    s = tl.dot(q, tl.trans(k))
    if SOFTCAP:
        t = _tanh(s * qk_scale)
        return softcap * t * 1.4426950408889634, t
    else:
        return s * qk_scale, s


@triton.jit
def _dkdv_blocks(dk, dv, k, v, q_base, do_base, lse_base, delta_base, m_lo, m_hi, offs_n, offs_mb, offs_d,
                 seqlen_q, seqlen_k, stride_qm, stride_dom, qk_scale, softcap, left, right,
                 MASK: tl.constexpr, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, SOFTCAP: tl.constexpr,
                 EVEN_D: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr):
    off = seqlen_k - seqlen_q
    for start_m in range(m_lo, m_hi, BLOCK_M):
        offs_m = start_m + offs_mb
        row_ok = offs_m < seqlen_q
        qmask = row_ok[:, None]
        if not EVEN_D:
            qmask = qmask & (offs_d[None, :] < HEAD_DIM)
        q = tl.load(q_base + offs_m.to(tl.int64)[:, None] * stride_qm + offs_d[None, :], mask=qmask, other=0.0)
        do = tl.load(do_base + offs_m.to(tl.int64)[:, None] * stride_dom + offs_d[None, :], mask=qmask, other=0.0)
        lse = tl.load(lse_base + offs_m, mask=row_ok, other=float("inf"))
        lse = tl.where(lse == float("-inf"), float("inf"), lse) * 1.4426950408889634  # empty rows: p = 0
        delta = tl.load(delta_base + offs_m, mask=row_ok, other=0.0)
        # Transposed (BLOCK_N, BLOCK_M) scores: dV and dK then need no transpose of P / dS in registers.
        qT = tl.trans(q)
        sT = tl.dot(k, qT)
        if SOFTCAP:
            tT = _tanh(sT * qk_scale)
            sT = softcap * tT * 1.4426950408889634
        else:
            sT = sT * qk_scale
        pT = tl.exp2(sT - lse[None, :])
        if MASK:
            ok = row_ok[None, :] & (offs_n[:, None] < seqlen_k)
            if HAS_LEFT:
                ok = ok & (offs_n[:, None] >= offs_m[None, :] + off - left)
            if HAS_RIGHT:
                ok = ok & (offs_n[:, None] <= offs_m[None, :] + off + right)
            pT = tl.where(ok, pT, 0.0)
        dv = tl.dot(pT.to(do.dtype), do, dv)
        dpT = tl.dot(v, tl.trans(do))
        dsT = pT * (dpT - delta[None, :])
        if SOFTCAP:
            dsT = dsT * (1.0 - tT * tT)
        dk = tl.dot(dsT.to(q.dtype), q, dk)
    return dk, dv


@triton.jit
def bwd_dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV, CU_Q, CU_K,
                    stride_qb, stride_qm, stride_qh, stride_kb, stride_kn, stride_kh, stride_vb, stride_vn, stride_vh,
                    stride_dob, stride_dom, stride_doh, stride_dkb, stride_dkn, stride_dkh,
                    stride_dvb, stride_dvn, stride_dvh, stride_lb, stride_lh,
                    seqlen_q_max, seqlen_k_max, n_heads_k, group, scale, qk_scale, softcap, left, right, seq_bucket,
                    VARLEN: tl.constexpr, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, SOFTCAP: tl.constexpr,
                    HEAD_DIM: tl.constexpr, HEAD_DIM_P: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    EVEN_D: tl.constexpr = HEAD_DIM == HEAD_DIM_P
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // n_heads_k
    h_kv = pid_bh % n_heads_k
    if VARLEN:
        q_start = tl.load(CU_Q + b)
        seqlen_q = tl.load(CU_Q + b + 1) - q_start
        k_start = tl.load(CU_K + b)
        seqlen_k = tl.load(CU_K + b + 1) - k_start
    else:
        q_start = 0
        seqlen_q = seqlen_q_max
        k_start = 0
        seqlen_k = seqlen_k_max
    start_n = pid_n * BLOCK_N
    if start_n >= seqlen_k:
        return
    off = seqlen_k - seqlen_q
    b64 = b.to(tl.int64)
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_mb = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM_P)
    kmask = offs_n[:, None] < seqlen_k
    if not EVEN_D:
        kmask = kmask & (offs_d[None, :] < HEAD_DIM)
    rows_k = (k_start + offs_n).to(tl.int64)[:, None]
    k = tl.load(K + b64 * stride_kb + h_kv * stride_kh + rows_k * stride_kn + offs_d[None, :], mask=kmask, other=0.0)
    v = tl.load(V + b64 * stride_vb + h_kv * stride_vh + rows_k * stride_vn + offs_d[None, :], mask=kmask, other=0.0)
    dk = tl.zeros([BLOCK_N, HEAD_DIM_P], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM_P], dtype=tl.float32)

    # Query rows that can see keys [start_n, start_n + BLOCK_N): m in [m_lo, m_hi); [full_lo, full_hi) sees all.
    last_n = start_n + BLOCK_N - 1
    m_lo = 0
    m_hi = seqlen_q
    full_lo = 0
    full_hi = seqlen_q
    if HAS_RIGHT:
        m_lo = tl.maximum(start_n - off - right, 0)
        full_lo = tl.maximum(last_n - off - right, 0)
    if HAS_LEFT:
        m_hi = tl.minimum(last_n - off + left + 1, seqlen_q)
        full_hi = tl.minimum(start_n - off + left + 1, seqlen_q)
    m_lo = (m_lo // BLOCK_M) * BLOCK_M
    m_hi = tl.maximum(m_hi, m_lo)
    full_lo = tl.minimum(tl.maximum(((full_lo + BLOCK_M - 1) // BLOCK_M) * BLOCK_M, m_lo), m_hi)
    full_hi = tl.minimum(tl.maximum((full_hi // BLOCK_M) * BLOCK_M, full_lo), m_hi)
    if start_n + BLOCK_N > seqlen_k:  # ragged last key block: mask everything
        full_lo = m_hi
        full_hi = m_hi

    for g in range(0, group):
        h = h_kv * group + g
        q_base = Q + b64 * stride_qb + h * stride_qh + q_start.to(tl.int64) * stride_qm
        do_base = DO + b64 * stride_dob + h * stride_doh + q_start.to(tl.int64) * stride_dom
        lse_base = LSE + b64 * stride_lb + h * stride_lh + q_start
        delta_base = DELTA + b64 * stride_lb + h * stride_lh + q_start
        dk, dv = _dkdv_blocks(dk, dv, k, v, q_base, do_base, lse_base, delta_base, m_lo, full_lo, offs_n, offs_mb,
                              offs_d, seqlen_q, seqlen_k, stride_qm, stride_dom, qk_scale, softcap, left, right,
                              True, HAS_LEFT, HAS_RIGHT, SOFTCAP, EVEN_D, HEAD_DIM, BLOCK_M)
        dk, dv = _dkdv_blocks(dk, dv, k, v, q_base, do_base, lse_base, delta_base, full_lo, full_hi, offs_n,
                              offs_mb, offs_d, seqlen_q, seqlen_k, stride_qm, stride_dom, qk_scale, softcap, left,
                              right, False, HAS_LEFT, HAS_RIGHT, SOFTCAP, EVEN_D, HEAD_DIM, BLOCK_M)
        dk, dv = _dkdv_blocks(dk, dv, k, v, q_base, do_base, lse_base, delta_base, full_hi, m_hi, offs_n, offs_mb,
                              offs_d, seqlen_q, seqlen_k, stride_qm, stride_dom, qk_scale, softcap, left, right,
                              True, HAS_LEFT, HAS_RIGHT, SOFTCAP, EVEN_D, HEAD_DIM, BLOCK_M)
    tl.store(DK + b64 * stride_dkb + h_kv * stride_dkh + (k_start + offs_n).to(tl.int64)[:, None] * stride_dkn
             + offs_d[None, :], (dk * scale).to(DK.dtype.element_ty), mask=kmask)
    tl.store(DV + b64 * stride_dvb + h_kv * stride_dvh + (k_start + offs_n).to(tl.int64)[:, None] * stride_dvn
             + offs_d[None, :], dv.to(DV.dtype.element_ty), mask=kmask)


@triton.jit
def _dq_blocks(dq, q, do, lse, delta, k_base, v_base, n_lo, n_hi, offs_m, offs_nb, offs_d, seqlen_q, seqlen_k,
               stride_kn, stride_vn, qk_scale, softcap, left, right,
               MASK: tl.constexpr, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, SOFTCAP: tl.constexpr,
               EVEN_D: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr):
    off = seqlen_k - seqlen_q
    for start_n in range(n_lo, n_hi, BLOCK_N):
        offs_n = start_n + offs_nb
        kmask = offs_n[:, None] < seqlen_k
        if not EVEN_D:
            kmask = kmask & (offs_d[None, :] < HEAD_DIM)
        k = tl.load(k_base + offs_n.to(tl.int64)[:, None] * stride_kn + offs_d[None, :], mask=kmask, other=0.0)
        v = tl.load(v_base + offs_n.to(tl.int64)[:, None] * stride_vn + offs_d[None, :], mask=kmask, other=0.0)
        s, t = _scores(q, k, qk_scale, softcap, SOFTCAP)
        p = tl.exp2(s - lse[:, None])
        if MASK:
            ok = offs_n[None, :] < seqlen_k
            if HAS_LEFT:
                ok = ok & (offs_n[None, :] >= offs_m[:, None] + off - left)
            if HAS_RIGHT:
                ok = ok & (offs_n[None, :] <= offs_m[:, None] + off + right)
            p = tl.where(ok, p, 0.0)
        dp = tl.dot(do, tl.trans(v))
        ds = p * (dp - delta[:, None])
        if SOFTCAP:
            ds = ds * (1.0 - t * t)
        dq = tl.dot(ds.to(k.dtype), k, dq)
    return dq


@triton.jit
def bwd_dq_kernel(Q, K, V, DO, LSE, DELTA, DQ, CU_Q, CU_K,
                  stride_qb, stride_qm, stride_qh, stride_kb, stride_kn, stride_kh, stride_vb, stride_vn, stride_vh,
                  stride_dob, stride_dom, stride_doh, stride_dqb, stride_dqm, stride_dqh, stride_lb, stride_lh,
                  seqlen_q_max, seqlen_k_max, n_heads, group, scale, qk_scale, softcap, left, right, seq_bucket,
                  VARLEN: tl.constexpr, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, SOFTCAP: tl.constexpr,
                  HEAD_DIM: tl.constexpr, HEAD_DIM_P: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    EVEN_D: tl.constexpr = HEAD_DIM == HEAD_DIM_P
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // n_heads
    h = pid_bh % n_heads
    h_kv = h // group
    if VARLEN:
        q_start = tl.load(CU_Q + b)
        seqlen_q = tl.load(CU_Q + b + 1) - q_start
        k_start = tl.load(CU_K + b)
        seqlen_k = tl.load(CU_K + b + 1) - k_start
    else:
        q_start = 0
        seqlen_q = seqlen_q_max
        k_start = 0
        seqlen_k = seqlen_k_max
    start_m = pid_m * BLOCK_M
    if start_m >= seqlen_q:
        return
    b64 = b.to(tl.int64)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_nb = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM_P)
    row_ok = offs_m < seqlen_q
    qmask = row_ok[:, None]
    if not EVEN_D:
        qmask = qmask & (offs_d[None, :] < HEAD_DIM)
    rows = (q_start + offs_m).to(tl.int64)[:, None]
    q = tl.load(Q + b64 * stride_qb + h * stride_qh + rows * stride_qm + offs_d[None, :], mask=qmask, other=0.0)
    do = tl.load(DO + b64 * stride_dob + h * stride_doh + rows * stride_dom + offs_d[None, :], mask=qmask,
                 other=0.0)
    lse = tl.load(LSE + b64 * stride_lb + h * stride_lh + q_start + offs_m, mask=row_ok, other=float("inf"))
    lse = tl.where(lse == float("-inf"), float("inf"), lse) * 1.4426950408889634
    delta = tl.load(DELTA + b64 * stride_lb + h * stride_lh + q_start + offs_m, mask=row_ok, other=0.0)
    k_base = K + b64 * stride_kb + h_kv * stride_kh + k_start.to(tl.int64) * stride_kn
    v_base = V + b64 * stride_vb + h_kv * stride_vh + k_start.to(tl.int64) * stride_vn
    dq = tl.zeros([BLOCK_M, HEAD_DIM_P], dtype=tl.float32)
    lo, full_lo, full_hi, hi = _band(start_m, seqlen_q, seqlen_k, left, right, HAS_LEFT, HAS_RIGHT,
                                     BLOCK_M, BLOCK_N)
    dq = _dq_blocks(dq, q, do, lse, delta, k_base, v_base, lo, full_lo, offs_m, offs_nb, offs_d, seqlen_q, seqlen_k,
                    stride_kn, stride_vn, qk_scale, softcap, left, right, True, HAS_LEFT, HAS_RIGHT, SOFTCAP, EVEN_D,
                    HEAD_DIM, BLOCK_N)
    dq = _dq_blocks(dq, q, do, lse, delta, k_base, v_base, full_lo, full_hi, offs_m, offs_nb, offs_d, seqlen_q,
                    seqlen_k, stride_kn, stride_vn, qk_scale, softcap, left, right, False, HAS_LEFT, HAS_RIGHT,
                    SOFTCAP, EVEN_D, HEAD_DIM, BLOCK_N)
    dq = _dq_blocks(dq, q, do, lse, delta, k_base, v_base, full_hi, hi, offs_m, offs_nb, offs_d, seqlen_q, seqlen_k,
                    stride_kn, stride_vn, qk_scale, softcap, left, right, True, HAS_LEFT, HAS_RIGHT, SOFTCAP, EVEN_D,
                    HEAD_DIM, BLOCK_N)
    tl.store(DQ + b64 * stride_dqb + h * stride_dqh + (q_start + offs_m).to(tl.int64)[:, None] * stride_dqm
             + offs_d[None, :], (dq * scale).to(DQ.dtype.element_ty), mask=qmask)


_KEY = ["HEAD_DIM", "VARLEN", "HAS_LEFT", "HAS_RIGHT", "SOFTCAP", "seq_bucket"]


def _configs(kind: str, big_d: bool):
    if INTERPRET:
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 32}, num_warps=4, num_stages=1)]
    if big_d:  # head dim 256: small tiles, single-buffered
        configs = [triton.Config({"BLOCK_M": 32, "BLOCK_N": 64}, num_warps=8, num_stages=1),
                   triton.Config({"BLOCK_M": 64, "BLOCK_N": 32}, num_warps=8, num_stages=1)]
        if kind == "dq":
            configs.reverse()
    elif kind == "dkdv":  # the key block stays resident; query blocks stream through
        configs = [triton.Config({"BLOCK_M": 64, "BLOCK_N": 128}, num_warps=8, num_stages=2),
                   triton.Config({"BLOCK_M": 64, "BLOCK_N": 128}, num_warps=8, num_stages=3),
                   triton.Config({"BLOCK_M": 32, "BLOCK_N": 128}, num_warps=4, num_stages=3),
                   triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=3)]
    else:
        configs = [triton.Config({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=8, num_stages=2),
                   triton.Config({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=8, num_stages=3),
                   triton.Config({"BLOCK_M": 128, "BLOCK_N": 32}, num_warps=4, num_stages=3),
                   triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=3)]
    if os.environ.get("FLASH_ATTN_TRITON_AUTOTUNE", "1") == "0":
        return configs[:1]
    return configs


_tuned = {}


def tuned(kind: str, head_dim: int):
    """Autotuned dK/dV ("dkdv") or dQ ("dq") kernel for head dims up to 128, or 256."""
    key = (kind, head_dim > 128)
    if key not in _tuned:
        fn = bwd_dkdv_kernel if kind == "dkdv" else bwd_dq_kernel
        _tuned[key] = triton.autotune(configs=_configs(*key), key=_KEY)(fn)
    return _tuned[key]
