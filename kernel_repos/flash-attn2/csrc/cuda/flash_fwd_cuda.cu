// Flash-attention forward for fp16/bf16 on sm80+ (WMMA tensor cores, fp32
// accumulation and softmax).
//
// One CTA owns kBlockQ = 64 query rows of one (batch, query head); its 4 warps
// own 16 rows each. The CTA walks the keys its rows can see (bottom-right
// aligned causal/window bounds; blocks outside are never loaded) BK keys at a
// time: K and V tiles are staged in shared memory, each warp computes its
// 16 x BK scores with WMMA, runs the online softmax on them (one row at a time,
// lanes across keys, warp shuffles for max/sum), rescales its rows of the fp32
// output accumulator (in shared memory, since WMMA fragment layouts are
// opaque) and adds P @ V with WMMA.
//
// This is the simple, correct path; the Triton kernel in the Python package is
// the fast one. Head dims are padded with zeros to a multiple of 16 in shared
// memory, so any multiple of 8 up to 256 works.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <cmath>
#include <cstdio>
#include <string>

#include "flash_fwd_cuda.h"

namespace flash_attn2_cuda {
namespace {

using namespace nvcuda;

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
static_assert(kBlockQ == kWarps * 16, "each warp owns 16 query rows");

template <typename T>
struct Conv;
template <>
struct Conv<__half> {
  static __device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
  static __device__ __forceinline__ __half from_float(float x) { return __float2half_rn(x); }
};
template <>
struct Conv<__nv_bfloat16> {
  static __device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
  static __device__ __forceinline__ __nv_bfloat16 from_float(float x) { return __float2bfloat16_rn(x); }
};

// Key block width: 64 keys while the tiles fit comfortably, 32 for head dims
// above 128 so a CTA stays under sm80's 163 KB of shared memory.
__host__ __device__ constexpr int block_k(int dp) { return dp <= 128 ? 64 : 32; }

// Shared-memory layout of one CTA. Leading dimensions are padded (+8 halves,
// +4 floats) against bank conflicts while keeping WMMA's 32-byte alignment.
struct Smem {
  int dp, bk, ldh, lds, ldp, ldo;
  size_t q, k, v, s, p, o, m, l, total;
};

__host__ __device__ inline size_t align128(size_t x) { return (x + 127) & ~size_t(127); }

__host__ __device__ inline Smem smem_layout(int dp) {
  Smem L;
  L.dp = dp;
  L.bk = block_k(dp);
  L.ldh = dp + 8;
  L.lds = L.bk + 4;
  L.ldp = L.bk + 8;
  L.ldo = dp + 4;
  size_t off = 0;
  L.q = off; off = align128(off + size_t(kBlockQ) * L.ldh * 2);
  L.k = off; off = align128(off + size_t(L.bk) * L.ldh * 2);
  L.v = off; off = align128(off + size_t(L.bk) * L.ldh * 2);
  L.s = off; off = align128(off + size_t(kBlockQ) * L.lds * 4);
  L.p = off; off = align128(off + size_t(kBlockQ) * L.ldp * 2);
  L.o = off; off = align128(off + size_t(kBlockQ) * L.ldo * 4);
  L.m = off; off = align128(off + size_t(kBlockQ) * 4);
  L.l = off; off = align128(off + size_t(kBlockQ) * 4);
  L.total = off;
  return L;
}

__host__ __device__ inline int padded_dim(int64_t d) { return int((d + 15) / 16 * 16); }

// Copies `rows` x head_dim elements (row stride `stride`) into a zero-padded
// [nrows][ld] shared tile, 8 elements (16 bytes) per step. Rows >= `rows` and
// columns >= head_dim are zero. `vec`: the global rows are 16-byte aligned.
template <typename T>
__device__ __forceinline__ void load_tile(T* dst, int ld, int nrows, int dp, const T* src, int64_t stride,
                                          int64_t rows, int64_t head_dim, bool vec) {
  const int chunks_per_row = dp / 8;
  for (int c = threadIdx.x; c < nrows * chunks_per_row; c += kThreads) {
    const int r = c / chunks_per_row;
    const int col = (c % chunks_per_row) * 8;
    uint4 val = make_uint4(0, 0, 0, 0);
    if (r < rows && col < head_dim) {  // head_dim % 8 == 0: a chunk is all in or all out
      const T* g = src + int64_t(r) * stride + col;
      if (vec) {
        val = *reinterpret_cast<const uint4*>(g);
      } else {
        T tmp[8];
#pragma unroll
        for (int e = 0; e < 8; ++e) tmp[e] = g[e];
        val = *reinterpret_cast<const uint4*>(tmp);
      }
    }
    *reinterpret_cast<uint4*>(dst + r * ld + col) = val;
  }
}

__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}
__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// Visible keys of query row i: [lo, hi] inclusive (bottom-right aligned).
__device__ __forceinline__ int64_t key_lo(const FwdParams& p, int64_t i) {
  if (p.window_left < 0) return 0;
  const int64_t lo = i + p.seqlen_k - p.seqlen_q - p.window_left;
  return lo < 0 ? 0 : lo;
}
__device__ __forceinline__ int64_t key_hi(const FwdParams& p, int64_t i) {
  if (p.window_right < 0) return p.seqlen_k - 1;
  const int64_t hi = i + p.seqlen_k - p.seqlen_q + p.window_right;
  return hi > p.seqlen_k - 1 ? p.seqlen_k - 1 : hi;
}

template <typename T, int BK>
__global__ void __launch_bounds__(kThreads) fwd_kernel(const FwdParams p, bool vec) {
  extern __shared__ __align__(128) unsigned char smem[];
  const int dp = padded_dim(p.head_dim);
  const Smem L = smem_layout(dp);
  T* Qs = reinterpret_cast<T*>(smem + L.q);
  T* Ks = reinterpret_cast<T*>(smem + L.k);
  T* Vs = reinterpret_cast<T*>(smem + L.v);
  float* Ss = reinterpret_cast<float*>(smem + L.s);
  T* Ps = reinterpret_cast<T*>(smem + L.p);
  float* Os = reinterpret_cast<float*>(smem + L.o);
  float* Ms = reinterpret_cast<float*>(smem + L.m);
  float* Ls = reinterpret_cast<float*>(smem + L.l);

  const int64_t i0 = int64_t(blockIdx.x) * kBlockQ;
  const int64_t h = blockIdx.y, b = blockIdx.z;
  const int64_t hk = h / (p.heads_q / p.heads_k);
  const int64_t bq = min(int64_t(kBlockQ), p.seqlen_q - i0);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const float ninf = -INFINITY;

  const T* qg = static_cast<const T*>(p.q) + b * p.q_batch_stride + h * p.q_head_stride + i0 * p.q_row_stride;
  const T* kg = static_cast<const T*>(p.k) + b * p.k_batch_stride + hk * p.k_head_stride;
  const T* vg = static_cast<const T*>(p.v) + b * p.v_batch_stride + hk * p.v_head_stride;

  load_tile(Qs, L.ldh, kBlockQ, dp, qg, p.q_row_stride, bq, p.head_dim, vec);
  for (int idx = threadIdx.x; idx < kBlockQ * L.ldo; idx += kThreads) Os[idx] = 0.f;
  if (threadIdx.x < kBlockQ) {
    Ms[threadIdx.x] = ninf;
    Ls[threadIdx.x] = 0.f;
  }

  const int64_t lo = key_lo(p, i0);
  const int64_t hi = key_hi(p, i0 + bq - 1);
  const float cap = p.softcap;
  const float pre = cap > 0.f ? p.softmax_scale / cap : p.softmax_scale;
  const int row0 = warp * 16;

  for (int64_t k0 = lo; k0 <= hi; k0 += BK) {
    __syncthreads();  // the previous block is done with Ks/Vs (and Q/O/m/l are initialised)
    const int64_t nk = min(int64_t(BK), hi + 1 - k0);
    load_tile(Ks, L.ldh, BK, dp, kg + k0 * p.k_row_stride, p.k_row_stride, nk, p.head_dim, vec);
    load_tile(Vs, L.ldh, BK, dp, vg + k0 * p.v_row_stride, p.v_row_stride, nk, p.head_dim, vec);
    __syncthreads();

    // S = Q K^T for this warp's 16 rows.
#pragma unroll
    for (int n = 0; n < BK / 16; ++n) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      wmma::fill_fragment(acc, 0.f);
      for (int kk = 0; kk < dp / 16; ++kk) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> bt;
        wmma::load_matrix_sync(a, Qs + row0 * L.ldh + kk * 16, L.ldh);
        wmma::load_matrix_sync(bt, Ks + n * 16 * L.ldh + kk * 16, L.ldh);
        wmma::mma_sync(acc, a, bt, acc);
      }
      wmma::store_matrix_sync(Ss + row0 * L.lds + n * 16, acc, L.lds, wmma::mem_row_major);
    }
    __syncwarp();

