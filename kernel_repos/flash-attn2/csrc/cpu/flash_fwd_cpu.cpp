// Torch-facing half of the CPU forward: input validation, parameter set-up,
// ISA dispatch and threading. The kernels themselves are torch-free
// (flash_fwd_portable.cpp, flash_fwd_avx512.cpp).
#include "flash_fwd_cpu.h"

#include <ATen/Parallel.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "flash_fwd_params.h"

namespace flash_attn2_cpu {
namespace {

enum class Isa { kPortable, kAvx512 };

bool cpu_has_avx512() {
#if defined(__x86_64__) && defined(__GNUC__)
  static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                         __builtin_cpu_supports("avx512bf16");
  return ok;
#else
  return false;
#endif
}

// FLASH_ATTN2_CPU_ISA=portable|avx512|auto (default auto). Read on every call
// so tests can switch paths inside one process.
Isa choose_isa(int64_t head_dim) {
  const char* env = std::getenv("FLASH_ATTN2_CPU_ISA");
  const std::string want = env ? env : "auto";
  TORCH_CHECK(want == "auto" || want == "portable" || want == "avx512" || want.empty(),
              "FLASH_ATTN2_CPU_ISA must be one of auto, portable, avx512; got '", want, "'");
  if (want == "portable") return Isa::kPortable;
  const bool avx = cpu_has_avx512();
  TORCH_CHECK(want != "avx512" || avx,
              "FLASH_ATTN2_CPU_ISA=avx512 but this CPU lacks AVX512F/BW/VL/DQ/BF16");
  // The AVX-512 kernels tile the head dim by 16; other sizes use the portable path.
  return avx && head_dim % 16 == 0 ? Isa::kAvx512 : Isa::kPortable;
}

void check_qkv(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t dims,
               const char* layout) {
  for (auto [t, name] : {std::pair{&q, "q"}, {&k, "k"}, {&v, "v"}}) {
    TORCH_CHECK(t->device().is_cpu(), "flash_attn2 (cpu): ", name, " must be a CPU tensor, got ",
                t->device());
    TORCH_CHECK(t->scalar_type() == at::kFloat || t->scalar_type() == at::kBFloat16,
                "flash_attn2 (cpu): ", name, " must be float32 or bfloat16, got ", t->scalar_type());
    TORCH_CHECK(t->dim() == dims, "flash_attn2 (cpu): ", name, " must have ", dims, " dims ", layout,
                ", got shape ", t->sizes());
    TORCH_CHECK(t->stride(-1) == 1, "flash_attn2 (cpu): ", name,
                " must be contiguous in its last (head) dim, got strides ", t->strides());
  }
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(),
              "flash_attn2 (cpu): q, k, v must share one dtype, got ", q.scalar_type(), ", ",
              k.scalar_type(), ", ", v.scalar_type());
  TORCH_CHECK(k.sizes() == v.sizes(), "flash_attn2 (cpu): k and v must have the same shape, got ",
              k.sizes(), " and ", v.sizes());
  const int64_t D = q.size(-1);
  TORCH_CHECK(D > 0 && D <= kMaxHeadDim && D % 8 == 0,
              "flash_attn2 (cpu): head dim must be a multiple of 8 in [8, 256], got ", D);
  TORCH_CHECK(k.size(-1) == D, "flash_attn2 (cpu): k and v head dim must equal q's (", D, "), got ",
              k.size(-1));
  const int64_t hq = q.size(-2), hk = k.size(-2);
  TORCH_CHECK(hk > 0 && hq % hk == 0, "flash_attn2 (cpu): number of q heads (", hq,
              ") must be a multiple of the number of k/v heads (", hk, ")");
}

void check_scalars(double softmax_scale, double softcap) {
  TORCH_CHECK(std::isfinite(softmax_scale), "flash_attn2 (cpu): softmax_scale must be finite, got ",
              softmax_scale);
  TORCH_CHECK(softcap >= 0.0 && std::isfinite(softcap),
              "flash_attn2 (cpu): softcap must be >= 0 (0 = off), got ", softcap);
}

void fill_common(FwdParams& p, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                 const at::Tensor& out, double softmax_scale, bool causal, int64_t window_left,
                 int64_t window_right, double softcap) {
  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  p.out = out.data_ptr();
  p.dtype = q.scalar_type() == at::kBFloat16 ? DType::kBFloat16 : DType::kFloat32;
  p.heads_q = q.size(-2);
  p.heads_k = k.size(-2);
  p.head_dim = q.size(-1);
  p.q_row_stride = q.stride(-3), p.q_head_stride = q.stride(-2);
  p.k_row_stride = k.stride(-3), p.k_head_stride = k.stride(-2);
  p.v_row_stride = v.stride(-3), p.v_head_stride = v.stride(-2);
  p.o_row_stride = out.stride(-3), p.o_head_stride = out.stride(-2);
  p.softmax_scale = float(softmax_scale);
  p.softcap = float(softcap);
  // As flash_attn: causal means a right window of 0; negative means unbounded.
  p.window_left = window_left < 0 ? -1 : window_left;
  p.window_right = causal ? 0 : (window_right < 0 ? -1 : window_right);
  p.kblock_base = nullptr;
  p.kv_packed = nullptr;
  p.kv_state = nullptr;
}

// Runs every (batch, q head, q block) task; tasks are handed out dynamically,
// most expensive (last q blocks, for causal) first, so threads stay balanced.
void run(FwdParams& p, int64_t num_qblocks, const std::vector<int64_t>& kb_per_seq) {
  const int64_t tasks_per_block = p.batch * p.heads_q;
  const int64_t ntasks = tasks_per_block * num_qblocks;
  if (ntasks == 0) return;
  const Isa isa = choose_isa(p.head_dim);

  std::vector<int64_t> kblock_base(p.batch + 1, 0);
  std::unique_ptr<uint32_t[]> packed;  // filled lazily by the tasks, so left uninitialised
  std::vector<int32_t> packed_state;
  if (isa == Isa::kAvx512) {
    for (int64_t b = 0; b < p.batch; ++b) kblock_base[b + 1] = kblock_base[b] + kb_per_seq[b];
    const int64_t blocks = kblock_base[p.batch] * p.heads_k;
    packed.reset(new uint32_t[size_t(blocks * packed_block_words(p.head_dim))]);
    packed_state.assign(size_t(blocks), 0);
    p.kblock_base = kblock_base.data();
    p.kv_packed = packed.get();
    p.kv_state = packed_state.data();
  }

  std::atomic<int64_t> next{0};
  const int64_t nthreads = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), ntasks));
  const FwdParams& cp = p;
  at::parallel_for(0, nthreads, 1, [&](int64_t, int64_t) {
    std::vector<float> ws_buf(size_t(workspace_floats(cp.head_dim)));
    float* ws = ws_buf.data();
    ws += (16 - (reinterpret_cast<uintptr_t>(ws) / sizeof(float)) % 16) % 16;  // 64-byte align
    for (int64_t t = next.fetch_add(1); t < ntasks; t = next.fetch_add(1)) {
      const int64_t qb = num_qblocks - 1 - t / tasks_per_block;
      const int64_t bh = t % tasks_per_block;
      const int64_t b = bh / cp.heads_q, h = bh % cp.heads_q;
      if (isa == Isa::kAvx512) fwd_block_avx512(cp, b, h, qb, ws);
      else fwd_block_portable(cp, b, h, qb, ws);
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> fwd(const at::Tensor& q, const at::Tensor& k,
                                       const at::Tensor& v, double softmax_scale, bool causal,
                                       int64_t window_left, int64_t window_right, double softcap,
                                       bool return_lse) {
  check_qkv(q, k, v, 4, "(batch, seqlen, heads, head_dim)");
  check_scalars(softmax_scale, softcap);
  TORCH_CHECK(k.size(0) == q.size(0), "flash_attn2 (cpu): k/v batch (", k.size(0),
              ") must equal q batch (", q.size(0), ")");
  const int64_t B = q.size(0), Sq = q.size(1), Hq = q.size(2), Sk = k.size(1);
  at::Tensor out = at::empty(q.sizes(), q.options());
  at::Tensor lse = return_lse ? at::empty({B, Hq, Sq}, q.options().dtype(at::kFloat))
                              : at::empty({0}, q.options().dtype(at::kFloat));
  FwdParams p{};
  fill_common(p, q, k, v, out, softmax_scale, causal, window_left, window_right, softcap);
  p.lse = return_lse ? lse.data_ptr<float>() : nullptr;
  p.batch = B;
  p.q_batch_stride = q.stride(0);
  p.k_batch_stride = k.stride(0);
  p.v_batch_stride = v.stride(0);
  p.o_batch_stride = out.stride(0);
  p.lse_batch_stride = Hq * Sq;
  p.lse_head_stride = Sq;
  p.seqlen_q = Sq;
  p.seqlen_k = Sk;
  p.cu_seqlens_q = p.cu_seqlens_k = nullptr;
  std::vector<int64_t> kb(size_t(B), (Sk + kBlockK - 1) / kBlockK);
  run(p, (Sq + kBlockQ - 1) / kBlockQ, kb);
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor> varlen_fwd(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& cu_seqlens_q,
    const at::Tensor& cu_seqlens_k, int64_t max_seqlen_q, int64_t max_seqlen_k,
    double softmax_scale, bool causal, int64_t window_left, int64_t window_right, double softcap,
    bool return_lse) {
  check_qkv(q, k, v, 3, "(total_tokens, heads, head_dim)");
  check_scalars(softmax_scale, softcap);
  for (auto [t, name] : {std::pair{&cu_seqlens_q, "cu_seqlens_q"}, {&cu_seqlens_k, "cu_seqlens_k"}}) {
    TORCH_CHECK(t->device().is_cpu(), "flash_attn2 (cpu): ", name, " must be a CPU tensor, got ",
                t->device());
    TORCH_CHECK(t->scalar_type() == at::kInt, "flash_attn2 (cpu): ", name, " must be int32, got ",
                t->scalar_type());
    TORCH_CHECK(t->dim() == 1 && t->size(0) >= 1 && t->is_contiguous(), "flash_attn2 (cpu): ", name,
                " must be a contiguous 1-D tensor of batch+1 offsets, got shape ", t->sizes());
  }
  TORCH_CHECK(cu_seqlens_q.size(0) == cu_seqlens_k.size(0),
              "flash_attn2 (cpu): cu_seqlens_q and cu_seqlens_k must have the same length (batch+1), got ",
              cu_seqlens_q.size(0), " and ", cu_seqlens_k.size(0));
  const int64_t B = cu_seqlens_q.size(0) - 1;
  const int32_t* cq = cu_seqlens_q.data_ptr<int32_t>();
  const int32_t* ck = cu_seqlens_k.data_ptr<int32_t>();
  std::vector<int64_t> kb(static_cast<size_t>(B));
  for (auto [c, total, maxlen, name] :
       {std::tuple{cq, q.size(0), max_seqlen_q, "cu_seqlens_q"}, {ck, k.size(0), max_seqlen_k, "cu_seqlens_k"}}) {
    TORCH_CHECK(c[0] == 0, "flash_attn2 (cpu): ", name, "[0] must be 0, got ", c[0]);
    for (int64_t b = 0; b < B; ++b) {
      TORCH_CHECK(c[b + 1] >= c[b], "flash_attn2 (cpu): ", name,
                  " must be non-decreasing, got ", c[b], " then ", c[b + 1], " at index ", b + 1);
      TORCH_CHECK(c[b + 1] - c[b] <= maxlen, "flash_attn2 (cpu): sequence ", b, " has length ",
                  c[b + 1] - c[b], " > max_seqlen (", maxlen, ") given for ", name);
    }
    TORCH_CHECK(c[B] <= total, "flash_attn2 (cpu): ", name, "[-1] (", c[B],
                ") exceeds the number of packed rows (", total, ")");
  }
  for (int64_t b = 0; b < B; ++b) kb[b] = (ck[b + 1] - ck[b] + kBlockK - 1) / kBlockK;

  const int64_t total_q = q.size(0), Hq = q.size(1);
  at::Tensor out = at::zeros(q.sizes(), q.options());  // rows past cu_seqlens_q[-1] stay 0
  at::Tensor lse = return_lse ? at::full({Hq, total_q}, -std::numeric_limits<float>::infinity(),
                                         q.options().dtype(at::kFloat))
                              : at::empty({0}, q.options().dtype(at::kFloat));
  FwdParams p{};
  fill_common(p, q, k, v, out, softmax_scale, causal, window_left, window_right, softcap);
  p.lse = return_lse ? lse.data_ptr<float>() : nullptr;
  p.batch = B;
  p.q_batch_stride = p.k_batch_stride = p.v_batch_stride = p.o_batch_stride = 0;
  p.lse_batch_stride = 0;
  p.lse_head_stride = total_q;
  p.seqlen_q = max_seqlen_q;
  p.seqlen_k = max_seqlen_k;
  p.cu_seqlens_q = cq;
  p.cu_seqlens_k = ck;
  int64_t max_q = 0;
  for (int64_t b = 0; b < B; ++b) max_q = std::max<int64_t>(max_q, cq[b + 1] - cq[b]);
  run(p, (max_q + kBlockQ - 1) / kBlockQ, kb);
  return {out, lse};
}

std::string cpu_isa(int64_t head_dim) {
  return choose_isa(head_dim) == Isa::kAvx512 ? "avx512" : "portable";
}

}  // namespace flash_attn2_cpu
