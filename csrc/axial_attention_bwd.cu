// Axial time attention backward, deterministic: every element of dq, dk and dv has exactly one
// writer and is summed in a fixed order, so two runs agree bit for bit (no atomics).
//
// Launches on the caller's stream:
//   1. delta[i] = rowsum(dO[i] * O[i]) over the contiguous output rows;
//   2. the dq pass: a block's warps own tiles of 16 queries of a sequence and walk its keys,
//      recomputing P = exp2(scale * log2(e) * q k^T - lse2) and dS = P * (dO v^T - delta), and
//      accumulate dq = scale * dS k;
//   3. the dk/dv pass: a block's warps own tiles of 16 keys of a sequence and walk its queries,
//      forming the same tiles transposed, and accumulate dv = P^T dO and dk = scale * dS^T q (two
//      launches at d = 128, one per output).
// Passes 2 and 3 are one kernel template: with rows R and columns C, both compute R1 C1^T and
// R2 C2^T, and both accumulate dS C1; only the roles of (q, dO) and (k, v) swap, and the dk/dv pass
// also accumulates P C2. R1 and R2 go to registers through shared memory once per sequence, C1 and
// C2 are staged in shared memory per column block for all the block's warps (axial_attention.cuh).
// float32 at d = 128 splits dq and dk once more, into two launches of 64 output columns each
// (out_cols). Padding keys are never read, and their dk, dv are written as 0.
#include "axial_attention.cuh"
#include "launchers.h"

