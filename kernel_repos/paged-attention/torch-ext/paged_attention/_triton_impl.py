"""Triton decode for CUDA: GQA-grouped, split-K over the context.

One program per (sequence, KV head, context partition) loads the G query heads that share the KV head (padded to
16 rows for tensor-core dots), then walks the partition in tiles of TILE tokens, gathering each token's page from
the block table. Every K/V byte of a partition is read once for all G heads. Partial results (max logit, exp sum,
normalised output) are merged by a second small kernel; with one partition the first kernel writes ``out``
directly. Both cache layouts go through the same kernel: element (token t, dim d) of a page is at
``t * stride_t + (d // X) * stride_x + d % X`` (vLLM K: X = 16 bytes / element; flash: X = the padded head size,
so d // X = 0). ``_write_slots`` is reshape_and_cache[_flash]: one program per (token, KV head), padding slots
skipped on the device (no host sync), fp8 rounding in integer ops.

With CHECK (validation mode "device", the default on CUDA) the kernels validate indices themselves instead of the
host reading them (a sync per call): seq_lens are clamped to what the block table and max_seq_len cover, block ids
outside [0, num_blocks) are replaced by block 0 (so nothing outside the cache is ever read), the affected
sequence's output is NaN, and the first offender is reported through ``_device_check`` (raised lazily).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _device_check, _plan

LOG2E = 1.4426950408889634


# Run-time values (one compile for all of them): lengths, the partition size, the page size of the flash layout,
# the GQA group, the head size (a multiple of 16 on the precompiled path), ALiBi on/off and direct/split output.
@triton.jit(do_not_specialize=["num_blocks", "cap_len", "PART", "page_size", "G", "n_gchunks"])
def _decode_partial(
    Q, K, V, BT, SL, SLOPES, OUT, M_OUT, L_OUT, ACC_OUT, ERR, REP,
    qk_scale, v_scale, num_blocks, cap_len, PART, page_size, G, n_gchunks, D, has_alibi, direct,
    stride_qs, stride_qh,
    stride_kb, stride_kh, stride_kt, stride_kx,
    stride_vb, stride_vh, stride_vt, stride_vd,
    stride_bts,
    stride_os, stride_oh,
    stride_ms, stride_mh,
    stride_as, stride_ah, stride_ap,
    G_PAD: tl.constexpr, D_PAD: tl.constexpr, X: tl.constexpr, PS: tl.constexpr, FIXED_PAGE: tl.constexpr,
    TILE: tl.constexpr, FP8: tl.constexpr, CHECK: tl.constexpr,
):
    s = tl.program_id(0)
    kvh = tl.program_id(1) // n_gchunks
    chunk = tl.program_id(1) % n_gchunks
    p = tl.program_id(2)
    seq_len = tl.load(SL + s).to(tl.int32)
    if CHECK:  # cap_len = min(table width * page size, max_seq_len): past it the table (or the grid) has no entry
        seq_raw = seq_len
        bad_len = (seq_raw < 0) | (seq_raw > cap_len)
        seq_len = tl.minimum(tl.maximum(seq_raw, 0), cap_len)
        bad_col = seq_len * 0 + 2147483647  # int32 scalar: first out-of-range table column seen
    start = p * PART
    end = tl.minimum(start + PART, seq_len)

    offs_g = chunk * G_PAD + tl.arange(0, G_PAD)  # this program's query heads within the KV head's group
    mask_g = offs_g < G
    heads = kvh * G + offs_g
    offs_d = tl.arange(0, D_PAD)
    mask_d = offs_d < D
    q = tl.load(Q + s.to(tl.int64) * stride_qs + heads[:, None] * stride_qh + offs_d[None, :],
                mask=mask_g[:, None] & mask_d[None, :], other=0.0)
    slope = tl.load(SLOPES + heads, mask=mask_g & (offs_g * 0 + has_alibi != 0), other=0.0) * 1.4426950408889634

    m_i = tl.full([G_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([G_PAD], tl.float32)
    acc = tl.zeros([G_PAD, D_PAD], tl.float32)
    k_d = (offs_d // X) * stride_kx + offs_d % X
    if FP8:  # the cache holds e4m3 bits; they are read as fp16 / 256 (exact), the 256 goes into the scales
        qk_scale = qk_scale * 256.0
        v_scale = v_scale * 256.0
    # A tile is NP rows of PS tokens, each row inside one page: [NP, PS, D] pointers built from aranges, so the
    # compiler sees the contiguity inside a page (vLLM V: along tokens; K and flash layout: along head_dim) and issues
    # wide loads. FIXED_PAGE (vLLM layout): a row is a whole page; else the page size is the run-time page_size.
    NP: tl.constexpr = TILE // PS
    offs_p = tl.arange(0, NP)
    offs_s = tl.arange(0, PS)
    for t0 in range(start, end, TILE):
        row0 = t0 + offs_p * PS  # [NP] first token of each row
        if FIXED_PAGE:
            page_idx = t0 // PS + offs_p
            slot = tl.zeros([NP], tl.int32)[:, None] + offs_s[None, :]
        else:
            page_idx = row0 // page_size
            slot = (row0 % page_size)[:, None] + offs_s[None, :]
        tok = row0[:, None] + offs_s[None, :]  # [NP, PS]
        mask3 = (tok < end)[:, :, None] & mask_d[None, None, :]
        blk = tl.load(BT + s.to(tl.int64) * stride_bts + page_idx, mask=row0 < end, other=0).to(tl.int64)
        if CHECK:
            bad = (blk < 0) | (blk >= num_blocks)
            bad_col = tl.minimum(bad_col, tl.min(tl.where(bad, page_idx, 2147483647), 0))
            blk = tl.where(bad, 0, blk)
        kb = blk * stride_kb + kvh * stride_kh
        vb = blk * stride_vb + kvh * stride_vh
        k = tl.load(K + kb[:, None, None] + slot[:, :, None] * stride_kt + k_d[None, None, :], mask=mask3, other=0)
        v = tl.load(V + vb[:, None, None] + slot[:, :, None] * stride_vt + offs_d[None, None, :] * stride_vd,
                    mask=mask3, other=0)
        k = tl.reshape(k, [TILE, D_PAD])
        v = tl.reshape(v, [TILE, D_PAD])
        offs_t = tl.reshape(tok, [TILE])
        mask_t = offs_t < end
        if FP8:
            k = _e4m3_over_256(k).to(q.dtype)
            v = _e4m3_over_256(v).to(q.dtype)
        qk = tl.dot(q, tl.trans(k)) * qk_scale  # log2 domain
        qk += slope[:, None] * (offs_t - seq_len + 1).to(tl.float32)[None, :]  # ALiBi (slope 0 without)
        qk = tl.where(mask_t[None, :], qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        alpha = tl.exp2(m_i - m_new)
        pr = tl.exp2(qk - m_new[:, None])
        l_i = l_i * alpha + tl.sum(pr, 1)
        acc = acc * alpha[:, None] + tl.dot(pr.to(v.dtype), v)
        m_i = m_new

    l_safe = tl.where(l_i > 0, l_i, 1.0)
    res = acc * (v_scale / l_safe)[:, None]
    if CHECK:
        flagged = bad_len | (bad_col < 2147483647)
        res = tl.where(flagged, float("nan"), res)
        l_i = tl.where(flagged, float("nan"), l_i)
        if flagged:
            if tl.atomic_cas(ERR, 0, 1) == 0:  # the first offender writes the report, kind last
                col = tl.minimum(bad_col, 2147483646)
                val = tl.load(BT + s.to(tl.int64) * stride_bts + col, mask=~bad_len, other=0).to(tl.int32)
                tl.store(REP + 1, s)
                tl.store(REP + 2, tl.where(bad_len, seq_raw, col))
                tl.store(REP + 3, tl.where(bad_len, cap_len, val))
                tl.store(REP + 4, num_blocks)
                tl.store(REP, tl.where(bad_len, 2, 1))
    if direct != 0:
        tl.store(OUT + s.to(tl.int64) * stride_os + heads[:, None] * stride_oh + offs_d[None, :],
                 res.to(OUT.dtype.element_ty), mask=mask_g[:, None] & mask_d[None, :])
    else:
        mrow = s.to(tl.int64) * stride_ms + heads * stride_mh + p
        tl.store(M_OUT + mrow, m_i / 1.4426950408889634, mask=mask_g)  # natural log, like vLLM's max_logits
        tl.store(L_OUT + mrow, l_i, mask=mask_g)
        tl.store(ACC_OUT + s.to(tl.int64) * stride_as + heads[:, None] * stride_ah + p * stride_ap + offs_d[None, :],
                 res.to(ACC_OUT.dtype.element_ty), mask=mask_g[:, None] & mask_d[None, :])


@triton.jit
def _e4m3_over_256(x):
    """uint8 e4m3fn bits -> float16 holding value / 256, exactly (fp16's exponent range holds every e4m3 value
    shifted by 8 binades, subnormals included); NaN stays NaN. Plain integer ops: no fp8 hardware needed (sm_80)."""
    b = x.to(tl.uint16)
    h = (((b & 0x7F) << 7) | ((b & 0x80) << 8)).to(tl.float16, bitcast=True)
    return tl.where((b & 0x7F) == 0x7F, float("nan"), h)


@triton.jit(do_not_specialize=["cap_len", "nparts_alloc", "PART"])
def _decode_reduce(
    OUT, M_IN, L_IN, ACC_IN, SL, cap_len, nparts_alloc, PART, D,
    stride_os, stride_oh, stride_ms, stride_mh, stride_as, stride_ah, stride_ap,
    D_PAD: tl.constexpr, P_BLOCK: tl.constexpr, CHECK: tl.constexpr,
):
    """Merge the partitions of one (sequence, head), P_BLOCK at a time: any partition count, one compile."""
    s = tl.program_id(0)
    h = tl.program_id(1)
    seq_raw = tl.load(SL + s).to(tl.int32)
    seq_len = tl.minimum(tl.maximum(seq_raw, 0), cap_len)  # never past the partials that exist
    nparts = tl.minimum((seq_len + PART - 1) // PART, nparts_alloc)
    row = s.to(tl.int64) * stride_ms + h * stride_mh
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
        w = tl.where(mask_p, l * tl.exp(m - big_m), 0.0)
        denom += tl.sum(w, 0)
        part = tl.load(ACC_IN + s.to(tl.int64) * stride_as + h * stride_ah + (p0 + offs_p)[:, None] * stride_ap
                       + offs_d[None, :], mask=mask_p[:, None] & mask_d[None, :], other=0.0).to(tl.float32)
        acc += tl.sum(part * w[:, None], 0)
    res = acc / tl.where(denom > 0, denom, 1.0)
    if CHECK:
        res = tl.where((seq_raw < 0) | (seq_raw > cap_len), float("nan"), res)
    tl.store(OUT + s.to(tl.int64) * stride_os + h * stride_oh + offs_d, res.to(OUT.dtype.element_ty), mask=mask_d)


last_launch = None  # the last decode kernel handle (benchmarks read its registers / shared memory)
TUNING = _plan.TUNING
config_for = _plan.config_for
_sm_count = _plan.sm_count


def decode(out, query, key_cache, value_cache, geom, scale, block_tables, seq_lens, max_seq_len, alibi_slopes,
           k_scale: float, v_scale: float, partition_size: int | None, partials=None, tuning: dict | None = None,
           check: bool = False):
    """``check``: validate indices inside the kernels (see the module doc) instead of trusting them."""
    global last_launch
    num_seqs, hq, d = query.shape
    if num_seqs == 0:
        return
    hk = geom.num_kv_heads
    g = hq // hk
    tile, warps, stages = _plan.config_for(d, tuning, geom.layout)
    plan = _plan.plan_decode(num_seqs, hq, hk, d, max_seq_len, geom.layout, geom.block_size, tile,
                             _plan.programs_per_sm(geom.layout, d, tuning), query.device, partition_size,
                             partials is not None, g_chunk=min(64, max(16, _plan.next_pow2(g))))
    max_len = max(int(max_seq_len), 1)
    if geom.layout == "vllm":
        kx = key_cache.shape[-1]
        sk = (key_cache.stride(0), key_cache.stride(1), kx, key_cache.stride(2))
        sv = (value_cache.stride(0), value_cache.stride(1), 1, value_cache.stride(2))
    else:
        kx = plan.d_pad  # offs_d // X == 0: K is contiguous along head_dim
        sk = (key_cache.stride(0), key_cache.stride(2), key_cache.stride(1), 0)
        sv = (value_cache.stride(0), value_cache.stride(2), value_cache.stride(1), 1)
    if plan.direct:
        m_buf = l_buf = acc_buf = out
        sm = (0, 0)
        sa = (0, 0, 0)
    else:
        if partials is not None:
            l_buf, m_buf, acc_buf = partials  # (exp_sums, max_logits, tmp_out)
        else:  # one allocation for the three partial buffers (each torch.empty costs host time per step)
            n = num_seqs * hq * plan.nparts
            buf = torch.empty(n * (d + 2), device=query.device, dtype=torch.float32)
            m_buf = buf[:n].view(num_seqs, hq, plan.nparts)
            l_buf = buf[n:2 * n].view(num_seqs, hq, plan.nparts)
            acc_buf = buf[2 * n:].view(num_seqs, hq, plan.nparts, d)
        sm = (m_buf.stride(0), m_buf.stride(1))
        sa = (acc_buf.stride(0), acc_buf.stride(1), acc_buf.stride(2))
    slopes = alibi_slopes.float().contiguous() if alibi_slopes is not None else seq_lens
    kc = key_cache.view(torch.uint8) if geom.fp8 else key_cache
    vc = value_cache.view(torch.uint8) if geom.fp8 else value_cache
    cap_len = min(block_tables.shape[1] * geom.block_size, max_len)
    state = _device_check.state_for(query.device) if check else None
    err, rep = (state.word, state.report) if check else (seq_lens, seq_lens)
    args = [query, kc, vc, block_tables, seq_lens, slopes, out, m_buf, l_buf, acc_buf, err, rep,
            scale * k_scale * LOG2E, v_scale, geom.num_blocks, cap_len, plan.part, geom.block_size, g,
            plan.n_gchunks, d, int(alibi_slopes is not None), int(plan.direct),
            query.stride(0), query.stride(1),
            *sk, *sv,
            block_tables.stride(0),
            out.stride(0), out.stride(1),
            *sm, *sa]
    meta = dict(G_PAD=plan.g_chunk, D_PAD=plan.d_pad, X=kx, PS=plan.rows, FIXED_PAGE=geom.layout == "vllm",
                TILE=plan.tile, FP8=geom.fp8, CHECK=check, num_warps=warps, num_stages=stages)
    grid = (num_seqs, hk * plan.n_gchunks, plan.nparts)
    try:
        last_launch = _decode_partial[grid](*args, **meta)
    except ValueError as e:  # Triton refused the pinned host report buffer: keep it on the device instead
        if not (check and "cannot be accessed" in str(e) and not state.copy_after_launch):
            raise
        state.use_device_report()
        args[11] = state.report
        last_launch = _decode_partial[grid](*args, **meta)
    if not plan.direct:
        _decode_reduce[(num_seqs, hq)](
            out, m_buf, l_buf, acc_buf, seq_lens, cap_len, m_buf.shape[2], plan.part, d,
            out.stride(0), out.stride(1), *sm, *sa,
            D_PAD=plan.d_pad, P_BLOCK=min(64, max(2, _plan.next_pow2(m_buf.shape[2]))), CHECK=check, num_warps=4,
        )
    if check:
        state.after_launch()


# ------------------------------------------------------------------------------------------------- cache writes

@triton.jit
def _to_e4m3(x):
    """float32 -> e4m3fn bits (uint8), round to nearest even, saturated to +-448 like _torch_impl.quantize; NaN ->
    0x7F. Integer ops on the float's bits: no fp8 hardware needed (sm_80)."""
    a = tl.minimum(tl.abs(x), 448.0)
    bits = a.to(tl.uint32, bitcast=True)
    r = (bits + 0x7FFFF + ((bits >> 20) & 1)) & 0xFFF00000  # mantissa rounded to 3 bits (a carry bumps the exponent)
    normal = (((r >> 23) - 120) << 3) | ((r >> 20) & 7)
    sub = (a + 16384.0).to(tl.uint32, bitcast=True) - 0x46800000  # a / 2^-9 rounded to even: the ulp of 2^14
    code = tl.where(a >= 0.015625, normal, sub)
    code = tl.where(x < 0, code | 0x80, code)
    return tl.where(x != x, 0x7F, code).to(tl.uint8)


