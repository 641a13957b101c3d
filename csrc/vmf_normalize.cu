// vMF-mean normalisation: y = x / max(||x||, eps) along rows of length D, and its backward
// dx = g / n - x (g . x) / n^3 with n = ||x|| (dx = g / eps where n < eps: the divisor is a constant).
//
// Memory bound (the forward reads D and writes D elements per row, the backward reads 2D and writes
// D), so the kernels aim at full-width accesses: rows whose pointers and strides allow it move in
// 16-byte packs, and rows that fit are held in registers between the reduction and the elementwise
// step, so each input is read from memory once. Row groups of LANES lanes (LANES = 8, 16 or 32)
// share a warp, so short rows (D = 64, the STP embedding) keep every lane busy. Each row's sums are
// reduced inside its lane group by shuffles: no atomics, so results are bitwise reproducible.
#include "common.h"
#include "cuda_utils.cuh"
#include "launchers.h"

namespace aef {
namespace {

constexpr int kThreads = 128;

// Rows of at most LANES * CHUNKS packs: each lane keeps its CHUNKS packs in registers.
template <typename T, int VEC, int LANES, int CHUNKS>
__global__ void __launch_bounds__(kThreads)
    vmf_normalize_fwd_regs(const T* __restrict__ x, T* __restrict__ y, int64_t rows, int64_t D,
                           int64_t x_row_stride, int64_t y_row_stride, float eps) {
  using P = Pack<T, VEC>;
  constexpr int kRowsPerBlock = kThreads / LANES;
  const int group = threadIdx.x / LANES;
  const int lane = threadIdx.x % LANES;
  // The loop bound is uniform over the block, so every lane reaches the shuffles in group_sum.
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock; base < rows;
       base += static_cast<int64_t>(gridDim.x) * kRowsPerBlock) {
    const int64_t row = base + group;
    const bool active = row < rows;
    const T* xr = x + row * x_row_stride;
    P v[CHUNKS];
    float ss = 0.f;
#pragma unroll
    for (int c = 0; c < CHUNKS; ++c) {
      const int64_t col = static_cast<int64_t>(c * LANES + lane) * VEC;
      if (active && col < D) {
        v[c] = *reinterpret_cast<const P*>(xr + col);
        ss += sum_squares(v[c]);
      }
    }
    const float inv = 1.f / fmaxf(sqrtf(group_sum<LANES>(ss)), eps);
    T* yr = y + row * y_row_stride;
#pragma unroll
    for (int c = 0; c < CHUNKS; ++c) {
      const int64_t col = static_cast<int64_t>(c * LANES + lane) * VEC;
      if (active && col < D) *reinterpret_cast<P*>(yr + col) = scaled(v[c], inv);
    }
  }
}

// Any D, one warp per row: a reduction pass, then a scaling pass that re-reads the row (mostly from
// L1/L2). VEC = 1 serves rows that are not 16-byte aligned.
template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads)
    vmf_normalize_fwd_rows(const T* __restrict__ x, T* __restrict__ y, int64_t rows, int64_t D,
                           int64_t x_row_stride, int64_t y_row_stride, float eps) {
  using P = Pack<T, VEC>;
  constexpr int kLanes = 32;
  constexpr int kRowsPerBlock = kThreads / kLanes;
  const int lane = threadIdx.x % kLanes;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kLanes; row < rows;
       row += static_cast<int64_t>(gridDim.x) * kRowsPerBlock) {
    // A whole warp shares `row`, so the loop exit is warp-uniform.
    const T* xr = x + row * x_row_stride;
    float ss = 0.f;
    for (int64_t col = static_cast<int64_t>(lane) * VEC; col < D; col += kLanes * VEC)
      ss += sum_squares(*reinterpret_cast<const P*>(xr + col));
    const float inv = 1.f / fmaxf(sqrtf(group_sum<kLanes>(ss)), eps);
    T* yr = y + row * y_row_stride;
    for (int64_t col = static_cast<int64_t>(lane) * VEC; col < D; col += kLanes * VEC)
      *reinterpret_cast<P*>(yr + col) = scaled(*reinterpret_cast<const P*>(xr + col), inv);
  }
}