namespace aef {
namespace attn {
namespace {

constexpr int kDeltaLanes = 8;

template <typename T>
__global__ void __launch_bounds__(kThreads)
    axial_attention_bwd_delta(const T* __restrict__ o, const T* __restrict__ dout, float* __restrict__ delta,
                              int64_t rows, int D) {
  constexpr int kRowsPerBlock = kThreads / kDeltaLanes;
  const int lane = threadIdx.x % kDeltaLanes;
  // The loop bound is uniform over the block, so every lane reaches the shuffles in group_sum.
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock; base < rows;
       base += static_cast<int64_t>(gridDim.x) * kRowsPerBlock) {
    const int64_t row = base + threadIdx.x / kDeltaLanes;
    float acc = 0.f;
    if (row < rows) {
      for (int c = 2 * lane; c < D; c += 2 * kDeltaLanes) {
        const Pack<T, 2> a = *reinterpret_cast<const Pack<T, 2>*>(o + row * D + c);
        const Pack<T, 2> b = *reinterpret_cast<const Pack<T, 2>*>(dout + row * D + c);
        acc = fmaf(to_float(a.v[0]), to_float(b.v[0]), acc);
        acc = fmaf(to_float(a.v[1]), to_float(b.v[1]), acc);
      }
    }
    acc = group_sum<kDeltaLanes>(acc);
    if (row < rows && lane == 0) delta[row] = acc;
  }
}

// What a pass of the backward kernel produces. At d = 128 the dk/dv pass is split in two: its two
// 128-wide float32 accumulators alone would take 128 registers per lane.
enum Pass : int { kPassDq, kPassDkDv, kPassDk, kPassDv };

// Columns per block: key-row passes hold up to two D-wide accumulators, so they take narrower blocks.
template <int D, int PASS>
__host__ __device__ constexpr int col_block() {
  if (PASS != kPassDq) return D >= 128 ? 16 : (D == 64 ? 32 : 64);
  return D >= 128 ? 32 : 64;
}

// Output columns per launch. float32 at d = 128 computes dq and dk in two launches of 64 columns
// each (recomputing P and dS): R1 and R2 held as float32 fragments take 128 registers, and a
// 128-wide accumulator on top of them spilled.
template <typename T, int D, int PASS>
__host__ __device__ constexpr int out_cols() {
  return sizeof(T) == 4 && D == 128 && PASS != kPassDv ? D / 2 : D;
}

// Buffers of the shared tile (which holds the block's R1 rows, then its R2 rows, first), each C1
// (rows 0..) and C2 (rows kCols..) of a column block: bwd_buffers in general,
// bwd_single_block_buffers (one where that is smaller) where the columns fit one block.
template <typename T, int D, int PASS, int VEC>
__host__ __device__ constexpr int bwd_buffers() {
  return column_buffers<T, D, VEC>(2 * col_block<D, PASS>());
}

template <typename T, int D, int PASS, int VEC>
__host__ __device__ constexpr int bwd_single_block_buffers() {
  return single_block_buffers<T, D, VEC>(2 * col_block<D, PASS>());
}

// kPassDq: rows are queries, out1 = dq. Otherwise rows are keys, out1 = dk and out2 = dv (as the pass
// says). The launch accumulates output columns out0 .. out0 + out_cols - 1.
template <typename T, int D, int PASS, int BUFFERS, int VEC>
__global__ void __launch_bounds__(kThreads, 1)
    axial_attention_bwd(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                        const T* __restrict__ dout, const float* __restrict__ lse, const float* __restrict__ delta,
                        T* __restrict__ out1, T* __restrict__ out2, Problem p, int out0) {
  constexpr bool KEY_ROWS = PASS != kPassDq;
  constexpr bool kWantDs = PASS != kPassDv;  // out1 += dS C1
  constexpr bool kWantP = PASS == kPassDkDv || PASS == kPassDv;  // out2 += P C2
  constexpr int kCols = col_block<D, PASS>();
  constexpr int kTiles = kCols / 8;
  constexpr int kOutTiles = out_cols<T, D, PASS>() / 8;
  constexpr int kStride = tile_stride<T, D>();
  constexpr int kBuffers = BUFFERS;
  static_assert(BUFFERS >= 1 && BUFFERS <= bwd_buffers<T, D, PASS, VEC>(), "more buffers than column_buffers allows");
  alignas(16) __shared__ T tile[shared_rows(kBuffers, 2 * kCols) * kStride];
  // C1 of the column block at cb; its C2 follows kCols rows on.
  const auto cols_of = [&](int64_t cb) { return tile + (cb / kCols % kBuffers) * 2 * kCols * kStride; };
  const int lane = threadIdx.x & 31;
  const int g = lane >> 2;
  const int t = lane & 3;
  const int64_t HWN = p.HWN;
  const int64_t dout_t = HWN * D;  // time stride of the contiguous dO
  const int64_t n_rows = KEY_ROWS ? p.T : p.Tq;
  const int64_t n_cols = KEY_ROWS ? p.Tq : p.T;
  const BlockRows br = block_rows(n_rows);
  const int64_t x0 = br.tile + g;  // frames of tile rows g, g + 8
  const int64_t x1 = x0 + 8;

  for (uint32_t s = blockIdx.x; s < p.S; s += gridDim.x) {
    const Seq sq = split_sequence(s, p);
    const T* qs = q + base_offset(p.q, sq);
    const T* ks = k + base_offset(p.k, sq);
    const T* vs = v + base_offset(p.v, sq);
    const int64_t first_row = contiguous_row(sq, p.Tq, 0, HWN);  // query frame 0 in dO, lse, delta
    const T* dos = dout + first_row * D;
    const float* lses = lse + first_row;
    const float* deltas = delta + first_row;
    const uint8_t* ms = p.mask ? p.mask + (sq.b * p.m.b + sq.h * p.m.h + sq.w * p.m.w) : nullptr;

    // R1 C1^T are the (transposed) scores, R2 C2^T the (transposed) dP.
    const T* r1 = KEY_ROWS ? ks : qs;
    const T* r2 = KEY_ROWS ? vs : dos;
    const T* c1 = KEY_ROWS ? qs : ks;
    const T* c2 = KEY_ROWS ? dos : vs;
    const int64_t r1t = KEY_ROWS ? p.k.t : p.q.t;
    const int64_t r2t = KEY_ROWS ? p.v.t : dout_t;
    const int64_t c1t = KEY_ROWS ? p.q.t : p.k.t;
    const int64_t c2t = KEY_ROWS ? dout_t : p.v.t;
    // Rows and columns that may be read: queries in range, keys in range and not padding.
    const auto row_ok = [&](int64_t x) { return KEY_ROWS ? key_valid(p, ms, x) : x < p.Tq; };
    const auto col_ok = [&](int64_t y) { return KEY_ROWS ? y < p.Tq : key_valid(p, ms, y); };

    const bool ok0 = row_ok(x0), ok1 = row_ok(x1);
    // Query rows carry their lse2 and delta; in the dk/dv pass they belong to the columns instead.
    // lse2 = +inf for an absent row makes its probabilities exp2(-inf) = 0.
    float lse_r[2] = {INFINITY, INFINITY}, delta_r[2] = {0.f, 0.f};
    if constexpr (!KEY_ROWS) {
      if (ok0) lse_r[0] = lses[x0 * HWN], delta_r[0] = deltas[x0 * HWN];
      if (ok1) lse_r[1] = lses[x1 * HWN], delta_r[1] = deltas[x1 * HWN];
    }

    // The warp's R1 (and R2) rows, into registers through the shared tile one operand at a time.
    const auto block_row_ok = [&](int r) { return row_ok(br.first + r); };
    const T* warp_rows = tile + (br.tile - br.first) * kStride;
    FragA<T> ra1[D / 16], ra2[D / 16];
    __syncthreads();  // the previous sequence's last column block is read
    stage<T, D, VEC>(tile, r1 + br.first * r1t, r1t, br.count, block_row_ok);
    __syncthreads();
    hold_rows<T, D>(ra1, warp_rows);
    if constexpr (kWantDs) {
      __syncthreads();
      stage<T, D, VEC>(tile, r2 + br.first * r2t, r2t, br.count, block_row_ok);
      __syncthreads();
      hold_rows<T, D>(ra2, warp_rows);
    }

    constexpr int kAcc1 = kWantDs ? kOutTiles : 1;
    constexpr int kAcc2 = kWantP ? kOutTiles : 1;
    float acc1[kAcc1][4], acc2[kAcc2][4];
#pragma unroll
    for (int i = 0; i < kAcc1; ++i) acc1[i][0] = acc1[i][1] = acc1[i][2] = acc1[i][3] = 0.f;
#pragma unroll
    for (int i = 0; i < kAcc2; ++i) acc2[i][0] = acc2[i][1] = acc2[i][2] = acc2[i][3] = 0.f;

    for (int64_t cb = 0; cb < n_cols; cb += kCols) {
      __syncthreads();  // the rows (first block) or the C1 and C2 of the block before are read
      stage_column_block<VEC, kBuffers>(cb, kCols, n_cols, [&](int64_t at) {
        const auto readable = [&](int y) { return col_ok(at + y); };
        T* const to = cols_of(at);
        if constexpr (VEC == 1) {
          stage<T, D, VEC>(to, c1 + at * c1t, c1t, kCols, readable);
          stage<T, D, VEC>(to + kCols * kStride, c2 + at * c2t, c2t, kCols, readable);
        } else {
          stage_async<T, D>(to, c1 + at * c1t, c1t, kCols, readable);
          stage_async<T, D>(to + kCols * kStride, c2 + at * c2t, c2t, kCols, readable);
        }
      });
      __syncthreads();
      const T* const c1_tile = cols_of(cb);
      const T* const c2_tile = c1_tile + kCols * kStride;
      if (!br.active) continue;  // warp-uniform

      float sc[kTiles][4], dp[kTiles][4];
#pragma unroll
      for (int j = 0; j < kTiles; ++j)
#pragma unroll
        for (int i = 0; i < 4; ++i) sc[j][i] = dp[j][i] = 0.f;
      rows_by_cols<T, D>(sc, ra1, c1_tile, n_cols - cb);
      if constexpr (kWantDs) rows_by_cols<T, D>(dp, ra2, c2_tile, n_cols - cb);

      // Bit 2j + e: this lane's column cb + 8j + 2t + e may be read (and, for keys, attended to).
      unsigned live = 0;
      float lse_c[KEY_ROWS ? kTiles : 1][2], delta_c[KEY_ROWS ? kTiles : 1][2];
#pragma unroll
      for (int j = 0; j < kTiles; ++j)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int64_t y = cb + j * 8 + 2 * t + e;
          const bool ok = col_ok(y);
          live |= unsigned(ok) << (2 * j + e);
          if constexpr (KEY_ROWS) {
            lse_c[j][e] = ok ? lses[y * HWN] : INFINITY;
            delta_c[j][e] = ok ? deltas[y * HWN] : 0.f;
          }
        }
#pragma unroll
      for (int j = 0; j < kTiles; ++j)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int r = i >> 1, e = i & 1;
          const bool on = (r == 0 ? ok0 : ok1) && (live >> (2 * j + e) & 1u);
          float l2 = lse_r[r], dl = delta_r[r];
          if constexpr (KEY_ROWS) l2 = lse_c[j][e], dl = delta_c[j][e];
          const float pr = on ? exp2f(fmaf(sc[j][i], p.scale_log2, -l2)) : 0.f;
          // Selected, not multiplied, so that a non-finite dP of an unused entry cannot leak in.
          dp[j][i] = on ? pr * (dp[j][i] - dl) : 0.f;
          sc[j][i] = pr;
        }

#pragma unroll
      for (int c = 0; c < kTiles / 2; ++c) {
        const int64_t y0 = cb + c * 16;
        if (y0 >= n_cols) continue;  // warp-uniform; P and dS are 0 there
        // Rows of unreadable columns are zeros in the tiles, and their P and dS are 0.
        const int at = static_cast<int>(y0 - cb) * kStride + out0;  // the slice's rows, this launch's columns
        if constexpr (kWantDs) accumulate_rows<T, D>(acc1, a_from_c<T>(dp[2 * c], dp[2 * c + 1]), c1_tile + at);
        if constexpr (kWantP) accumulate_rows<T, D>(acc2, a_from_c<T>(sc[2 * c], sc[2 * c + 1]), c2_tile + at);
      }
    }
    if (!br.active) continue;

#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int64_t x = r == 0 ? x0 : x1;
      if (x >= n_rows) continue;
      const int64_t row = contiguous_row(sq, n_rows, x, HWN);
      if constexpr (kWantDs) {
        T* d1 = out1 + row * D + out0 + 2 * t;
#pragma unroll
        for (int i = 0; i < kOutTiles; ++i)
          store_pair(d1 + i * 8, acc1[i][2 * r] * p.scale, acc1[i][2 * r + 1] * p.scale);
      }
      if constexpr (kWantP) {
        T* d2 = out2 + row * D + out0 + 2 * t;
#pragma unroll
        for (int i = 0; i < kOutTiles; ++i) store_pair(d2 + i * 8, acc2[i][2 * r], acc2[i][2 * r + 1]);
      }
    }
  }
}

