// GroupNorm over channels-last frames x (N, HW, C), contiguous, in G groups of CG = C / G channels:
// statistics per (frame, group) in float32, then y = act((x - mean) * rstd * gamma + beta) with act
// the identity or GELU (erf form), and the backward of both.
//
// Work layout: a frame's pixels are cut into chunks of `chunk_pixels`; a block owns one (frame,
// chunk) at a time, grid-striding over all N * chunks of them on axis 0. In a block, threadIdx.x
// walks channel packs (VEC channels: one 16-byte access when aligned) and threadIdx.y walks pixels,
// so a warp reads whole pixel rows of C channels, coalesced whatever CG is (the model's groups are
// 2 to 8 channels, narrower than one 32-byte sector).
//
// Forward: (1) per (frame, chunk, channel) the mean and M2 over the chunk's pixels, from sums of
// x - K (K the channel's value at the chunk's first pixel) added over the threads of a channel in a
// fixed order through shared memory; (2) a warp per (frame, group)
// merges its chunks x CG partials with Chan's formula (fixed lane assignment, then a fixed shuffle
// tree) into mean and rstd; (3) the elementwise apply.
// Backward, with d the gradient of the pre-activation (GELU' recomputed from x): (1) per (frame,
// chunk, channel) sums of d and d * xhat; (2) a warp per (frame, group) forms mean(gamma d) and
// mean(gamma d xhat) over the group, and per channel dgamma = sum(d xhat), dbeta = sum(d) add the
// partials of every (frame, chunk) in a fixed order; (3) dx = rstd (gamma d - mean(gamma d)
// - xhat mean(gamma d xhat)).
// No atomics, so every output is bitwise reproducible.
#include "common.h"
#include "cuda_utils.cuh"
#include "launchers.h"