template <typename T, int VEC, int LANES, int CHUNKS>
cudaError_t launch_regs(const T* x, T* y, int64_t rows, int64_t D, int64_t xs, int64_t ys, float eps,
                        cudaStream_t stream) {
  vmf_normalize_fwd_regs<T, VEC, LANES, CHUNKS>
      <<<grid_for_rows(rows, kThreads / LANES), kThreads, 0, stream>>>(x, y, rows, D, xs, ys, eps);
  return cudaGetLastError();
}

template <typename T, int VEC>
cudaError_t launch_rows(const T* x, T* y, int64_t rows, int64_t D, int64_t xs, int64_t ys, float eps,
                        cudaStream_t stream) {
  vmf_normalize_fwd_rows<T, VEC><<<grid_for_rows(rows, kThreads / 32), kThreads, 0, stream>>>(x, y, rows, D, xs,
                                                                                               ys, eps);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_typed(uintptr_t xp, uintptr_t yp, int64_t rows, int64_t D, int64_t xs, int64_t ys, float eps,
                         cudaStream_t stream) {
  constexpr int V = 16 / sizeof(T);
  const T* x = reinterpret_cast<const T*>(xp);
  T* y = reinterpret_cast<T*>(yp);
  const bool vectorised = rows_aligned(xp, rows, D, xs, sizeof(T), 16) && rows_aligned(yp, rows, D, ys, sizeof(T), 16);
  if (!vectorised) return launch_rows<T, 1>(x, y, rows, D, xs, ys, eps, stream);
  const int64_t packs = D / V;
  if (packs <= 8) return launch_regs<T, V, 8, 1>(x, y, rows, D, xs, ys, eps, stream);
  if (packs <= 16) return launch_regs<T, V, 16, 1>(x, y, rows, D, xs, ys, eps, stream);
  if (packs <= 32) return launch_regs<T, V, 32, 1>(x, y, rows, D, xs, ys, eps, stream);
  if (packs <= 64) return launch_regs<T, V, 32, 2>(x, y, rows, D, xs, ys, eps, stream);
  if (packs <= 128) return launch_regs<T, V, 32, 4>(x, y, rows, D, xs, ys, eps, stream);
  if (packs <= 256) return launch_regs<T, V, 32, 8>(x, y, rows, D, xs, ys, eps, stream);
  return launch_rows<T, V>(x, y, rows, D, xs, ys, eps, stream);
}

// ---- backward --------------------------------------------------------------------------------

// dx for one pack: inv = 1 / max(n, eps), radial = (g . x) / n^3 (0 where n < eps).
template <typename T, int N>
__device__ __forceinline__ Pack<T, N> vmf_grad(const Pack<T, N>& g, const Pack<T, N>& x, float inv, float radial) {
  Pack<T, N> out;
#pragma unroll
  for (int i = 0; i < N; ++i) out.v[i] = from_float<T>(fmaf(-to_float(x.v[i]), radial, to_float(g.v[i]) * inv));
  return out;
}

__device__ __forceinline__ void vmf_grad_scales(float ss, float gx, float eps, float& inv, float& radial) {
  const float norm = sqrtf(ss);
  inv = 1.f / fmaxf(norm, eps);
  radial = norm >= eps ? gx * inv * inv * inv : 0.f;
}

// As vmf_normalize_fwd_regs, with the rows of g and x both held in registers.
template <typename T, int VEC, int LANES, int CHUNKS>
__global__ void __launch_bounds__(kThreads)
    vmf_normalize_bwd_regs(const T* __restrict__ g, const T* __restrict__ x, T* __restrict__ dx, int64_t rows,
                           int64_t D, int64_t g_row_stride, int64_t x_row_stride, int64_t dx_row_stride, float eps) {
  using P = Pack<T, VEC>;
  constexpr int kRowsPerBlock = kThreads / LANES;
  const int group = threadIdx.x / LANES;
  const int lane = threadIdx.x % LANES;
  // The loop bound is uniform over the block, so every lane reaches the shuffles in group_sum.
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock; base < rows;
       base += static_cast<int64_t>(gridDim.x) * kRowsPerBlock) {
    const int64_t row = base + group;
    const bool active = row < rows;
    const T* gr = g + row * g_row_stride;
    const T* xr = x + row * x_row_stride;
    P gv[CHUNKS], xv[CHUNKS];
    float ss = 0.f, gx = 0.f;
#pragma unroll
    for (int c = 0; c < CHUNKS; ++c) {
      const int64_t col = static_cast<int64_t>(c * LANES + lane) * VEC;
      if (active && col < D) {
        gv[c] = *reinterpret_cast<const P*>(gr + col);
        xv[c] = *reinterpret_cast<const P*>(xr + col);
        ss += sum_squares(xv[c]);
        gx += dot(gv[c], xv[c]);
      }
    }
    float inv, radial;
    vmf_grad_scales(group_sum<LANES>(ss), group_sum<LANES>(gx), eps, inv, radial);
    T* dr = dx + row * dx_row_stride;
#pragma unroll
    for (int c = 0; c < CHUNKS; ++c) {
      const int64_t col = static_cast<int64_t>(c * LANES + lane) * VEC;
      if (active && col < D) *reinterpret_cast<P*>(dr + col) = vmf_grad(gv[c], xv[c], inv, radial);
    }
  }
}

