// AVX-512 forward kernel (x86-64 with AVX512F/BW/VL/DQ + AVX512_BF16).
//
// The instruction set is enabled per function by the `#pragma GCC target`
// below, not by command-line flags: headers included above the pragma (and any
// inline/template code they bring) stay baseline, so nothing this TU emits can
// leak AVX-512 instructions into code shared with other TUs. The caller only
// reaches these functions after a runtime CPU check (see flash_fwd_cpu.cpp).
//
// bf16 inputs use VDPBF16PS (pairs of bf16 products accumulated in fp32) for
// both Q·K^T and P·V, with P rounded to bf16 as flash-attention does on GPUs.
// fp32 inputs use fp32 FMAs. Head dims must be multiples of 16 here.
#include <immintrin.h>
#include <math.h>
#include <sched.h>
#include <stdint.h>
#include <string.h>

#include "flash_fwd_params.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma")

namespace flash_attn2_cpu {
namespace {

constexpr int kRowsQK = 8;   // query rows per Q·K^T micro-tile (x 32 keys)
constexpr int kRowsPV = 4;   // query rows per P·V micro-tile (x up to 64 dims)
constexpr int kVecs = kBlockK / 16;  // score vectors per row of a key block
static_assert(kBlockK % 32 == 0, "key blocks are processed in 32-key halves");

inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }

// exp for x <= ~88; exactly 0 for x <= -104 (incl. -inf).
inline __m512 exp512(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-104.f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  // Taylor to degree 7 on |r| <= 0.347: relative error < 1e-8.
  __m512 e = _mm512_set1_ps(1.f / 5040.f);
  e = _mm512_fmadd_ps(e, r, _mm512_set1_ps(1.f / 720.f));
  e = _mm512_fmadd_ps(e, r, _mm512_set1_ps(1.f / 120.f));
  e = _mm512_fmadd_ps(e, r, _mm512_set1_ps(1.f / 24.f));
  e = _mm512_fmadd_ps(e, r, _mm512_set1_ps(1.f / 6.f));
  e = _mm512_fmadd_ps(e, r, _mm512_set1_ps(0.5f));
  e = _mm512_fmadd_ps(e, r, _mm512_set1_ps(1.f));
  e = _mm512_fmadd_ps(e, r, _mm512_set1_ps(1.f));
  return _mm512_scalef_ps(e, n);
}

// tanh(x) = sign(x) * (1 - t) / (1 + t), t = exp(-2|x|).
inline __m512 tanh512(__m512 x) {
  const __m512 ax = _mm512_abs_ps(x);
  const __m512 t = exp512(_mm512_mul_ps(ax, _mm512_set1_ps(-2.f)));
  const __m512 one = _mm512_set1_ps(1.f);
  const __m512 y = _mm512_div_ps(_mm512_sub_ps(one, t), _mm512_add_ps(one, t));
  const __m512i sign = _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(int(0x80000000u)));
  return _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(y), sign));
}

inline __m512bh as_bh(__m512i v) { return (__m512bh)v; }

// S[r][0..32) = sum over d-pairs of Q[r] . Kp[pair][0..32); Kp rows are kBlockK words apart.
template <int R>
inline void qk_bf16(const uint32_t* Q, int64_t q_stride, const uint32_t* Kp, int64_t npairs,
                    float* S) {
  __m512 a0[R], a1[R];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) a0[r] = a1[r] = _mm512_setzero_ps();
  for (int64_t pp = 0; pp < npairs; ++pp) {
    const __m512bh k0 = as_bh(_mm512_loadu_si512(Kp + pp * kBlockK));
    const __m512bh k1 = as_bh(_mm512_loadu_si512(Kp + pp * kBlockK + 16));
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const __m512bh qb = as_bh(_mm512_set1_epi32(int(Q[r * q_stride + pp])));
      a0[r] = _mm512_dpbf16_ps(a0[r], qb, k0);
      a1[r] = _mm512_dpbf16_ps(a1[r], qb, k1);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
    _mm512_storeu_ps(S + r * kBlockK, a0[r]);
    _mm512_storeu_ps(S + r * kBlockK + 16, a1[r]);
  }
}