namespace aef {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
// A chunk holds about this many elements (at least kMinChunkPixels pixels): enough work per block to
// amortise its partials (2 floats per channel), small enough to give thousands of blocks on a batch
// of 64 x 64 frames.
constexpr int64_t kChunkElements = 16384;
constexpr int64_t kMinChunkPixels = 64;
// Bounds N * HW * C so that no offset or workspace size computed below can overflow int64.
constexpr int64_t kMaxElements = INT64_MAX / 16;

constexpr float kInvSqrt2 = 0.70710678118654752f;
constexpr float kInvSqrt2Pi = 0.39894228040143268f;

__device__ __forceinline__ float gelu(float z) { return 0.5f * z * (1.f + erff(z * kInvSqrt2)); }

__device__ __forceinline__ float gelu_grad(float z) {
  return 0.5f * (1.f + erff(z * kInvSqrt2)) + z * expf(-0.5f * z * z) * kInvSqrt2Pi;
}

// Chan's merge of the statistics (nb > 0 values, mean mb, M2 qb) into (na, ma, qa); the caller adds
// nb to na, so one count serves every channel of a pack.
__device__ __forceinline__ void chan_merge(float na, float nb, float& ma, float& qa, float mb, float qb) {
  const float wb = nb / (na + nb);
  const float delta = mb - ma;
  ma = fmaf(delta, wb, ma);
  qa += qb + delta * delta * na * wb;
}

struct Shape {
  int64_t N, HW, C, G, CG, chunk_pixels, chunks;
};

struct Chunk {
  int64_t n, offset, npix;  // frame, element offset of the chunk's first pixel, pixel count
};

// The group of channel c of frame n: channels are counted in int32 (check_shape bounds C), which
// keeps the 64-bit division subroutine, and the registers it saves, out of the kernels.
__device__ __forceinline__ int64_t group_of(int64_t n, int64_t c, const Shape& s) {
  return n * s.G + static_cast<int>(c) / static_cast<int>(s.CG);
}

// The chunks w = blockIdx.x, blockIdx.x + gridDim.x, ... of a grid-stride loop, walked as (frame,
// chunk) pairs. The divisions happen once, before the loop: a 64-bit division is a subroutine call,
// and inside the loop the registers live across it would spill. Uniform over the block, so loops
// with barriers may use it.
struct ChunkWalk {
  int64_t n, c, dn, dc;
  __device__ __forceinline__ explicit ChunkWalk(const Shape& s)
      : n(blockIdx.x / s.chunks), c(blockIdx.x % s.chunks), dn(gridDim.x / s.chunks), dc(gridDim.x % s.chunks) {}
  __device__ __forceinline__ bool more(const Shape& s) const { return n < s.N; }
  __device__ __forceinline__ void next(const Shape& s) {
    n += dn;
    c += dc;
    if (c >= s.chunks) {
      c -= s.chunks;
      ++n;
    }
  }
  __device__ __forceinline__ int64_t index(const Shape& s) const { return n * s.chunks + c; }
  __device__ __forceinline__ Chunk chunk(const Shape& s) const {
    const int64_t p0 = c * s.chunk_pixels;
    return {n, (n * s.HW + p0) * s.C, min(s.chunk_pixels, s.HW - p0)};
  }
};

// ---- forward ------------------------------------------------------------------------------------

template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads)
    group_norm_fwd_partials(const T* __restrict__ x, float2* __restrict__ partials, Shape s) {
  using P = Pack<T, VEC>;
  __shared__ float sh_s1[kThreads * VEC];
  __shared__ float sh_s2[kThreads * VEC];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int TX = blockDim.x, TY = blockDim.y;
  const int slot = (ty * TX + tx) * VEC;
  const int64_t packs = s.C / VEC;
  // Both loop bounds are uniform over the block, so every thread reaches the barriers.
  for (ChunkWalk walk(s); walk.more(s); walk.next(s)) {
    const Chunk ch = walk.chunk(s);
    for (int64_t k0 = 0; k0 < packs; k0 += TX) {
      const int64_t k = k0 + tx;
      // Sums of x - K and (x - K)^2 with K the channel's value at the chunk's first pixel, shared
      // by every thread row, so rows merge by plain addition. Running means (Welford, Chan) round
      // at the data's magnitude on every update and those errors enter M2 at first order: a group
      // with a large mean and a small spread lost most of its variance's digits that way.
      float shift[VEC], s1[VEC], s2[VEC];
#pragma unroll
      for (int i = 0; i < VEC; ++i) shift[i] = s1[i] = s2[i] = 0.f;
      if (k < packs) {
        const T* xk = x + ch.offset + k * VEC;
        const P v0 = *reinterpret_cast<const P*>(xk);
#pragma unroll
        for (int i = 0; i < VEC; ++i) shift[i] = to_float(v0.v[i]);
        for (int64_t p = ty; p < ch.npix; p += TY) {
          const P v = *reinterpret_cast<const P*>(xk + p * s.C);
#pragma unroll
          for (int i = 0; i < VEC; ++i) {
            const float dv = to_float(v.v[i]) - shift[i];
            s1[i] += dv;
            s2[i] = fmaf(dv, dv, s2[i]);
          }
        }
      }
#pragma unroll
      for (int i = 0; i < VEC; ++i) {
        sh_s1[slot + i] = s1[i];
        sh_s2[slot + i] = s2[i];
      }
      __syncthreads();
      if (ty == 0 && k < packs) {
        for (int j = 1; j < TY; ++j) {
          const int other = (j * TX + tx) * VEC;
#pragma unroll
          for (int i = 0; i < VEC; ++i) {
            s1[i] += sh_s1[other + i];
            s2[i] += sh_s2[other + i];
          }
        }
        const float n = static_cast<float>(ch.npix);
        float2* out = partials + walk.index(s) * s.C + k * VEC;
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
          const float d = s1[i] / n;  // mean - K
          out[i] = make_float2(shift[i] + d, fmaxf(fmaf(-s1[i], d, s2[i]), 0.f));
        }
      }
      __syncthreads();  // the next pass overwrites the shared arrays
    }
  }
}