// Any D, one warp per row, two passes like vmf_normalize_fwd_rows; VEC = 1 serves unaligned rows.
template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads)
    vmf_normalize_bwd_rows(const T* __restrict__ g, const T* __restrict__ x, T* __restrict__ dx, int64_t rows,
                           int64_t D, int64_t g_row_stride, int64_t x_row_stride, int64_t dx_row_stride, float eps) {
  using P = Pack<T, VEC>;
  constexpr int kLanes = 32;
  constexpr int kRowsPerBlock = kThreads / kLanes;
  const int lane = threadIdx.x % kLanes;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kLanes; row < rows;
       row += static_cast<int64_t>(gridDim.x) * kRowsPerBlock) {
    // A whole warp shares `row`, so the loop exit is warp-uniform.
    const T* gr = g + row * g_row_stride;
    const T* xr = x + row * x_row_stride;
    float ss = 0.f, gx = 0.f;
    for (int64_t col = static_cast<int64_t>(lane) * VEC; col < D; col += kLanes * VEC) {
      const P xv = *reinterpret_cast<const P*>(xr + col);
      ss += sum_squares(xv);
      gx += dot(*reinterpret_cast<const P*>(gr + col), xv);
    }
    float inv, radial;
    vmf_grad_scales(group_sum<kLanes>(ss), group_sum<kLanes>(gx), eps, inv, radial);
    T* dr = dx + row * dx_row_stride;
    for (int64_t col = static_cast<int64_t>(lane) * VEC; col < D; col += kLanes * VEC)
      *reinterpret_cast<P*>(dr + col) =
          vmf_grad(*reinterpret_cast<const P*>(gr + col), *reinterpret_cast<const P*>(xr + col), inv, radial);
  }
}

struct BwdArgs {
  int64_t rows, D, gs, xs, ds;
  float eps;
  cudaStream_t stream;
};

template <typename T, int VEC, int LANES, int CHUNKS>
cudaError_t launch_bwd_regs(const T* g, const T* x, T* dx, const BwdArgs& a) {
  vmf_normalize_bwd_regs<T, VEC, LANES, CHUNKS><<<grid_for_rows(a.rows, kThreads / LANES), kThreads, 0, a.stream>>>(
      g, x, dx, a.rows, a.D, a.gs, a.xs, a.ds, a.eps);
  return cudaGetLastError();
}

