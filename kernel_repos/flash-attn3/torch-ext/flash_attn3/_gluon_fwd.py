"""Hopper (sm_90a) warp-specialized flash-attention forward in Gluon.

One CTA computes 2 x 64 query rows of one (batch, query head), in three partitions:

- producer (1 warp, few registers): TMA loads of the two Q tiles, then K and V tiles into two rings of
  ``STAGES`` shared-memory slots each; a slot's ``ready`` barrier completes when its bytes have landed, its
  ``empty`` barrier when both consumers are done with it.
- two consumer warpgroups (4 warps each, the registers the producer gave up): each owns 64 query rows and
  runs the online softmax over the same K/V tiles. Inside a consumer the P@V wgmma of tile j-1 is issued
  asynchronously together with the Q@K^T of tile j and waited for after tile j's softmax (``OVERLAP``).
  Between the consumers, ``PINGPONG`` passes a turn through two mbarriers: one issues its GEMMs while the other
  does its softmax, so the tensor cores always have one warpgroup's GEMMs to run.

What the SASS shows (ptxas 12.8, the one Triton 3.6 ships; gpu_gluon.py --dry-run counts it per config): ptxas
moves the P@V wait (wgmma.wait_group 0) up to the start of the softmax, so a warpgroup's softmax overlaps the
*other* warpgroup's GEMMs (ping-pong) but not its own P@V: 0 exp2 between the score wait and the P@V wait. Tried:
deferring the O rescale and the V release past the wait (kept: harmless, FA3's order), P through shared memory
(same hoisting), a P@V wait deferred into the next tile (ptxas then serializes every wgmma, C7514), a predicated
wait (same). ``UNROLL=2`` (two P register sets) is the one form with the softmax under P@V in SASS (54-66 of
the 66 exp2 of a tile), at 600 bytes of spills with 128-key tiles; the GPU ablations decide.

Semantics are flash_attn's (as in _triton_fwd.py): causal and windows aligned bottom-right, rows that see no
key give out 0 and lse -inf, softmax in base 2 with the scale folded into one FMA, lse returned in natural log.
Key blocks outside the causal/window band are never loaded. Q/K/V are viewed as 2-D
``(batch * seqlen, heads * head_dim)`` matrices for the TMA descriptors: key rows past ``seqlen_k`` (zero-filled
at the tensor end, else the next batch's rows) are masked, query rows past ``seqlen_q`` are computed but never
stored. Softcap is not implemented here; the caller routes it to the Triton ``tl`` kernel.
"""

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                              warpgroup_mma_wait)

LOG2E = 1.4426950408889634
LN2 = gl.constexpr(0.6931471805599453)
BLOCK_M = gl.constexpr(64)  # query rows per consumer warpgroup (the wgmma M of one warpgroup)
CONSUMERS = gl.constexpr(2)


