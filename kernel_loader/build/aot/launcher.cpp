// Launcher for ahead-of-time compiled Triton kernels (cubins), written against torch's stable ABI.
//
// One library per variant, built by kernel_loader.build.aot with -DTORCH_EXTENSION_NAME=<the build's unique op
// namespace>. It registers three ops:
//   load(Tensor image, str name, str params, int num_warps, int shared, int device) -> int
//       cuModuleLoadData of one cubin image (a CPU uint8 tensor) into the primary context of `device`, once per
//       (kernel, device) -- the Python dispatch caches the returned handle. `params` lists the kernel's launch
//       parameters in order, one token each (see parse_params), with the specialisations the cubin assumed, and
//       optionally a last token `global_scratch=<bytes>/<alignment>` for kernels that need global scratch.
//   launch(int handle, int gx, int gy, int gz, Tensor(a!)[] tensors, int[] ints, float[] floats) -> ()
//       checks every argument against the handle's parameter list (device, dtype, 16-byte alignment, int32 range,
//       divisibility by 16), then cuLaunchKernel on torch's current stream of the tensors' device (so it is
//       captured by CUDA graphs like any torch kernel). A kernel with global scratch (Triton's device-side tensor
//       descriptors: 128 bytes per TMA descriptor per program) gets bytes x programs from torch's caching
//       allocator, on that stream, as its first trailing scratch pointer -- what triton.set_allocator supplies
//       under the JIT. The block returns to the allocator after the launch; stream order keeps it the kernel's
//       until the kernel ends, and under graph capture it comes from the graph's private pool.
//   driver_version(Tensor probe) -> int
//       cuDriverGetVersion (e.g. 12080), or an error naming what is missing.
//
// The CUDA driver API is reached through dlopen("libcuda.so.1") on first use: the library loads on machines
// without a driver, and the first call says what is missing. No CUDA toolkit header is needed: the few driver
// types used are declared below, with the values of cuda.h. torch's current CUDA stream comes from its C shim
// aoti_torch_get_current_cuda_stream, looked up in the already loaded libtorch_cuda.so (dlopen RTLD_NOLOAD), so
// the library does not link torch_cuda either: it loads (and says "no CUDA") under a CPU-only torch.
//
// glibc floor (manylinux_2_28): torch/csrc/stable/macros.h calls dlsym, which a glibc >= 2.34 link binds to
// dlsym@GLIBC_2.34; the .symver lines bind dlopen/dlsym/dlerror to their original versions, present in every
// glibc. libstdc++'s shared_ptr (inside torch::stable::Tensor) reads __libc_single_threaded (GLIBC_2.32); the
// hidden definition below (0 = "maybe multi-threaded": always use atomic reference counts) satisfies it locally.
#if defined(__x86_64__)
__asm__(".symver dlopen,dlopen@GLIBC_2.2.5");
__asm__(".symver dlsym,dlsym@GLIBC_2.2.5");
__asm__(".symver dlerror,dlerror@GLIBC_2.2.5");
#elif defined(__aarch64__)
__asm__(".symver dlopen,dlopen@GLIBC_2.17");
__asm__(".symver dlsym,dlsym@GLIBC_2.17");
__asm__(".symver dlerror,dlerror@GLIBC_2.17");
#endif
extern "C" {
__attribute__((visibility("hidden"))) char __libc_single_threaded = 0;
}

#include <dlfcn.h>

#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>
#include <torch/headeronly/util/Exception.h>

#include <cctype>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#ifndef TORCH_EXTENSION_NAME
#error "build with -DTORCH_EXTENSION_NAME=<unique op namespace>"
#endif