template <typename T, int VEC>
cudaError_t launch_bwd_rows(const T* g, const T* x, T* dx, const BwdArgs& a) {
  vmf_normalize_bwd_rows<T, VEC><<<grid_for_rows(a.rows, kThreads / 32), kThreads, 0, a.stream>>>(
      g, x, dx, a.rows, a.D, a.gs, a.xs, a.ds, a.eps);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_bwd_typed(uintptr_t gp, uintptr_t xp, uintptr_t dp, const BwdArgs& a) {
  constexpr int V = 16 / sizeof(T);
  const T* g = reinterpret_cast<const T*>(gp);
  const T* x = reinterpret_cast<const T*>(xp);
  T* dx = reinterpret_cast<T*>(dp);
  const bool vectorised = rows_aligned(gp, a.rows, a.D, a.gs, sizeof(T), 16) &&
                          rows_aligned(xp, a.rows, a.D, a.xs, sizeof(T), 16) &&
                          rows_aligned(dp, a.rows, a.D, a.ds, sizeof(T), 16);
  if (!vectorised) return launch_bwd_rows<T, 1>(g, x, dx, a);
  // Two packs per chunk stay in registers, so the register path stops at half the forward's width.
  const int64_t packs = a.D / V;
  if (packs <= 8) return launch_bwd_regs<T, V, 8, 1>(g, x, dx, a);
  if (packs <= 16) return launch_bwd_regs<T, V, 16, 1>(g, x, dx, a);
  if (packs <= 32) return launch_bwd_regs<T, V, 32, 1>(g, x, dx, a);
  if (packs <= 64) return launch_bwd_regs<T, V, 32, 2>(g, x, dx, a);
  if (packs <= 128) return launch_bwd_regs<T, V, 32, 4>(g, x, dx, a);
  return launch_bwd_rows<T, V>(g, x, dx, a);
}

}  // namespace

int launch_vmf_normalize_bwd(uintptr_t g, uintptr_t x, uintptr_t dx, int64_t rows, int64_t D, int64_t g_row_stride,
                             int64_t x_row_stride, int64_t dx_row_stride, int dtype, double eps, uintptr_t stream) {
  if (g == 0) return kNullPointer;
  if (const int status = check_rows_args(x, dx, rows, D, x_row_stride, dx_row_stride, dtype)) return status;
  if (g_row_stride < 0) return kBadStride;
  // Only element alignment is required: rows that are not aligned for 16-byte packs take the
  // element-wise kernel (launch_bwd_typed).
  if (!all_aligned({g, x, dx}, dtype_size(dtype))) return kMisaligned;
  if (!(eps >= 0.0)) return kBadEps;
  if (const int status = clear_earlier_error()) return status;
  const BwdArgs a{rows, D, g_row_stride, x_row_stride, dx_row_stride, static_cast<float>(eps), as_stream(stream)};
  switch (dtype) {
    case kFloat32: return launch_bwd_typed<float>(g, x, dx, a);
    case kFloat16: return launch_bwd_typed<__half>(g, x, dx, a);
    default: return launch_bwd_typed<__nv_bfloat16>(g, x, dx, a);
  }
}

int launch_vmf_normalize_fwd(uintptr_t x, uintptr_t y, int64_t rows, int64_t D, int64_t x_row_stride,
                             int64_t y_row_stride, int dtype, double eps, uintptr_t stream) {
  if (const int status = check_rows_args(x, y, rows, D, x_row_stride, y_row_stride, dtype)) return status;
  // As in the backward: packs where the rows allow them (launch_typed), element-wise otherwise.
  if (!all_aligned({x, y}, dtype_size(dtype))) return kMisaligned;
  if (!(eps >= 0.0)) return kBadEps;
  if (const int status = clear_earlier_error()) return status;
  const float e = static_cast<float>(eps);
  const cudaStream_t s = as_stream(stream);
  switch (dtype) {
    case kFloat32: return launch_typed<float>(x, y, rows, D, x_row_stride, y_row_stride, e, s);
    case kFloat16: return launch_typed<__half>(x, y, rows, D, x_row_stride, y_row_stride, e, s);
    default: return launch_typed<__nv_bfloat16>(x, y, rows, D, x_row_stride, y_row_stride, e, s);
  }
}

}  // namespace aef
