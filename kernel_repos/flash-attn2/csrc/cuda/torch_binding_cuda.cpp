// CUDA op registration, written against torch's stable ABI (torch/csrc/stable)
// so one binary serves every torch >= TORCH_TARGET_VERSION. Both CUDA variants
// compile this file: the exact-torch one (torchXY-cxx11-cuNNN) without a target
// version, the stable-ABI one (torch-stable-abiXY-cuNNN) with
// -DTORCH_TARGET_VERSION. The CPU variant uses torch-ext/torch_binding.cpp.
//
// Schema identical to the CPU op's `fwd`; inputs are validated here, with
// errors naming the argument, before anything reaches the GPU.
#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>
#include <torch/headeronly/util/Exception.h>

#include <cmath>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "csrc/cuda/flash_fwd_cuda.h"

#ifndef TORCH_EXTENSION_NAME
#error "build with -DTORCH_EXTENSION_NAME=<unique op namespace>"
#endif
#ifndef USE_CUDA
#error "build with -DUSE_CUDA (declares aoti_torch_get_current_cuda_stream)"
#endif

namespace flash_attn2_cuda {
namespace {

using torch::headeronly::ScalarType;
using torch::stable::Tensor;

std::string shape_str(const Tensor& t) {
  std::ostringstream s;
  s << "[";
  for (int64_t i = 0; i < t.dim(); ++i) s << (i ? ", " : "") << t.size(i);
  s << "]";
  return s.str();
}

std::string strides_str(const Tensor& t) {
  std::ostringstream s;
  s << "[";
  for (int64_t i = 0; i < t.dim(); ++i) s << (i ? ", " : "") << t.stride(i);
  s << "]";
  return s.str();
}

void check_qkv(const Tensor& q, const Tensor& k, const Tensor& v) {
  const std::pair<const Tensor*, const char*> args[] = {{&q, "q"}, {&k, "k"}, {&v, "v"}};
  for (auto [t, name] : args) {
    STD_TORCH_CHECK(t->is_cuda(), "flash_attn2 (cuda): ", name, " must be a CUDA tensor");
    STD_TORCH_CHECK(t->scalar_type() == ScalarType::Half || t->scalar_type() == ScalarType::BFloat16,
                    "flash_attn2 (cuda): ", name, " must be float16 or bfloat16, got ",
                    torch::headeronly::toString(t->scalar_type()));
    STD_TORCH_CHECK(t->dim() == 4, "flash_attn2 (cuda): ", name,
                    " must have 4 dims (batch, seqlen, heads, head_dim), got shape ", shape_str(*t));
    STD_TORCH_CHECK(t->stride(3) == 1, "flash_attn2 (cuda): ", name,
                    " must be contiguous in its last (head) dim, got strides ", strides_str(*t));
  }
  STD_TORCH_CHECK(k.get_device_index() == q.get_device_index() && v.get_device_index() == q.get_device_index(),
                  "flash_attn2 (cuda): q, k, v must be on one device, got cuda:", q.get_device_index(),
                  ", cuda:", k.get_device_index(), ", cuda:", v.get_device_index());
  STD_TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(),
                  "flash_attn2 (cuda): q, k, v must share one dtype, got ",
                  torch::headeronly::toString(q.scalar_type()), ", ", torch::headeronly::toString(k.scalar_type()),
                  ", ", torch::headeronly::toString(v.scalar_type()));
  STD_TORCH_CHECK(shape_str(k) == shape_str(v), "flash_attn2 (cuda): k and v must have the same shape, got ",
                  shape_str(k), " and ", shape_str(v));
  const int64_t D = q.size(3);
  STD_TORCH_CHECK(D > 0 && D <= kMaxHeadDim && D % 8 == 0,
                  "flash_attn2 (cuda): head dim must be a multiple of 8 in [8, 256], got ", D);
  STD_TORCH_CHECK(k.size(3) == D, "flash_attn2 (cuda): k and v head dim must equal q's (", D, "), got ",
                  k.size(3));
  STD_TORCH_CHECK(k.size(0) == q.size(0), "flash_attn2 (cuda): k/v batch (", k.size(0),
                  ") must equal q batch (", q.size(0), ")");
  const int64_t hq = q.size(2), hk = k.size(2);
  STD_TORCH_CHECK(hk > 0 && hq % hk == 0, "flash_attn2 (cuda): number of q heads (", hq,
                  ") must be a multiple of the number of k/v heads (", hk, ")");
}

std::tuple<Tensor, Tensor> fwd(Tensor q, Tensor k, Tensor v, double softmax_scale, bool causal,
                               int64_t window_left, int64_t window_right, double softcap, bool return_lse) {
  check_qkv(q, k, v);
  STD_TORCH_CHECK(std::isfinite(softmax_scale), "flash_attn2 (cuda): softmax_scale must be finite, got ",
                  softmax_scale);
  STD_TORCH_CHECK(softcap >= 0.0 && std::isfinite(softcap),
                  "flash_attn2 (cuda): softcap must be >= 0 (0 = off), got ", softcap);
  const int64_t B = q.size(0), Sq = q.size(1), Hq = q.size(2), D = q.size(3), Sk = k.size(1);
  const int32_t device = q.get_device_index();
  torch::stable::accelerator::DeviceGuard guard(device);

  Tensor out = torch::stable::new_empty(q, std::vector<int64_t>{B, Sq, Hq, D});
  Tensor lse = return_lse ? torch::stable::new_empty(q, std::vector<int64_t>{B, Hq, Sq}, ScalarType::Float)
                          : torch::stable::new_empty(q, std::vector<int64_t>{0}, ScalarType::Float);

  void* stream = nullptr;
  STD_TORCH_CHECK(aoti_torch_get_current_cuda_stream(device, &stream) == AOTI_TORCH_SUCCESS,
                  "flash_attn2 (cuda): could not get the current CUDA stream of device ", device);

  FwdParams p{};
  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  p.out = out.data_ptr();
  p.lse = return_lse ? static_cast<float*>(lse.data_ptr()) : nullptr;
  p.dtype = q.scalar_type() == ScalarType::BFloat16 ? DType::kBFloat16 : DType::kHalf;
  p.batch = B;
  p.heads_q = Hq;
  p.heads_k = k.size(2);
  p.head_dim = D;
  p.seqlen_q = Sq;
  p.seqlen_k = Sk;
  p.q_batch_stride = q.stride(0), p.q_row_stride = q.stride(1), p.q_head_stride = q.stride(2);
  p.k_batch_stride = k.stride(0), p.k_row_stride = k.stride(1), p.k_head_stride = k.stride(2);
  p.v_batch_stride = v.stride(0), p.v_row_stride = v.stride(1), p.v_head_stride = v.stride(2);
  p.o_batch_stride = out.stride(0), p.o_row_stride = out.stride(1), p.o_head_stride = out.stride(2);
  p.lse_batch_stride = Hq * Sq;
  p.lse_head_stride = Sq;
  p.softmax_scale = float(softmax_scale);
  p.softcap = float(softcap);
  // As flash_attn: causal means a right window of 0; negative means unbounded.
  p.window_left = window_left < 0 ? -1 : window_left;
  p.window_right = causal ? 0 : (window_right < 0 ? -1 : window_right);
  p.device = device;
  p.stream = stream;
  const std::string err = fwd_launch(p);
  STD_TORCH_CHECK(err.empty(), err);
  return {out, lse};
}

}  // namespace
}  // namespace flash_attn2_cuda

STABLE_TORCH_LIBRARY(TORCH_EXTENSION_NAME, m) {
  m.def(
      "fwd(Tensor q, Tensor k, Tensor v, float softmax_scale, bool causal, int window_left, "
      "int window_right, float softcap, bool return_lse) -> (Tensor out, Tensor lse)");
}

STABLE_TORCH_LIBRARY_IMPL(TORCH_EXTENSION_NAME, CUDA, m) {
  m.impl("fwd", TORCH_BOX(&flash_attn2_cuda::fwd));
}
