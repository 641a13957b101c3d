// Kernels that break the rules the emulator enforces, and kernels whose result is known, written as
// CUDA and compiled through the same rewrite as csrc: they show that each kind of failure is caught
// and that the collectives compute what CUDA defines.
#include <cuda_runtime.h>

#include <cstdint>

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
};

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