// One warp per (frame, group). Lane l merges items l, l + 32, ... of the group's chunks x CG
// partials, then lane 0 merges the lanes along a fixed shuffle tree.
__global__ void __launch_bounds__(kThreads)
    group_norm_fwd_stats(const float2* __restrict__ partials, float* __restrict__ mean, float* __restrict__ rstd,
                         Shape s, float eps) {
  const int lane = threadIdx.x % 32;
  const int64_t items = s.chunks * s.CG;
  for (int64_t ng = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32; ng < s.N * s.G;
       ng += static_cast<int64_t>(gridDim.x) * kWarps) {
    // A whole warp shares `ng`, so the loop exit is warp-uniform.
    const int64_t n = ng / s.G;
    const float2* pg = partials + n * s.chunks * s.C + (ng - n * s.G) * s.CG;
    float na = 0.f, ma = 0.f, qa = 0.f;
    for (int64_t i = lane; i < items; i += 32) {
      const int64_t chunk = i / s.CG;
      const float nb = static_cast<float>(min(s.chunk_pixels, s.HW - chunk * s.chunk_pixels));
      const float2 b = pg[chunk * s.C + (i - chunk * s.CG)];
      chan_merge(na, nb, ma, qa, b.x, b.y);
      na += nb;
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
      const float nb = __shfl_down_sync(0xffffffffu, na, off);
      const float mb = __shfl_down_sync(0xffffffffu, ma, off);
      const float qb = __shfl_down_sync(0xffffffffu, qa, off);
      if (lane < off && nb > 0.f) {
        chan_merge(na, nb, ma, qa, mb, qb);
        na += nb;
      }
    }
    if (lane == 0) {
      mean[ng] = ma;
      rstd[ng] = 1.f / sqrtf(qa / na + eps);  // M2 is a sum of non-negative terms
    }
  }
}

template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads)
    group_norm_fwd_apply(const T* __restrict__ x, const float* __restrict__ gamma, const float* __restrict__ beta,
                         const float* __restrict__ mean, const float* __restrict__ rstd, T* __restrict__ y, Shape s,
                         int apply_gelu) {
  using P = Pack<T, VEC>;
  const int64_t packs = s.C / VEC;
  for (ChunkWalk walk(s); walk.more(s); walk.next(s)) {
    const Chunk ch = walk.chunk(s);
    for (int64_t k = threadIdx.x; k < packs; k += blockDim.x) {
      // y = act((x - mean) a + beta): x - mean first, so that a constant group (rstd = 1/sqrt(eps))
      // gives exactly beta, where x a + (beta - mean a) would leave the rounding of two large terms.
      float mu[VEC], a[VEC], b[VEC];
#pragma unroll
      for (int i = 0; i < VEC; ++i) {
        const int64_t c = k * VEC + i;
        const int64_t ng = group_of(ch.n, c, s);
        mu[i] = mean[ng];
        a[i] = rstd[ng] * gamma[c];
        b[i] = beta[c];
      }
      for (int64_t p = threadIdx.y; p < ch.npix; p += blockDim.y) {
        const int64_t off = ch.offset + p * s.C + k * VEC;
        const P v = *reinterpret_cast<const P*>(x + off);
        P o;
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
          const float z = fmaf(to_float(v.v[i]) - mu[i], a[i], b[i]);
          o.v[i] = from_float<T>(apply_gelu ? gelu(z) : z);
        }
        *reinterpret_cast<P*>(y + off) = o;
      }
    }
  }
}

// ---- backward -----------------------------------------------------------------------------------

