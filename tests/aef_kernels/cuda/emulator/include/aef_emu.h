// The SIMT emulator's view of CUDA for host C++: the keywords, built-in variables, types and
// intrinsics that csrc uses, so that g++ compiles the kernels as written. Each thread of a block is
// a fiber (runtime.cpp); warp collectives and barriers suspend the calling fiber until every
// participant has arrived, then resolve together.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <utility>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
// Blocks run one after another on one OS thread, so a function-local static is exactly one block's
// shared memory for the lifetime of that block. The build moves them into one section, which the
// runtime fills with NaN bytes before every block: a read of shared memory no thread of the block has
// written sees NaN, as it would see garbage on a GPU, instead of a previous block's values.
#define __shared__ static

struct uint3 {
  unsigned x, y, z;
};

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

struct alignas(8) float2 {
  float x, y;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }

namespace aef_emu {
extern uint3 g_threadIdx, g_blockIdx;
extern dim3 g_blockDim, g_gridDim;
}  // namespace aef_emu

#define threadIdx (::aef_emu::g_threadIdx)
#define blockIdx (::aef_emu::g_blockIdx)
#define blockDim (::aef_emu::g_blockDim)
#define gridDim (::aef_emu::g_gridDim)
#define warpSize 32

// ---- half and bfloat16: storage types with round-to-nearest-even conversions -------------------

struct __half {
  uint16_t __x;
};
struct __nv_bfloat16 {
  uint16_t __x;
};

namespace aef_emu {
uint16_t f32_to_f16_rn(float f);
float f16_to_f32(uint16_t h);
uint16_t f32_to_bf16_rn(float f);
inline float bf16_to_f32(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
}  // namespace aef_emu

inline float __half2float(__half h) { return aef_emu::f16_to_f32(h.__x); }
inline __half __float2half_rn(float f) { return {aef_emu::f32_to_f16_rn(f)}; }
inline __half __float2half(float f) { return __float2half_rn(f); }
inline float __bfloat162float(__nv_bfloat16 b) { return aef_emu::bf16_to_f32(b.__x); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return {aef_emu::f32_to_bf16_rn(f)}; }
inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }

// ---- device math ---------------------------------------------------------------------------------

template <typename T>
inline T min(T a, T b) {
  return b < a ? b : a;
}
template <typename T>
inline T max(T a, T b) {
  return a < b ? b : a;
}
// The fast-math intrinsics are computed exactly: the emulator does not model their ulp errors.
inline float __fdividef(float a, float b) { return a / b; }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __frcp_rn(float x) { return 1.f / x; }
inline float __fsqrt_rn(float x) { return std::sqrt(x); }
inline float rsqrtf(float x) { return 1.f / std::sqrt(x); }

// ---- collectives ---------------------------------------------------------------------------------

namespace aef_emu {

enum Collective : int { kShflIdx, kShflUp, kShflDown, kShflXor, kMmaF16, kMmaBF16, kLdmatrix };

// Suspends the calling lane until its whole warp has made the same call; returns the lane's result.
uint64_t warp_shuffle(int kind, unsigned mask, uint64_t value, int arg, int width, int bytes);
void mma_m16n8k16(int kind, float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], const float (&c)[4]);
// ldmatrix.sync.aligned.m8n8.x{count}[.trans].shared.b16: each lane passes its row address (a
// shared-window offset, as __cvta_generic_to_shared gives it) and receives `count` registers once
// the whole warp has arrived (PTX ISA, "Warp-level matrix load instruction: ldmatrix").
void ldmatrix(int count, bool trans, uint32_t (&r)[4], uint32_t addr);
void syncthreads();
void fail_misaligned(const char* what);
// cp.async runs as an immediate copy: its destination is written before the issuing lane goes on,
// which a later wait_group and barrier would have guaranteed anyway, so commit_group and wait_group
// have nothing left to do. The destination is a shared-window offset, as __cvta_generic_to_shared
// gives it; src_bytes < 16 zero-fills the rest of the 16 bytes (0: no global read at all).
size_t shared_offset(const void* p);
void cp_async_16(uint32_t dst, const void* src, uint32_t src_bytes);
inline void cp_async_commit_group() {}
inline void cp_async_wait_group(int) {}

template <typename V>
inline V shuffle_as(int kind, unsigned mask, V v, int arg, int width) {
  static_assert(sizeof(V) == 4 || sizeof(V) == 8, "shuffles move 4- or 8-byte values");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(V));
  bits = warp_shuffle(kind, mask, bits, arg, width, sizeof(V));
  V out;
  std::memcpy(&out, &bits, sizeof(V));
  return out;
}

}  // namespace aef_emu

