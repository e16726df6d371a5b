// Torch-free description of one CUDA forward attention call, shared by the
// stable-ABI binding (torch_binding_cuda.cpp, compiled by the host compiler)
// and the kernel (flash_fwd_cuda.cu, compiled by nvcc). Keeping torch out of
// the .cu file keeps nvcc away from torch headers and keeps the kernel the same
// for every torch the binding is built against.
#pragma once

#include <cstdint>
#include <string>

namespace flash_attn2_cuda {

constexpr int kBlockQ = 64;      // query rows per CTA (4 warps x 16 rows)
constexpr int kMaxHeadDim = 256;

enum class DType : int { kHalf = 0, kBFloat16 = 1 };

struct FwdParams {
  const void* q;
  const void* k;
  const void* v;
  void* out;   // (batch, seqlen_q, heads_q, head_dim), dtype of q
  float* lse;  // (batch, heads_q, seqlen_q) float32, or nullptr

  DType dtype;
  int64_t batch, heads_q, heads_k, head_dim, seqlen_q, seqlen_k;

  // Element strides; the head dim is contiguous (stride 1) for all four tensors.
  int64_t q_batch_stride, q_row_stride, q_head_stride;
  int64_t k_batch_stride, k_row_stride, k_head_stride;
  int64_t v_batch_stride, v_row_stride, v_head_stride;
  int64_t o_batch_stride, o_row_stride, o_head_stride;
  int64_t lse_batch_stride, lse_head_stride;

  float softmax_scale;
  float softcap;         // <= 0: off
  int64_t window_left;   // < 0: unbounded
  int64_t window_right;  // < 0: unbounded (causal sets 0)

  int device;
  void* stream;  // cudaStream_t
};

// Shared memory one CTA needs for this head dim (the launcher refuses sizes the
// device cannot give).
int64_t smem_bytes(int64_t head_dim);

// Launches the forward kernel on p.stream. Returns "" on success, otherwise a
// one-line description of what went wrong (device too old, launch failure).
std::string fwd_launch(const FwdParams& p);

}  // namespace flash_attn2_cuda
