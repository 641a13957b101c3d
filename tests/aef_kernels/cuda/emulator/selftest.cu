// Kernels that break the rules the emulator enforces, and kernels whose result is known, written as
// CUDA and compiled through the same rewrite as csrc: they show that each kind of failure is caught
// and that the collectives compute what CUDA defines.
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>

namespace {

enum Probe : int {
  kPartialWarp,      // lanes 16-31 return before a shuffle of the full warp
  kPartialMask,      // a shuffle whose mask leaves out half the warp
  kBarrierAfterExit, // thread 0 returns, the others wait at __syncthreads
  kDeadlock,         // half of warp 0 waits at a barrier, the other half at a shuffle
  kDivergent,        // half of a warp at __shfl_xor_sync, half at __shfl_down_sync
  kGridY,            // grid y = 65,536
  kBlock,            // 1,025 threads in a block
  kRace,             // a shared-memory read with no barrier after the write it depends on
  kShuffles,         // every shuffle form at widths 32 and 8, written out for the test to check
  kBlockSum,         // a correct block reduction through shared memory and barriers
  kMisaligned,       // a 16-byte load from an address that is 4 bytes past a 16-byte boundary
  kLdmatrix,         // every ldmatrix form over lane-permuted rows, written out for the test to check
  kLdmatrixMisaligned,  // an ldmatrix row address 4 bytes past a 16-byte boundary
  kLdmatrixOutside,     // an ldmatrix row address past the end of shared memory
};

// Rows of the ldmatrix probe's shared tile: 8 elements (16 bytes) each, 32 per warp.
constexpr int kLdsmRows = 64;

// The row whose address lane `lane` of warp `warp` gives: a permutation of the warp's 32 rows, so
// that which lane's address feeds which matrix row is visible in the result.
__device__ int ldsm_row(int warp, int lane) { return warp * 32 + (lane * 5 + 3) % 32; }

__device__ uint32_t ldsm_address(const uint16_t* tile, int warp, int lane) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(tile + ldsm_row(warp, lane) * 8));
}

// Forms 0-5: .x1, .x2, .x4, then the same with .trans; four registers per form (zero where the
// form writes fewer). Lanes whose address a form does not read give one past shared memory.
__device__ void ldsm_forms(uint32_t addr, int lane, uint32_t (&r)[6][4]) {
  const uint32_t unread = 0xfffffff0u;
  const uint32_t a1 = lane < 8 ? addr : unread, a2 = lane < 16 ? addr : unread;
  asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n" : "=r"(r[0][0]) : "r"(a1));
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n" : "=r"(r[1][0]), "=r"(r[1][1]) : "r"(a2));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[2][0]), "=r"(r[2][1]), "=r"(r[2][2]), "=r"(r[2][3])
               : "r"(addr));
  asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n" : "=r"(r[3][0]) : "r"(a1));
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
               : "=r"(r[4][0]), "=r"(r[4][1])
               : "r"(a2));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[5][0]), "=r"(r[5][1]), "=r"(r[5][2]), "=r"(r[5][3])
               : "r"(addr));
}

__global__ void probe(int which, float* out) {
  const int lane = threadIdx.x % 32;
  float v = static_cast<float>(threadIdx.x);
  switch (which) {
    case kPartialWarp:
      if (lane >= 16) return;
      v = __shfl_xor_sync(0xffffffffu, v, 1);
      break;
    case kPartialMask: v = __shfl_xor_sync(0x0000ffffu, v, 1); break;
    case kBarrierAfterExit:
      if (threadIdx.x == 0) return;
      __syncthreads();
      break;
    case kDeadlock:
      if (lane < 16)
        __syncthreads();
      else
        v = __shfl_sync(0xffffffffu, v, 0);
      break;
    case kDivergent: v = lane < 16 ? __shfl_xor_sync(0xffffffffu, v, 1) : __shfl_down_sync(0xffffffffu, v, 1); break;
    case kRace: {
      __shared__ float cell[2];
      if (threadIdx.x == 1) cell[0] = 1.f;
      if (threadIdx.x == 0) cell[1] = 2.f;
      if (threadIdx.x == 0) out[0] = cell[0];
      return;
    }
    case kShuffles: {
      const float x = static_cast<float>(threadIdx.x * 10 + 1);
      float* o = out + threadIdx.x * 8;
      o[0] = __shfl_sync(0xffffffffu, x, 5);
      o[1] = __shfl_up_sync(0xffffffffu, x, 3);
      o[2] = __shfl_down_sync(0xffffffffu, x, 3);
      o[3] = __shfl_xor_sync(0xffffffffu, x, 9);
      o[4] = __shfl_sync(0xffffffffu, x, 13, 8);
      o[5] = __shfl_up_sync(0xffffffffu, x, 3, 8);
      o[6] = __shfl_down_sync(0xffffffffu, x, 3, 8);
      o[7] = __shfl_xor_sync(0xffffffffu, x, 9, 8);
      return;
    }
    case kBlockSum: {
      __shared__ float partial[8];
      for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
      if (lane == 0) partial[threadIdx.x / 32] = v;
      __syncthreads();
      if (threadIdx.x == 0) {
        float s = 0.f;
        for (int w = 0; w < static_cast<int>(blockDim.x / 32); ++w) s += partial[w];
        out[blockIdx.x + blockIdx.y * gridDim.x] = s;
      }
      return;
    }
    case kLdmatrix:
    case kLdmatrixMisaligned:
    case kLdmatrixOutside: {
      alignas(16) __shared__ uint16_t tile[kLdsmRows * 8];
      for (int i = threadIdx.x; i < kLdsmRows * 8; i += blockDim.x) tile[i] = static_cast<uint16_t>(i);
      __syncthreads();
      const int warp = threadIdx.x / 32;
      uint32_t addr = ldsm_address(tile, warp, lane);
      if (which == kLdmatrixMisaligned && lane == 5) addr += 4;
      if (which == kLdmatrixOutside && lane == 9) addr += 1u << 24;
      uint32_t r[6][4] = {};
      ldsm_forms(addr, lane, r);
      std::memcpy(out + threadIdx.x * 24, r, sizeof(r));
      return;
    }
    case kMisaligned: {
      const float4 w = *reinterpret_cast<const float4*>(out + 1);  // a whole 16-byte pack, as Pack<T, N> is read
      v = w.x;
      break;
    }
    default: break;
  }
  if (threadIdx.x == 0) out[0] = v;
}

}  // namespace

// The probe's launch status (cudaGetLastError after the launch).
extern "C" int emu_selftest(int which, float* out) {
  const dim3 grid(which == kBlockSum ? 3 : 1, which == kGridY ? 65536 : (which == kBlockSum ? 2 : 1));
  const int threads = which == kBlock ? 1025 : (which == kBlockSum ? 256 : 64);
  probe<<<grid, threads>>>(which, out);
  return cudaGetLastError();
}