    // Online softmax, one row at a time: lanes across the BK keys.
    for (int r = 0; r < 16; ++r) {
      const int row = row0 + r;
      const int64_t i = i0 + row;
      T* prow = Ps + row * L.ldp;
      if (row >= bq) {  // padding rows past seqlen_q: P = 0
        for (int j = lane; j < BK; j += 32) prow[j] = Conv<T>::from_float(0.f);
        continue;
      }
      const int64_t rlo = key_lo(p, i), rhi = key_hi(p, i);
      float s[BK / 32];
      float mx = ninf;
#pragma unroll
      for (int t = 0; t < BK / 32; ++t) {
        const int j = lane + 32 * t;
        const int64_t kj = k0 + j;
        float x = Ss[row * L.lds + j] * pre;
        if (cap > 0.f) x = cap * tanhf(x);
        s[t] = (kj >= rlo && kj <= rhi) ? x : ninf;  // rhi <= hi < k0 + nk covers the zero-filled rows
        mx = fmaxf(mx, s[t]);
      }
      mx = warp_max(mx);
      const float m_old = Ms[row];
      const float m_new = fmaxf(m_old, mx);
      if (m_new == ninf) {  // nothing visible to this row yet
#pragma unroll
        for (int t = 0; t < BK / 32; ++t) prow[lane + 32 * t] = Conv<T>::from_float(0.f);
        continue;
      }
      const float alpha = __expf(m_old - m_new);  // 0 when m_old is -inf
      float sum = 0.f;
#pragma unroll
      for (int t = 0; t < BK / 32; ++t) {
        const float pj = __expf(s[t] - m_new);
        prow[lane + 32 * t] = Conv<T>::from_float(pj);
        sum += pj;
      }
      sum = warp_sum(sum);
      if (alpha != 1.f) {
        float* orow = Os + row * L.ldo;
        for (int d = lane; d < dp; d += 32) orow[d] *= alpha;
      }
      __syncwarp();  // every lane has read Ms[row] before lane 0 overwrites it
      if (lane == 0) {
        Ms[row] = m_new;
        Ls[row] = Ls[row] * alpha + sum;
      }
    }
    __syncwarp();