@triton.jit(do_not_specialize=["num_slots", "page_size"])
def _write_slots(
    KEY, VALUE, KC, VC, SLOTS, ERR, REP, k_scale, v_scale, num_slots, page_size, num_blocks, D,
    stride_kn, stride_kh, stride_vn, stride_vh,
    stride_ckb, stride_ckh, stride_ckt, stride_ckx,
    stride_cvb, stride_cvh, stride_cvt, stride_cvd,
    D_PAD: tl.constexpr, X: tl.constexpr, FP8: tl.constexpr, CHECK: tl.constexpr,
):
    """Token i's key/value of head h into slot SLOTS[i] (a negative slot: padding, skipped). A slot past the cache
    is never written; with CHECK the first one is reported (kind 3)."""
    i = tl.program_id(0)
    h = tl.program_id(1)
    slot = tl.load(SLOTS + i).to(tl.int64)
    ok = (slot >= 0) & (slot < num_slots)
    if CHECK:
        if slot >= num_slots:
            if h == 0:
                if tl.atomic_cas(ERR, 0, 1) == 0:
                    tl.store(REP + 1, i)
                    tl.store(REP + 2, tl.minimum(slot, 2147483647).to(tl.int32))
                    tl.store(REP + 3, num_slots)
                    tl.store(REP + 4, num_blocks)
                    tl.store(REP, 3)
    s = tl.where(ok, slot, 0)
    blk = s // page_size
    off = s % page_size
    offs_d = tl.arange(0, D_PAD)
    slot_v = tl.zeros([D_PAD], tl.int64) + slot  # (a scalar mask operand trips Triton's interpreter)
    mask = (offs_d < D) & (slot_v >= 0) & (slot_v < num_slots)
    k = tl.load(KEY + i.to(tl.int64) * stride_kn + h * stride_kh + offs_d, mask=mask, other=0.0)
    v = tl.load(VALUE + i.to(tl.int64) * stride_vn + h * stride_vh + offs_d, mask=mask, other=0.0)
    if FP8:
        k = _to_e4m3(tl.div_rn(k.to(tl.float32), k_scale))
        v = _to_e4m3(tl.div_rn(v.to(tl.float32), v_scale))
    tl.store(KC + blk * stride_ckb + h * stride_ckh + off * stride_ckt + (offs_d // X) * stride_ckx + offs_d % X,
             k.to(KC.dtype.element_ty), mask=mask)
    tl.store(VC + blk * stride_cvb + h * stride_cvh + off * stride_cvt + offs_d * stride_cvd,
             v.to(VC.dtype.element_ty), mask=mask)


CACHE_D_PAD = 256  # one compile for every head size (a program writes one token's head: a few hundred bytes)


def cache_strides(key_cache, value_cache, geom) -> tuple[int, tuple, tuple]:
    """(X, key-cache strides (block, head, token, x-group), value-cache strides (block, head, token, dim))."""
    if geom.layout == "vllm":
        x = key_cache.shape[-1]
        return x, (key_cache.stride(0), key_cache.stride(1), key_cache.stride(3), key_cache.stride(2)), (
            value_cache.stride(0), value_cache.stride(1), value_cache.stride(3), value_cache.stride(2))
    return CACHE_D_PAD, (key_cache.stride(0), key_cache.stride(2), key_cache.stride(1), 0), (
        value_cache.stride(0), value_cache.stride(2), value_cache.stride(1), value_cache.stride(3))


def write_slots(key, value, key_cache, value_cache, geom, slot_mapping, k_scale: float, v_scale: float,
                check: bool) -> None:
    n, h, d = key.shape
    if n == 0:
        return
    key, value = (t if t.stride(-1) == 1 else t.contiguous() for t in (key, value))  # the kernel reads rows
    kc = key_cache.view(torch.uint8) if geom.fp8 else key_cache
    vc = value_cache.view(torch.uint8) if geom.fp8 else value_cache
    x, sk, sv = cache_strides(kc, vc, geom)
    state = _device_check.state_for(key.device) if check else None
    err, rep = (state.word, state.report) if check else (slot_mapping, slot_mapping)
    args = [key, value, kc, vc, slot_mapping, err, rep, k_scale, v_scale, geom.num_blocks * geom.block_size,
            geom.block_size, geom.num_blocks, d, key.stride(0), key.stride(1), value.stride(0), value.stride(1),
            *sk, *sv]
    meta = dict(D_PAD=CACHE_D_PAD, X=x, FP8=geom.fp8, CHECK=check, num_warps=2)
    try:
        _write_slots[(n, h)](*args, **meta)
    except ValueError as e:  # Triton refused the pinned host report buffer: keep it on the device instead
        if not (check and "cannot be accessed" in str(e) and not state.copy_after_launch):
            raise
        state.use_device_report()
        args[6] = state.report
        _write_slots[(n, h)](*args, **meta)
    if check:
        state.after_launch()