struct BwdPointers {
  uintptr_t grad, q, k, v, o, lse, delta, dq, dk, dv;
};

// One launch of a pass: a block per block_warps row tiles of its rows (queries, or keys), writing
// out1 and out2 (nullptr where the pass does not) at output columns out0 ...
template <typename T, int D, int PASS, int BUFFERS, int VEC>
cudaError_t launch_pass_kernel(const BwdPointers& a, uintptr_t out1, uintptr_t out2, const Problem& p, int out0,
                               cudaStream_t stream) {
  const int64_t n_rows = PASS == kPassDq ? p.Tq : p.T;
  axial_attention_bwd<T, D, PASS, BUFFERS, VEC><<<rows_grid(p, n_rows), 32 * block_warps(n_rows), 0, stream>>>(
      reinterpret_cast<const T*>(a.q), reinterpret_cast<const T*>(a.k), reinterpret_cast<const T*>(a.v),
      reinterpret_cast<const T*>(a.grad), reinterpret_cast<const float*>(a.lse),
      reinterpret_cast<const float*>(a.delta), reinterpret_cast<T*>(out1), reinterpret_cast<T*>(out2), p, out0);
  return cudaGetLastError();
}

// Columns (keys, or queries) that fit one column block take the instantiation with
// bwd_single_block_buffers.
template <typename T, int D, int PASS, int VEC>
cudaError_t launch_pass(const BwdPointers& a, uintptr_t out1, uintptr_t out2, const Problem& p, int out0,
                        cudaStream_t stream) {
  const int64_t n_cols = PASS == kPassDq ? p.T : p.Tq;
  return n_cols <= col_block<D, PASS>()
             ? launch_pass_kernel<T, D, PASS, bwd_single_block_buffers<T, D, PASS, VEC>(), VEC>(a, out1, out2, p,
                                                                                                out0, stream)
             : launch_pass_kernel<T, D, PASS, bwd_buffers<T, D, PASS, VEC>(), VEC>(a, out1, out2, p, out0, stream);
}