    // O += P V for this warp's rows.
    for (int n = 0; n < dp / 16; ++n) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      wmma::load_matrix_sync(acc, Os + row0 * L.ldo + n * 16, L.ldo, wmma::mem_row_major);
#pragma unroll
      for (int kk = 0; kk < BK / 16; ++kk) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> bv;
        wmma::load_matrix_sync(a, Ps + row0 * L.ldp + kk * 16, L.ldp);
        wmma::load_matrix_sync(bv, Vs + kk * 16 * L.ldh + n * 16, L.ldh);
        wmma::mma_sync(acc, a, bv, acc);
      }
      wmma::store_matrix_sync(Os + row0 * L.ldo + n * 16, acc, L.ldo, wmma::mem_row_major);
    }
  }
  __syncthreads();

  // Epilogue: each warp normalises and writes its rows. Rows that saw no key
  // get out = 0 and lse = -inf, as the CPU kernel does.
  T* og = static_cast<T*>(p.out) + b * p.o_batch_stride + h * p.o_head_stride;
  for (int r = 0; r < 16; ++r) {
    const int row = row0 + r;
    if (row >= bq) break;
    const float l = Ls[row];
    const float inv = l > 0.f ? 1.f / l : 0.f;
    T* orow = og + (i0 + row) * p.o_row_stride;
    for (int d = lane; d < p.head_dim; d += 32) orow[d] = Conv<T>::from_float(Os[row * L.ldo + d] * inv);
    if (lane == 0 && p.lse != nullptr) {
      p.lse[b * p.lse_batch_stride + h * p.lse_head_stride + i0 + row] = l > 0.f ? Ms[row] + logf(l) : ninf;
    }
  }
}

