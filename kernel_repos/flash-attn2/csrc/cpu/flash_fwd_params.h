// Plain-C++ description of one forward attention call, shared by the portable
// and the AVX-512 translation units. It deliberately includes no torch header:
// the AVX-512 TU must not instantiate any inline/template code that other TUs
// could end up linking against (that code would carry AVX-512 instructions).
#pragma once

#include <cstdint>

namespace flash_attn2_cpu {

// Tile sizes: a task owns kBlockQ query rows of one (batch, head); it walks the
// visible keys kBlockK at a time with an online softmax.
constexpr int kBlockQ = 64;
constexpr int kBlockK = 64;
constexpr int kMaxHeadDim = 256;

enum class DType : int { kFloat32 = 0, kBFloat16 = 1 };

struct FwdParams {
  const void* q;
  const void* k;
  const void* v;
  void* out;
  float* lse;  // nullptr when the caller does not want it

  DType dtype;
  int64_t batch;
  int64_t heads_q;
  int64_t heads_k;
  int64_t head_dim;

  // Element strides. For varlen calls the batch strides are 0 and rows are
  // located through cu_seqlens.
  int64_t q_batch_stride, q_row_stride, q_head_stride;
  int64_t k_batch_stride, k_row_stride, k_head_stride;
  int64_t v_batch_stride, v_row_stride, v_head_stride;
  int64_t o_batch_stride, o_row_stride, o_head_stride;
  int64_t lse_batch_stride, lse_head_stride;  // lse row stride is 1

  // Fixed-length calls: seqlen_q/k. Varlen calls: cu_seqlens_* (int32, batch+1)
  // and seqlen_* hold the maxima.
  int64_t seqlen_q;
  int64_t seqlen_k;
  const int32_t* cu_seqlens_q;
  const int32_t* cu_seqlens_k;

  // AVX-512 path only: K/V re-laid out once per call, lazily, by the first task
  // that needs a block. Key block kb of sequence b, kv head hk has index
  // (kblock_base[b] + kb) * heads_k + hk; its words start at index *
  // packed_block_words(head_dim) and kv_state[index] is 0 (todo), 1 (being
  // packed) or 2 (ready).
  const int64_t* kblock_base;
  uint32_t* kv_packed;
  int32_t* kv_state;

  float softmax_scale;
  float softcap;        // <= 0: off
  int64_t window_left;  // < 0: unbounded
  int64_t window_right; // < 0: unbounded (causal forces 0)
};

// One sequence's geometry, resolved from the params for batch index b.
struct SeqView {
  int64_t q_row0, k_row0;  // first packed row (varlen) or 0
  int64_t sq, sk;
};

inline SeqView seq_view(const FwdParams& p, int64_t b) {
  SeqView s;
  if (p.cu_seqlens_q != nullptr) {
    s.q_row0 = p.cu_seqlens_q[b];
    s.k_row0 = p.cu_seqlens_k[b];
    s.sq = p.cu_seqlens_q[b + 1] - s.q_row0;
    s.sk = p.cu_seqlens_k[b + 1] - s.k_row0;
  } else {
    s.q_row0 = 0;
    s.k_row0 = 0;
    s.sq = p.seqlen_q;
    s.sk = p.seqlen_k;
  }
  return s;
}

// Visible keys of query row i are [key_lo(i), key_hi(i)] (inclusive, may be
// empty). The diagonal is aligned bottom-right: row i sits on key i + sk - sq.
inline int64_t key_lo(const FwdParams& p, const SeqView& s, int64_t i) {
  if (p.window_left < 0) return 0;
  int64_t lo = i + s.sk - s.sq - p.window_left;
  return lo < 0 ? 0 : lo;
}
inline int64_t key_hi(const FwdParams& p, const SeqView& s, int64_t i) {
  if (p.window_right < 0) return s.sk - 1;
  int64_t hi = i + s.sk - s.sq + p.window_right;
  return hi > s.sk - 1 ? s.sk - 1 : hi;
}

// Floats of scratch one worker thread needs (both paths fit in it).
inline int64_t workspace_floats(int64_t head_dim) {
  return 4 * int64_t(kBlockQ) * head_dim      // O accumulator, packed Q
         + 4 * int64_t(kBlockK) * head_dim    // packed K, packed V
         + 2 * int64_t(kBlockQ) * kBlockK     // scores, packed P
         + 4 * int64_t(kBlockQ)               // running max / sum
         + 64;                                // alignment slack
}

inline uint16_t float_to_bf16(float f) {
  uint32_t u;
  __builtin_memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40u);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
  return uint16_t(u >> 16);
}
inline float bf16_to_float(uint16_t h) {
  uint32_t u = uint32_t(h) << 16;
  float f;
  __builtin_memcpy(&f, &u, 4);
  return f;
}

// One task: query rows [qblock*kBlockQ, +kBlockQ) of sequence b, query head h.
// `ws` points at workspace_floats(head_dim) floats owned by the calling thread.
void fwd_block_portable(const FwdParams& p, int64_t b, int64_t h, int64_t qblock, float* ws);
void fwd_block_avx512(const FwdParams& p, int64_t b, int64_t h, int64_t qblock, float* ws);
// Words of p.kv_packed per key block.
inline int64_t packed_block_words(int64_t head_dim) { return int64_t(kBlockK) * head_dim; }

}  // namespace flash_attn2_cpu