template <typename T, int D, int VEC>
cudaError_t launch_bwd_kernels(const BwdPointers& a, const Problem& p, cudaStream_t stream) {
  for (int c = 0; c < D; c += out_cols<T, D, kPassDq>())
    if (const cudaError_t err = launch_pass<T, D, kPassDq, VEC>(a, a.dq, 0, p, c, stream)) return err;
  if constexpr (D == 128) {
    for (int c = 0; c < D; c += out_cols<T, D, kPassDk>())
      if (const cudaError_t err = launch_pass<T, D, kPassDk, VEC>(a, a.dk, 0, p, c, stream)) return err;
    return launch_pass<T, D, kPassDv, VEC>(a, 0, a.dv, p, 0, stream);
  } else {
    return launch_pass<T, D, kPassDkDv, VEC>(a, a.dk, a.dv, p, 0, stream);
  }
}

// vector: q, k, v and dO are staged in 16-byte loads, else element by element.
template <typename T, int D>
cudaError_t launch_bwd(const BwdPointers& a, const Problem& p, bool vector, cudaStream_t stream) {
  return vector ? launch_bwd_kernels<T, D, 16 / sizeof(T)>(a, p, stream) : launch_bwd_kernels<T, D, 1>(a, p, stream);
}

template <typename T>
cudaError_t launch_bwd_typed(const BwdPointers& a, const Problem& p, int64_t d, bool vector, cudaStream_t stream) {
  const int64_t rows = static_cast<int64_t>(p.S) * p.Tq;
  axial_attention_bwd_delta<T><<<grid_for_rows(rows, kThreads / kDeltaLanes), kThreads, 0, stream>>>(
      reinterpret_cast<const T*>(a.o), reinterpret_cast<const T*>(a.grad), reinterpret_cast<float*>(a.delta), rows,
      static_cast<int>(d));
  if (const cudaError_t err = cudaGetLastError()) return err;
  switch (d) {
    case 16: return launch_bwd<T, 16>(a, p, vector, stream);
    case 32: return launch_bwd<T, 32>(a, p, vector, stream);
    case 64: return launch_bwd<T, 64>(a, p, vector, stream);
    default: return launch_bwd<T, 128>(a, p, vector, stream);
  }
}

}  // namespace
}  // namespace attn

