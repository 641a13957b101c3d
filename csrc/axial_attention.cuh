// Axial time attention, shared by the forward (axial_attention.cu) and the backward
// (axial_attention_bwd.cu): problem description, host argument checks, addressing of the
// (B, T, H, W, heads, d) layout, the staging of tiles in shared memory and the warp-level tile
// primitives.
//
// A block works on one sequence at a time. Its warps (one per 16-row tile of the sequence, up to
// four, so that a sequence of 16 frames or fewer takes a one-warp block instead of idling three
// warps) own consecutive tiles of 16 rows: queries, or keys in the dk/dv pass. The block's rows go
// through shared memory once and each warp keeps the A fragments of its tile in registers; then
// the block walks the other side (K and V, or Q and dO) in column blocks: its threads copy each
// block into shared memory together, a barrier, and every warp reads its B fragments from there.
// Where the host found every row of every operand 16-byte aligned (kernels with VEC = 16 /
// sizeof(T)) the copies are 16-byte cp.async (LDGSTS: global to shared, no registers) and the
// column blocks are double-buffered: after the barrier that frees the buffer block j - 1 used, the
// threads issue block j + 1 into it and wait only for block j's copies, so they are in flight while
// the warps work on block j. Two buffers fit the 48 KB of static shared memory except in the float32
// forward at d = 64 and the float32 dq pass at d = 64 and 128, which keep one (copied with cp.async
// all the same); where a sequence has a single column block there is nothing to overlap, and the
// launchers take an instantiation with one buffer wherever that halves the column part of the tile
// (single_block_buffers, template argument BUFFERS). Otherwise (VEC = 1) one buffer is filled by
// element loads through registers. Rows that may not be read (padding keys, frames past the end)
// are stored as zeros and never loaded (cp.async with src-size 0). Every loop a barrier sits in has a
// bound uniform over the block, and warps whose tile lies past the end still copy and reach every
// barrier; they skip only the products.
//
// Products are mma.sync m16n8k16 (row.col) with float32 accumulation for float16 and bfloat16;
// float32 inputs run the same code through an exact-float32 emulation of that instruction with the
// same fragment layout, so one kernel body serves all dtypes. float16 and bfloat16 read their B
// fragments from the shared tiles with ldmatrix (.trans for the operands a product reads down their
// columns: V in P V, and the backward's dS and P products), float32 with plain loads.
//
// Fragment layout of m16n8k16 (PTX ISA, "Matrix fragments for mma.m16n8k16"), with lane = 4g + t:
//   A (16 x 16): v[0..1] = A[g][2t..2t+1],     v[2..3] = A[g+8][2t..2t+1],
//                v[4..5] = A[g][2t+8..2t+9],   v[6..7] = A[g+8][2t+8..2t+9]
//   B (16 x 8):  v[0..1] = B[2t..2t+1][g],     v[2..3] = B[2t+8..2t+9][g]
//   C (16 x 8):  c[0..1] = C[g][2t..2t+1],     c[2..3] = C[g+8][2t..2t+1]
// Two C tiles side by side (columns 0-7 and 8-15) hold exactly the elements of one A fragment, which
// is how probabilities computed in registers feed the next product without a round trip.
#pragma once

#include <cmath>
#include <cstring>
#include <vector>

#include "common.h"
#include "cuda_utils.cuh"

