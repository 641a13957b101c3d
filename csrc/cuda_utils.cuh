// Device-side helpers shared by the kernels: element conversion, 16-byte packs, group reductions and
// the launch over a grid of rows.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "common.h"

namespace aef {

// Arithmetic is float32 whatever the storage type.
__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// N elements moved as one aligned access (one 128-bit load/store when sizeof(T) * N == 16).
template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

template <typename T, int N>
__device__ __forceinline__ float sum_squares(const Pack<T, N>& p) {
  float s = 0.f;
#pragma unroll
  for (int i = 0; i < N; ++i) {
    const float f = to_float(p.v[i]);
    s = fmaf(f, f, s);
  }
  return s;
}

template <typename T, int N>
__device__ __forceinline__ float dot(const Pack<T, N>& a, const Pack<T, N>& b) {
  float s = 0.f;
#pragma unroll
  for (int i = 0; i < N; ++i) s = fmaf(to_float(a.v[i]), to_float(b.v[i]), s);
  return s;
}

template <typename T, int N>
__device__ __forceinline__ Pack<T, N> scaled(const Pack<T, N>& p, float s) {
  Pack<T, N> out;
#pragma unroll
  for (int i = 0; i < N; ++i) out.v[i] = from_float<T>(to_float(p.v[i]) * s);
  return out;
}

// Sum over aligned groups of LANES consecutive lanes; every lane of the warp must call it.
template <int LANES>
__device__ __forceinline__ float group_sum(float v) {
#pragma unroll
  for (int offset = LANES / 2; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset, LANES);
  return v;
}

// Blocks covering `rows` rows at `rows_per_block` each, capped at the axis-0 limit: kernels
// grid-stride over rows, so any row count runs.
inline dim3 grid_for_rows(int64_t rows, int rows_per_block) {
  return dim3(static_cast<unsigned>(std::min(cdiv(rows, rows_per_block), kMaxGridX)));
}

inline cudaStream_t as_stream(uintptr_t stream) { return reinterpret_cast<cudaStream_t>(stream); }

// Errors that mean the CUDA runtime never started (no driver, no device): they persist like a
// context fault, but they are what this launch would fail with, so they are reported as they are.
inline bool runtime_unavailable(cudaError_t err) {
  switch (err) {
    case cudaErrorInitializationError:
    case cudaErrorStubLibrary:
    case cudaErrorInsufficientDriver:
    case cudaErrorDevicesUnavailable:
    case cudaErrorNoDevice:
    case cudaErrorSystemNotReady:
    case cudaErrorSystemDriverMismatch:
    case cudaErrorCompatNotSupportedOnDevice: return true;
    default: return false;
  }
}

// Called by every launcher after its host-only argument checks and before its first launch, whose
// status it reads with cudaGetLastError: an earlier, unrelated error still in the last-error slot
// would be reported as this kernel's, so it is cleared here. An error that survives the clearing is
// sticky: an earlier kernel faulted and the context runs nothing more, which kContextFaulted says
// instead of the fault's code (that code would read as this kernel's own failure).
inline int clear_earlier_error() {
  cudaGetLastError();
  const cudaError_t sticky = cudaPeekAtLastError();
  if (sticky == cudaSuccess) return kOk;
  return runtime_unavailable(sticky) ? static_cast<int>(sticky) : kContextFaulted;
}

}  // namespace aef
