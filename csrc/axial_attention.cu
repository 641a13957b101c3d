// Axial time attention forward: o = softmax(scale * q k^T, masked) v per sequence (one pixel and
// head), reading q, k, v in place from their (B, T, H, W, heads, d) strides.
//
// A block's warps own consecutive tiles of 16 queries of one sequence, their Q fragments held in
// registers, and walk the keys together in blocks of 64 (fewer at d = 128) with the online softmax:
// each block of K and V is staged in shared memory once for all of them (axial_attention.cuh). For
// T <= 64 (d <= 64) that is a single block, so the whole 16 x T score tile of a warp stays in
// registers and is normalised once, and the launcher takes a single-buffered kernel. The saved log-sum-exp is in base 2 of the scaled scores,
// lse2 = log2(sum_j exp2(scale * log2(e) * q.k_j)), so the backward recomputes the probabilities as
// exp2(scale * log2(e) * q.k - lse2) with no change of base. A query with no valid key gets o = 0
// and lse2 = +inf, which makes every recomputed probability exactly 0.
#include "axial_attention.cuh"
#include "launchers.h"

namespace aef {
namespace attn {
namespace {

// Keys per block of the online softmax. 64 covers T <= 64 in one block; at d = 128 the output
// accumulator alone takes 64 registers per lane, so narrower blocks keep the kernel out of local
// memory (float32 also holds its emulated-mma operands as 32-bit values).
template <typename T, int D>
__host__ __device__ constexpr int key_block() {
  return D < 128 ? 64 : (sizeof(T) == 4 ? 16 : 32);
}

// Buffers of the shared tile, each K (rows 0..) and V (rows kKeyBlock..) of a key block:
// fwd_buffers in general, fwd_single_block_buffers (one where that is smaller) for T <= kKeyBlock.
template <typename T, int D, int VEC>
__host__ __device__ constexpr int fwd_buffers() {
  return column_buffers<T, D, VEC>(2 * key_block<T, D>());
}

template <typename T, int D, int VEC>
__host__ __device__ constexpr int fwd_single_block_buffers() {
  return single_block_buffers<T, D, VEC>(2 * key_block<T, D>());
}

template <typename T, int D, int BUFFERS, int VEC>
__global__ void __launch_bounds__(kThreads, 1)
    axial_attention_fwd(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                        T* __restrict__ o, float* __restrict__ lse, Problem p) {
  constexpr int kKeyBlock = key_block<T, D>();
  constexpr int kTiles = kKeyBlock / 8;  // score tiles of 8 keys
  constexpr int kOutTiles = D / 8;
  constexpr int kStride = tile_stride<T, D>();
  constexpr int kBuffers = BUFFERS;
  static_assert(BUFFERS >= 1 && BUFFERS <= fwd_buffers<T, D, VEC>(), "more buffers than column_buffers allows");
  alignas(16) __shared__ T tile[shared_rows(kBuffers, 2 * kKeyBlock) * kStride];
  // K of the key block at kb; its V follows kKeyBlock rows on.
  const auto keys_of = [&](int64_t kb) { return tile + (kb / kKeyBlock % kBuffers) * 2 * kKeyBlock * kStride; };
  const int lane = threadIdx.x & 31;
  const int g = lane >> 2;
  const int t = lane & 3;
  const BlockRows br = block_rows(p.Tq);
  const int64_t r0 = br.tile + g;  // query frames of rows g and g + 8
  const int64_t r1 = r0 + 8;
  const bool ok0 = r0 < p.Tq, ok1 = r1 < p.Tq;
  // Sequences s < 2^31 and strides of 2^31 blocks at most: the sum stays within uint32.
  for (uint32_t s = blockIdx.x; s < p.S; s += gridDim.x) {
    const Seq sq = split_sequence(s, p);
    const T* qs = q + base_offset(p.q, sq);
    const T* ks = k + base_offset(p.k, sq);
    const T* vs = v + base_offset(p.v, sq);
    const uint8_t* ms = p.mask ? p.mask + (sq.b * p.m.b + sq.h * p.m.h + sq.w * p.m.w) : nullptr;

    __syncthreads();  // the previous sequence's last K and V are read
    stage<T, D, VEC>(tile, qs + br.first * p.q.t, p.q.t, br.count, [&](int r) { return br.first + r < p.Tq; });
    __syncthreads();
    FragA<T> qa[D / 16];
    hold_rows<T, D>(qa, tile + (br.tile - br.first) * kStride);

    float acc[kOutTiles][4];
#pragma unroll
    for (int i = 0; i < kOutTiles; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
    float m[2] = {-INFINITY, -INFINITY};  // running row maxima (base-2 scaled scores)
    float l[2] = {0.f, 0.f};              // this lane's share of the running row sums

    for (int64_t kb = 0; kb < p.T; kb += kKeyBlock) {
      __syncthreads();  // the queries (first block) or the K and V of the block before are read
      stage_column_block<VEC, kBuffers>(kb, kKeyBlock, p.T, [&](int64_t at) {
        const auto readable = [&](int r) { return key_valid(p, ms, at + r); };
        T* const to = keys_of(at);
        if constexpr (VEC == 1) {
          stage<T, D, VEC>(to, ks + at * p.k.t, p.k.t, kKeyBlock, readable);
          stage<T, D, VEC>(to + kKeyBlock * kStride, vs + at * p.v.t, p.v.t, kKeyBlock, readable);
        } else {
          stage_async<T, D>(to, ks + at * p.k.t, p.k.t, kKeyBlock, readable);
          stage_async<T, D>(to + kKeyBlock * kStride, vs + at * p.v.t, p.v.t, kKeyBlock, readable);
        }
      });
      __syncthreads();
      const T* const kt = keys_of(kb);
      const T* const vt = kt + kKeyBlock * kStride;
      if (!br.active) continue;  // warp-uniform

      float sc[kTiles][4];
#pragma unroll
      for (int j = 0; j < kTiles; ++j) sc[j][0] = sc[j][1] = sc[j][2] = sc[j][3] = 0.f;
      rows_by_cols<T, D>(sc, qa, kt, p.T - kb);

      // Bit 2j + e: key kb + 8j + 2t + e (this lane's score columns) may be attended to.
      unsigned valid = 0;
#pragma unroll
      for (int j = 0; j < kTiles; ++j)
#pragma unroll
        for (int e = 0; e < 2; ++e) valid |= unsigned(key_valid(p, ms, kb + j * 8 + 2 * t + e)) << (2 * j + e);

      float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
      for (int j = 0; j < kTiles; ++j)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const bool ok = valid >> (2 * j + (i & 1)) & 1u;
          sc[j][i] = ok ? sc[j][i] * p.scale_log2 : -INFINITY;
          mx[i >> 1] = fmaxf(mx[i >> 1], sc[j][i]);
        }
      float base[2];
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const float m_new = fmaxf(m[r], quad_max(mx[r]));
        // While a row has seen no valid key its maximum is -inf; exponentiate against 0 so that
        // exp2(-inf - 0) = 0 instead of exp2(-inf + inf) = NaN.
        base[r] = m_new == -INFINITY ? 0.f : m_new;
        const float alpha = exp2f(m[r] - base[r]);
        l[r] *= alpha;
#pragma unroll
        for (int i = 0; i < kOutTiles; ++i) {
          acc[i][2 * r] *= alpha;
          acc[i][2 * r + 1] *= alpha;
        }
        m[r] = m_new;
      }
#pragma unroll
      for (int j = 0; j < kTiles; ++j)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          sc[j][i] = exp2f(sc[j][i] - base[i >> 1]);
          l[i >> 1] += sc[j][i];
        }

#pragma unroll
      for (int c = 0; c < kTiles / 2; ++c) {
        if (kb + c * 16 >= p.T) continue;  // warp-uniform; all its probabilities are 0
        // Padding keys' V rows are zeros in the tile and their probabilities 0.
        accumulate_rows<T, D>(acc, a_from_c<T>(sc[2 * c], sc[2 * c + 1]), vt + c * 16 * kStride);
      }
    }
    if (!br.active) continue;