template <int R>
inline void qk_f32(const float* Q, int64_t D, const float* Kt, float* S) {
  __m512 a0[R], a1[R];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) a0[r] = a1[r] = _mm512_setzero_ps();
  for (int64_t d = 0; d < D; ++d) {
    const __m512 k0 = _mm512_loadu_ps(Kt + d * kBlockK);
    const __m512 k1 = _mm512_loadu_ps(Kt + d * kBlockK + 16);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const __m512 qb = _mm512_set1_ps(Q[r * D + d]);
      a0[r] = _mm512_fmadd_ps(qb, k0, a0[r]);
      a1[r] = _mm512_fmadd_ps(qb, k1, a1[r]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
    _mm512_storeu_ps(S + r * kBlockK, a0[r]);
    _mm512_storeu_ps(S + r * kBlockK + 16, a1[r]);
  }
}

// O[r][0..16*NV) += sum over key pairs of P[r][pair] . Vp[pair][0..16*NV).
template <int R, int NV>
inline void pv_bf16(const uint32_t* P, const uint32_t* Vp, int64_t D, int64_t npairs, float* O) {
  __m512 acc[R][NV];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_loadu_ps(O + r * D + 16 * v);
  for (int64_t jp = 0; jp < npairs; ++jp) {
    __m512bh vv[NV];
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) vv[v] = as_bh(_mm512_loadu_si512(Vp + jp * D + 16 * v));
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const __m512bh pb = as_bh(_mm512_set1_epi32(int(P[r * (kBlockK / 2) + jp])));
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], pb, vv[v]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) _mm512_storeu_ps(O + r * D + 16 * v, acc[r][v]);
}

template <int R, int NV>
inline void pv_f32(const float* P, const float* V, int64_t v_stride, int64_t nk, int64_t D,
                   float* O) {
  __m512 acc[R][NV];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_loadu_ps(O + r * D + 16 * v);
  for (int64_t j = 0; j < nk; ++j) {
    __m512 vv[NV];
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) vv[v] = _mm512_loadu_ps(V + j * v_stride + 16 * v);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const __m512 pb = _mm512_set1_ps(P[r * kBlockK + j]);
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(pb, vv[v], acc[r][v]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) _mm512_storeu_ps(O + r * D + 16 * v, acc[r][v]);
}

// Splits the head dim into 64/32/16-wide chunks for the P·V micro-tiles.
template <bool kBf16>
inline void pv_tile(const void* P, const void* V, int64_t v_stride, int64_t nk, int64_t D,
                    float* O) {
  for (int64_t d0 = 0; d0 < D;) {
    const int64_t rest = D - d0;
    const int nv = rest >= 64 ? 4 : rest >= 32 ? 2 : 1;
    if (kBf16) {
      const uint32_t* Pw = static_cast<const uint32_t*>(P);
      const uint32_t* Vw = static_cast<const uint32_t*>(V) + d0;
      const int64_t np = (nk + 1) / 2;
      if (nv == 4) pv_bf16<kRowsPV, 4>(Pw, Vw, D, np, O + d0);
      else if (nv == 2) pv_bf16<kRowsPV, 2>(Pw, Vw, D, np, O + d0);
      else pv_bf16<kRowsPV, 1>(Pw, Vw, D, np, O + d0);
    } else {
      const float* Pf = static_cast<const float*>(P);
      const float* Vf = static_cast<const float*>(V) + d0;
      if (nv == 4) pv_f32<kRowsPV, 4>(Pf, Vf, v_stride, nk, D, O + d0);
      else if (nv == 2) pv_f32<kRowsPV, 2>(Pf, Vf, v_stride, nk, D, O + d0);
      else pv_f32<kRowsPV, 1>(Pf, Vf, v_stride, nk, D, O + d0);
    }
    d0 += 16 * nv;
  }
}