template <typename V>
inline V __shfl_sync(unsigned mask, V v, int src, int width = 32) {
  return aef_emu::shuffle_as(aef_emu::kShflIdx, mask, v, src, width);
}
template <typename V>
inline V __shfl_up_sync(unsigned mask, V v, unsigned delta, int width = 32) {
  return aef_emu::shuffle_as(aef_emu::kShflUp, mask, v, static_cast<int>(delta), width);
}
template <typename V>
inline V __shfl_down_sync(unsigned mask, V v, unsigned delta, int width = 32) {
  return aef_emu::shuffle_as(aef_emu::kShflDown, mask, v, static_cast<int>(delta), width);
}
template <typename V>
inline V __shfl_xor_sync(unsigned mask, V v, int lane_mask, int width = 32) {
  return aef_emu::shuffle_as(aef_emu::kShflXor, mask, v, lane_mask, width);
}
inline void __syncthreads() { aef_emu::syncthreads(); }
inline size_t __cvta_generic_to_shared(const void* p) { return aef_emu::shared_offset(p); }
inline void __syncwarp(unsigned = 0xffffffffu) {}

// ---- runtime API ---------------------------------------------------------------------------------

enum cudaError_t : int {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInitializationError = 3,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDevicePointer = 17,
  cudaErrorStubLibrary = 34,
  cudaErrorInsufficientDriver = 35,
  cudaErrorDevicesUnavailable = 46,
  cudaErrorInvalidDeviceFunction = 98,
  cudaErrorNoDevice = 100,
  cudaErrorNoKernelImageForDevice = 209,
  cudaErrorInvalidResourceHandle = 400,
  cudaErrorNotReady = 600,
  cudaErrorIllegalAddress = 700,
  cudaErrorLaunchOutOfResources = 701,
  cudaErrorMisalignedAddress = 716,
  cudaErrorLaunchFailure = 719,
  cudaErrorSystemNotReady = 802,
  cudaErrorSystemDriverMismatch = 803,
  cudaErrorCompatNotSupportedOnDevice = 804,
  cudaErrorUnknown = 999,
};
typedef cudaError_t cudaError;

struct CUstream_st;
typedef CUstream_st* cudaStream_t;
struct CUevent_st;
typedef CUevent_st* cudaEvent_t;

enum cudaFuncAttribute : int {
  cudaFuncAttributeMaxDynamicSharedMemorySize = 8,
  cudaFuncAttributePreferredSharedMemoryCarveout = 9,
};
enum cudaDeviceAttr : int {
  cudaDevAttrMaxThreadsPerBlock = 1,
  cudaDevAttrMaxGridDimX = 5,
  cudaDevAttrMaxGridDimY = 6,
  cudaDevAttrMaxGridDimZ = 7,
  cudaDevAttrMaxSharedMemoryPerBlock = 8,
  cudaDevAttrWarpSize = 10,
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrComputeCapabilityMajor = 75,
  cudaDevAttrComputeCapabilityMinor = 76,
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
};
enum cudaMemcpyKind : int {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4
};

cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
const char* cudaGetErrorString(cudaError_t err);
const char* cudaGetErrorName(cudaError_t err);
cudaError_t cudaGetDevice(int* device);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device);
cudaError_t cudaDeviceSynchronize();
cudaError_t cudaStreamSynchronize(cudaStream_t stream);
cudaError_t cudaMemsetAsync(void* ptr, int value, size_t bytes, cudaStream_t stream = nullptr);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t stream = nullptr);
cudaError_t cudaFuncSetAttributeImpl(const void* func, cudaFuncAttribute attr, int value);
template <typename F>
inline cudaError_t cudaFuncSetAttribute(F* func, cudaFuncAttribute attr, int value) {
  return cudaFuncSetAttributeImpl(reinterpret_cast<const void*>(func), attr, value);
}

// ---- launches ------------------------------------------------------------------------------------

namespace aef_emu {

// Runs body(ctx) once per thread of every block of the grid; a launch the hardware would refuse
// sets cudaErrorInvalidConfiguration and runs nothing.
void run_grid(const char* kernel, const char* where, int line, const char* caller, dim3 grid, dim3 block,
              size_t smem, void (*body)(void*), void* ctx);

template <typename F>
void call_body(void* ctx) {
  (*static_cast<F*>(ctx))();
}

// `kernel<<<grid, block, smem, stream>>>(args...)` after the source rewrite. Arguments are converted
// to the kernel's parameter types once, as the launch would, and each thread gets its own copy.
template <typename... P, typename... A>
void launch(const char* kernel, const char* where, int line, const char* caller, void (*fn)(P...), dim3 grid,
            dim3 block, size_t smem, cudaStream_t, A&&... args) {
  static_assert(sizeof...(P) == sizeof...(A), "kernel launched with the wrong number of arguments");
  const std::tuple<std::decay_t<P>...> params(static_cast<std::decay_t<P>>(std::forward<A>(args))...);
  auto body = [&]() {
    std::tuple<std::decay_t<P>...> mine = params;
    std::apply(fn, mine);
  };
  run_grid(kernel, where, line, caller, grid, block, smem, &call_body<decltype(body)>, &body);
}

}  // namespace aef_emu