    const int64_t row0 = contiguous_row(sq, p.Tq, r0, p.HWN);
    const int64_t row1 = contiguous_row(sq, p.Tq, r1, p.HWN);
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const float sum = quad_sum(l[r]);
      const bool has_key = sum > 0.f;
      // sum >= 1 (the row maximum contributes exp2(0)), so the approximate reciprocal is in range;
      // one Newton step brings it to float32 accuracy without the division's slow-path subroutine.
      const float r0inv = __fdividef(1.f, sum);
      const float inv = has_key ? fmaf(r0inv, fmaf(-sum, r0inv, 1.f), r0inv) : 0.f;
      const bool ok = r == 0 ? ok0 : ok1;
      const int64_t row = r == 0 ? row0 : row1;
      if (ok) {
        T* orow = o + row * D + 2 * t;
#pragma unroll
        for (int i = 0; i < kOutTiles; ++i) store_pair(orow + i * 8, acc[i][2 * r] * inv, acc[i][2 * r + 1] * inv);
        if (t == 0) lse[row] = has_key ? m[r] + log2f(sum) : INFINITY;
      }
    }
  }
}

template <typename T, int D, int BUFFERS, int VEC>
cudaError_t launch_fwd_kernel(uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t o, uintptr_t lse, const Problem& p,
                              cudaStream_t stream) {
  axial_attention_fwd<T, D, BUFFERS, VEC><<<rows_grid(p, p.Tq), 32 * block_warps(p.Tq), 0, stream>>>(
      reinterpret_cast<const T*>(q), reinterpret_cast<const T*>(k), reinterpret_cast<const T*>(v),
      reinterpret_cast<T*>(o), reinterpret_cast<float*>(lse), p);
  return cudaGetLastError();
}