template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads)
    group_norm_bwd_partials(const T* __restrict__ dy, const T* __restrict__ x, const float* __restrict__ gamma,
                            const float* __restrict__ beta, const float* __restrict__ mean,
                            const float* __restrict__ rstd, float2* __restrict__ partials, Shape s, int apply_gelu) {
  using P = Pack<T, VEC>;
  __shared__ float sh_d[kThreads * VEC];
  __shared__ float sh_dx[kThreads * VEC];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int TX = blockDim.x, TY = blockDim.y;
  const int slot = (ty * TX + tx) * VEC;
  const int64_t packs = s.C / VEC;
  // Both loop bounds are uniform over the block, so every thread reaches the barriers.
  for (ChunkWalk walk(s); walk.more(s); walk.next(s)) {
    const Chunk ch = walk.chunk(s);
    for (int64_t k0 = 0; k0 < packs; k0 += TX) {
      const int64_t k = k0 + tx;
      float sd[VEC], sdx[VEC];  // sums of d and d * xhat
#pragma unroll
      for (int i = 0; i < VEC; ++i) sd[i] = sdx[i] = 0.f;
      if (k < packs) {
        // The pre-activation z = (x - mean) a + beta exactly as the forward and group_norm_bwd_apply
        // form it: d must be bitwise the same here and there, or a large rstd (a near-constant group)
        // would amplify the difference between the group means taken here and the d they are taken from.
        float mu[VEC], rs[VEC], a[VEC], bt[VEC];
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
          const int64_t c = k * VEC + i;
          const int64_t ng = group_of(ch.n, c, s);
          mu[i] = mean[ng];
          rs[i] = rstd[ng];
          a[i] = rs[i] * gamma[c];
          bt[i] = beta[c];
        }
        for (int64_t p = ty; p < ch.npix; p += TY) {
          const int64_t off = ch.offset + p * s.C + k * VEC;
          const P xv = *reinterpret_cast<const P*>(x + off);
          const P gv = *reinterpret_cast<const P*>(dy + off);
#pragma unroll
          for (int i = 0; i < VEC; ++i) {
            const float xf = to_float(xv.v[i]);
            const float xhat = (xf - mu[i]) * rs[i];
            const float g = to_float(gv.v[i]);
            const float d = apply_gelu ? g * gelu_grad(fmaf(xf - mu[i], a[i], bt[i])) : g;
            sd[i] += d;
            sdx[i] = fmaf(d, xhat, sdx[i]);
          }
        }
      }
#pragma unroll
      for (int i = 0; i < VEC; ++i) {
        sh_d[slot + i] = sd[i];
        sh_dx[slot + i] = sdx[i];
      }
      __syncthreads();
      if (ty == 0 && k < packs) {
        for (int j = 1; j < TY; ++j) {
          const int other = (j * TX + tx) * VEC;
#pragma unroll
          for (int i = 0; i < VEC; ++i) {
            sd[i] += sh_d[other + i];
            sdx[i] += sh_dx[other + i];
          }
        }
        float2* out = partials + walk.index(s) * s.C + k * VEC;
#pragma unroll
        for (int i = 0; i < VEC; ++i) out[i] = make_float2(sd[i], sdx[i]);
      }
      __syncthreads();  // the next pass overwrites the shared arrays
    }
  }
}

// One warp per (frame, group): coef = (mean of gamma d, mean of gamma d xhat) over the group.
__global__ void __launch_bounds__(kThreads)
    group_norm_bwd_coefs(const float2* __restrict__ partials, const float* __restrict__ gamma,
                         float2* __restrict__ coef, Shape s) {
  const int lane = threadIdx.x % 32;
  const int64_t items = s.chunks * s.CG;
  const float inv_count = 1.f / static_cast<float>(s.HW * s.CG);
  for (int64_t ng = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32; ng < s.N * s.G;
       ng += static_cast<int64_t>(gridDim.x) * kWarps) {
    // A whole warp shares `ng`, so the loop exit is warp-uniform.
    const int64_t n = ng / s.G;
    const int64_t c0 = (ng - n * s.G) * s.CG;
    const float2* pg = partials + n * s.chunks * s.C + c0;
    float sg = 0.f, sgx = 0.f;
    for (int64_t i = lane; i < items; i += 32) {
      const int64_t chunk = i / s.CG;
      const int64_t j = i - chunk * s.CG;
      const float gam = gamma[c0 + j];
      const float2 b = pg[chunk * s.C + j];
      sg = fmaf(gam, b.x, sg);
      sgx = fmaf(gam, b.y, sgx);
    }
    sg = group_sum<32>(sg);
    sgx = group_sum<32>(sgx);
    if (lane == 0) coef[ng] = make_float2(sg * inv_count, sgx * inv_count);
  }
}

// dbeta[c] = sum of d, dgamma[c] = sum of d * xhat over every (frame, chunk). A block covers 8
// channels (64-byte rows of float2) with 32 thread rows, each adding every 32nd partial row; row 0
// then adds the 32 in order. Narrow blocks give C / 8 of them, so the model's C = 64 still spreads
// over several SMs.
constexpr int kParamCols = 8;
constexpr int kParamRows = kThreads / kParamCols;

