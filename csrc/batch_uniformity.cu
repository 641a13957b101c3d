// Batch-uniformity loss: L = mean over (b, m) of |u[b, m] . u[b-1 mod B, m]|, u viewed as (B, M, D),
// and its backward du[b, m] = (g / (B*M)) (sign(dot[b, m]) u[b-1, m] + sign(dot[b+1, m]) u[b+1, m]).
//
// The forward is one pass over the rows: each row's dot (float32, saved for the backward) and a
// per-block partial sum of |dot|, then a one-block kernel adds the partials in a fixed order and
// divides by B*M. No atomics, and the grid (hence every partial) depends only on the sizes, so the
// loss is bitwise reproducible. Lane groups share a warp as in vmf_normalize.cu, so short rows
// (D = 64) keep every lane busy; rows that allow it move in 16-byte packs.
#include "common.h"
#include "cuda_utils.cuh"
#include "launchers.h"

namespace aef {
namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;

// Sum over the block, in a fixed order; every thread must call it. The result is in thread 0.
__device__ __forceinline__ float block_sum(float v) {
  __shared__ float warp_sums[kWarps];
  v = group_sum<32>(v);
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = v;
  __syncthreads();
  float total = 0.f;
  if (threadIdx.x == 0) {
#pragma unroll
    for (int w = 0; w < kWarps; ++w) total += warp_sums[w];
  }
  return total;
}

struct Rows {
  int64_t B, M, D, sb, sm;  // u strides in elements; the last dim is contiguous
};

template <typename T, int VEC, int LANES>
__global__ void __launch_bounds__(kThreads)
    batch_uniformity_fwd_dots(const T* __restrict__ u, float* __restrict__ dots, float* __restrict__ partials,
                              Rows r) {
  using P = Pack<T, VEC>;
  constexpr int kRowsPerBlock = kThreads / LANES;
  const int lane = threadIdx.x % LANES;
  const int64_t rows = r.B * r.M;
  float block_abs = 0.f;  // accumulated by lane 0 of each group
  // The loop bound is uniform over the block, so every lane reaches the shuffles in group_sum.
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock; base < rows;
       base += static_cast<int64_t>(gridDim.x) * kRowsPerBlock) {
    const int64_t row = base + threadIdx.x / LANES;
    const bool active = row < rows;
    float s = 0.f;
    if (active) {
      const int64_t b = row / r.M;
      const int64_t m = row - b * r.M;
      const int64_t prev = b == 0 ? r.B - 1 : b - 1;
      const T* here = u + b * r.sb + m * r.sm;
      const T* there = u + prev * r.sb + m * r.sm;
      for (int64_t col = static_cast<int64_t>(lane) * VEC; col < r.D; col += LANES * VEC)
        s += dot(*reinterpret_cast<const P*>(here + col), *reinterpret_cast<const P*>(there + col));
    }
    s = group_sum<LANES>(s);
    if (active && lane == 0) {
      dots[row] = s;
      block_abs += fabsf(s);
    }
  }
  const float total = block_sum(block_abs);
  if (threadIdx.x == 0) partials[blockIdx.x] = total;
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    batch_uniformity_fwd_sum(const float* __restrict__ partials, int64_t n_partials, float count, T* __restrict__ loss) {
  float s = 0.f;
  for (int64_t i = threadIdx.x; i < n_partials; i += kThreads) s += partials[i];
  const float total = block_sum(s);
  if (threadIdx.x == 0) *loss = from_float<T>(total / count);
}

__device__ __forceinline__ float signed_scale(float d, float g) { return d > 0.f ? g : (d < 0.f ? -g : 0.f); }

template <typename T, int VEC, int LANES>
__global__ void __launch_bounds__(kThreads)
    batch_uniformity_bwd(const T* __restrict__ grad, const T* __restrict__ u, const float* __restrict__ dots,
                         T* __restrict__ du, Rows r) {
  using P = Pack<T, VEC>;
  constexpr int kRowsPerBlock = kThreads / LANES;
  const int lane = threadIdx.x % LANES;
  const int64_t rows = r.B * r.M;
  const float g = to_float(*grad) / static_cast<float>(rows);
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / LANES; row < rows;
       row += static_cast<int64_t>(gridDim.x) * kRowsPerBlock) {
    const int64_t b = row / r.M;
    const int64_t m = row - b * r.M;
    const int64_t prev = b == 0 ? r.B - 1 : b - 1;
    const int64_t next = b == r.B - 1 ? 0 : b + 1;
    // Row b enters two terms: its own |u[b] . u[b-1]| and row b+1's |u[b+1] . u[b]|.
    const float s_own = signed_scale(dots[row], g);
    const float s_next = signed_scale(dots[next * r.M + m], g);
    const T* up = u + prev * r.sb + m * r.sm;
    const T* un = u + next * r.sb + m * r.sm;
    T* out = du + row * r.D;
    for (int64_t col = static_cast<int64_t>(lane) * VEC; col < r.D; col += LANES * VEC) {
      const P a = *reinterpret_cast<const P*>(up + col);
      const P c = *reinterpret_cast<const P*>(un + col);
      P o;
#pragma unroll
      for (int i = 0; i < VEC; ++i) o.v[i] = from_float<T>(fmaf(s_own, to_float(a.v[i]), s_next * to_float(c.v[i])));
      *reinterpret_cast<P*>(out + col) = o;
    }
  }
}