namespace aef {
namespace attn {

constexpr int kWarps = 4;  // at most, per block
constexpr int kThreads = kWarps * 32;
constexpr int kTileRows = 16;  // the M of m16n8k16: rows of a warp's tile
constexpr int kBlockRows = kWarps * kTileRows;

// Sequences are split in 32 bits; groups of row tiles of a sequence go on grid axis 1.
constexpr int64_t kMaxSequences = 2147483647;
constexpr int64_t kMaxGridY = 65535;

// Row tiles covering n frames.
inline int64_t row_tiles(int64_t n) { return cdiv(n, kTileRows); }

// Element strides of a (B, T, H, W, heads, d) operand (d itself is contiguous).
struct Strides {
  int64_t b, t, h, w, n;
};

// Strides of the bool key mask over (b, t, h, w); h and w are 0 for a (B, T) mask.
struct MaskStrides {
  int64_t b, t, h, w;
};

// Everything about one call that is uniform over the grid, passed by value to the kernels.
// Sequence indices and their factors fit 32 bits (the launchers check), so splitting a sequence
// index costs 32-bit divisions, not the 64-bit division subroutine.
struct Problem {
  uint32_t S;    // sequences: B * H * W * heads
  uint32_t HWN;  // H * W * heads: sequences per batch element
  uint32_t W;
  uint32_t NH;  // heads
  int64_t Tq;   // query frames
  int64_t T;    // key frames
  float scale;
  float scale_log2;  // scale * log2(e): scores are kept in base 2 so exp2 is one instruction
  Strides q, k, v;
  const uint8_t* mask;  // nullptr: every key in range is valid
  MaskStrides m;
};

// ---- host ------------------------------------------------------------------------------------------

inline bool supported_head_dim(int64_t d) {
  for (int s : kAttentionHeadDims)
    if (d == s) return true;
  return false;
}
static_assert(sizeof(kAttentionHeadDims) / sizeof(int) == 4 && kAttentionHeadDims[0] == 16 &&
                  kAttentionHeadDims[1] == 32 && kAttentionHeadDims[2] == 64 && kAttentionHeadDims[3] == 128,
              "launch_fwd_typed and launch_bwd_typed instantiate the kernels for exactly these head dims");

// Pointers written (and, in the backward, dO and O read) two elements at a time by store_pair and
// Pack<T, 2> loads, which have no element-wise form: they need two elements' alignment. q, k and v
// are staged in 16-byte loads where they allow them (vector_rows) and element by element otherwise,
// so they need one element's.
inline bool pairs_aligned(std::initializer_list<uintptr_t> pairs, std::initializer_list<uintptr_t> elements,
                          int dtype) {
  return all_aligned(pairs, 2 * dtype_size(dtype)) && all_aligned(elements, dtype_size(dtype));
}

// Argument checks shared by the forward and backward launchers; they touch no device state.
// sizes = (B, Tq, T, H, W, heads, d).
inline int check_args(std::initializer_list<uintptr_t> required_pointers, const std::vector<int64_t>& sizes,
                      const std::vector<int64_t>& q_strides, const std::vector<int64_t>& k_strides,
                      const std::vector<int64_t>& v_strides, const std::vector<int64_t>& mask_strides, int dtype) {
  for (uintptr_t p : required_pointers)
    if (p == 0) return kNullPointer;
  if (sizes.size() != 7) return kBadSize;
  for (int64_t s : sizes)
    if (s <= 0) return kBadSize;
  const int64_t B = sizes[0], Tq = sizes[1], T = sizes[2], H = sizes[3], W = sizes[4], NH = sizes[5];
  // Checked factor by factor so the products below cannot overflow int64.
  if (H > kMaxSequences || W > kMaxSequences || NH > kMaxSequences || H * W > kMaxSequences ||
      H * W * NH > kMaxSequences || B > kMaxSequences / (H * W * NH))
    return kTooLarge;
  if (Tq > kMaxGridY * kTileRows || T > kMaxGridY * kTileRows) return kTooLarge;  // row tiles on grid axis 1
  if (!supported_head_dim(sizes[6])) return kBadHeadDim;
  if (!valid_dtype(dtype)) return kBadDtype;
  if (q_strides.size() != 5 || k_strides.size() != 5 || v_strides.size() != 5 || mask_strides.size() != 4)
    return kBadStride;
  for (const auto* st : {&q_strides, &k_strides, &v_strides, &mask_strides})
    for (int64_t s : *st)
      if (s < 0) return kBadStride;
  return kOk;
}

// Whether an operand's tiles can be staged in 16-byte loads: every row of it starts on a 16-byte
// boundary, along each of its five dimensions (a dimension of length one never steps, whatever its
// stride). frames: Tq for q, T for k and v.
inline bool vector_rows(uintptr_t ptr, const std::vector<int64_t>& strides, const std::vector<int64_t>& sizes,
                        int64_t frames, int elem) {
  const int64_t dims[5] = {sizes[0], frames, sizes[3], sizes[4], sizes[5]};
  for (int i = 0; i < 5; ++i)
    if (!rows_aligned(ptr, dims[i], sizes[6], strides[i], elem, 16)) return false;
  return true;
}

// q, k and v all allow 16-byte staging (the launchers then pick the VEC = 16 / sizeof(T) kernels).
inline bool vector_qkv(uintptr_t q, uintptr_t k, uintptr_t v, const std::vector<int64_t>& sizes,
                       const std::vector<int64_t>& q_strides, const std::vector<int64_t>& k_strides,
                       const std::vector<int64_t>& v_strides, int elem) {
  return vector_rows(q, q_strides, sizes, sizes[1], elem) && vector_rows(k, k_strides, sizes, sizes[2], elem) &&
         vector_rows(v, v_strides, sizes, sizes[2], elem);
}

inline Strides to_strides(const std::vector<int64_t>& s) { return {s[0], s[1], s[2], s[3], s[4]}; }

inline Problem make_problem(uintptr_t mask, const std::vector<int64_t>& sizes, const std::vector<int64_t>& q_strides,
                            const std::vector<int64_t>& k_strides, const std::vector<int64_t>& v_strides,
                            const std::vector<int64_t>& mask_strides, double scale) {
  Problem p;
  const int64_t B = sizes[0], H = sizes[3], W = sizes[4], NH = sizes[5];
  p.HWN = static_cast<uint32_t>(H * W * NH);
  p.S = static_cast<uint32_t>(B * H * W * NH);
  p.W = static_cast<uint32_t>(W);
  p.NH = static_cast<uint32_t>(NH);
  p.Tq = sizes[1];
  p.T = sizes[2];
  p.scale = static_cast<float>(scale);
  p.scale_log2 = static_cast<float>(scale * 1.4426950408889634);
  p.q = to_strides(q_strides);
  p.k = to_strides(k_strides);
  p.v = to_strides(v_strides);
  p.mask = reinterpret_cast<const uint8_t*>(mask);
  p.m = {mask_strides[0], mask_strides[1], mask_strides[2], mask_strides[3]};
  return p;
}

// Warps of a block over n rows (frames): one per row tile, at most kWarps.
inline int block_warps(int64_t n) { return static_cast<int>(std::min<int64_t>(kWarps, row_tiles(n))); }

// The grid of a pass over n rows per sequence: a block per sequence on axis 0 (capped; the kernels
// grid-stride over sequences) and a block per block_warps(n) row tiles on axis 1.
inline dim3 rows_grid(const Problem& p, int64_t n) {
  return dim3(grid_for_rows(p.S, 1).x, static_cast<unsigned>(cdiv(row_tiles(n), block_warps(n))));
}

// ---- device: addressing ----------------------------------------------------------------------------

// Sequence s = ((b * H + h) * W + w) * heads + n, the order of the contiguous outputs.
struct Seq {
  int64_t b, hwn, h, w, n;
};

__device__ __forceinline__ Seq split_sequence(uint32_t s, const Problem& p) {
  const uint32_t b = s / p.HWN;
  const uint32_t hwn = s - b * p.HWN;
  const uint32_t hw = hwn / p.NH;
  const uint32_t h = hw / p.W;
  return {b, hwn, h, hw - h * p.W, hwn - hw * p.NH};
}

__device__ __forceinline__ int64_t base_offset(const Strides& st, const Seq& s) {
  return s.b * st.b + s.h * st.h + s.w * st.w + s.n * st.n;
}

// Row of a contiguous (B, frames, H, W, heads[, d]) tensor: outputs, lse, delta, dO.
__device__ __forceinline__ int64_t contiguous_row(const Seq& s, int64_t frames, int64_t t, int64_t HWN) {
  return (s.b * frames + t) * HWN + s.hwn;
}

// Key t of a sequence may be attended to: in range, and not padding.
__device__ __forceinline__ bool key_valid(const Problem& p, const uint8_t* mask_seq, int64_t t) {
  return t < p.T && (mask_seq == nullptr || mask_seq[t * p.m.t] != 0);
}

// The block's part of a pass over n_rows rows per sequence: its rows start at frame `first` and
// number `count` (16 per warp); the warp's tile starts at `tile`, and `active` says it has rows.
struct BlockRows {
  int64_t first, tile;
  int count;
  bool active;
};

__device__ __forceinline__ BlockRows block_rows(int64_t n_rows) {
  const int count = static_cast<int>(blockDim.x / 32) * kTileRows;
  const int64_t first = static_cast<int64_t>(blockIdx.y) * count;
  const int64_t tile = first + static_cast<int64_t>(threadIdx.x / 32) * kTileRows;
  return {first, tile, count, tile < n_rows};
}

// ---- device: shared-memory tiles -------------------------------------------------------------------

// Row stride of a shared tile of D columns: one 16-byte chunk of padding per row, so that the 8
// rows one fragment load touches (one per g) start in different banks.
template <typename T, int D>
__host__ __device__ constexpr int tile_stride() {
  return D + 16 / static_cast<int>(sizeof(T));
}

template <typename T>
__device__ __forceinline__ T zero() {
  return from_float<T>(0.f);
}

// The block's threads copy rows 0..n-1 of a tile into the shared tile dst, 16 bytes of a row at a
// time: row r from src + r * src_stride where ok(r), zeros where not (those rows are never loaded,
// so whatever they hold, NaN included, cannot reach a product). A global load moves VEC elements:
// a 16-byte vector (the host found every row 16-byte aligned) or one element. Each thread has
// kBatch chunks in flight before it stores them.
template <typename T, int D, int VEC, typename Ok>
__device__ __forceinline__ void stage(T* dst, const T* src, int64_t src_stride, int n, Ok ok) {
  constexpr int kChunk = 16 / sizeof(T);
  constexpr int kPerRow = D / kChunk;
  constexpr int kBatch = 4;
  static_assert(VEC == 1 || VEC == kChunk, "a staged load is one element or 16 bytes");
  const int total = n * kPerRow;
  for (int first = threadIdx.x; first < total; first += kBatch * blockDim.x) {
    Pack<T, kChunk> x[kBatch];
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
      const int i = first + b * blockDim.x;
      const int r = i / kPerRow;
      if (i < total && ok(r)) {
        const T* from = src + r * src_stride + (i - r * kPerRow) * kChunk;
        if constexpr (VEC == kChunk) {
          x[b] = *reinterpret_cast<const Pack<T, kChunk>*>(from);
        } else {
#pragma unroll
          for (int e = 0; e < kChunk; ++e) x[b].v[e] = from[e];
        }
      } else {
#pragma unroll
        for (int e = 0; e < kChunk; ++e) x[b].v[e] = zero<T>();
      }
    }
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
      const int i = first + b * blockDim.x;
      const int r = i / kPerRow;
      T* to = dst + r * tile_stride<T, D>() + (i - r * kPerRow) * kChunk;
      if (i < total) *reinterpret_cast<Pack<T, kChunk>*>(to) = x[b];
    }
  }
}