__global__ void __launch_bounds__(kThreads)
    group_norm_bwd_params(const float2* __restrict__ partials, float* __restrict__ dgamma,
                          float* __restrict__ dbeta, Shape s) {
  __shared__ float2 sh[kParamRows][kParamCols];
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kParamCols + threadIdx.x;
  const int64_t rows = s.N * s.chunks;
  float2 acc = make_float2(0.f, 0.f);
  if (c < s.C) {
    for (int64_t r = threadIdx.y; r < rows; r += kParamRows) {
      const float2 v = partials[r * s.C + c];
      acc.x += v.x;
      acc.y += v.y;
    }
  }
  sh[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && c < s.C) {
    for (int j = 1; j < kParamRows; ++j) {
      acc.x += sh[j][threadIdx.x].x;
      acc.y += sh[j][threadIdx.x].y;
    }
    dbeta[c] = acc.x;
    dgamma[c] = acc.y;
  }
}

template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads)
    group_norm_bwd_apply(const T* __restrict__ dy, const T* __restrict__ x, const float* __restrict__ gamma,
                         const float* __restrict__ beta, const float* __restrict__ mean, const float* __restrict__ rstd,
                         const float2* __restrict__ coef, T* __restrict__ dx, Shape s, int apply_gelu) {
  using P = Pack<T, VEC>;
  const int64_t packs = s.C / VEC;
  for (ChunkWalk walk(s); walk.more(s); walk.next(s)) {
    const Chunk ch = walk.chunk(s);
    for (int64_t k = threadIdx.x; k < packs; k += blockDim.x) {
      // Per channel, with xhat = (x - mean) rstd: the pre-activation z = (x - mean) a + beta (as in
      // the forward and group_norm_bwd_partials), and dx = rstd (gamma d - ca - xhat cb)
      // = a d + bx (x - mean) + k0.
      float mu[VEC], a[VEC], bt[VEC], bx[VEC], k0[VEC];
#pragma unroll
      for (int i = 0; i < VEC; ++i) {
        const int64_t c = k * VEC + i;
        const int64_t ng = group_of(ch.n, c, s);
        const float rs = rstd[ng];
        const float2 cf = coef[ng];
        mu[i] = mean[ng];
        a[i] = rs * gamma[c];
        bt[i] = beta[c];
        bx[i] = -rs * rs * cf.y;
        k0[i] = -rs * cf.x;
      }
      for (int64_t p = threadIdx.y; p < ch.npix; p += blockDim.y) {
        const int64_t off = ch.offset + p * s.C + k * VEC;
        const P xv = *reinterpret_cast<const P*>(x + off);
        const P gv = *reinterpret_cast<const P*>(dy + off);
        P o;
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
          const float xf = to_float(xv.v[i]);
          const float g = to_float(gv.v[i]);
          const float xc = xf - mu[i];
          const float d = apply_gelu ? g * gelu_grad(fmaf(xc, a[i], bt[i])) : g;
          o.v[i] = from_float<T>(fmaf(a[i], d, fmaf(bx[i], xc, k0[i])));
        }
        *reinterpret_cast<P*>(dx + off) = o;
      }
    }
  }
}

// ---- host side ----------------------------------------------------------------------------------

Shape make_shape(int64_t N, int64_t HW, int64_t C, int64_t G) {
  const int64_t chunk_pixels = std::max(kMinChunkPixels, kChunkElements / C);
  return {N, HW, C, G, C / G, chunk_pixels, cdiv(HW, chunk_pixels)};
}

// Floats of workspace: the float2 partials of every (frame, chunk, channel), then the backward's
// float2 coefficients of every (frame, group).
int64_t workspace_floats(const Shape& s) { return 2 * s.N * s.chunks * s.C + 2 * s.N * s.G; }

int check_shape(int64_t N, int64_t HW, int64_t C, int64_t G) {
  if (N <= 0 || HW <= 0 || C <= 0 || G <= 0) return kBadSize;
  if (HW > kMaxElements / C / N) return kBadSize;
  if (C % G != 0) return kBadGroups;
  if (C > INT32_MAX) return kTooLarge;  // channel indices are int32 in the kernels (group_of)
  return kOk;
}