// The lane-group width of a row: 8 lanes for rows of at most 8 packs (D = 64 in 16-bit), else a warp.
constexpr int kShortRowPacks = 8;

bool u_aligned(uintptr_t u, const Rows& r, int elem) {
  const int64_t vec = 16 / elem;
  return u % 16 == 0 && r.D % vec == 0 && r.sb % vec == 0 && r.sm % vec == 0;
}

template <typename T>
cudaError_t launch_fwd_typed(uintptr_t up, float* dots, float* partials, T* loss, const Rows& r, int64_t max_partials,
                             cudaStream_t stream) {
  constexpr int V = 16 / sizeof(T);
  const T* u = reinterpret_cast<const T*>(up);
  const int64_t rows = r.B * r.M;
  const bool vectorised = u_aligned(up, r, sizeof(T));
  const bool short_rows = vectorised && r.D / V <= kShortRowPacks;
  const int rows_per_block = short_rows ? kThreads / 8 : kThreads / 32;
  const int64_t blocks = std::min(cdiv(rows, rows_per_block), max_partials);
  const dim3 grid(static_cast<unsigned>(blocks));
  if (short_rows)
    batch_uniformity_fwd_dots<T, V, 8><<<grid, kThreads, 0, stream>>>(u, dots, partials, r);
  else if (vectorised)
    batch_uniformity_fwd_dots<T, V, 32><<<grid, kThreads, 0, stream>>>(u, dots, partials, r);
  else
    batch_uniformity_fwd_dots<T, 1, 32><<<grid, kThreads, 0, stream>>>(u, dots, partials, r);
  if (const cudaError_t err = cudaGetLastError()) return err;
  batch_uniformity_fwd_sum<T><<<1, kThreads, 0, stream>>>(partials, blocks, static_cast<float>(rows), loss);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_bwd_typed(uintptr_t gp, uintptr_t up, const float* dots, uintptr_t dup, const Rows& r,
                             cudaStream_t stream) {
  constexpr int V = 16 / sizeof(T);
  const T* grad = reinterpret_cast<const T*>(gp);
  const T* u = reinterpret_cast<const T*>(up);
  T* du = reinterpret_cast<T*>(dup);
  const int64_t rows = r.B * r.M;
  // du is contiguous (rows, D): aligned rows need only an aligned base and D in whole packs.
  const bool vectorised = u_aligned(up, r, sizeof(T)) && dup % 16 == 0;
  const bool short_rows = vectorised && r.D / V <= kShortRowPacks;
  if (short_rows)
    batch_uniformity_bwd<T, V, 8><<<grid_for_rows(rows, kThreads / 8), kThreads, 0, stream>>>(grad, u, dots, du, r);
  else if (vectorised)
    batch_uniformity_bwd<T, V, 32><<<grid_for_rows(rows, kThreads / 32), kThreads, 0, stream>>>(grad, u, dots, du, r);
  else
    batch_uniformity_bwd<T, 1, 32><<<grid_for_rows(rows, kThreads / 32), kThreads, 0, stream>>>(grad, u, dots, du, r);
  return cudaGetLastError();
}

int check_uniformity_args(const Rows& r, int dtype) {
  if (r.B <= 0 || r.M <= 0 || r.D <= 0 || r.M > INT64_MAX / r.B) return kBadSize;
  if (!valid_dtype(dtype)) return kBadDtype;
  if (r.sb < 0 || r.sm < 0) return kBadStride;
  return kOk;
}

}  // namespace