// The shared-window address of a pointer into shared memory, as cp.async and ldmatrix take it.
__device__ __forceinline__ uint32_t shared_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes from global src to shared dst without a round trip through registers (LDGSTS); the
// first src_bytes are copied and the rest zero-filled, so src_bytes = 0 stores zeros and reads
// nothing. Visible to the block after cp_async_wait and a barrier.
__device__ __forceinline__ void cp_async_16(void* dst, const void* src, uint32_t src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n"
               :
               : "r"(shared_address(dst)), "l"(src), "r"(src_bytes)
               : "memory");
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" : : : "memory"); }

// Waits until at most N of this thread's committed copy groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" : : "n"(N) : "memory");
}

// stage for 16-byte aligned rows, as cp.async copies: the block's threads issue them and go on.
template <typename T, int D, typename Ok>
__device__ __forceinline__ void stage_async(T* dst, const T* src, int64_t src_stride, int n, Ok ok) {
  constexpr int kChunk = 16 / sizeof(T);
  constexpr int kPerRow = D / kChunk;
  for (int i = threadIdx.x; i < n * kPerRow; i += blockDim.x) {
    const int r = i / kPerRow;
    const int c = (i - r * kPerRow) * kChunk;
    const bool readable = ok(r);
    cp_async_16(dst + r * tile_stride<T, D>() + c, readable ? src + r * src_stride + c : src, readable ? 16u : 0u);
  }
}

