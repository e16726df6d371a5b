// Portable forward kernel: baseline x86-64 (or any CPU), fp32 arithmetic.
// Loops are written so the compiler can vectorise the inner loops without
// reassociating reductions (scores: over keys of a transposed K tile; output:
// over the head dimension).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "flash_fwd_params.h"

namespace flash_attn2_cpu {
namespace {

inline float load_elem(const void* base, int64_t idx, DType dt) {
  if (dt == DType::kFloat32) return static_cast<const float*>(base)[idx];
  return bf16_to_float(static_cast<const uint16_t*>(base)[idx]);
}

inline void store_elem(void* base, int64_t idx, float x, DType dt) {
  if (dt == DType::kFloat32) {
    static_cast<float*>(base)[idx] = x;
  } else {
    static_cast<uint16_t*>(base)[idx] = float_to_bf16(x);
  }
}

}  // namespace

void fwd_block_portable(const FwdParams& p, int64_t b, int64_t h, int64_t qblock, float* ws) {
  const SeqView s = seq_view(p, b);
  const int64_t i0 = qblock * kBlockQ;
  if (i0 >= s.sq) return;
  const int64_t bq = std::min<int64_t>(kBlockQ, s.sq - i0);
  const int64_t D = p.head_dim;
  const int64_t hk = h / (p.heads_q / p.heads_k);
  const float ninf = -std::numeric_limits<float>::infinity();

  float* O = ws;                      // [kBlockQ][D]
  float* Q = O + kBlockQ * D;         // [kBlockQ][D]
  float* Kt = Q + kBlockQ * D;        // [D][kBlockK]
  float* V = Kt + kBlockK * D;        // [kBlockK][D]
  float* S = V + kBlockK * D;         // [kBlockQ][kBlockK]
  float* m = S + kBlockQ * kBlockK;   // [kBlockQ]
  float* l = m + kBlockQ;             // [kBlockQ]

  const int64_t q_base = b * p.q_batch_stride + h * p.q_head_stride;
  for (int64_t r = 0; r < bq; ++r) {
    const int64_t row = q_base + (s.q_row0 + i0 + r) * p.q_row_stride;
    for (int64_t d = 0; d < D; ++d) Q[r * D + d] = load_elem(p.q, row + d, p.dtype);
    m[r] = ninf;
    l[r] = 0.f;
  }
  std::memset(O, 0, sizeof(float) * bq * D);

  const int64_t lo = key_lo(p, s, i0);
  const int64_t hi = key_hi(p, s, i0 + bq - 1);
  const float cap = p.softcap;
  const float pre = cap > 0.f ? p.softmax_scale / cap : p.softmax_scale;
  const int64_t k_base = b * p.k_batch_stride + hk * p.k_head_stride;
  const int64_t v_base = b * p.v_batch_stride + hk * p.v_head_stride;

  for (int64_t k0 = lo; k0 <= hi; k0 += kBlockK) {
    const int64_t bk = std::min<int64_t>(kBlockK, hi + 1 - k0);
    for (int64_t j = 0; j < bk; ++j) {
      const int64_t krow = k_base + (s.k_row0 + k0 + j) * p.k_row_stride;
      const int64_t vrow = v_base + (s.k_row0 + k0 + j) * p.v_row_stride;
      for (int64_t d = 0; d < D; ++d) {
        Kt[d * kBlockK + j] = load_elem(p.k, krow + d, p.dtype);
        V[j * D + d] = load_elem(p.v, vrow + d, p.dtype);
      }
    }
    // No per-element mask needed when every row sees the whole block.
    const bool full = k0 >= key_lo(p, s, i0 + bq - 1) && k0 + bk - 1 <= key_hi(p, s, i0);

    for (int64_t r = 0; r < bq; ++r) {
      float* srow = S + r * kBlockK;
      for (int64_t j = 0; j < bk; ++j) srow[j] = 0.f;
      const float* qrow = Q + r * D;
      for (int64_t d = 0; d < D; ++d) {
        const float qd = qrow[d];
        const float* kt = Kt + d * kBlockK;
        for (int64_t j = 0; j < bk; ++j) srow[j] += qd * kt[j];
      }
      for (int64_t j = 0; j < bk; ++j) {
        float x = srow[j] * pre;
        srow[j] = cap > 0.f ? cap * std::tanh(x) : x;
      }
      if (!full) {
        const int64_t rlo = key_lo(p, s, i0 + r), rhi = key_hi(p, s, i0 + r);
        for (int64_t j = 0; j < bk; ++j) {
          if (k0 + j < rlo || k0 + j > rhi) srow[j] = ninf;
        }
      }
      float mx = m[r];
      for (int64_t j = 0; j < bk; ++j) mx = std::max(mx, srow[j]);
      if (mx == ninf) continue;  // nothing visible yet for this row
      const float alpha = std::exp(m[r] - mx);
      float sum = 0.f;
      for (int64_t j = 0; j < bk; ++j) {
        srow[j] = std::exp(srow[j] - mx);
        sum += srow[j];
      }
      float* orow = O + r * D;
      if (alpha != 1.f) {
        for (int64_t d = 0; d < D; ++d) orow[d] *= alpha;
      }
      for (int64_t j = 0; j < bk; ++j) {
        const float pj = srow[j];
        if (pj == 0.f) continue;
        const float* vrow = V + j * D;
        for (int64_t d = 0; d < D; ++d) orow[d] += pj * vrow[d];
      }
      m[r] = mx;
      l[r] = l[r] * alpha + sum;
    }
  }

  const int64_t o_base = b * p.o_batch_stride + h * p.o_head_stride;
  for (int64_t r = 0; r < bq; ++r) {
    const int64_t row = o_base + (s.q_row0 + i0 + r) * p.o_row_stride;
    const float inv = l[r] > 0.f ? 1.f / l[r] : 0.f;
    for (int64_t d = 0; d < D; ++d) store_elem(p.out, row + d, O[r * D + d] * inv, p.dtype);
    if (p.lse != nullptr) {
      p.lse[b * p.lse_batch_stride + h * p.lse_head_stride + s.q_row0 + i0 + r] =
          l[r] > 0.f ? m[r] + std::log(l[r]) : ninf;
    }
  }
}

}  // namespace flash_attn2_cpu