@gluon.jit
def _band(m_lo, m_hi, seqlen_q, seqlen_k, left, right, HAS_LEFT: gl.constexpr, HAS_RIGHT: gl.constexpr,
          BLOCK_N: gl.constexpr):
    """Key range [lo, hi) seen by query rows [m_lo, m_hi); lo is a multiple of BLOCK_N."""
    off = seqlen_k - seqlen_q
    lo = 0
    hi = seqlen_k
    if HAS_LEFT:
        lo = gl.maximum(m_lo + off - left, 0)
        lo = (lo // BLOCK_N) * BLOCK_N
    if HAS_RIGHT:
        hi = gl.minimum(m_hi + off + right, seqlen_k)
    hi = gl.maximum(hi, lo)
    return lo, hi


@gluon.jit
def _producer(q_desc, k_desc, v_desc, q_smem, k_smem, v_smem, q_bar, k_ready, k_empty, v_ready, v_empty,
              q_row, q_col, k_row, k_col, n_tiles, BLOCK_N: gl.constexpr, STAGES: gl.constexpr):
    mbarrier.expect(q_bar, CONSUMERS * q_desc.block_type.nbytes)
    for c in gl.static_range(CONSUMERS):
        tma.async_copy_global_to_shared(q_desc, [q_row + c * BLOCK_M, q_col], q_bar, q_smem.index(c))
    for j in range(n_tiles):
        s = j % STAGES
        ph = (j // STAGES) & 1
        row = k_row + j * BLOCK_N
        mbarrier.wait(k_empty.index(s), ph ^ 1)  # a fresh barrier counts as phase 1 complete
        mbarrier.expect(k_ready.index(s), k_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(k_desc, [row, k_col], k_ready.index(s), k_smem.index(s))
        mbarrier.wait(v_empty.index(s), ph ^ 1)
        mbarrier.expect(v_ready.index(s), v_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(v_desc, [row, k_col], v_ready.index(s), v_smem.index(s))


@gluon.jit
def _take_turn(pp_bars, t, WG: gl.constexpr, PINGPONG: gl.constexpr):
    """Wait until it is this warpgroup's turn to issue GEMMs (turn t); warpgroup 0 goes first."""
    if PINGPONG:
        if WG == 0:
            mbarrier.wait(pp_bars.index(0), (t & 1) ^ 1)
        else:
            mbarrier.wait(pp_bars.index(1), t & 1)


@gluon.jit
def _pass_turn(pp_bars, WG: gl.constexpr, PINGPONG: gl.constexpr):
    if PINGPONG:
        mbarrier.arrive(pp_bars.index(1 - WG), count=1)


@gluon.jit
def _softmax(s_acc, m_i, l_i, n0, r_lo, seqlen_k, off, left, right, qk_scale, need_mask,
             HAS_LEFT: gl.constexpr, HAS_RIGHT: gl.constexpr):
    """Online-softmax step on raw scores s_acc: -> p (unnormalised, base 2, fp32), alpha, new row max, new row sum.
    The row max is kept in scaled (base-2) units so p = exp2(s * scale - m) is one FMA and one exp2."""
    s = s_acc
    if need_mask:
        # Indices made here, not kept live across the loop (a register per column per thread otherwise).
        layout: gl.constexpr = s.type.layout
        cols = gl.expand_dims(n0 + gl.arange(0, s.shape[1], layout=gl.SliceLayout(0, layout)), 0)
        r = gl.expand_dims(r_lo + gl.arange(0, s.shape[0], layout=gl.SliceLayout(1, layout)), 1)
        ok = (cols < seqlen_k) & (r >= 0)
        if HAS_LEFT:
            ok = ok & (cols >= r + off - left)
        if HAS_RIGHT:
            ok = ok & (cols <= r + off + right)
        s = gl.where(ok, s, float("-inf"))
    m_new = gl.maximum(m_i, gl.max(s, 1) * qk_scale)
    m_use = gl.where(m_new == float("-inf"), 0.0, m_new)  # a row that saw no key yet: no NaN
    p = gl.exp2(s * qk_scale - gl.expand_dims(m_use, 1))
    alpha = gl.exp2(m_i - m_use)
    l_i = l_i * alpha + gl.sum(p, 1)
    return p, alpha, m_new, l_i


@gluon.jit
def _needs_mask(n0, r_lo, r_hi, seqlen_k, off, left, right, HAS_LEFT: gl.constexpr, HAS_RIGHT: gl.constexpr,
                BLOCK_N: gl.constexpr):
    """Whether key block [n0, n0 + BLOCK_N) is not wholly visible to every row in [r_lo, r_hi)."""
    need = n0 + BLOCK_N > seqlen_k
    if HAS_RIGHT:
        need = need | (n0 + BLOCK_N - 1 > r_lo + off + right)
    if HAS_LEFT:
        need = need | (n0 < r_hi - 1 + off - left)
    return need


@gluon.jit
def _unmasked_tiles(n_lo, n_tiles, r_lo, r_hi, seqlen_k, off, left, right, HAS_LEFT: gl.constexpr,
                    HAS_RIGHT: gl.constexpr, BLOCK_N: gl.constexpr):
    """Tiles [t_a, t_b) of this warpgroup's rows need no mask; 1 <= t_a <= t_b <= n_tiles (tile 0 is checked
    on its own)."""
    t_a = 1
    if HAS_LEFT:
        t_a = gl.maximum(gl.cdiv(r_hi - 1 + off - left - n_lo, BLOCK_N), 1)
    t_a = gl.minimum(t_a, n_tiles)
    lim = seqlen_k
    if HAS_RIGHT:
        lim = gl.minimum(r_lo + off + right + 1, seqlen_k)
    t_b = gl.maximum(lim - n_lo, 0) // BLOCK_N
    t_b = gl.minimum(gl.maximum(t_b, t_a), n_tiles)
    return t_a, t_b


@gluon.jit
def _tile(j, o, m_i, l_i, p, alpha, q, k_smem, v_smem, k_ready, k_empty, v_ready, v_empty, pp_bars, n_lo, r_lo,
          seqlen_k, off, left, right, qk_scale, s_zero, p_layout: gl.constexpr, orow: gl.constexpr,
          WG: gl.constexpr, MASK: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
          HAS_LEFT: gl.constexpr, HAS_RIGHT: gl.constexpr, PINGPONG: gl.constexpr, OVERLAP: gl.constexpr):
    """Scores of tile j and P@V of tile j-1 in one turn; tile j's softmax under the running P@V (OVERLAP).

    O is rescaled by the previous tile's alpha between the two GEMM issues (as FA3 does), not right after the
    P@V wait: work that depends on the wait at the end of the body makes ptxas hoist the wait above the softmax.
    Straight-line code from the GEMM issue to the last wait: a branch there makes ptxas wait for the wgmma."""
    s = j % STAGES
    sp = (j - 1) % STAGES
    n0 = n_lo + j * BLOCK_N
    _take_turn(pp_bars, j, WG, PINGPONG)
    mbarrier.wait(k_ready.index(s), (j // STAGES) & 1)
    s_tok = warpgroup_mma(q, k_smem.index(s).permute((1, 0)), s_zero, use_acc=False, is_async=True)
    o = o * gl.expand_dims(gl.convert_layout(alpha, orow), 1)
    mbarrier.wait(v_ready.index(sp), ((j - 1) // STAGES) & 1)
    o_tok = warpgroup_mma(p, v_smem.index(sp), o, is_async=True)
    _pass_turn(pp_bars, WG, PINGPONG)
    if STAGES >= 2:
        # V of tile j-2 (its P@V was waited for in the previous tile) is released here, not right after that wait:
        # an arrive behind the wait lets ptxas hoist the wait and the arrive above the softmax. With one stage the
        # producer needs that slot for V of tile j-1, which this tile waits for: release at once (below).
        mbarrier.arrive(v_empty.index((j + STAGES - 2) % STAGES), count=1, pred=j >= 2)
    if OVERLAP:
        s_acc = warpgroup_mma_wait(1, deps=(s_tok, ))
        mbarrier.arrive(k_empty.index(s), count=1)
        p_new, alpha, m_i, l_i = _softmax(s_acc, m_i, l_i, n0, r_lo, seqlen_k, off, left, right, qk_scale,
                                          MASK, HAS_LEFT, HAS_RIGHT)
        o = warpgroup_mma_wait(0, deps=(o_tok, p))[0]
    else:
        s_acc, o, p = warpgroup_mma_wait(0, deps=(s_tok, o_tok, p))
        mbarrier.arrive(k_empty.index(s), count=1)
        p_new, alpha, m_i, l_i = _softmax(s_acc, m_i, l_i, n0, r_lo, seqlen_k, off, left, right, qk_scale,
                                          MASK, HAS_LEFT, HAS_RIGHT)
    if STAGES == 1:
        mbarrier.arrive(v_empty.index(sp), count=1)
    # The 16-bit A operand of the next P@V is written only now: its registers may be the ones the running P@V reads.
    p = gl.convert_layout(p_new.to(q.dtype), p_layout)
    return o, m_i, l_i, p, alpha


@gluon.jit
def _consumer(WG: gl.constexpr, o_ptr, lse_ptr, q_smem, k_smem, v_smem, q_bar, k_ready, k_empty, v_ready,
              v_empty, pp_bars, m0, seqlen_q, seqlen_k, n_lo, n_tiles, left, right, qk_scale, o_off, stride_om,
              lse_off, HEAD_DIM: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr, HAS_LEFT: gl.constexpr,
              HAS_RIGHT: gl.constexpr, PINGPONG: gl.constexpr, OVERLAP: gl.constexpr, UNROLL: gl.constexpr):
    dtype: gl.constexpr = q_smem.dtype
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, BLOCK_N, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, HEAD_DIM, 16])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    srow: gl.constexpr = gl.SliceLayout(1, s_layout)
    orow: gl.constexpr = gl.SliceLayout(1, o_layout)

    off = seqlen_k - seqlen_q
    r_lo = m0 + WG * BLOCK_M
    r_hi = r_lo + BLOCK_M
    s_zero = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, s_layout)
    o = gl.zeros([BLOCK_M, HEAD_DIM], gl.float32, o_layout)
    m_i = gl.full([BLOCK_M], float("-inf"), gl.float32, srow)
    l_i = gl.zeros([BLOCK_M], gl.float32, srow)

    mbarrier.wait(q_bar, 0)
    q = q_smem.index(WG)
    if n_tiles > 0:
        # Tile 0: scores only; its P@V goes out with tile 1's scores. Nothing is in flight during its softmax,
        # so its mask is a runtime branch.
        _take_turn(pp_bars, 0, WG, PINGPONG)
        mbarrier.wait(k_ready.index(0), 0)
        s_tok = warpgroup_mma(q, k_smem.index(0).permute((1, 0)), s_zero, use_acc=False, is_async=True)
        _pass_turn(pp_bars, WG, PINGPONG)
        s_acc = warpgroup_mma_wait(0, deps=(s_tok, ))
        mbarrier.arrive(k_empty.index(0), count=1)
        need = _needs_mask(n_lo, r_lo, r_hi, seqlen_k, off, left, right, HAS_LEFT, HAS_RIGHT, BLOCK_N)
        p, alpha, m_i, l_i = _softmax(s_acc, m_i, l_i, n_lo, r_lo, seqlen_k, off, left, right, qk_scale,
                                      need, HAS_LEFT, HAS_RIGHT)
        p = gl.convert_layout(p.to(dtype), p_layout)
        t_a, t_b = _unmasked_tiles(n_lo, n_tiles, r_lo, r_hi, seqlen_k, off, left, right, HAS_LEFT, HAS_RIGHT,
                                   BLOCK_N)
        for j in range(1, t_a):
            o, m_i, l_i, p, alpha = _tile(j, o, m_i, l_i, p, alpha, q, k_smem, v_smem, k_ready, k_empty,
                                          v_ready, v_empty, pp_bars, n_lo, r_lo, seqlen_k, off, left,
                                          right, qk_scale, s_zero, p_layout, orow, WG, True, BLOCK_N, STAGES,
                                          HAS_LEFT, HAS_RIGHT, PINGPONG, OVERLAP)
        # UNROLL: two tiles per trip, so P alternates between two register sets and the softmax may write the next
        # P while the running P@V still reads the previous one. With one set ptxas reuses the in-flight P
        # registers and so waits for P@V before the softmax (no overlap); two sets overlap but spill at 240 regs.
        t_run = t_a + (t_b - t_a) % UNROLL
        for j in range(t_a, t_run):
            o, m_i, l_i, p, alpha = _tile(j, o, m_i, l_i, p, alpha, q, k_smem, v_smem, k_ready, k_empty,
                                          v_ready, v_empty, pp_bars, n_lo, r_lo, seqlen_k, off, left,
                                          right, qk_scale, s_zero, p_layout, orow, WG, False, BLOCK_N, STAGES,
                                          HAS_LEFT, HAS_RIGHT, PINGPONG, OVERLAP)
        for j0 in range(t_run, t_b, UNROLL):
            for u in gl.static_range(UNROLL):
                o, m_i, l_i, p, alpha = _tile(j0 + u, o, m_i, l_i, p, alpha, q, k_smem, v_smem, k_ready, k_empty,
                                              v_ready, v_empty, pp_bars, n_lo, r_lo, seqlen_k, off, left,
                                              right, qk_scale, s_zero, p_layout, orow, WG, False, BLOCK_N, STAGES,
                                              HAS_LEFT, HAS_RIGHT, PINGPONG, OVERLAP)
        for j in range(t_b, n_tiles):
            o, m_i, l_i, p, alpha = _tile(j, o, m_i, l_i, p, alpha, q, k_smem, v_smem, k_ready, k_empty,
                                          v_ready, v_empty, pp_bars, n_lo, r_lo, seqlen_k, off, left,
                                          right, qk_scale, s_zero, p_layout, orow, WG, True, BLOCK_N, STAGES,
                                          HAS_LEFT, HAS_RIGHT, PINGPONG, OVERLAP)
        last = (n_tiles - 1) % STAGES
        _take_turn(pp_bars, n_tiles, WG, PINGPONG)
        o = o * gl.expand_dims(gl.convert_layout(alpha, orow), 1)
        mbarrier.wait(v_ready.index(last), ((n_tiles - 1) // STAGES) & 1)
        o_tok = warpgroup_mma(p, v_smem.index(last), o, is_async=True)
        _pass_turn(pp_bars, WG, PINGPONG)
        if STAGES >= 2:
            mbarrier.arrive(v_empty.index((n_tiles + STAGES - 2) % STAGES), count=1, pred=n_tiles >= 2)
        o = warpgroup_mma_wait(0, deps=(o_tok, p))[0]
        mbarrier.arrive(v_empty.index(last), count=1)

    empty = l_i == 0.0
    l_safe = gl.where(empty, 1.0, l_i)
    out = o / gl.expand_dims(gl.convert_layout(l_safe, orow), 1)
    lse = gl.where(empty, float("-inf"), (m_i + gl.log2(l_safe)) * LN2)
    orows = r_lo + gl.arange(0, BLOCK_M, layout=orow)
    ocols = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, o_layout))
    o_ptrs = (o_ptr + o_off + gl.expand_dims(orows.to(gl.int64) * stride_om, 1) + gl.expand_dims(ocols, 0))
    gl.store(o_ptrs, out.to(dtype), mask=gl.expand_dims(orows < seqlen_q, 1) & gl.expand_dims(ocols >= 0, 0))
    rows = r_lo + gl.arange(0, BLOCK_M, layout=srow)
    gl.store(lse_ptr + lse_off + rows, lse, mask=rows < seqlen_q)


@gluon.jit
def attn_fwd_kernel(q_desc, k_desc, v_desc, o_ptr, lse_ptr, seqlen_q, seqlen_k, n_heads, group,
                    stride_ob, stride_om, stride_oh, stride_lb, stride_lh, qk_scale, left, right,
                    HEAD_DIM: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
                    HAS_LEFT: gl.constexpr, HAS_RIGHT: gl.constexpr, PINGPONG: gl.constexpr,
                    OVERLAP: gl.constexpr, UNROLL: gl.constexpr, CONSUMER_REGS: gl.constexpr,
                    PRODUCER_REGS: gl.constexpr):
    # Heaviest query blocks first (causal: the last rows see the most keys), which shortens the tail.
    pid_m = gl.num_programs(0) - 1 - gl.program_id(0)
    pid_bh = gl.program_id(1)
    b = pid_bh // n_heads
    h = pid_bh % n_heads
    h_kv = h // group
    m0 = pid_m * (CONSUMERS * BLOCK_M)
    n_lo, n_hi = _band(m0, gl.minimum(m0 + CONSUMERS * BLOCK_M, seqlen_q), seqlen_q, seqlen_k, left, right,
                       HAS_LEFT, HAS_RIGHT, BLOCK_N)
    n_tiles = gl.cdiv(n_hi - n_lo, BLOCK_N)

    q_smem = gl.allocate_shared_memory(q_desc.dtype, [CONSUMERS] + q_desc.block_type.shape, q_desc.layout)
    k_smem = gl.allocate_shared_memory(k_desc.dtype, [STAGES] + k_desc.block_type.shape, k_desc.layout)
    v_smem = gl.allocate_shared_memory(v_desc.dtype, [STAGES] + v_desc.block_type.shape, v_desc.layout)
    q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    k_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    k_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    pp_bars = gl.allocate_shared_memory(gl.int64, [CONSUMERS, 1], mbarrier.MBarrierLayout())
    mbarrier.init(q_bar, count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(k_ready.index(i), count=1)
        mbarrier.init(v_ready.index(i), count=1)
        mbarrier.init(k_empty.index(i), count=CONSUMERS)
        mbarrier.init(v_empty.index(i), count=CONSUMERS)
    for i in gl.static_range(CONSUMERS):
        mbarrier.init(pp_bars.index(i), count=1)
    fence_async_shared()

    q_row = b * seqlen_q + m0
    k_row = b * seqlen_k + n_lo
    o_off = b.to(gl.int64) * stride_ob + h.to(gl.int64) * stride_oh
    lse_off = b.to(gl.int64) * stride_lb + h.to(gl.int64) * stride_lh
    gl.warp_specialize([
        (_consumer, (0, o_ptr, lse_ptr, q_smem, k_smem, v_smem, q_bar, k_ready, k_empty, v_ready, v_empty,
                     pp_bars, m0, seqlen_q, seqlen_k, n_lo, n_tiles, left, right, qk_scale, o_off, stride_om,
                     lse_off, HEAD_DIM, BLOCK_N, STAGES, HAS_LEFT, HAS_RIGHT, PINGPONG, OVERLAP, UNROLL)),
        (_consumer, (1, o_ptr, lse_ptr, q_smem, k_smem, v_smem, q_bar, k_ready, k_empty, v_ready, v_empty,
                     pp_bars, m0, seqlen_q, seqlen_k, n_lo, n_tiles, left, right, qk_scale, o_off, stride_om,
                     lse_off, HEAD_DIM, BLOCK_N, STAGES, HAS_LEFT, HAS_RIGHT, PINGPONG, OVERLAP, UNROLL)),
        (_producer, (q_desc, k_desc, v_desc, q_smem, k_smem, v_smem, q_bar, k_ready, k_empty, v_ready, v_empty,
                     q_row, h * HEAD_DIM, k_row, h_kv * HEAD_DIM, n_tiles, BLOCK_N, STAGES)),
    ], [4, 1], [CONSUMER_REGS, PRODUCER_REGS])