// Rows of a kernel's shared tile: the block's own rows (kBlockRows), then, through the same rows,
// `buffers` buffers of `buffer_rows` rows for the column blocks.
__host__ __device__ constexpr int shared_rows(int buffers, int buffer_rows) {
  return buffers * buffer_rows > kBlockRows ? buffers * buffer_rows : kBlockRows;
}

// Column-block buffers of a kernel: two for the kernels staged in 16-byte copies (VEC > 1), so the
// copies of block j + 1 are in flight while the warps work on block j, where both fit the 48 KB of
// static shared memory a block may have; else one (the float32 forward at d = 64 and the float32
// dq pass at d = 64 and 128 would take 66-68 KB). The element-staged kernels (VEC = 1) load through
// registers and keep one.
template <typename T, int D, int VEC>
__host__ __device__ constexpr int column_buffers(int buffer_rows) {
  return VEC > 1 && shared_rows(2, buffer_rows) * tile_stride<T, D>() * sizeof(T) <= 48 * 1024 ? 2 : 1;
}

// Buffers of the instantiation the launchers take when a sequence has a single column block: one
// wherever that makes the tile smaller. A second buffer only receives the next block's copies while
// the warps work on the current one, and there is no next block; it would double the column part of
// the tile for nothing and halve how many one-warp blocks (T <= 16) fit an SM.
template <typename T, int D, int VEC>
__host__ __device__ constexpr int single_block_buffers(int buffer_rows) {
  return shared_rows(1, buffer_rows) < shared_rows(column_buffers<T, D, VEC>(buffer_rows), buffer_rows)
             ? 1
             : column_buffers<T, D, VEC>(buffer_rows);
}

