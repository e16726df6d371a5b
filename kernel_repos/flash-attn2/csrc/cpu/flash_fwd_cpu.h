// Torch entry points of the CPU forward (implemented in flash_fwd_cpu.cpp).
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <tuple>

namespace flash_attn2_cpu {

// q (B, Sq, Hq, D), k/v (B, Sk, Hk, D) -> out (B, Sq, Hq, D), lse fp32 (B, Hq, Sq)
// (lse is an empty tensor unless return_lse).
std::tuple<at::Tensor, at::Tensor> fwd(const at::Tensor& q, const at::Tensor& k,
                                       const at::Tensor& v, double softmax_scale, bool causal,
                                       int64_t window_left, int64_t window_right, double softcap,
                                       bool return_lse);

// Packed q (total_q, Hq, D), k/v (total_k, Hk, D), int32 cu_seqlens (batch+1)
// -> out (total_q, Hq, D), lse fp32 (Hq, total_q).
std::tuple<at::Tensor, at::Tensor> varlen_fwd(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& cu_seqlens_q,
    const at::Tensor& cu_seqlens_k, int64_t max_seqlen_q, int64_t max_seqlen_k,
    double softmax_scale, bool causal, int64_t window_left, int64_t window_right, double softcap,
    bool return_lse);

// Which kernel a call with this head dim would use now: "avx512" or "portable".
std::string cpu_isa(int64_t head_dim);

}  // namespace flash_attn2_cpu
