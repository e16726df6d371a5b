"""Triton flash-attention forward: dense, varlen and (paged) kv-cache in one kernel.

One program computes BLOCK_M query rows of one (batch, query head). Keys are visited in three runs:
masked blocks at the left edge of the visible band (windows), unmasked blocks in the middle, masked blocks
at the right edge (causal diagonal, right window, the ragged end of the keys). Blocks wholly outside
the band are never loaded, so a window of W keys costs S*W, not S^2.

Semantics are flash_attn's: causal and windows are aligned bottom-right (query i sits on key
i + seqlen_k - seqlen_q), scores may be soft-capped (softcap * tanh(s / softcap)), rows that see no key give
out 0 and lse -inf. Softmax runs in base 2 (exp2) with the scale folded in; lse is returned in natural log.

Only the last dim of q/k/v must be contiguous; the other strides are passed in. ``USE_TMA`` (Hopper, dense
inputs only) loads Q/K/V through device-side tensor descriptors (the bulk tensor copy engine); K/V blocks past
the sequence end come back zero-filled, and their scores are masked anyway.

Tried on an H100 and not kept (scripts/bench_attention_followup.py, BENCHMARKS.md): the row max taken on raw
scores with the exponent as one FMA (within +-4% of this form, no net gain), and skipping the acc rescale unless a
row max grows by more than 8 (2-10% slower: the branch inside the loop costs Triton its wgmma pipelining).
"""

import os

import triton
import triton.language as tl

LOG2E = 1.4426950408889634
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def _tanh(x):
    # tl.math has no tanh everywhere (interpreter, older Triton); this form saturates to +-1 without NaN.
    return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)