// Before the warps work on the column block at c0 (of width `width`, of n columns in all): its copy
// is in the block's tile. fill(c) stages the block at c into its buffer; it runs after a barrier that
// frees that buffer. With two buffers the copy of the next block is issued here too, into the buffer
// the previous block used, and only the current block's group is waited for. A barrier must follow.
template <int VEC, int BUFFERS, typename Fill>
__device__ __forceinline__ void stage_column_block(int64_t c0, int64_t width, int64_t n, Fill fill) {
  if constexpr (VEC == 1) {
    fill(c0);
  } else {
    if (BUFFERS == 1 || c0 == 0) {
      fill(c0);
      cp_async_commit();
    }
    if (BUFFERS == 2 && c0 + width < n) {
      fill(c0 + width);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
  }
}

// ---- device: fragments -----------------------------------------------------------------------------

template <typename T>
struct FragA {
  T v[8];
};

template <typename T>
struct FragB {
  T v[4];
};

// Elements x[0], x[1] of a row of a shared tile.
template <typename T>
__device__ __forceinline__ void load_pair(const T* x, T& a, T& b) {
  const Pack<T, 2> pr = *reinterpret_cast<const Pack<T, 2>*>(x);
  a = pr.v[0];
  b = pr.v[1];
}

// A from a row-major shared tile of D columns: `tile` points at column k0 of the tile's row 0.
template <typename T, int D>
__device__ __forceinline__ FragA<T> load_a(const T* tile, int g, int t) {
  const T* row0 = tile + g * tile_stride<T, D>() + 2 * t;
  const T* row1 = row0 + 8 * tile_stride<T, D>();
  FragA<T> a;
  load_pair(row0, a.v[0], a.v[1]);
  load_pair(row1, a.v[2], a.v[3]);
  load_pair(row0 + 8, a.v[4], a.v[5]);
  load_pair(row1 + 8, a.v[6], a.v[7]);
  return a;
}

// The A fragments of a warp's 16-row tile over the whole head dim, from its rows of a shared tile.
template <typename T, int D>
__device__ __forceinline__ void hold_rows(FragA<T> (&a)[D / 16], const T* tile) {
  const int g = (threadIdx.x & 31) >> 2;
  const int t = threadIdx.x & 3;
#pragma unroll
  for (int c = 0; c < D / 16; ++c) a[c] = load_a<T, D>(tile + c * 16, g, t);
}

// B = Y^T for a row-major shared Y: B[k][n] = Y[n][k]; `row` points at columns k0.. of Y's row n = g.
template <typename T>
__device__ __forceinline__ FragB<T> load_b_rows(const T* row, int t) {
  FragB<T> b;
  load_pair(row + 2 * t, b.v[0], b.v[1]);
  load_pair(row + 2 * t + 8, b.v[2], b.v[3]);
  return b;
}

// B = Y for a row-major shared Y of D columns whose rows are frames: B[k][n] = Y[k0 + k][n0 + n];
// `col` points at Y[k0][n0 + g].
template <typename T, int D>
__device__ __forceinline__ FragB<T> load_b_cols(const T* col, int t) {
  constexpr int s = tile_stride<T, D>();
  FragB<T> b;
  b.v[0] = col[(2 * t) * s];
  b.v[1] = col[(2 * t + 1) * s];
  b.v[2] = col[(2 * t + 8) * s];
  b.v[3] = col[(2 * t + 9) * s];
  return b;
}

// ldmatrix (16-bit tiles only): lanes 8i .. 8i + 7 give the addresses of rows 0-7 of 8 x 8 matrix i
// (16 bytes each, 16-byte aligned: tile_stride keeps every row start so), and register i of lane
// 4g + t receives elements 2t, 2t + 1 of row g of matrix i, the even one in the low half; with .trans
// those of column g. That is the B fragment layout above: one matrix per half of the k range, with
// one instruction in place of a thread's two 4-byte or four 2-byte loads per fragment.

// The B fragments of Y^T (as load_b_rows) for k chunks 16c and 16c + 16 of rows 8j.. of a row-major
// Y: lane l gives row 8j + (l & 7), columns 16c + 8 (l >> 3) ..; `row` is that address.
template <typename T>
__device__ __forceinline__ void load_b_rows_x2(FragB<T> (&b)[2], const T* row) {
  uint32_t r[4];
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(shared_address(row)));
  memcpy(b, r, sizeof(r));
}