int launch_axial_attention_bwd(uintptr_t grad, uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t o, uintptr_t lse,
                               uintptr_t mask, uintptr_t delta, uintptr_t dq, uintptr_t dk, uintptr_t dv,
                               const std::vector<int64_t>& sizes, const std::vector<int64_t>& q_strides,
                               const std::vector<int64_t>& k_strides, const std::vector<int64_t>& v_strides,
                               const std::vector<int64_t>& mask_strides, double scale, int dtype, uintptr_t stream) {
  if (const int status = attn::check_args({grad, q, k, v, o, lse, delta, dq, dk, dv}, sizes, q_strides, k_strides,
                                          v_strides, mask_strides, dtype))
    return status;
  if (!attn::pairs_aligned({grad, o, dq, dk, dv}, {q, k, v}, dtype) || !all_aligned({lse, delta}, sizeof(float)))
    return kMisaligned;
  if (const int status = clear_earlier_error()) return status;
  const attn::BwdPointers a{grad, q, k, v, o, lse, delta, dq, dk, dv};
  const auto p = attn::make_problem(mask, sizes, q_strides, k_strides, v_strides, mask_strides, scale);
  // dO is contiguous: its rows of d elements (a multiple of 16 bytes) are aligned when it is.
  const bool vector = attn::vector_qkv(q, k, v, sizes, q_strides, k_strides, v_strides,
                                       static_cast<int>(dtype_size(dtype))) && grad % 16 == 0;
  const int64_t d = sizes[6];
  const cudaStream_t s = as_stream(stream);
  switch (dtype) {
    case kFloat32: return attn::launch_bwd_typed<float>(a, p, d, vector, s);
    case kFloat16: return attn::launch_bwd_typed<__half>(a, p, d, vector, s);
    default: return attn::launch_bwd_typed<__nv_bfloat16>(a, p, d, vector, s);
  }
}

}  // namespace aef