void pack_block(const FwdParams& p, const SeqView& s, int64_t b, int64_t kb, int64_t hk,
                uint32_t* blk) {
  const int64_t D = p.head_dim;
  const int64_t k_base = b * p.k_batch_stride + hk * p.k_head_stride;
  const int64_t v_base = b * p.v_batch_stride + hk * p.v_head_stride;
  const int64_t k0 = kb * kBlockK;
  const int64_t nk = imin(kBlockK, s.sk - k0);
  if (p.dtype == DType::kBFloat16) {
    // K as [D/2][BK] words (d-pairs of one key); V as [BK/2][D] words (key-pairs of one dim).
    const uint16_t* K = static_cast<const uint16_t*>(p.k);
    const uint16_t* V = static_cast<const uint16_t*>(p.v);
    uint32_t* Kp = blk;
    uint32_t* Vp = blk + kBlockK * D / 2;
    for (int64_t j = 0; j < kBlockK; ++j) {
      if (j < nk) {
        const uint16_t* krow = K + k_base + (s.k_row0 + k0 + j) * p.k_row_stride;
        for (int64_t pp = 0; pp < D / 2; ++pp) {
          uint32_t w;
          memcpy(&w, krow + 2 * pp, 4);
          Kp[pp * kBlockK + j] = w;
        }
      } else {
        for (int64_t pp = 0; pp < D / 2; ++pp) Kp[pp * kBlockK + j] = 0;
      }
    }
    for (int64_t jp = 0; jp < kBlockK / 2; ++jp) {
      const int64_t j = 2 * jp;
      const uint16_t* v0 = j < nk ? V + v_base + (s.k_row0 + k0 + j) * p.v_row_stride : nullptr;
      const uint16_t* v1 = j + 1 < nk ? V + v_base + (s.k_row0 + k0 + j + 1) * p.v_row_stride : nullptr;
      for (int64_t d = 0; d < D; ++d) {
        const uint32_t a = v0 ? v0[d] : 0u, c = v1 ? v1[d] : 0u;
        Vp[jp * D + d] = a | (c << 16);
      }
    }
  } else {
    // K transposed as [D][BK] floats; V is read in place.
    const float* K = static_cast<const float*>(p.k);
    float* Kt = reinterpret_cast<float*>(blk);
    for (int64_t j = 0; j < kBlockK; ++j) {
      const float* krow = j < nk ? K + k_base + (s.k_row0 + k0 + j) * p.k_row_stride : nullptr;
      for (int64_t d = 0; d < D; ++d) Kt[d * kBlockK + j] = krow ? krow[d] : 0.f;
    }
  }
}

