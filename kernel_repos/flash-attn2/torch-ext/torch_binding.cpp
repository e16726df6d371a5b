// Registers the CPU ops under the per-build namespace TORCH_EXTENSION_NAME
// (e.g. _flash_attn2_cpu_<rev>), so two builds can be loaded side by side.
#include <torch/library.h>

#include "torch_binding.h"

#ifndef TORCH_EXTENSION_NAME
#error "build with -DTORCH_EXTENSION_NAME=<unique op namespace>"
#endif

TORCH_LIBRARY(TORCH_EXTENSION_NAME, m) {
  m.def(
      "fwd(Tensor q, Tensor k, Tensor v, float softmax_scale, bool causal, int window_left, "
      "int window_right, float softcap, bool return_lse) -> (Tensor out, Tensor lse)");
  m.def(
      "varlen_fwd(Tensor q, Tensor k, Tensor v, Tensor cu_seqlens_q, Tensor cu_seqlens_k, "
      "int max_seqlen_q, int max_seqlen_k, float softmax_scale, bool causal, int window_left, "
      "int window_right, float softcap, bool return_lse) -> (Tensor out, Tensor lse)");
  m.def("cpu_isa(int head_dim) -> str", &flash_attn2_cpu::cpu_isa);
}

TORCH_LIBRARY_IMPL(TORCH_EXTENSION_NAME, CPU, m) {
  m.impl("fwd", &flash_attn2_cpu::fwd);
  m.impl("varlen_fwd", &flash_attn2_cpu::varlen_fwd);
}