// One B fragment of Y^T (as load_b_rows) for d = 16: lane l < 16 gives row 8j + (l & 7), columns
// 8 (l >> 3) ..; the addresses of lanes 16-31 are not read.
template <typename T>
__device__ __forceinline__ FragB<T> load_b_rows_x1(const T* row) {
  uint32_t r[2];
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(shared_address(row)));
  FragB<T> b;
  memcpy(&b, r, sizeof(r));
  return b;
}

// The B fragments of Y (as load_b_cols) for output tiles 8i and 8i + 8 of a 16-row slice of a
// row-major Y, transposed on the way: lane l gives row l & 15, columns 8i + 8 (l >> 4) ..
template <typename T>
__device__ __forceinline__ void load_b_cols_x2(FragB<T> (&b)[2], const T* row) {
  uint32_t r[4];
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(shared_address(row)));
  memcpy(b, r, sizeof(r));
}

// The A fragment of the 16 x 16 matrix whose columns 0-7 are C tile c0 and 8-15 are c1.
template <typename T>
__device__ __forceinline__ FragA<T> a_from_c(const float (&c0)[4], const float (&c1)[4]) {
  FragA<T> a;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    a.v[i] = from_float<T>(c0[i]);
    a.v[4 + i] = from_float<T>(c1[i]);
  }
  return a;
}

template <typename T>
__device__ __forceinline__ uint32_t pair_bits(const T* x) {
  uint32_t r;
  memcpy(&r, x, sizeof(r));
  return r;
}

// c += A * B on one warp; every lane of the warp must call it together.
__device__ __forceinline__ void mma(float (&c)[4], const FragA<__half>& a, const FragB<__half>& b) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(pair_bits(a.v)), "r"(pair_bits(a.v + 2)), "r"(pair_bits(a.v + 4)), "r"(pair_bits(a.v + 6)),
        "r"(pair_bits(b.v)), "r"(pair_bits(b.v + 2)));
}

__device__ __forceinline__ void mma(float (&c)[4], const FragA<__nv_bfloat16>& a, const FragB<__nv_bfloat16>& b) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(pair_bits(a.v)), "r"(pair_bits(a.v + 2)), "r"(pair_bits(a.v + 4)), "r"(pair_bits(a.v + 6)),
        "r"(pair_bits(b.v)), "r"(pair_bits(b.v + 2)));
}