// Keys that fit one key block take the instantiation with fwd_single_block_buffers.
template <typename T, int D, int VEC>
cudaError_t launch_fwd_staged(uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t o, uintptr_t lse, const Problem& p,
                              cudaStream_t stream) {
  return p.T <= key_block<T, D>()
             ? launch_fwd_kernel<T, D, fwd_single_block_buffers<T, D, VEC>(), VEC>(q, k, v, o, lse, p, stream)
             : launch_fwd_kernel<T, D, fwd_buffers<T, D, VEC>(), VEC>(q, k, v, o, lse, p, stream);
}

// vector: q, k and v are staged in 16-byte loads (vector_qkv), else element by element.
template <typename T, int D>
cudaError_t launch_fwd(uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t o, uintptr_t lse, const Problem& p,
                       bool vector, cudaStream_t stream) {
  return vector ? launch_fwd_staged<T, D, 16 / sizeof(T)>(q, k, v, o, lse, p, stream)
                : launch_fwd_staged<T, D, 1>(q, k, v, o, lse, p, stream);
}

template <typename T>
cudaError_t launch_fwd_typed(uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t o, uintptr_t lse, const Problem& p,
                             int64_t d, bool vector, cudaStream_t stream) {
  switch (d) {
    case 16: return launch_fwd<T, 16>(q, k, v, o, lse, p, vector, stream);
    case 32: return launch_fwd<T, 32>(q, k, v, o, lse, p, vector, stream);
    case 64: return launch_fwd<T, 64>(q, k, v, o, lse, p, vector, stream);
    default: return launch_fwd<T, 128>(q, k, v, o, lse, p, vector, stream);
  }
}

}  // namespace
}  // namespace attn

int launch_axial_attention_fwd(uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t mask, uintptr_t o, uintptr_t lse,
                               const std::vector<int64_t>& sizes, const std::vector<int64_t>& q_strides,
                               const std::vector<int64_t>& k_strides, const std::vector<int64_t>& v_strides,
                               const std::vector<int64_t>& mask_strides, double scale, int dtype, uintptr_t stream) {
  if (const int status = attn::check_args({q, k, v, o, lse}, sizes, q_strides, k_strides, v_strides, mask_strides, dtype))
    return status;
  if (!attn::pairs_aligned({o}, {q, k, v}, dtype) || lse % sizeof(float) != 0) return kMisaligned;
  if (const int status = clear_earlier_error()) return status;
  const int64_t d = sizes[6];
  const cudaStream_t s = as_stream(stream);
  const auto p = attn::make_problem(mask, sizes, q_strides, k_strides, v_strides, mask_strides, scale);
  const int elem = static_cast<int>(dtype_size(dtype));
  const bool vector = attn::vector_qkv(q, k, v, sizes, q_strides, k_strides, v_strides, elem);
  switch (dtype) {
    case kFloat32: return attn::launch_fwd_typed<float>(q, k, v, o, lse, p, d, vector, s);
    case kFloat16: return attn::launch_fwd_typed<__half>(q, k, v, o, lse, p, d, vector, s);
    default: return attn::launch_fwd_typed<__nv_bfloat16>(q, k, v, o, lse, p, d, vector, s);
  }
}

}  // namespace aef