int launch_batch_uniformity_fwd(uintptr_t u, uintptr_t dots, uintptr_t partials, uintptr_t loss, int64_t B, int64_t M,
                                int64_t D, int64_t u_batch_stride, int64_t u_row_stride, int64_t max_partials,
                                int dtype, uintptr_t stream) {
  if (u == 0 || dots == 0 || partials == 0 || loss == 0) return kNullPointer;
  const Rows r{B, M, D, u_batch_stride, u_row_stride};
  if (const int status = check_uniformity_args(r, dtype)) return status;
  if (max_partials <= 0) return kBadSize;
  // u moves in 16-byte packs only where it is aligned for them (launch_fwd_typed); dots, partials and
  // the loss are stored one element at a time.
  if (!all_aligned({u, loss}, dtype_size(dtype)) || !all_aligned({dots, partials}, sizeof(float))) return kMisaligned;
  if (const int status = clear_earlier_error()) return status;
  const int64_t cap = std::min(max_partials, kMaxGridX);
  float* d = reinterpret_cast<float*>(dots);
  float* p = reinterpret_cast<float*>(partials);
  const cudaStream_t s = as_stream(stream);
  switch (dtype) {
    case kFloat32: return launch_fwd_typed(u, d, p, reinterpret_cast<float*>(loss), r, cap, s);
    case kFloat16: return launch_fwd_typed(u, d, p, reinterpret_cast<__half*>(loss), r, cap, s);
    default: return launch_fwd_typed(u, d, p, reinterpret_cast<__nv_bfloat16*>(loss), r, cap, s);
  }
}

int launch_batch_uniformity_bwd(uintptr_t grad, uintptr_t u, uintptr_t dots, uintptr_t du, int64_t B, int64_t M,
                                int64_t D, int64_t u_batch_stride, int64_t u_row_stride, int dtype, uintptr_t stream) {
  if (grad == 0 || u == 0 || dots == 0 || du == 0) return kNullPointer;
  const Rows r{B, M, D, u_batch_stride, u_row_stride};
  if (const int status = check_uniformity_args(r, dtype)) return status;
  // du is stored in 16-byte packs only where it and u allow them (launch_bwd_typed), else element-wise.
  if (!all_aligned({grad, u, du}, dtype_size(dtype)) || dots % sizeof(float) != 0) return kMisaligned;
  if (const int status = clear_earlier_error()) return status;
  const float* d = reinterpret_cast<const float*>(dots);
  const cudaStream_t s = as_stream(stream);
  switch (dtype) {
    case kFloat32: return launch_bwd_typed<float>(grad, u, d, du, r, s);
    case kFloat16: return launch_bwd_typed<__half>(grad, u, d, du, r, s);
    default: return launch_bwd_typed<__nv_bfloat16>(grad, u, d, du, r, s);
  }
}

}  // namespace aef