// float32 has no m16n8k16 tensor-core form that keeps float32 accuracy, so the same product is
// formed with FMAs: for each k, row g and g + 8 of A come from the quad that holds row g, and columns
// 2t and 2t + 1 of B from the quads g' = 2t and 2t + 1 (see the layout at the top of this file).
__device__ __forceinline__ void mma(float (&c)[4], const FragA<float>& a, const FragB<float>& b) {
  const int lane = threadIdx.x & 31;
  const int t = lane & 3;
#pragma unroll
  for (int k = 0; k < 16; ++k) {
    const int owner = (k & 7) >> 1;  // t of the lanes holding column k of A and row k of B
    const int ia = (k < 8 ? 0 : 4) + (k & 1);
    const int ib = (k < 8 ? 0 : 2) + (k & 1);
    const float a0 = __shfl_sync(0xffffffffu, a.v[ia], (lane & ~3) | owner);
    const float a1 = __shfl_sync(0xffffffffu, a.v[ia + 2], (lane & ~3) | owner);
    const float b0 = __shfl_sync(0xffffffffu, b.v[ib], (2 * t) * 4 + owner);
    const float b1 = __shfl_sync(0xffffffffu, b.v[ib], (2 * t + 1) * 4 + owner);
    c[0] = fmaf(a0, b0, c[0]);
    c[1] = fmaf(a0, b1, c[1]);
    c[2] = fmaf(a1, b0, c[2]);
    c[3] = fmaf(a1, b1, c[3]);
  }
}

// acc[j] += R Y[8j .. 8j + 7]^T for the warp's 16 x D tile R held in `a` and the shared tile Y
// whose row y is column y of the product, over the column tiles j that start before n_cols.
template <typename T, int D, int kTiles>
__device__ __forceinline__ void rows_by_cols(float (&acc)[kTiles][4], const FragA<T> (&a)[D / 16], const T* y,
                                             int64_t n_cols) {
  const int lane = threadIdx.x & 31;
  constexpr int kStride = tile_stride<T, D>();
  if constexpr (sizeof(T) == 2 && D >= 32) {
    // Two k chunks per ldmatrix; acc[j] still sums its chunks in order c = 0, 1, ...
#pragma unroll
    for (int c = 0; c < D / 16; c += 2)
#pragma unroll
      for (int j = 0; j < kTiles; ++j) {
        if (j * 8 >= n_cols) continue;  // warp-uniform: such tiles get probability 0
        FragB<T> b[2];
        load_b_rows_x2(b, y + (j * 8 + (lane & 7)) * kStride + c * 16 + (lane >> 3) * 8);
        mma(acc[j], a[c], b[0]);
        mma(acc[j], a[c + 1], b[1]);
      }
  } else {
#pragma unroll
    for (int c = 0; c < D / 16; ++c)
#pragma unroll
      for (int j = 0; j < kTiles; ++j) {
        if (j * 8 >= n_cols) continue;
        if constexpr (sizeof(T) == 2)
          mma(acc[j], a[c], load_b_rows_x1(y + (j * 8 + (lane & 7)) * kStride + ((lane >> 3) & 1) * 8));
        else
          mma(acc[j], a[c], load_b_rows(y + (j * 8 + (lane >> 2)) * kStride + c * 16, lane & 3));
      }
  }
}

// acc[i] += A Y[0..15][8i .. 8i + 7] over the D columns of the 16-row slice `y` of a shared tile.
template <typename T, int D, int kOut>
__device__ __forceinline__ void accumulate_rows(float (&acc)[kOut][4], const FragA<T>& a, const T* y) {
  const int lane = threadIdx.x & 31;
  if constexpr (sizeof(T) == 2) {
    static_assert(kOut % 2 == 0, "ldmatrix .x4 loads the B fragments of two output tiles");
#pragma unroll
    for (int i = 0; i < kOut; i += 2) {
      FragB<T> b[2];
      load_b_cols_x2(b, y + (lane & 15) * tile_stride<T, D>() + (i + (lane >> 4)) * 8);
      mma(acc[i], a, b[0]);
      mma(acc[i + 1], a, b[1]);
    }
  } else {
#pragma unroll
    for (int i = 0; i < kOut; ++i) mma(acc[i], a, load_b_cols<T, D>(y + i * 8 + (lane >> 2), lane & 3));
  }
}

// Reductions over the quad of lanes that shares a tile row.
__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}

__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

// Stores C-fragment elements (r, 2t..2t+1) of a tile of 8 output columns.
template <typename T>
__device__ __forceinline__ void store_pair(T* dst, float x0, float x1) {
  Pack<T, 2> pr;
  pr.v[0] = from_float<T>(x0);
  pr.v[1] = from_float<T>(x1);
  *reinterpret_cast<Pack<T, 2>*>(dst) = pr;
}

}  // namespace attn
}  // namespace aef
