"""Triton decode for CUDA: GQA-grouped, split-K over the context.

One program per (sequence, KV head, context partition) loads the G query heads that share the KV head (padded to
16 rows for tensor-core dots), then walks the partition in tiles of TILE tokens, gathering each token's page from
the block table. Every K/V byte of a partition is read once for all G heads. Partial results (max logit, exp sum,
normalised output) are merged by a second small kernel; with one partition the first kernel writes ``out``
directly. Both cache layouts go through the same kernel: element (token t, dim d) of a page is at
``t * stride_t + (d // X) * stride_x + d % X`` (vLLM K: X = 16 bytes / element; flash: X = head_size).

With CHECK (validation mode "device", the default on CUDA) the kernels validate indices themselves instead of the
host reading them (a sync per call): seq_lens are clamped to what the block table and max_seq_len cover, block ids
outside [0, num_blocks) are replaced by block 0 (so nothing outside the cache is ever read), the affected
sequence's output is NaN, and the first offender is reported through ``_device_check`` (raised lazily).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from . import _device_check

LOG2E = 1.4426950408889634


# num_blocks, cap_len and the partition size change between steps: runtime values, one compile for all of them
@triton.jit(do_not_specialize=["num_blocks", "cap_len", "PART"])
def _decode_partial(
    Q, K, V, BT, SL, SLOPES, OUT, M_OUT, L_OUT, ACC_OUT, ERR, REP,
    qk_scale, v_scale, num_blocks, cap_len, PART,
    stride_qs, stride_qh,
    stride_kb, stride_kh, stride_kt, stride_kx,
    stride_vb, stride_vh, stride_vt, stride_vd,
    stride_bts,
    stride_os, stride_oh,
    stride_ms, stride_mh,
    stride_as, stride_ah, stride_ap,
    G: tl.constexpr, G_PAD: tl.constexpr, D: tl.constexpr, D_PAD: tl.constexpr, X: tl.constexpr,
    PAGE: tl.constexpr, TILE: tl.constexpr, HAS_ALIBI: tl.constexpr, FP8: tl.constexpr,
    DIRECT: tl.constexpr, CHECK: tl.constexpr,
):
    s = tl.program_id(0)
    kvh = tl.program_id(1)
    p = tl.program_id(2)
    seq_len = tl.load(SL + s).to(tl.int32)
    if CHECK:  # cap_len = min(table width * PAGE, max_seq_len): past it the table (or the grid) has no entry
        seq_raw = seq_len
        bad_len = (seq_raw < 0) | (seq_raw > cap_len)
        seq_len = tl.minimum(tl.maximum(seq_raw, 0), cap_len)
        bad_col = seq_len * 0 + 2147483647  # int32 scalar: first out-of-range table column seen
    start = p * PART
    end = tl.minimum(start + PART, seq_len)

    offs_g = tl.arange(0, G_PAD)
    mask_g = offs_g < G
    heads = kvh * G + offs_g
    offs_d = tl.arange(0, D_PAD)
    mask_d = offs_d < D
    q = tl.load(Q + s.to(tl.int64) * stride_qs + heads[:, None] * stride_qh + offs_d[None, :],
                mask=mask_g[:, None] & mask_d[None, :], other=0.0)
    if HAS_ALIBI:
        slope = tl.load(SLOPES + heads, mask=mask_g, other=0.0) * 1.4426950408889634

    m_i = tl.full([G_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([G_PAD], tl.float32)
    acc = tl.zeros([G_PAD, D_PAD], tl.float32)
    k_d = (offs_d // X) * stride_kx + offs_d % X
    # A tile is NP whole pages: [NP, PAGE, D] pointers built from aranges, so the compiler sees the contiguity
    # inside a page (vLLM V: along tokens; K and flash layout: along head_dim) and issues wide loads.
    NP: tl.constexpr = TILE // PAGE
    offs_p = tl.arange(0, NP)
    offs_s = tl.arange(0, PAGE)
    for t0 in range(start, end, TILE):
        page_idx = t0 // PAGE + offs_p
        tok = t0 + offs_p[:, None] * PAGE + offs_s[None, :]  # [NP, PAGE]
        mask3 = (tok < end)[:, :, None] & mask_d[None, None, :]
        blk = tl.load(BT + s.to(tl.int64) * stride_bts + page_idx, mask=page_idx * PAGE < end, other=0).to(tl.int64)
        if CHECK:
            bad = (blk < 0) | (blk >= num_blocks)
            bad_col = tl.minimum(bad_col, tl.min(tl.where(bad, page_idx, 2147483647), 0))
            blk = tl.where(bad, 0, blk)
        kb = blk * stride_kb + kvh * stride_kh
        vb = blk * stride_vb + kvh * stride_vh
        k = tl.load(K + kb[:, None, None] + offs_s[None, :, None] * stride_kt + k_d[None, None, :], mask=mask3,
                    other=0.0)
        v = tl.load(V + vb[:, None, None] + offs_s[None, :, None] * stride_vt + offs_d[None, None, :] * stride_vd,
                    mask=mask3, other=0.0)
        k = tl.reshape(k, [TILE, D_PAD])
        v = tl.reshape(v, [TILE, D_PAD])
        offs_t = tl.reshape(tok, [TILE])
        mask_t = offs_t < end
        if FP8:
            k = k.to(tl.float8e4nv, bitcast=True).to(q.dtype)
            v = v.to(tl.float8e4nv, bitcast=True).to(q.dtype)
        qk = tl.dot(q, tl.trans(k)) * qk_scale  # log2 domain
        if HAS_ALIBI:
            qk += slope[:, None] * (offs_t - seq_len + 1).to(tl.float32)[None, :]
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
    if DIRECT:
        tl.store(OUT + s.to(tl.int64) * stride_os + heads[:, None] * stride_oh + offs_d[None, :],
                 res.to(OUT.dtype.element_ty), mask=mask_g[:, None] & mask_d[None, :])
    else:
        mrow = s.to(tl.int64) * stride_ms + heads * stride_mh + p
        tl.store(M_OUT + mrow, m_i / 1.4426950408889634, mask=mask_g)  # natural log, like vLLM's max_logits
        tl.store(L_OUT + mrow, l_i, mask=mask_g)
        tl.store(ACC_OUT + s.to(tl.int64) * stride_as + heads[:, None] * stride_ah + p * stride_ap + offs_d[None, :],
                 res.to(ACC_OUT.dtype.element_ty), mask=mask_g[:, None] & mask_d[None, :])


@triton.jit(do_not_specialize=["cap_len", "nparts_alloc", "PART"])
def _decode_reduce(
    OUT, M_IN, L_IN, ACC_IN, SL, cap_len, nparts_alloc, PART,
    stride_os, stride_oh, stride_ms, stride_mh, stride_as, stride_ah, stride_ap,
    D: tl.constexpr, D_PAD: tl.constexpr, P_PAD: tl.constexpr, CHECK: tl.constexpr,
):
    s = tl.program_id(0)
    h = tl.program_id(1)
    seq_raw = tl.load(SL + s).to(tl.int32)
    seq_len = tl.minimum(tl.maximum(seq_raw, 0), cap_len)  # never past the partials that exist
    nparts = tl.minimum((seq_len + PART - 1) // PART, nparts_alloc)
    offs_p = tl.arange(0, P_PAD)
    mask_p = offs_p < nparts
    row = s.to(tl.int64) * stride_ms + h * stride_mh + offs_p
    m = tl.load(M_IN + row, mask=mask_p, other=float("-inf"))
    l = tl.load(L_IN + row, mask=mask_p, other=0.0)
    big_m = tl.max(m, 0)
    big_m = tl.where(big_m > float("-inf"), big_m, 0.0)
    w = tl.where(mask_p, l * tl.exp(m - big_m), 0.0)
    denom = tl.sum(w, 0)
    offs_d = tl.arange(0, D_PAD)
    mask_d = offs_d < D
    acc = tl.load(ACC_IN + s.to(tl.int64) * stride_as + h * stride_ah + offs_p[:, None] * stride_ap
                  + offs_d[None, :], mask=mask_p[:, None] & mask_d[None, :], other=0.0).to(tl.float32)
    res = tl.sum(acc * w[:, None], 0) / tl.where(denom > 0, denom, 1.0)
    if CHECK:
        res = tl.where((seq_raw < 0) | (seq_raw > cap_len), float("nan"), res)
    tl.store(OUT + s.to(tl.int64) * stride_os + h * stride_oh + offs_d, res.to(OUT.dtype.element_ty), mask=mask_d)


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":  # Triton's interpreter (CPU tests): a tiny "GPU" so small inputs get split too
        return 4
    return torch.cuda.get_device_properties(device.index if device.index is not None
                                            else torch.cuda.current_device()).multi_processor_count


# (TILE, num_warps, num_stages, programs per SM) by (layout, head size); the head-dim-128 rows are the best of the
# H100 sweeps (GPU time, CUDA-graph replays, validation "device") at batch 64 and 16, context 4k
# (benchmarks/results_h100_run3.json, "sweep"): flash tile 128 needs 255 registers and spills, tile 64 does not
# (B16: 2.71 vs 2.43 TB/s; B64: 2.90 vs 2.88). vLLM layout: more programs pay at B64 (8/SM: 2.10 vs 1.69 at 2/SM),
# B16 prefers 2/SM (2.00 vs 1.84). Other head sizes are scaled guesses.
TUNING = {("vllm", 64): (64, 4, 2, 8), ("vllm", 128): (64, 4, 2, 8), ("vllm", 256): (32, 4, 2, 8),
          ("flash", 64): (64, 4, 3, 2), ("flash", 128): (64, 4, 3, 2), ("flash", 256): (32, 4, 3, 2)}
PROGRAMS_PER_SM = 4
last_launch = None  # the last decode kernel handle (benchmarks read its registers / shared memory)


def _size_key(head_size: int) -> int:
    return 64 if head_size <= 64 else 128 if head_size <= 128 else 256


def config_for(head_size: int, overrides: dict | None = None, layout: str = "vllm") -> tuple[int, int, int]:
    cfg = TUNING[(layout, _size_key(head_size))][:3]
    if overrides:
        cfg = (overrides.get("tile", cfg[0]), overrides.get("num_warps", cfg[1]), overrides.get("num_stages", cfg[2]))
    return cfg


@functools.lru_cache(maxsize=4096)
def choose_partition(num_seqs: int, num_kv_heads: int, max_seq_len: int, tile: int, device,
                     programs_per_sm: int = 4) -> int:
    """Split the context only as much as needed to give every SM a few programs."""
    target = programs_per_sm * _sm_count(device)
    programs = max(1, num_seqs * num_kv_heads)
    parts = max(1, min(-(-target // programs), -(-max_seq_len // tile)))
    part = -(-max_seq_len // parts)
    return max(tile, -(-part // tile) * tile)


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
    tile, warps, stages = config_for(d, tuning, geom.layout)
    max_len = max(int(max_seq_len), 1)
    per_sm = (tuning or {}).get("programs_per_sm", TUNING[(geom.layout, _size_key(d))][3])
    part = partition_size if partition_size is not None else choose_partition(num_seqs, hk, max_len, tile,
                                                                              query.device, per_sm)
    tile = max(min(tile, part), geom.block_size)  # whole pages per tile (block sizes are powers of two)
    if part % tile:
        raise ValueError(f"paged_attention: partition {part} is not a multiple of the tile {tile}")
    nparts = -(-max_len // part)
    if geom.layout == "vllm":
        kx = key_cache.shape[-1]
        sk = (key_cache.stride(0), key_cache.stride(1), kx, key_cache.stride(2))
        sv = (value_cache.stride(0), value_cache.stride(1), 1, value_cache.stride(2))
    else:
        kx = d
        sk = (key_cache.stride(0), key_cache.stride(2), key_cache.stride(1), 0)
        sv = (value_cache.stride(0), value_cache.stride(2), value_cache.stride(1), 1)
    direct = nparts == 1 and partials is None
    if direct:
        m_buf = l_buf = acc_buf = out
        sm = (0, 0)
        sa = (0, 0, 0)
    else:
        if partials is not None:
            l_buf, m_buf, acc_buf = partials  # (exp_sums, max_logits, tmp_out)
        else:  # one allocation for the three partial buffers (each torch.empty costs host time per step)
            n = num_seqs * hq * nparts
            buf = torch.empty(n * (d + 2), device=query.device, dtype=torch.float32)
            m_buf = buf[:n].view(num_seqs, hq, nparts)
            l_buf = buf[n:2 * n].view(num_seqs, hq, nparts)
            acc_buf = buf[2 * n:].view(num_seqs, hq, nparts, d)
        sm = (m_buf.stride(0), m_buf.stride(1))
        sa = (acc_buf.stride(0), acc_buf.stride(1), acc_buf.stride(2))
    slopes = alibi_slopes.float().contiguous() if alibi_slopes is not None else seq_lens
    kc = key_cache.view(torch.uint8) if geom.fp8 else key_cache
    vc = value_cache.view(torch.uint8) if geom.fp8 else value_cache
    cap_len = min(block_tables.shape[1] * geom.block_size, max_len)
    state = _device_check.state_for(query.device) if check else None
    err, rep = (state.word, state.report) if check else (seq_lens, seq_lens)
    args = [query, kc, vc, block_tables, seq_lens, slopes, out, m_buf, l_buf, acc_buf, err, rep,
            scale * k_scale * LOG2E, v_scale, geom.num_blocks, cap_len, part,
            query.stride(0), query.stride(1),
            *sk, *sv,
            block_tables.stride(0),
            out.stride(0), out.stride(1),
            *sm, *sa]
    meta = dict(G=g, G_PAD=max(16, triton.next_power_of_2(g)), D=d, D_PAD=triton.next_power_of_2(d), X=kx,
                PAGE=geom.block_size, TILE=tile, HAS_ALIBI=alibi_slopes is not None, FP8=geom.fp8,
                DIRECT=direct, CHECK=check, num_warps=warps, num_stages=stages)
    grid = (num_seqs, hk, nparts)
    try:
        last_launch = _decode_partial[grid](*args, **meta)
    except ValueError as e:  # Triton refused the pinned host report buffer: keep it on the device instead
        if not (check and "cannot be accessed" in str(e) and not state.copy_after_launch):
            raise
        state.use_device_report()
        args[11] = state.report
        last_launch = _decode_partial[grid](*args, **meta)
    if not direct:
        _decode_reduce[(num_seqs, hq)](
            out, m_buf, l_buf, acc_buf, seq_lens, cap_len, m_buf.shape[2], part,
            out.stride(0), out.stride(1), *sm, *sa,
            D=d, D_PAD=triton.next_power_of_2(d), P_PAD=max(2, triton.next_power_of_2(m_buf.shape[2])),
            CHECK=check, num_warps=4,
        )
    if check:
        state.after_launch()