// The packed block (b, kb, hk), packing it first if no task has yet. Packing
// takes microseconds, so a task that finds it in progress just waits.
const uint32_t* ready_block(const FwdParams& p, const SeqView& s, int64_t b, int64_t kb, int64_t hk) {
  const int64_t index = (p.kblock_base[b] + kb) * p.heads_k + hk;
  uint32_t* blk = p.kv_packed + index * packed_block_words(p.head_dim);
  int32_t* state = p.kv_state + index;
  if (__atomic_load_n(state, __ATOMIC_ACQUIRE) == 2) return blk;
  int32_t expected = 0;
  if (__atomic_compare_exchange_n(state, &expected, 1, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
    pack_block(p, s, b, kb, hk, blk);
    __atomic_store_n(state, 2, __ATOMIC_RELEASE);
    return blk;
  }
  for (int spins = 0; __atomic_load_n(state, __ATOMIC_ACQUIRE) != 2; ++spins) {
    if (spins < 1000) _mm_pause();
    else sched_yield();
  }
  return blk;
}

template <bool kBf16>
void fwd_block_impl(const FwdParams& p, int64_t b, int64_t h, int64_t qblock, float* ws) {
  const SeqView s = seq_view(p, b);
  const int64_t i0 = qblock * kBlockQ;
  if (i0 >= s.sq) return;
  const int64_t bq = imin(kBlockQ, s.sq - i0);
  const int64_t D = p.head_dim;
  const int64_t hk = h / (p.heads_q / p.heads_k);
  const float ninf = -__builtin_inff();

  float* O = ws;                                                    // [BQ][D]
  uint32_t* Qw = reinterpret_cast<uint32_t*>(O + kBlockQ * D);      // [BQ][D] (bf16: D/2 used)
  float* S = reinterpret_cast<float*>(Qw + kBlockQ * D);            // [BQ][BK]
  uint32_t* Pw = reinterpret_cast<uint32_t*>(S + kBlockQ * kBlockK);  // [BQ][BK/2]
  float* m = reinterpret_cast<float*>(Pw + kBlockQ * kBlockK);      // [BQ]
  float* l = m + kBlockQ;                                           // [BQ]
  const int64_t q_words = kBf16 ? D / 2 : D;

  const int64_t q_base = b * p.q_batch_stride + h * p.q_head_stride;
  const int64_t elem = kBf16 ? 2 : 4;
  for (int64_t r = 0; r < kBlockQ; ++r) {
    if (r < bq) {
      const char* src = static_cast<const char*>(p.q) +
                        (q_base + (s.q_row0 + i0 + r) * p.q_row_stride) * elem;
      memcpy(Qw + r * q_words, src, size_t(D * elem));
    } else {
      memset(Qw + r * q_words, 0, size_t(D * elem));
    }
    m[r] = ninf;
    l[r] = 0.f;
  }
  memset(O, 0, sizeof(float) * kBlockQ * D);

  const int64_t lo = key_lo(p, s, i0);
  const int64_t hi = key_hi(p, s, i0 + bq - 1);
  const float cap = p.softcap;
  const __m512 pre = _mm512_set1_ps(cap > 0.f ? p.softmax_scale / cap : p.softmax_scale);
  const __m512 capv = _mm512_set1_ps(cap);
  const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  const int64_t lo_last = key_lo(p, s, i0 + bq - 1);
  const int64_t hi_first = key_hi(p, s, i0);
  const int64_t v_base = b * p.v_batch_stride + hk * p.v_head_stride;

  for (int64_t kb = lo < 0 ? 0 : lo / kBlockK; lo <= hi && kb <= hi / kBlockK; ++kb) {
    const int64_t k0 = kb * kBlockK;
    const int64_t nk = imin(kBlockK, s.sk - k0);
    const uint32_t* blk = ready_block(p, s, b, kb, hk);
    const bool full = nk == kBlockK && bq == kBlockQ && k0 >= lo_last && k0 + kBlockK - 1 <= hi_first;

    // Scores for all kBlockQ rows (padded rows are zeros and masked below).
    for (int64_t r0 = 0; r0 < kBlockQ; r0 += kRowsQK) {
      for (int64_t half = 0; half < kBlockK && half < nk; half += 32) {
        if (kBf16) {
          qk_bf16<kRowsQK>(Qw + r0 * q_words, q_words, blk + half, D / 2, S + r0 * kBlockK + half);
        } else {
          qk_f32<kRowsQK>(reinterpret_cast<const float*>(Qw) + r0 * D, D,
                          reinterpret_cast<const float*>(blk) + half, S + r0 * kBlockK + half);
        }
      }
    }

    // Online softmax, one row at a time, kBlockK keys as kVecs vectors.
    for (int64_t r = 0; r < kBlockQ; ++r) {
      float* srow = S + r * kBlockK;
      __m512 x[kVecs];
      for (int c = 0; c < kVecs; ++c) {
        x[c] = _mm512_mul_ps(_mm512_loadu_ps(srow + 16 * c), pre);
        if (cap > 0.f) x[c] = _mm512_mul_ps(capv, tanh512(x[c]));
      }
      if (!full) {
        int64_t rlo = 1, rhi = 0;  // padded rows see nothing
        if (r < bq) {
          rlo = key_lo(p, s, i0 + r) - k0;
          rhi = imin(key_hi(p, s, i0 + r), s.sk - 1) - k0;
        }
        rlo = rlo < 0 ? 0 : rlo;
        rhi = rhi > kBlockK - 1 ? kBlockK - 1 : rhi;
        const __m512i vlo = _mm512_set1_epi32(int(rlo > kBlockK ? kBlockK : rlo));
        const __m512i vhi = _mm512_set1_epi32(int(rhi < -1 ? -1 : rhi));
        for (int c = 0; c < kVecs; ++c) {
          const __m512i idx = _mm512_add_epi32(lane, _mm512_set1_epi32(16 * c));
          const __mmask16 vis = _mm512_cmpge_epi32_mask(idx, vlo) & _mm512_cmple_epi32_mask(idx, vhi);
          x[c] = _mm512_mask_blend_ps(vis, _mm512_set1_ps(ninf), x[c]);
        }
      }
      __m512 vmax = x[0];
      for (int c = 1; c < kVecs; ++c) vmax = _mm512_max_ps(vmax, x[c]);
      const float mx = _mm512_reduce_max_ps(vmax);
      const float m_new = mx > m[r] ? mx : m[r];
      if (m_new == ninf) {  // nothing visible yet: contribute nothing
        if (kBf16) memset(Pw + r * (kBlockK / 2), 0, sizeof(uint32_t) * (kBlockK / 2));
        else memset(srow, 0, sizeof(float) * kBlockK);
        continue;
      }
      const float alpha = expf(m[r] - m_new);
      const __m512 mv = _mm512_set1_ps(m_new);
      __m512 vsum = _mm512_setzero_ps();
      for (int c = 0; c < kVecs; ++c) {
        x[c] = exp512(_mm512_sub_ps(x[c], mv));
        vsum = _mm512_add_ps(vsum, x[c]);
      }
      l[r] = l[r] * alpha + _mm512_reduce_add_ps(vsum);
      m[r] = m_new;
      if (alpha != 1.f) {
        const __m512 av = _mm512_set1_ps(alpha);
        float* orow = O + r * D;
        for (int64_t d = 0; d < D; d += 16)
          _mm512_storeu_ps(orow + d, _mm512_mul_ps(_mm512_loadu_ps(orow + d), av));
      }
      if (kBf16) {
        uint32_t* prow = Pw + r * (kBlockK / 2);
        for (int c = 0; c < kVecs; c += 2)
          _mm512_storeu_si512(prow + 8 * c, (__m512i)_mm512_cvtne2ps_pbh(x[c + 1], x[c]));
      } else {
        for (int c = 0; c < kVecs; ++c) _mm512_storeu_ps(srow + 16 * c, x[c]);
      }
    }

    // O += P . V
    for (int64_t r0 = 0; r0 < kBlockQ && r0 < bq; r0 += kRowsPV) {
      if (kBf16) {
        pv_tile<true>(Pw + r0 * (kBlockK / 2), blk + kBlockK * D / 2, D, nk, D, O + r0 * D);
      } else {
        const float* V = static_cast<const float*>(p.v) + v_base + (s.k_row0 + k0) * p.v_row_stride;
        pv_tile<false>(S + r0 * kBlockK, V, p.v_row_stride, nk, D, O + r0 * D);
      }
    }
  }

  const int64_t o_base = b * p.o_batch_stride + h * p.o_head_stride;
  for (int64_t r = 0; r < bq; ++r) {
    const int64_t row = o_base + (s.q_row0 + i0 + r) * p.o_row_stride;
    const __m512 inv = _mm512_set1_ps(l[r] > 0.f ? 1.f / l[r] : 0.f);
    for (int64_t d = 0; d < D; d += 16) {
      const __m512 y = _mm512_mul_ps(_mm512_loadu_ps(O + r * D + d), inv);
      if (kBf16) {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(static_cast<uint16_t*>(p.out) + row + d),
                            (__m256i)_mm512_cvtneps_pbh(y));
      } else {
        _mm512_storeu_ps(static_cast<float*>(p.out) + row + d, y);
      }
    }
    if (p.lse != nullptr) {
      p.lse[b * p.lse_batch_stride + h * p.lse_head_stride + s.q_row0 + i0 + r] =
          l[r] > 0.f ? m[r] + logf(l[r]) : ninf;
    }
  }
}

}  // namespace

void fwd_block_avx512(const FwdParams& p, int64_t b, int64_t h, int64_t qblock, float* ws) {
  if (p.dtype == DType::kBFloat16) {
    fwd_block_impl<true>(p, b, h, qblock, ws);
  } else {
    fwd_block_impl<false>(p, b, h, qblock, ws);
  }
}

}  // namespace flash_attn2_cpu

#pragma GCC pop_options