template <int VEC>
dim3 block_for(int64_t C) {
  const int tx = static_cast<int>(std::min<int64_t>(C / VEC, kThreads));
  return dim3(tx, kThreads / tx);
}

dim3 chunk_grid(const Shape& s) { return dim3(static_cast<unsigned>(std::min(s.N * s.chunks, kMaxGridX))); }

dim3 group_grid(const Shape& s) { return grid_for_rows(s.N * s.G, kWarps); }

struct FwdPtrs {
  uintptr_t x, y;
  const float *gamma, *beta;
  float *mean, *rstd;
  float2* partials;
};

template <typename T, int VEC>
cudaError_t launch_fwd_vec(const FwdPtrs& p, const Shape& s, float eps, int gelu, cudaStream_t stream) {
  const T* x = reinterpret_cast<const T*>(p.x);
  const dim3 block = block_for<VEC>(s.C);
  group_norm_fwd_partials<T, VEC><<<chunk_grid(s), block, 0, stream>>>(x, p.partials, s);
  if (const cudaError_t err = cudaGetLastError()) return err;
  group_norm_fwd_stats<<<group_grid(s), kThreads, 0, stream>>>(p.partials, p.mean, p.rstd, s, eps);
  if (const cudaError_t err = cudaGetLastError()) return err;
  group_norm_fwd_apply<T, VEC><<<chunk_grid(s), block, 0, stream>>>(x, p.gamma, p.beta, p.mean, p.rstd,
                                                                     reinterpret_cast<T*>(p.y), s, gelu);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_fwd_typed(const FwdPtrs& p, const Shape& s, float eps, int gelu, cudaStream_t stream) {
  constexpr int V = 16 / sizeof(T);
  if (s.C % V == 0 && p.x % 16 == 0 && p.y % 16 == 0) return launch_fwd_vec<T, V>(p, s, eps, gelu, stream);
  return launch_fwd_vec<T, 1>(p, s, eps, gelu, stream);
}

struct BwdPtrs {
  uintptr_t dy, x, dx;
  const float *gamma, *beta, *mean, *rstd;
  float *dgamma, *dbeta;
  float2 *partials, *coef;
};

template <typename T, int VEC>
cudaError_t launch_bwd_vec(const BwdPtrs& p, const Shape& s, int gelu, cudaStream_t stream) {
  const T* dy = reinterpret_cast<const T*>(p.dy);
  const T* x = reinterpret_cast<const T*>(p.x);
  const dim3 block = block_for<VEC>(s.C);
  group_norm_bwd_partials<T, VEC><<<chunk_grid(s), block, 0, stream>>>(dy, x, p.gamma, p.beta, p.mean, p.rstd,
                                                                        p.partials, s, gelu);
  if (const cudaError_t err = cudaGetLastError()) return err;
  group_norm_bwd_coefs<<<group_grid(s), kThreads, 0, stream>>>(p.partials, p.gamma, p.coef, s);
  if (const cudaError_t err = cudaGetLastError()) return err;
  group_norm_bwd_params<<<static_cast<unsigned>(cdiv(s.C, kParamCols)), dim3(kParamCols, kParamRows), 0, stream>>>(
      p.partials, p.dgamma, p.dbeta, s);
  if (const cudaError_t err = cudaGetLastError()) return err;
  group_norm_bwd_apply<T, VEC><<<chunk_grid(s), block, 0, stream>>>(dy, x, p.gamma, p.beta, p.mean, p.rstd, p.coef,
                                                                     reinterpret_cast<T*>(p.dx), s, gelu);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_bwd_typed(const BwdPtrs& p, const Shape& s, int gelu, cudaStream_t stream) {
  constexpr int V = 16 / sizeof(T);
  if (s.C % V == 0 && p.dy % 16 == 0 && p.x % 16 == 0 && p.dx % 16 == 0)
    return launch_bwd_vec<T, V>(p, s, gelu, stream);
  return launch_bwd_vec<T, 1>(p, s, gelu, stream);
}

}  // namespace

int64_t group_norm_workspace_size(int64_t N, int64_t HW, int64_t C, int64_t G) {
  if (const int status = check_shape(N, HW, C, G)) return status;
  return workspace_floats(make_shape(N, HW, C, G));
}

int launch_group_norm_fwd(uintptr_t x, uintptr_t gamma, uintptr_t beta, uintptr_t y, uintptr_t mean, uintptr_t rstd,
                          uintptr_t workspace, int64_t workspace_size, int64_t N, int64_t HW, int64_t C, int64_t G,
                          int dtype, double eps, int gelu, uintptr_t stream) {
  if (!x || !gamma || !beta || !y || !mean || !rstd || !workspace) return kNullPointer;
  if (const int status = check_shape(N, HW, C, G)) return status;
  if (!valid_dtype(dtype)) return kBadDtype;
  if (!(eps >= 0.0)) return kBadEps;
  const Shape s = make_shape(N, HW, C, G);
  if (workspace_size < workspace_floats(s) || workspace % alignof(float2)) return kBadWorkspace;
  // x and y move in 16-byte packs only where both allow them (launch_fwd_typed), else element-wise;
  // the float32 parameters and statistics one element at a time.
  if (!all_aligned({x, y}, dtype_size(dtype)) || !all_aligned({gamma, beta, mean, rstd}, sizeof(float)))
    return kMisaligned;
  if (const int status = clear_earlier_error()) return status;
  const FwdPtrs p{x,
                  y,
                  reinterpret_cast<const float*>(gamma),
                  reinterpret_cast<const float*>(beta),
                  reinterpret_cast<float*>(mean),
                  reinterpret_cast<float*>(rstd),
                  reinterpret_cast<float2*>(workspace)};
  const float e = static_cast<float>(eps);
  const cudaStream_t st = as_stream(stream);
  switch (dtype) {
    case kFloat32: return launch_fwd_typed<float>(p, s, e, gelu, st);
    case kFloat16: return launch_fwd_typed<__half>(p, s, e, gelu, st);
    default: return launch_fwd_typed<__nv_bfloat16>(p, s, e, gelu, st);
  }
}

int launch_group_norm_bwd(uintptr_t dy, uintptr_t x, uintptr_t gamma, uintptr_t beta, uintptr_t mean, uintptr_t rstd,
                          uintptr_t dx, uintptr_t dgamma, uintptr_t dbeta, uintptr_t workspace,
                          int64_t workspace_size, int64_t N, int64_t HW, int64_t C, int64_t G, int dtype, int gelu,
                          uintptr_t stream) {
  if (!dy || !x || !gamma || !beta || !mean || !rstd || !dx || !dgamma || !dbeta || !workspace) return kNullPointer;
  if (const int status = check_shape(N, HW, C, G)) return status;
  if (!valid_dtype(dtype)) return kBadDtype;
  const Shape s = make_shape(N, HW, C, G);
  if (workspace_size < workspace_floats(s) || workspace % alignof(float2)) return kBadWorkspace;
  // As in the forward: dy, x and dx in packs where all three allow them (launch_bwd_typed).
  if (!all_aligned({dy, x, dx}, dtype_size(dtype)) ||
      !all_aligned({gamma, beta, mean, rstd, dgamma, dbeta}, sizeof(float)))
    return kMisaligned;
  if (const int status = clear_earlier_error()) return status;
  float2* partials = reinterpret_cast<float2*>(workspace);
  const BwdPtrs p{dy,
                  x,
                  dx,
                  reinterpret_cast<const float*>(gamma),
                  reinterpret_cast<const float*>(beta),
                  reinterpret_cast<const float*>(mean),
                  reinterpret_cast<const float*>(rstd),
                  reinterpret_cast<float*>(dgamma),
                  reinterpret_cast<float*>(dbeta),
                  partials,
                  partials + s.N * s.chunks * s.C};
  const cudaStream_t st = as_stream(stream);
  switch (dtype) {
    case kFloat32: return launch_bwd_typed<float>(p, s, gelu, st);
    case kFloat16: return launch_bwd_typed<__half>(p, s, gelu, st);
    default: return launch_bwd_typed<__nv_bfloat16>(p, s, gelu, st);
  }
}

}  // namespace aef