namespace aot_launcher {
namespace {

// ---------------------------------------------------------------- driver API (subset of cuda.h)
using CUresult = int;
using CUdevice = int;
using CUdeviceptr = unsigned long long;
using CUcontext = struct CUctx_st*;
using CUmodule = struct CUmod_st*;
using CUfunction = struct CUfunc_st*;
using CUstream = struct CUstream_st*;
constexpr CUresult CUDA_SUCCESS = 0;
constexpr int CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75;
constexpr int CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76;
constexpr int CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN = 97;
constexpr int CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8;
constexpr int CU_FUNC_ATTRIBUTE_NUM_REGS = 4;

struct Driver {
  void* handle = nullptr;
  std::string error;  // why the driver is unusable ("" = fine)
  CUresult (*cuInit)(unsigned) = nullptr;
  CUresult (*cuDriverGetVersion)(int*) = nullptr;
  CUresult (*cuGetErrorName)(CUresult, const char**) = nullptr;
  CUresult (*cuGetErrorString)(CUresult, const char**) = nullptr;
  CUresult (*cuDeviceGet)(CUdevice*, int) = nullptr;
  CUresult (*cuDeviceGetAttribute)(int*, int, CUdevice) = nullptr;
  CUresult (*cuDevicePrimaryCtxRetain)(CUcontext*, CUdevice) = nullptr;
  CUresult (*cuCtxGetCurrent)(CUcontext*) = nullptr;
  CUresult (*cuCtxPushCurrent)(CUcontext) = nullptr;
  CUresult (*cuCtxPopCurrent)(CUcontext*) = nullptr;
  CUresult (*cuModuleLoadData)(CUmodule*, const void*) = nullptr;
  CUresult (*cuModuleGetFunction)(CUfunction*, CUmodule, const char*) = nullptr;
  CUresult (*cuFuncSetAttribute)(CUfunction, int, int) = nullptr;
  CUresult (*cuFuncGetAttribute)(int*, int, CUfunction) = nullptr;
  CUresult (*cuLaunchKernel)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                             CUstream, void**, void**) = nullptr;
};

template <typename F>
bool bind(Driver& d, F& fn, const char* name) {
  fn = reinterpret_cast<F>(dlsym(d.handle, name));
  if (fn == nullptr) d.error = std::string("libcuda.so.1 has no ") + name + " (driver too old)";
  return fn != nullptr;
}

const Driver& driver() {
  static Driver d = [] {
    Driver d;
    d.handle = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (d.handle == nullptr) {
      const char* why = dlerror();
      d.error = std::string("cannot load the CUDA driver library libcuda.so.1 (") + (why ? why : "not found") +
                "); install an NVIDIA driver";
      return d;
    }
    bool ok = bind(d, d.cuInit, "cuInit") && bind(d, d.cuDriverGetVersion, "cuDriverGetVersion") &&
              bind(d, d.cuGetErrorName, "cuGetErrorName") && bind(d, d.cuGetErrorString, "cuGetErrorString") &&
              bind(d, d.cuDeviceGet, "cuDeviceGet") && bind(d, d.cuDeviceGetAttribute, "cuDeviceGetAttribute") &&
              bind(d, d.cuDevicePrimaryCtxRetain, "cuDevicePrimaryCtxRetain") &&
              bind(d, d.cuCtxGetCurrent, "cuCtxGetCurrent") && bind(d, d.cuCtxPushCurrent, "cuCtxPushCurrent_v2") &&
              bind(d, d.cuCtxPopCurrent, "cuCtxPopCurrent_v2") && bind(d, d.cuModuleLoadData, "cuModuleLoadData") &&
              bind(d, d.cuModuleGetFunction, "cuModuleGetFunction") &&
              bind(d, d.cuFuncSetAttribute, "cuFuncSetAttribute") &&
              bind(d, d.cuFuncGetAttribute, "cuFuncGetAttribute") && bind(d, d.cuLaunchKernel, "cuLaunchKernel");
    if (ok) {
      CUresult r = d.cuInit(0);
      if (r != CUDA_SUCCESS) d.error = "cuInit failed with CUDA error " + std::to_string(r) + " (no usable GPU?)";
    }
    return d;
  }();
  STD_TORCH_CHECK(d.error.empty(), "aot launcher: ", d.error);
  return d;
}

std::string cu_error(CUresult r) {
  const Driver& d = driver();
  const char* name = nullptr;
  const char* text = nullptr;
  d.cuGetErrorName(r, &name);
  d.cuGetErrorString(r, &text);
  return std::string(name ? name : "CUDA error ") + " (" + std::to_string(r) + "): " + (text ? text : "");
}

#define CU_CHECK(call, what)                                                           \
  do {                                                                                 \
    CUresult _r = (call);                                                              \
    STD_TORCH_CHECK(_r == CUDA_SUCCESS, "aot launcher: ", what, ": ", cu_error(_r)); \
  } while (0)

// ---------------------------------------------------------------- kernels
enum class Kind : uint8_t { Ptr, I32, I64, F32 };

struct Param {
  Kind kind;
  bool div16 = false;  // pointer: 16-byte aligned; int: divisible by 16 (tt.divisibility = 16)
  torch::headeronly::ScalarType dtype = torch::headeronly::ScalarType::Undefined;  // pointers only
  std::string token;
};

struct Kernel {
  std::string name;
  std::vector<Param> params;
  int num_warps = 4;
  int shared = 0;
  int device = 0;
  CUcontext ctx = nullptr;
  CUfunction fn = nullptr;
  size_t n_tensors = 0, n_ints = 0, n_floats = 0;
  int64_t scratch_bytes = 0;  // global scratch per program (0: none)
  int64_t scratch_align = 1;
};

constexpr const char* kScratchToken = "global_scratch=";

// "global_scratch=<bytes>/<alignment>": bytes in (0, 2^30], alignment a power of two up to 4096.
void parse_scratch(const std::string& tok, Kernel& k) {
  const char* text = tok.c_str() + std::string(kScratchToken).size();
  char* end = nullptr;
  long long bytes = std::isdigit(static_cast<unsigned char>(*text)) ? std::strtoll(text, &end, 10) : 0;
  long long align = 0;
  if (end != nullptr && *end == '/' && std::isdigit(static_cast<unsigned char>(end[1]))) {
    const char* a = end + 1;
    align = std::strtoll(a, &end, 10);
  }
  STD_TORCH_CHECK(end != nullptr && *end == '\0' && bytes > 0 && bytes <= (1LL << 30) && align > 0 &&
                      align <= 4096 && (align & (align - 1)) == 0,
                  "aot launcher: bad token '", tok, "'; want global_scratch=<bytes>/<alignment> (bytes in (0, 2^30], "
                  "alignment a power of two <= 4096)");
  k.scratch_bytes = bytes;
  k.scratch_align = align;
}

std::mutex g_mutex;
std::vector<std::unique_ptr<Kernel>> g_kernels;  // handle = index; entries never move or go away

torch::headeronly::ScalarType dtype_of(const std::string& s, const std::string& token) {
  using torch::headeronly::ScalarType;
  if (s == "fp16") return ScalarType::Half;
  if (s == "bf16") return ScalarType::BFloat16;
  if (s == "fp32") return ScalarType::Float;
  if (s == "fp64") return ScalarType::Double;
  if (s == "i32") return ScalarType::Int;
  if (s == "i64") return ScalarType::Long;
  if (s == "i8") return ScalarType::Char;
  if (s == "u8") return ScalarType::Byte;
  STD_TORCH_CHECK(false, "aot launcher: parameter token '", token, "' names an unknown pointer dtype");
}

// Tokens, comma-separated: "*bf16:16" (pointer to bf16, 16-byte aligned), "*i32" (no alignment assumed),
// "i32", "i32:16" (divisible by 16), "i64", "fp32"; then optionally "global_scratch=<bytes>/<alignment>" (last).
void parse_params(const std::string& spec, Kernel& k) {
  std::vector<Param>& out = k.params;
  size_t start = 0;
  while (start <= spec.size() && !spec.empty()) {
    size_t end = spec.find(',', start);
    std::string tok = spec.substr(start, end == std::string::npos ? std::string::npos : end - start);
    if (tok.rfind(kScratchToken, 0) == 0) {
      STD_TORCH_CHECK(end == std::string::npos, "aot launcher: '", tok, "' must be the last parameter token");
      parse_scratch(tok, k);
      break;
    }
    Param p;
    p.token = tok;
    std::string base = tok;
    size_t colon = tok.find(':');
    if (colon != std::string::npos) {
      STD_TORCH_CHECK(tok.substr(colon + 1) == "16", "aot launcher: bad specialisation in token '", tok, "'");
      p.div16 = true;
      base = tok.substr(0, colon);
    }
    if (!base.empty() && base[0] == '*') {
      p.kind = Kind::Ptr;
      p.dtype = dtype_of(base.substr(1), tok);
    } else if (base == "i32") {
      p.kind = Kind::I32;
    } else if (base == "i64") {
      p.kind = Kind::I64;
    } else if (base == "fp32") {
      p.kind = Kind::F32;
      STD_TORCH_CHECK(!p.div16, "aot launcher: token '", tok, "': floats carry no specialisation");
    } else {
      STD_TORCH_CHECK(false, "aot launcher: unknown parameter token '", tok, "'");
    }
    out.push_back(p);
    if (end == std::string::npos) break;
    start = end + 1;
  }
}

// Makes `ctx` current for the scope (restores the previous one); a no-op when it already is.
struct CtxScope {
  bool pushed = false;
  explicit CtxScope(CUcontext ctx) {
    const Driver& d = driver();
    CUcontext cur = nullptr;
    CU_CHECK(d.cuCtxGetCurrent(&cur), "cuCtxGetCurrent");
    if (cur != ctx) {
      CU_CHECK(d.cuCtxPushCurrent(ctx), "cuCtxPushCurrent");
      pushed = true;
    }
  }
  ~CtxScope() {
    if (pushed) {
      CUcontext popped = nullptr;
      driver().cuCtxPopCurrent(&popped);
    }
  }
};

int64_t load(torch::stable::Tensor image, std::string name, std::string params, int64_t num_warps, int64_t shared,
             int64_t device) {
  using torch::headeronly::ScalarType;
  STD_TORCH_CHECK(image.scalar_type() == ScalarType::Byte && image.dim() == 1 && image.numel() > 0,
                  "aot launcher: load(image) needs a non-empty 1-D uint8 CPU tensor holding a cubin");
  STD_TORCH_CHECK(num_warps >= 1 && num_warps <= 32, "aot launcher: num_warps must be in [1, 32], got ", num_warps);
  auto k = std::make_unique<Kernel>();
  k->name = name;
  parse_params(params, *k);
  k->num_warps = static_cast<int>(num_warps);
  k->shared = static_cast<int>(shared);
  k->device = static_cast<int>(device);
  for (const Param& p : k->params) {
    (p.kind == Kind::Ptr ? k->n_tensors : (p.kind == Kind::F32 ? k->n_floats : k->n_ints))++;
  }
  STD_TORCH_CHECK(k->scratch_bytes == 0 || k->n_tensors > 0, "aot launcher: kernel ", name,
                  " needs global scratch but takes no tensor to place it beside");
  const Driver& d = driver();
  CUdevice dev = 0;
  CU_CHECK(d.cuDeviceGet(&dev, k->device), "cuDeviceGet(" + std::to_string(device) + ")");
  int optin = 0;
  CU_CHECK(d.cuDeviceGetAttribute(&optin, CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN, dev),
           "cuDeviceGetAttribute");
  int major = 0, minor = 0;
  d.cuDeviceGetAttribute(&major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev);
  d.cuDeviceGetAttribute(&minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev);
  STD_TORCH_CHECK(k->shared <= optin, "aot launcher: kernel ", name, " needs ", k->shared,
                  " bytes of shared memory; GPU ", device, " (sm_", major, minor, ") allows ", optin);
  CU_CHECK(d.cuDevicePrimaryCtxRetain(&k->ctx, dev), "cuDevicePrimaryCtxRetain");
  {
    CtxScope scope(k->ctx);
    CUmodule mod = nullptr;
    CUresult r = d.cuModuleLoadData(&mod, image.data_ptr());
    STD_TORCH_CHECK(r == CUDA_SUCCESS, "aot launcher: cuModuleLoadData of kernel ", name, " on GPU ", device,
                    " (sm_", major, minor, ") failed: ", cu_error(r),
                    r == 209 || r == 222 ? " -- the cubin was built for another arch or needs a newer driver" : "");
    CU_CHECK(d.cuModuleGetFunction(&k->fn, mod, name.c_str()), "cuModuleGetFunction(" + name + ")");
    if (k->shared > 49152) {
      CU_CHECK(d.cuFuncSetAttribute(k->fn, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, k->shared),
               "cuFuncSetAttribute(max dynamic shared memory)");
    }
  }
  std::lock_guard<std::mutex> lock(g_mutex);
  g_kernels.push_back(std::move(k));
  return static_cast<int64_t>(g_kernels.size() - 1);
}

const Kernel& kernel(int64_t handle) {
  std::lock_guard<std::mutex> lock(g_mutex);
  STD_TORCH_CHECK(handle >= 0 && handle < static_cast<int64_t>(g_kernels.size()),
                  "aot launcher: unknown kernel handle ", handle);
  return *g_kernels[static_cast<size_t>(handle)];
}

using StreamFn = int32_t (*)(int32_t, void**);

StreamFn stream_getter() {
  static StreamFn fn = [] {
    StreamFn f = nullptr;
    for (const char* lib : {"libtorch_cuda.so", "libtorch_hip.so"}) {
      void* h = dlopen(lib, RTLD_NOW | RTLD_NOLOAD);
      if (h != nullptr && (f = reinterpret_cast<StreamFn>(dlsym(h, "aoti_torch_get_current_cuda_stream")))) break;
    }
    return f;
  }();
  STD_TORCH_CHECK(fn != nullptr, "aot launcher: this torch has no CUDA support (libtorch_cuda.so is not loaded); "
                  "install a CUDA build of torch");
  return fn;
}

void launch(int64_t handle, int64_t gx, int64_t gy, int64_t gz, std::vector<torch::stable::Tensor> tensors,
            std::vector<int64_t> ints, std::vector<double> floats) {
  const Kernel& k = kernel(handle);
  STD_TORCH_CHECK(tensors.size() == k.n_tensors && ints.size() == k.n_ints && floats.size() == k.n_floats,
                  "aot launcher: kernel ", k.name, " takes ", k.n_tensors, " tensors, ", k.n_ints, " ints, ",
                  k.n_floats, " floats; got ", tensors.size(), ", ", ints.size(), ", ", floats.size());
  STD_TORCH_CHECK(gx >= 0 && gy >= 0 && gz >= 0 && gx < (1LL << 31) && gy < 65536 && gz < 65536,
                  "aot launcher: kernel ", k.name, ": grid (", gx, ", ", gy, ", ", gz, ") exceeds CUDA's limits");
  // Argument storage: every slot is 8 bytes, so pointers to it stay valid while the vector does not grow.
  std::vector<uint64_t> storage(k.params.size() + 2, 0);
  std::vector<void*> argv(k.params.size() + 2, nullptr);
  size_t ti = 0, ii = 0, fi = 0;
  for (size_t i = 0; i < k.params.size(); ++i) {
    const Param& p = k.params[i];
    void* slot = &storage[i];
    if (p.kind == Kind::Ptr) {
      const torch::stable::Tensor& t = tensors[ti];
      STD_TORCH_CHECK(t.is_cuda(), "aot launcher: kernel ", k.name, " argument ", i, " (", p.token,
                      ") must be a CUDA tensor");
      STD_TORCH_CHECK(t.get_device_index() == k.device, "aot launcher: kernel ", k.name, " argument ", i,
                      " is on cuda:", t.get_device_index(), " but the kernel was loaded for cuda:", k.device);
      STD_TORCH_CHECK(t.scalar_type() == p.dtype, "aot launcher: kernel ", k.name, " argument ", i, " (", p.token,
                      ") has dtype ", torch::headeronly::toString(t.scalar_type()));
      uint64_t ptr = reinterpret_cast<uint64_t>(t.data_ptr());
      STD_TORCH_CHECK(!p.div16 || ptr % 16 == 0, "aot launcher: kernel ", k.name, " argument ", i, " (", p.token,
                      "): the cubin assumes a 16-byte aligned data pointer, got 0x", std::to_string(ptr));
      *static_cast<uint64_t*>(slot) = ptr;
      ++ti;
    } else if (p.kind == Kind::F32) {
      float f = static_cast<float>(floats[fi++]);
      *static_cast<float*>(slot) = f;
    } else {
      int64_t v = ints[ii++];
      STD_TORCH_CHECK(!p.div16 || v % 16 == 0, "aot launcher: kernel ", k.name, " argument ", i,
                      ": the cubin assumes a multiple of 16, got ", v);
      if (p.kind == Kind::I32) {
        STD_TORCH_CHECK(v >= INT32_MIN && v <= INT32_MAX, "aot launcher: kernel ", k.name, " argument ", i, " = ", v,
                        " does not fit the cubin's int32 parameter");
        *static_cast<int32_t*>(slot) = static_cast<int32_t>(v);
      } else {
        *static_cast<int64_t*>(slot) = v;
      }
    }
    argv[i] = slot;
  }
  // Triton >= 3.3 appends two scratch pointers (global, profile); the build refuses cubins with profile scratch.
  argv[k.params.size()] = &storage[k.params.size()];
  argv[k.params.size() + 1] = &storage[k.params.size() + 1];
  if (gx * gy * gz == 0) return;
  std::optional<torch::stable::Tensor> scratch;  // held until cuLaunchKernel has queued the kernel
  if (k.scratch_bytes > 0) {
    const int64_t programs = gx * gy * gz;  // < 2^63: gx < 2^31, gy, gz < 2^16
    STD_TORCH_CHECK(programs <= (INT64_MAX - k.scratch_align) / k.scratch_bytes, "aot launcher: kernel ", k.name,
                    ": global scratch of ", k.scratch_bytes, " bytes x ", programs, " programs overflows");
    const int64_t bytes = programs * k.scratch_bytes + k.scratch_align - 1;
    scratch = torch::stable::new_empty(tensors[0], {bytes}, torch::headeronly::ScalarType::Byte);
    uint64_t base = reinterpret_cast<uint64_t>(scratch->data_ptr());
    const uint64_t align = static_cast<uint64_t>(k.scratch_align);
    storage[k.params.size()] = (base + align - 1) / align * align;
  }
  void* stream = nullptr;
  STD_TORCH_CHECK(stream_getter()(k.device, &stream) == 0,
                  "aot launcher: cannot get the current CUDA stream of device ", k.device);
  const Driver& d = driver();
  CtxScope scope(k.ctx);
  CU_CHECK(d.cuLaunchKernel(k.fn, static_cast<unsigned>(gx), static_cast<unsigned>(gy), static_cast<unsigned>(gz),
                            32u * static_cast<unsigned>(k.num_warps), 1, 1, static_cast<unsigned>(k.shared),
                            static_cast<CUstream>(stream), argv.data(), nullptr),
           "cuLaunchKernel(" + k.name + ")");
}

int64_t driver_version(torch::stable::Tensor probe) {
  (void)probe;
  int v = 0;
  CU_CHECK(driver().cuDriverGetVersion(&v), "cuDriverGetVersion");
  return v;
}

}  // namespace
}  // namespace aot_launcher

STABLE_TORCH_LIBRARY(TORCH_EXTENSION_NAME, m) {
  m.def("load(Tensor image, str name, str params, int num_warps, int shared, int device) -> int");
  m.def("launch(int handle, int gx, int gy, int gz, Tensor(a!)[] tensors, int[] ints, float[] floats) -> ()");
  m.def("driver_version(Tensor probe) -> int");
}

STABLE_TORCH_LIBRARY_IMPL(TORCH_EXTENSION_NAME, CPU, m) {
  m.impl("load", TORCH_BOX(&aot_launcher::load));
  m.impl("driver_version", TORCH_BOX(&aot_launcher::driver_version));
}

STABLE_TORCH_LIBRARY_IMPL(TORCH_EXTENSION_NAME, CUDA, m) {
  m.impl("launch", TORCH_BOX(&aot_launcher::launch));
}