std::string cuda_error(const char* what, cudaError_t err) {
  return std::string("flash_attn2 (cuda): ") + what + ": " + cudaGetErrorName(err) + " (" +
         cudaGetErrorString(err) + ")";
}

template <typename T, int BK>
std::string launch(const FwdParams& p, int dp) {
  const Smem L = smem_layout(dp);
  auto kernel = fwd_kernel<T, BK>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(L.total));
  if (err != cudaSuccess) return cuda_error("cudaFuncSetAttribute(MaxDynamicSharedMemorySize)", err);
  const auto aligned = [](const void* ptr, int64_t s0, int64_t s1, int64_t s2) {
    return reinterpret_cast<uintptr_t>(ptr) % 16 == 0 && s0 % 8 == 0 && s1 % 8 == 0 && s2 % 8 == 0;
  };
  const bool vec = aligned(p.q, p.q_batch_stride, p.q_row_stride, p.q_head_stride) &&
                   aligned(p.k, p.k_batch_stride, p.k_row_stride, p.k_head_stride) &&
                   aligned(p.v, p.v_batch_stride, p.v_row_stride, p.v_head_stride);
  const dim3 grid(unsigned((p.seqlen_q + kBlockQ - 1) / kBlockQ), unsigned(p.heads_q), unsigned(p.batch));
  kernel<<<grid, kThreads, L.total, static_cast<cudaStream_t>(p.stream)>>>(p, vec);
  err = cudaGetLastError();
  if (err != cudaSuccess) {
    std::string msg = cuda_error("kernel launch failed", err);
    if (err == cudaErrorNoKernelImageForDevice || err == cudaErrorInvalidDeviceFunction)
      msg += "; this build has no code for this GPU's architecture (see metadata.json backend.archs)";
    return msg;
  }
  return "";
}

}  // namespace

int64_t smem_bytes(int64_t head_dim) { return int64_t(smem_layout(padded_dim(head_dim)).total); }

std::string fwd_launch(const FwdParams& p) {
  if (p.batch == 0 || p.heads_q == 0 || p.seqlen_q == 0) return "";
  if (p.seqlen_q > int64_t(kBlockQ) * 0x7fffffffLL || p.heads_q > 65535 || p.batch > 65535) {
    return "flash_attn2 (cuda): grid too large: batch and heads_q must be <= 65535, got batch=" +
           std::to_string(p.batch) + ", heads_q=" + std::to_string(p.heads_q);
  }
  int major = 0, minor = 0, smem_optin = 0;
  cudaError_t err = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, p.device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, p.device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, p.device);
  if (err != cudaSuccess) return cuda_error("cudaDeviceGetAttribute", err);
  if (major < 8) {
    return "flash_attn2 (cuda): needs compute capability >= 8.0 (fp16/bf16 tensor cores); device " +
           std::to_string(p.device) + " is " + std::to_string(major) + "." + std::to_string(minor);
  }
  const int dp = padded_dim(p.head_dim);
  const int64_t need = smem_bytes(p.head_dim);
  if (need > smem_optin) {
    return "flash_attn2 (cuda): head_dim " + std::to_string(p.head_dim) + " needs " + std::to_string(need) +
           " bytes of shared memory per block; device " + std::to_string(p.device) + " allows " +
           std::to_string(smem_optin);
  }
  const bool bf16 = p.dtype == DType::kBFloat16;
  if (block_k(dp) == 64) return bf16 ? launch<__nv_bfloat16, 64>(p, dp) : launch<__half, 64>(p, dp);
  return bf16 ? launch<__nv_bfloat16, 32>(p, dp) : launch<__half, 32>(p, dp);
}

}  // namespace flash_attn2_cuda