@triton.jit
def _band(start_m, seqlen_q, seqlen_k, left, right,
          HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Key-block bounds for query rows [start_m, start_m + BLOCK_M): (lo, full_lo, full_hi, hi), multiples of
    BLOCK_N (hi excepted). [lo, hi) holds every visible key; [full_lo, full_hi) blocks need no mask."""
    return _band_rows(start_m, start_m + BLOCK_M - 1, seqlen_q, seqlen_k, left, right, HAS_LEFT, HAS_RIGHT, BLOCK_N)


@triton.jit
def _band_rows(start_m, last_m, seqlen_q, seqlen_k, left, right,
               HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, BLOCK_N: tl.constexpr):
    """_band for the query positions start_m..last_m (a packed-GQA tile covers fewer positions than rows)."""
    off = seqlen_k - seqlen_q
    lo = 0
    full_lo = 0
    hi = seqlen_k
    full_hi = seqlen_k
    if HAS_LEFT:
        lo = tl.maximum(start_m + off - left, 0)
        lo = (lo // BLOCK_N) * BLOCK_N
        full_lo = tl.maximum(last_m + off - left, 0)
        full_lo = ((full_lo + BLOCK_N - 1) // BLOCK_N) * BLOCK_N
    if HAS_RIGHT:
        hi = tl.minimum(last_m + off + right + 1, seqlen_k)
        full_hi = tl.minimum(start_m + off + right + 1, seqlen_k)
    hi = tl.maximum(hi, lo)
    full_hi = (full_hi // BLOCK_N) * BLOCK_N
    full_lo = tl.minimum(tl.maximum(full_lo, lo), hi)
    full_hi = tl.minimum(tl.maximum(full_hi, full_lo), hi)
    return lo, full_lo, full_hi, hi


@triton.jit
def _load_kv(base, desc, cols, seqlen_k, stride_n, bt_row, stride_page, b, h_kv, k_row0, offs_d, page_size,
             PAGED: tl.constexpr, PAGE: tl.constexpr, USE_TMA: tl.constexpr, EVEN_D: tl.constexpr,
             HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM_P: tl.constexpr):
    if USE_TMA:
        blk = desc.load([b, k_row0, h_kv, 0])
        return tl.reshape(blk, (BLOCK_N, HEAD_DIM_P))
    else:
        in_seq = cols < seqlen_k
        if PAGED:
            if PAGE == 0:  # page size given at run time (precompiled kernels serve every page size)
                page = tl.load(bt_row + cols // page_size, mask=in_seq, other=0)
                rows = page.to(tl.int64) * stride_page + (cols % page_size) * stride_n
            else:
                page = tl.load(bt_row + cols // PAGE, mask=in_seq, other=0)
                rows = page.to(tl.int64) * stride_page + (cols % PAGE) * stride_n
        else:
            rows = cols.to(tl.int64) * stride_n
        mask = in_seq[:, None]
        if not EVEN_D:
            mask = mask & (offs_d[None, :] < HEAD_DIM)
        return tl.load(base + rows[:, None] + offs_d[None, :], mask=mask, other=0.0)


@triton.jit
def _attn_blocks(acc, m_i, l_i, q, k_base, v_base, k_desc, v_desc, n_lo, n_hi, offs_m, offs_n, offs_d,
                 seqlen_q, seqlen_k, stride_kn, stride_vn, bt_row, stride_kpage, stride_vpage, b, h_kv, k_row_base,
                 qk_scale, softcap, left, right, page_size,
                 MASK: tl.constexpr, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, SOFTCAP: tl.constexpr,
                 PAGED: tl.constexpr, PAGE: tl.constexpr, USE_TMA: tl.constexpr, EVEN_D: tl.constexpr,
                 HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM_P: tl.constexpr):
    off = seqlen_k - seqlen_q
    for start_n in range(n_lo, n_hi, BLOCK_N):
        cols = start_n + offs_n
        k = _load_kv(k_base, k_desc, cols, seqlen_k, stride_kn, bt_row, stride_kpage, b, h_kv,
                     k_row_base + start_n, offs_d, page_size, PAGED, PAGE, USE_TMA, EVEN_D, HEAD_DIM, BLOCK_N, HEAD_DIM_P)
        s = tl.dot(q, tl.trans(k))
        if SOFTCAP:
            s = softcap * _tanh(s * qk_scale)
            s = s * 1.4426950408889634
        else:
            s = s * qk_scale
        if MASK:
            ok = cols[None, :] < seqlen_k
            if HAS_LEFT:
                ok = ok & (cols[None, :] >= offs_m[:, None] + off - left)
            if HAS_RIGHT:
                ok = ok & (cols[None, :] <= offs_m[:, None] + off + right)
            s = tl.where(ok, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row that saw nothing yet: no NaN
        else:
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_use = m_new
        p = tl.exp2(s - m_use[:, None])
        alpha = tl.exp2(m_i - m_use)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        v = _load_kv(v_base, v_desc, cols, seqlen_k, stride_vn, bt_row, stride_vpage, b, h_kv,
                     k_row_base + start_n, offs_d, page_size, PAGED, PAGE, USE_TMA, EVEN_D, HEAD_DIM, BLOCK_N, HEAD_DIM_P)
        acc = tl.dot(p.to(v.dtype), v, acc)
        m_i = m_new
    return acc, m_i, l_i


@triton.jit
def attn_fwd_kernel(
    Q, K, V, O, LSE, CU_Q, CU_K, SEQUSED_K, BLOCK_TABLE,
    stride_qb, stride_qm, stride_qh, stride_kb, stride_kn, stride_kh, stride_vb, stride_vn, stride_vh,
    stride_ob, stride_om, stride_oh, stride_lb, stride_lh, stride_btb, stride_kpage, stride_vpage,
    seqlen_q_max, seqlen_k_max, n_heads, group, batch, qk_scale, softcap, left, right, seq_bucket, page_size,
    VARLEN: tl.constexpr, SEQUSED: tl.constexpr, PAGED: tl.constexpr, PAGE: tl.constexpr,
    HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, SOFTCAP: tl.constexpr, USE_TMA: tl.constexpr,
    HEAD_DIM: tl.constexpr, HEAD_DIM_P: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    PACK_GQA: tl.constexpr,
):
    # PACK_GQA (short queries: decode): one program per (sequence, KV head) whose tile rows are the GROUP query
    # heads sharing that KV head times the query positions (row r: position r // group, head h_kv * group +
    # r % group), so each KV head's keys are streamed once, not once per query head. Grid: (cdiv(seqlen_q_max *
    # group, BLOCK_M), batch * n_heads // group).
    # seq_bucket only feeds the autotune key (one tuning per power-of-two length).
    EVEN_D: tl.constexpr = HEAD_DIM == HEAD_DIM_P
    n_m = tl.num_programs(0)
    # Heaviest query blocks first (causal: the last rows see the most keys), which shortens the tail.
    pid_m = n_m - 1 - tl.program_id(0)
    pid_bh = tl.program_id(1)
    if PACK_GQA:
        b = pid_bh // (n_heads // group)
        h_kv = pid_bh % (n_heads // group)
        h = h_kv * group  # first query head of the group (the rows carry their own, see h_rows)
    else:
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
    if SEQUSED:
        seqlen_k = tl.load(SEQUSED_K + b)
    start_m = pid_m * BLOCK_M
    offs_r = start_m + tl.arange(0, BLOCK_M)
    if PACK_GQA:
        if start_m >= seqlen_q * group:
            return
        offs_m = offs_r // group  # query position of each row
        h_rows = h + offs_r % group  # query head of each row
        row_ok = offs_r < seqlen_q * group
        first_m = start_m // group
        last_m = (start_m + BLOCK_M - 1) // group
    else:
        if start_m >= seqlen_q:
            return
        offs_m = offs_r
        h_rows = h + tl.zeros([BLOCK_M], dtype=tl.int32)
        row_ok = offs_m < seqlen_q
        first_m = start_m
        last_m = start_m + BLOCK_M - 1
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM_P)
    b64 = b.to(tl.int64)
    q_ptrs = (Q + b64 * stride_qb + h_rows.to(tl.int64)[:, None] * stride_qh
              + (q_start + offs_m).to(tl.int64)[:, None] * stride_qm + offs_d[None, :])
    q_mask = row_ok[:, None]
    if not EVEN_D:
        q_mask = q_mask & (offs_d[None, :] < HEAD_DIM)
    k_desc = 0
    v_desc = 0
    if USE_TMA:
        q_desc = tl.make_tensor_descriptor(Q, shape=[batch, seqlen_q_max, n_heads, HEAD_DIM],
                                           strides=[stride_qb, stride_qm, stride_qh, 1],
                                           block_shape=[1, BLOCK_M, 1, HEAD_DIM_P])
        k_desc = tl.make_tensor_descriptor(K, shape=[batch, seqlen_k_max, n_heads // group, HEAD_DIM],
                                           strides=[stride_kb, stride_kn, stride_kh, 1],
                                           block_shape=[1, BLOCK_N, 1, HEAD_DIM_P])
        v_desc = tl.make_tensor_descriptor(V, shape=[batch, seqlen_k_max, n_heads // group, HEAD_DIM],
                                           strides=[stride_vb, stride_vn, stride_vh, 1],
                                           block_shape=[1, BLOCK_N, 1, HEAD_DIM_P])
        q = tl.reshape(q_desc.load([b, start_m, h, 0]), (BLOCK_M, HEAD_DIM_P))
    else:
        q = tl.load(q_ptrs, mask=q_mask, other=0.0)
    k_base = K + b64 * stride_kb + h_kv.to(tl.int64) * stride_kh + k_start.to(tl.int64) * stride_kn
    v_base = V + b64 * stride_vb + h_kv.to(tl.int64) * stride_vh + k_start.to(tl.int64) * stride_vn
    bt_row = BLOCK_TABLE + b64 * stride_btb
    if PAGED:  # pages hold the batch dimension: the page index carries it
        k_base = K + h_kv.to(tl.int64) * stride_kh
        v_base = V + h_kv.to(tl.int64) * stride_vh

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM_P], dtype=tl.float32)
    lo, full_lo, full_hi, hi = _band_rows(first_m, last_m, seqlen_q, seqlen_k, left, right, HAS_LEFT, HAS_RIGHT,
                                          BLOCK_N)
    acc, m_i, l_i = _attn_blocks(acc, m_i, l_i, q, k_base, v_base, k_desc, v_desc, lo, full_lo, offs_m, offs_n,
                                 offs_d, seqlen_q, seqlen_k, stride_kn, stride_vn, bt_row, stride_kpage,
                                 stride_vpage, b, h_kv, 0, qk_scale, softcap, left, right, page_size, True, HAS_LEFT,
                                 HAS_RIGHT, SOFTCAP, PAGED, PAGE, USE_TMA, EVEN_D, HEAD_DIM, BLOCK_N, HEAD_DIM_P)
    acc, m_i, l_i = _attn_blocks(acc, m_i, l_i, q, k_base, v_base, k_desc, v_desc, full_lo, full_hi, offs_m,
                                 offs_n, offs_d, seqlen_q, seqlen_k, stride_kn, stride_vn, bt_row, stride_kpage,
                                 stride_vpage, b, h_kv, 0, qk_scale, softcap, left, right, page_size, False, HAS_LEFT,
                                 HAS_RIGHT, SOFTCAP, PAGED, PAGE, USE_TMA, EVEN_D, HEAD_DIM, BLOCK_N, HEAD_DIM_P)
    acc, m_i, l_i = _attn_blocks(acc, m_i, l_i, q, k_base, v_base, k_desc, v_desc, full_hi, hi, offs_m, offs_n,
                                 offs_d, seqlen_q, seqlen_k, stride_kn, stride_vn, bt_row, stride_kpage,
                                 stride_vpage, b, h_kv, 0, qk_scale, softcap, left, right, page_size, True, HAS_LEFT,
                                 HAS_RIGHT, SOFTCAP, PAGED, PAGE, USE_TMA, EVEN_D, HEAD_DIM, BLOCK_N, HEAD_DIM_P)

    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    out = acc / l_safe[:, None]
    lse = tl.where(empty, float("-inf"), (m_i + tl.log2(l_safe)) * 0.6931471805599453)
    o_ptrs = (O + b64 * stride_ob + h_rows.to(tl.int64)[:, None] * stride_oh
              + (q_start + offs_m).to(tl.int64)[:, None] * stride_om + offs_d[None, :])
    tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=q_mask)
    lse_ptrs = LSE + b64 * stride_lb + h_rows.to(tl.int64) * stride_lh + q_start + offs_m
    tl.store(lse_ptrs, lse, mask=row_ok)


def family(head_dim: int) -> str:
    """Tile family of a head dim: small (<= 64), mid (96, 128) or big (256)."""
    return "small" if head_dim <= 64 else ("mid" if head_dim <= 128 else "big")


def _configs(hopper: bool, fam: str):
    if INTERPRET:
        return [triton.Config({"BLOCK_M": 32, "BLOCK_N": 16}, num_warps=4, num_stages=1)]
    if fam == "big":  # head dim 256: a 128x256 Q tile plus K/V stages overflows shared memory
        configs = [triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=2),
                   triton.Config({"BLOCK_M": 64, "BLOCK_N": 32}, num_warps=4, num_stages=2),
                   triton.Config({"BLOCK_M": 128, "BLOCK_N": 32}, num_warps=8, num_stages=1)]
    elif fam == "small":  # head dim 64: tiles are cheap in shared memory; deeper pipelines, 4-warp variants
        configs = [triton.Config({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=4, num_stages=3),
                   triton.Config({"BLOCK_M": 128, "BLOCK_N": 128}, num_warps=8, num_stages=3),
                   triton.Config({"BLOCK_M": 128, "BLOCK_N": 128}, num_warps=4, num_stages=3),
                   triton.Config({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=4, num_stages=4)]
    else:
        configs = [triton.Config({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=8, num_stages=3),
                   triton.Config({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=4, num_stages=3),
                   triton.Config({"BLOCK_M": 128, "BLOCK_N": 128}, num_warps=8, num_stages=2)]
        if hopper:
            configs.append(triton.Config({"BLOCK_M": 128, "BLOCK_N": 128}, num_warps=8, num_stages=3))
    if os.environ.get("FLASH_ATTN_TRITON_AUTOTUNE", "1") == "0":
        return configs[:1]
    return configs


def _prune(configs, named_args, **kwargs):
    """Short queries (decode, short prefill) get 64-row tiles (runs only when there is more than one config)."""
    if INTERPRET or named_args["seqlen_q_max"] > 64:
        return configs
    out = []
    for c in configs:
        c = triton.Config({"BLOCK_M": 64, "BLOCK_N": c.kwargs["BLOCK_N"]}, num_warps=4, num_stages=c.num_stages)
        if all(c.kwargs != o.kwargs or c.num_stages != o.num_stages for o in out):
            out.append(c)
    return out


_KEY = ["HEAD_DIM", "VARLEN", "SEQUSED", "PAGED", "HAS_LEFT", "HAS_RIGHT", "SOFTCAP", "USE_TMA", "PACK_GQA", "seq_bucket"]
_tuned = {}


def tuned_kernel(hopper: bool, head_dim: int):
    """The autotuned forward kernel for a tile family (Hopper or not; head dim small, mid or big); the tuning key
    is the flags and a log2 length bucket."""
    key = (hopper, family(head_dim))
    if key not in _tuned:
        _tuned[key] = triton.autotune(configs=_configs(*key), key=_KEY,
                                      prune_configs_by={"early_config_prune": _prune})(attn_fwd_kernel)
    return _tuned[key]
