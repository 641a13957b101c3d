// The SIMT emulator's runtime: fibers for the threads of a block, a randomised scheduler, the warp
// collectives (shuffles, mma.m16n8k16, ldmatrix) and __syncthreads as rendezvous points, the failure log, and
// the parts of the CUDA runtime API the launchers call.
//
// A block runs as one fiber per thread on the calling OS thread. A fiber runs until it reaches a
// collective or a barrier, or returns; the scheduler then resumes another ready fiber, chosen at
// random from a seeded generator, so code between two synchronisation points runs in a different
// thread order under each seed. A collective resolves when every lane of the warp has arrived at the
// same kind of call; anything else (lanes that exited, a partial mask, lanes at a different call, a
// barrier some threads never reach) is recorded as a failure of the launch.
#include <sys/mman.h>

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <numeric>
#include <string>
#include <vector>

#include "aef_emu.h"

uint3 aef_emu::g_threadIdx{0, 0, 0};
uint3 aef_emu::g_blockIdx{0, 0, 0};
dim3 aef_emu::g_blockDim{1, 1, 1};
dim3 aef_emu::g_gridDim{1, 1, 1};

// ---- context switch ------------------------------------------------------------------------------
// glibc's swapcontext makes a signal-mask system call on every switch; the kernels switch at every
// shuffle (64 per emulated float32 mma), so the switch saves only the callee-saved general registers.
// The floating-point control words are callee-saved too, but nothing here or in the kernels changes
// them, so every fiber runs with the caller's rounding mode.
#if !defined(__x86_64__)
#error "the emulator's fiber switch is written for x86-64"
#endif

extern "C" void aef_emu_switch(void** save_sp, void* load_sp);
// Bounds of the kernels' shared memory (the linker defines them for the section __shared__ names).
extern "C" char __start_aef_emu_shared[] __attribute__((weak, visibility("hidden")));
extern "C" char __stop_aef_emu_shared[] __attribute__((weak, visibility("hidden")));
extern "C" void aef_emu_trampoline();
asm(R"(
    .text
    .p2align 4
    .globl aef_emu_switch
    .hidden aef_emu_switch
    .type aef_emu_switch, @function
aef_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size aef_emu_switch, .-aef_emu_switch

    .p2align 4
    .globl aef_emu_trampoline
    .hidden aef_emu_trampoline
    .type aef_emu_trampoline, @function
aef_emu_trampoline:
    movq %r12, %rdi
    callq *%rbx
    ud2
    .size aef_emu_trampoline, .-aef_emu_trampoline
)");

namespace aef_emu {
namespace {

constexpr int kMaxThreads = 1024;
constexpr size_t kStackBytes = 64 * 1024;
constexpr size_t kGuardBytes = 4096;
constexpr unsigned kFullMask = 0xffffffffu;

enum State : int { kReady, kAtWarp, kAtBarrier, kDone };

struct Fiber {
  void* sp = nullptr;
  char* stack_top = nullptr;
  State state = kReady;
  uint3 tid{0, 0, 0};
  int warp = 0, lane = 0;
  // The pending collective.
  int kind = 0;
  unsigned mask = 0;
  int arg = 0, width = 32, bytes = 4;
  uint64_t value = 0, result = 0;
  uint32_t a[4] = {}, b[2] = {};
  float c[4] = {}, d[4] = {};
  uint32_t r[4] = {};  // ldmatrix's destination registers
};

struct Warp {
  int size = 0;     // threads of the block in this warp (32 except maybe the last)
  int arrived = 0;  // lanes waiting at a collective
  int done = 0;     // lanes that returned
  int first = 0;    // the lane that arrived first at the pending collective
};

std::vector<Fiber> g_fibers;
void* g_sched_sp = nullptr;
Fiber* g_cur = nullptr;
void (*g_body)(void*) = nullptr;
void* g_ctx = nullptr;

// What is running, for the failure messages.
const char* g_kernel = "";
const char* g_where = "";
int g_line = 0;
const char* g_caller = "";
bool g_block_failed = false;

cudaError_t g_last = cudaSuccess;    // cleared by cudaGetLastError
cudaError_t g_sticky = cudaSuccess;  // a fault in a kernel: every later call reports it
uint64_t g_seed = 0x9e3779b97f4a7c15ull;
uint64_t g_launch_count = 0;
std::vector<std::string> g_failures;
std::map<std::string, uint64_t> g_launches;

uint64_t splitmix(uint64_t& s) {
  uint64_t z = (s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

std::string describe_launch() {
  char buf[256];
  std::snprintf(buf, sizeof(buf), " [block (%u,%u,%u) of (%u,%u,%u), launched at %s:%d]", g_blockIdx.x, g_blockIdx.y,
                g_blockIdx.z, g_gridDim.x, g_gridDim.y, g_gridDim.z, g_where, g_line);
  return std::string(g_kernel) + " in " + g_caller + buf;
}

void fail(const std::string& what) {
  if (g_block_failed) return;  // the first failure of a block is the informative one
  g_block_failed = true;
  g_sticky = cudaErrorLaunchFailure;
  if (g_failures.size() < 100) g_failures.push_back(what + ": " + describe_launch());
}

extern "C" void fiber_entry(Fiber* f) {
  g_body(g_ctx);
  f->state = kDone;
  aef_emu_switch(&f->sp, g_sched_sp);
  std::abort();  // a finished fiber is never resumed
}

void allocate_fibers() {
  if (!g_fibers.empty()) return;
  g_fibers.resize(kMaxThreads);
  const size_t each = kStackBytes + kGuardBytes;
  char* base = static_cast<char*>(mmap(nullptr, each * kMaxThreads, PROT_READ | PROT_WRITE,
                                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0));
  if (base == MAP_FAILED) {
    std::fprintf(stderr, "aef_emu: cannot map fiber stacks\n");
    std::abort();
  }
  for (int i = 0; i < kMaxThreads; ++i) {
    char* lo = base + i * each;
    mprotect(lo, kGuardBytes, PROT_NONE);  // a stack overflow faults instead of corrupting a neighbour
    g_fibers[i].stack_top = lo + each;
  }
}

void start_fiber(Fiber& f) {
  // Frame popped by aef_emu_switch: r15, r14, r13, r12, rbx, rbp, return address; the trampoline
  // then starts on a 16-byte aligned stack, as a call expects.
  uint64_t* sp = reinterpret_cast<uint64_t*>(f.stack_top) - 9;
  sp[0] = sp[1] = sp[2] = 0;
  sp[3] = reinterpret_cast<uint64_t>(&f);            // r12: the trampoline's argument
  sp[4] = reinterpret_cast<uint64_t>(&fiber_entry);  // rbx: what it calls
  sp[5] = 0;
  sp[6] = reinterpret_cast<uint64_t>(&aef_emu_trampoline);
  f.sp = sp;
  f.state = kReady;
}

void resume(Fiber& f) {
  g_cur = &f;
  g_threadIdx = f.tid;
  aef_emu_switch(&g_sched_sp, f.sp);
  g_cur = nullptr;
}

void suspend(State s) {
  Fiber* f = g_cur;
  f->state = s;
  aef_emu_switch(&f->sp, g_sched_sp);
}

const char* kind_name(int kind) {
  switch (kind) {
    case kShflIdx: return "__shfl_sync";
    case kShflUp: return "__shfl_up_sync";
    case kShflDown: return "__shfl_down_sync";
    case kShflXor: return "__shfl_xor_sync";
    case kMmaF16: return "mma.m16n8k16 (f16)";
    case kMmaBF16: return "mma.m16n8k16 (bf16)";
    case kLdmatrix: return "ldmatrix";
    default: return "?";
  }
}

// ---- mma.m16n8k16 ----------------------------------------------------------------------------------
// Fragment layouts from the PTX ISA ("Matrix Fragments for mma.m16n8k16 with floating point type"),
// with groupID = lane >> 2 and threadID_in_group = lane % 4; element i of A (8 per lane) and B (4 per
// lane) sits in register i / 2, the even element in the low half.

struct Coord {
  int row, col;
};

Coord a_coord(int lane, int i) {
  const int g = lane >> 2, t = lane % 4;
  const int row = (i < 2 || (i >= 4 && i < 6)) ? g : g + 8;
  const int col = i < 4 ? t * 2 + (i & 1) : t * 2 + (i & 1) + 8;
  return {row, col};
}

Coord b_coord(int lane, int i) {
  const int g = lane >> 2, t = lane % 4;
  const int row = i < 2 ? t * 2 + (i & 1) : t * 2 + (i & 1) + 8;
  return {row, g};
}

Coord cd_coord(int lane, int i) {
  const int g = lane >> 2, t = lane % 4;
  return {i < 2 ? g : g + 8, t * 2 + (i & 1)};
}

// Every element of A (16 x 16), B (16 x 8) and C/D (16 x 8) is held by exactly one (lane, element).
std::string layout_check() {
  std::string err;
  const auto check = [&](const char* name, int rows, int cols, int per_lane, Coord (*coord)(int, int)) {
    std::vector<int> owners(rows * cols, 0);
    for (int lane = 0; lane < 32; ++lane)
      for (int i = 0; i < per_lane; ++i) {
        const Coord c = coord(lane, i);
        if (c.row < 0 || c.row >= rows || c.col < 0 || c.col >= cols) {
          err += std::string(name) + ": element out of the matrix; ";
          return;
        }
        ++owners[c.row * cols + c.col];
      }
    for (int e = 0; e < rows * cols; ++e)
      if (owners[e] != 1) {
        err += std::string(name) + ": element (" + std::to_string(e / cols) + ", " + std::to_string(e % cols) +
               ") owned " + std::to_string(owners[e]) + " times; ";
      }
  };
  check("A", 16, 16, 8, a_coord);
  check("B", 16, 8, 4, b_coord);
  check("C/D", 16, 8, 4, cd_coord);
  return err;
}

float element(int kind, uint32_t reg, int half) {
  const uint16_t bits = static_cast<uint16_t>(half ? reg >> 16 : reg & 0xffffu);
  return kind == kMmaF16 ? f16_to_f32(bits) : bf16_to_f32(bits);
}

void resolve_mma(Fiber* const* lanes, int kind) {
  static const std::string layout_error = layout_check();
  if (!layout_error.empty()) {
    fail("mma fragment layout self-check: " + layout_error);
    return;
  }
  double A[16][16], B[16][8], C[16][8];
  for (int lane = 0; lane < 32; ++lane) {
    const Fiber& f = *lanes[lane];
    for (int i = 0; i < 8; ++i) {
      const Coord c = a_coord(lane, i);
      A[c.row][c.col] = element(kind, f.a[i / 2], i & 1);
    }
    for (int i = 0; i < 4; ++i) {
      const Coord c = b_coord(lane, i);
      B[c.row][c.col] = element(kind, f.b[i / 2], i & 1);
      const Coord d = cd_coord(lane, i);
      C[d.row][d.col] = f.c[i];
    }
  }
  // Products of 11- or 8-bit significands are exact in double and the sum of 16 of them nearly so:
  // the result is the exact D rounded once to float32, not the tensor core's own order of rounding.
  for (int lane = 0; lane < 32; ++lane) {
    Fiber& f = *lanes[lane];
    for (int i = 0; i < 4; ++i) {
      const Coord c = cd_coord(lane, i);
      double s = C[c.row][c.col];
      for (int k = 0; k < 16; ++k) s += A[c.row][k] * B[k][c.col];
      f.d[i] = static_cast<float>(s);
    }
  }
}

// PTX ldmatrix.m8n8 (PTX ISA, "Warp-level matrix load instruction: ldmatrix", and its figure of the
// fragment layout for .b16): lanes 8i .. 8i + 7 hold the addresses of rows 0-7 of matrix i (16 bytes
// of 8 elements each; ldmatrix() checked them), the other lanes' addresses are not read; register i
// of lane 4g + t receives elements (g, 2t) and (g, 2t + 1) of matrix i, the first in the low half,
// or with .trans elements (2t, g) and (2t + 1, g) (the matrix read column-major).
void resolve_ldmatrix(Fiber* const* lanes, int count, bool trans) {
  uint16_t m[4][8][8];
  for (int i = 0; i < count; ++i)
    for (int row = 0; row < 8; ++row) std::memcpy(m[i][row], __start_aef_emu_shared + lanes[8 * i + row]->value, 16);
  for (int lane = 0; lane < 32; ++lane) {
    const int g = lane >> 2, t = lane % 4;
    for (int i = 0; i < count; ++i) {
      const uint16_t lo = trans ? m[i][2 * t][g] : m[i][g][2 * t];
      const uint16_t hi = trans ? m[i][2 * t + 1][g] : m[i][g][2 * t + 1];
      lanes[lane]->r[i] = static_cast<uint32_t>(lo) | static_cast<uint32_t>(hi) << 16;
    }
  }
}

// PTX shfl.sync: the segment of `width` lanes, its first lane, and the clamp lane that bounds the
// source (the segment's last lane, or its first for .up).
void resolve_shuffle(Fiber* const* lanes, int kind, int width) {
  const int segmask = (32 - width) & 31;
  for (int lane = 0; lane < 32; ++lane) {
    Fiber& f = *lanes[lane];
    const int min_lane = lane & segmask;
    const int max_lane = kind == kShflUp ? min_lane : (min_lane | (31 & ~segmask));
    int j = lane;
    bool ok = false;
    switch (kind) {
      case kShflUp: j = lane - f.arg; ok = j >= max_lane; break;
      case kShflDown: j = lane + f.arg; ok = j <= max_lane; break;
      case kShflXor: j = lane ^ (f.arg & 31); ok = j <= max_lane; break;
      default: j = min_lane | (f.arg & 31 & ~segmask); ok = j <= max_lane; break;
    }
    f.result = lanes[ok ? j : lane]->value;
  }
}

// ---- the block scheduler ---------------------------------------------------------------------------

struct Block {
  int n = 0;
  std::vector<Warp> warps;
  std::vector<int> ready;
  int at_barrier = 0, done = 0;
  uint64_t rng = 0;
};

Block g_block;

void push_ready(int i) { g_block.ready.push_back(i); }

void warp_arrived(Fiber& f) {
  Warp& w = g_block.warps[f.warp];
  Fiber* lanes[32];
  const int first = f.warp * 32;
  if (w.size < 32) {
    fail(std::string(kind_name(f.kind)) + " in a warp of " + std::to_string(w.size) +
         " threads (the block size is not a multiple of 32)");
    return;
  }
  if (f.mask != kFullMask) {
    char buf[96];
    std::snprintf(buf, sizeof(buf), "%s with the partial mask 0x%08x", kind_name(f.kind), f.mask);
    fail(buf);
    return;
  }
  if (w.done > 0) {
    fail(std::string(kind_name(f.kind)) + " reached by part of a warp: " + std::to_string(w.done) +
         " of its lanes have exited");
    return;
  }
  if (w.arrived == 0) {
    w.first = f.lane;
  } else {
    const Fiber& o = g_fibers[first + w.first];
    if (o.kind != f.kind || o.width != f.width || o.bytes != f.bytes) {
      fail(std::string("divergent warp collectives: lane ") + std::to_string(o.lane) + " at " + kind_name(o.kind) +
           " (width " + std::to_string(o.width) + "), lane " + std::to_string(f.lane) + " at " + kind_name(f.kind) +
           " (width " + std::to_string(f.width) + ")");
      return;
    }
  }
  ++w.arrived;
  if (w.arrived < 32) return;
  for (int l = 0; l < 32; ++l) lanes[l] = &g_fibers[first + l];
  if (f.kind == kMmaF16 || f.kind == kMmaBF16)
    resolve_mma(lanes, f.kind);
  else if (f.kind == kLdmatrix)
    resolve_ldmatrix(lanes, f.width, f.bytes != 0);
  else
    resolve_shuffle(lanes, f.kind, f.width);
  w.arrived = 0;
  for (int l = 0; l < 32; ++l) {
    lanes[l]->state = kReady;
    push_ready(first + l);
  }
}

void barrier_arrived() {
  if (g_block.done > 0) {
    fail("__syncthreads reached after " + std::to_string(g_block.done) + " threads of the block exited");
    return;
  }
  if (++g_block.at_barrier < g_block.n) return;
  g_block.at_barrier = 0;
  for (int i = 0; i < g_block.n; ++i) {
    g_fibers[i].state = kReady;
    push_ready(i);
  }
}

void thread_exited(Fiber& f) {
  ++g_block.done;
  Warp& w = g_block.warps[f.warp];
  ++w.done;
  if (g_block.at_barrier > 0) {
    fail("a thread exited while " + std::to_string(g_block.at_barrier) + " threads wait at __syncthreads");
    return;
  }
  if (w.arrived > 0) fail("lane " + std::to_string(f.lane) + " exited while its warp waits at a collective");
}

void diagnose_deadlock() {
  std::string what = "deadlock: no thread can proceed;";
  for (size_t wi = 0; wi < g_block.warps.size(); ++wi) {
    int at_warp = 0, at_bar = 0, done = 0;
    const int first = static_cast<int>(wi) * 32;
    for (int l = 0; l < g_block.warps[wi].size; ++l) {
      const State s = g_fibers[first + l].state;
      at_warp += s == kAtWarp;
      at_bar += s == kAtBarrier;
      done += s == kDone;
    }
    if (at_warp > 0 || (at_bar > 0 && at_bar + done < g_block.warps[wi].size))
      what += " warp " + std::to_string(wi) + ": " + std::to_string(at_warp) + " lanes at a collective, " +
              std::to_string(at_bar) + " at __syncthreads, " + std::to_string(done) + " exited;";
  }
  what.pop_back();
  fail(what);
}

void run_block(int n, uint64_t seed) {
  Block& b = g_block;
  b.n = n;
  b.warps.assign((n + 31) / 32, Warp{});
  for (int w = 0; w < static_cast<int>(b.warps.size()); ++w) b.warps[w].size = std::min(32, n - 32 * w);
  b.ready.clear();
  b.at_barrier = b.done = 0;
  b.rng = seed;
  const unsigned bx = g_blockDim.x, by = g_blockDim.y;
  for (int i = 0; i < n; ++i) {
    Fiber& f = g_fibers[i];
    f.tid = {i % bx, (i / bx) % by, i / (bx * by)};
    f.warp = i / 32;
    f.lane = i % 32;
    start_fiber(f);
    push_ready(i);
  }
  if (__start_aef_emu_shared != nullptr)
    std::memset(__start_aef_emu_shared, 0xff, static_cast<size_t>(__stop_aef_emu_shared - __start_aef_emu_shared));
  g_block_failed = false;
  while (!g_block_failed) {
    if (b.ready.empty()) {
      if (b.done < n) diagnose_deadlock();
      break;
    }
    const size_t pick = splitmix(b.rng) % b.ready.size();
    const int i = b.ready[pick];
    b.ready[pick] = b.ready.back();
    b.ready.pop_back();
    Fiber& f = g_fibers[i];
    resume(f);
    if (g_block_failed) break;  // found by the fiber itself (a bad width)
    switch (f.state) {
      case kAtWarp: warp_arrived(f); break;
      case kAtBarrier: barrier_arrived(); break;
      case kDone: thread_exited(f); break;
      case kReady: break;
    }
  }
}

bool valid_launch(dim3 grid, dim3 block, std::string& why) {
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  if (block.x == 0 || block.y == 0 || block.z == 0 || grid.x == 0 || grid.y == 0 || grid.z == 0)
    why = "a zero grid or block dimension";
  else if (threads > 1024)
    why = "a block of " + std::to_string(threads) + " threads (at most 1024)";
  else if (block.x > 1024 || block.y > 1024 || block.z > 64)
    why = "a block dimension over (1024, 1024, 64)";
  else if (grid.x > 2147483647u)
    why = "grid x over 2^31 - 1";
  else if (grid.y > 65535 || grid.z > 65535)
    why = "grid y = " + std::to_string(grid.y) + ", z = " + std::to_string(grid.z) + " (at most 65,535)";
  return why.empty();
}

uint64_t gcd64(uint64_t a, uint64_t b) {
  while (b) {
    const uint64_t t = a % b;
    a = b;
    b = t;
  }
  return a;
}

}  // namespace

void fail_misaligned(const char* what) {
  if (g_cur == nullptr) {  // outside a kernel: host code of a launcher
    if (g_failures.size() < 100) g_failures.push_back(std::string(what) + " (host code)");
    return;
  }
  fail(what);
  g_sticky = cudaErrorMisalignedAddress;
}

// ---- collectives called from the kernels -----------------------------------------------------------

uint64_t warp_shuffle(int kind, unsigned mask, uint64_t value, int arg, int width, int bytes) {
  Fiber* f = g_cur;
  if (width < 1 || width > 32 || (width & (width - 1)) != 0) {
    fail(std::string(kind_name(kind)) + " with width " + std::to_string(width) + " (a power of 2 up to 32)");
    suspend(kAtWarp);
    return 0;
  }
  f->kind = kind;
  f->mask = mask;
  f->value = value;
  f->arg = arg;
  f->width = width;
  f->bytes = bytes;
  suspend(kAtWarp);
  return f->result;
}

void mma_m16n8k16(int kind, float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], const float (&c)[4]) {
  Fiber* f = g_cur;
  f->kind = kind;
  f->mask = kFullMask;  // mma.sync.aligned: the whole warp, by definition
  f->width = 32;
  f->bytes = 0;
  std::memcpy(f->a, a, sizeof(f->a));
  std::memcpy(f->b, b, sizeof(f->b));
  std::memcpy(f->c, c, sizeof(f->c));
  suspend(kAtWarp);
  std::memcpy(d, f->d, sizeof(f->d));
}

// The form (count, .trans) travels in width and bytes, so that lanes at different forms are
// reported as divergent collectives. Each lane whose address the form reads checks its own, as a
// GPU faults on it: 16 bytes inside the kernels' shared memory, 16-byte aligned.
void ldmatrix(int count, bool trans, uint32_t (&r)[4], uint32_t addr) {
  Fiber* f = g_cur;
  f->kind = kLdmatrix;
  f->mask = kFullMask;  // ldmatrix.sync.aligned: the whole warp, by definition
  f->width = count;
  f->bytes = trans ? 1 : 0;
  f->value = addr;
  std::memset(f->r, 0, sizeof(f->r));
  const size_t size = __start_aef_emu_shared ? static_cast<size_t>(__stop_aef_emu_shared - __start_aef_emu_shared) : 0;
  if (count != 1 && count != 2 && count != 4) {
    fail("ldmatrix .x" + std::to_string(count) + " (.x1, .x2 or .x4)");
  } else if (f->lane < 8 * count) {
    if (static_cast<size_t>(addr) + 16 > size) {
      fail("ldmatrix row address past the kernels' shared memory (lane " + std::to_string(f->lane) + ")");
    } else if (reinterpret_cast<uintptr_t>(__start_aef_emu_shared + addr) % 16 != 0) {
      char buf[128];
      std::snprintf(buf, sizeof(buf), "misaligned ldmatrix row address: shared %p (lane %d), not 16-byte aligned",
                    static_cast<void*>(__start_aef_emu_shared + addr), f->lane);
      fail_misaligned(buf);
    }
  }
  suspend(kAtWarp);
  std::memcpy(r, f->r, sizeof(f->r));
}

void syncthreads() { suspend(kAtBarrier); }

size_t shared_offset(const void* p) {
  const char* c = static_cast<const char*>(p);
  if (__start_aef_emu_shared == nullptr || c < __start_aef_emu_shared || c >= __stop_aef_emu_shared) {
    fail("__cvta_generic_to_shared of an address outside shared memory");
    return 0;
  }
  return static_cast<size_t>(c - __start_aef_emu_shared);
}

void cp_async_16(uint32_t dst, const void* src, uint32_t src_bytes) {
  const size_t size = __start_aef_emu_shared ? static_cast<size_t>(__stop_aef_emu_shared - __start_aef_emu_shared) : 0;
  if (static_cast<size_t>(dst) + 16 > size) {
    fail("cp.async to a shared address past the kernels' shared memory");
    return;
  }
  char* to = __start_aef_emu_shared + dst;
  if (src_bytes > 16) {
    fail("cp.async with src-size " + std::to_string(src_bytes) + " > 16 bytes");
    return;
  }
  if (reinterpret_cast<uintptr_t>(to) % 16 != 0 || reinterpret_cast<uintptr_t>(src) % 16 != 0) {
    char buf[160];
    std::snprintf(buf, sizeof(buf), "misaligned cp.async: 16-byte copy from %p to shared %p", src,
                  static_cast<void*>(to));
    fail_misaligned(buf);
    return;
  }
  if (src_bytes != 0) std::memcpy(to, src, src_bytes);
  std::memset(to + src_bytes, 0, 16 - src_bytes);
}

void run_grid(const char* kernel, const char* where, int line, const char* caller, dim3 grid, dim3 block,
              size_t smem, void (*body)(void*), void* ctx) {
  g_kernel = kernel;
  g_where = where;
  g_line = line;
  g_caller = caller;
  g_gridDim = grid;
  g_blockDim = block;
  g_blockIdx = {0, 0, 0};
  ++g_launches[std::string(kernel) + "\t" + caller];
  std::string why;
  if (!valid_launch(grid, block, why)) {
    g_last = cudaErrorInvalidConfiguration;
    g_block_failed = false;
    if (g_failures.size() < 100) g_failures.push_back("invalid launch: " + why + ": " + describe_launch());
    return;
  }
  if (smem > 0) {
    g_last = cudaErrorInvalidValue;
    if (g_failures.size() < 100)
      g_failures.push_back("dynamic shared memory is not emulated: " + describe_launch());
    return;
  }
  if (g_sticky != cudaSuccess) return;  // a faulted context runs nothing
  allocate_fibers();
  g_body = body;
  g_ctx = ctx;
  uint64_t rng = g_seed ^ (0x51ed270b27a5c3c9ull * ++g_launch_count);
  const int n = static_cast<int>(block.x * block.y * block.z);
  // Blocks in a random order: i -> (a i + c) mod total with a coprime to total.
  const uint64_t total = uint64_t(grid.x) * grid.y * grid.z;
  uint64_t a = 1, c = 0;
  if (total > 1) {
    do a = 1 + splitmix(rng) % (total - 1);
    while (gcd64(a, total) != 1);
    c = splitmix(rng) % total;
  }
  for (uint64_t i = 0; i < total; ++i) {
    const uint64_t j = static_cast<uint64_t>((static_cast<unsigned __int128>(a) * i + c) % total);
    g_blockIdx = {static_cast<unsigned>(j % grid.x), static_cast<unsigned>((j / grid.x) % grid.y),
                  static_cast<unsigned>(j / (uint64_t(grid.x) * grid.y))};
    run_block(n, splitmix(rng));
    if (g_block_failed) break;
  }
  g_block_failed = false;
}

// ---- conversions ---------------------------------------------------------------------------------

uint16_t f32_to_f16_rn(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) return sign | 0x7e00u | ((ax >> 13) & 0x3ffu);  // NaN stays NaN (quiet)
  if (ax >= 0x477ff000u) return sign | 0x7c00u;  // from 65520 up, including inf, rounds to inf
  const uint32_t e = ax >> 23;
  if (e < 113) {  // below 2^-14: a subnormal half (units of 2^-24) or zero
    if (e < 102) return sign;  // below 2^-25, or exactly it (a tie, to the even 0)
    const uint32_t m = (ax & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126 - e;
    uint32_t r = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1), halfway = 1u << (shift - 1);
    if (rem > halfway || (rem == halfway && (r & 1u))) ++r;
    return sign | static_cast<uint16_t>(r);
  }
  uint32_t h = (ax - 0x38000000u) >> 13;
  const uint32_t rem = ax & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // a carry moves into the exponent, as it should
  return sign | static_cast<uint16_t>(h);
}

float f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  uint32_t x;
  if (e == 0) {
    const float mag = std::ldexp(static_cast<float>(m), -24);
    std::memcpy(&x, &mag, 4);
    x |= sign;
  } else if (e == 31) {
    x = sign | 0x7f800000u | (m << 13);
  } else {
    x = sign | ((e + 112) << 23) | (m << 13);
  }
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

uint16_t f32_to_bf16_rn(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);
  return static_cast<uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

}  // namespace aef_emu

// ---- misaligned accesses ----------------------------------------------------------------------------
// The kernels are compiled with -fsanitize=alignment: every load and store through a pointer is
// checked against its type's alignment, and a violation calls this handler (the layouts are those
// of GCC's undefined-behaviour sanitizer ABI). A GPU faults on a misaligned access, most visibly on
// a 16-byte pack at an address that is not a multiple of 16; here it is a failure of the launch.

namespace {
struct UbsanLocation {
  const char* file;
  uint32_t line, column;
};
struct UbsanType {
  uint16_t kind, info;
  char name[1];
};
struct UbsanTypeMismatch {
  UbsanLocation loc;
  const UbsanType* type;
  unsigned char log_alignment, check_kind;
};
}  // namespace

extern "C" void __ubsan_handle_type_mismatch_v1(UbsanTypeMismatch* data, uintptr_t ptr) {
  char buf[512];
  if (ptr == 0)
    std::snprintf(buf, sizeof(buf), "null pointer access of %s at %s:%u", data->type->name, data->loc.file,
                  data->loc.line);
  else
    std::snprintf(buf, sizeof(buf), "misaligned access: %s needs %u-byte alignment, address 0x%" PRIxPTR " at %s:%u",
                  data->type->name, 1u << data->log_alignment, ptr, data->loc.file, data->loc.line);
  aef_emu::fail_misaligned(buf);
}

extern "C" void __ubsan_handle_type_mismatch_v1_abort(UbsanTypeMismatch* data, uintptr_t ptr) {
  __ubsan_handle_type_mismatch_v1(data, ptr);
}

// ---- the CUDA runtime API -------------------------------------------------------------------------

using aef_emu::g_last;
using aef_emu::g_sticky;

cudaError_t cudaGetLastError() {
  if (g_sticky != cudaSuccess) return g_sticky;
  const cudaError_t e = g_last;
  g_last = cudaSuccess;
  return e;
}

cudaError_t cudaPeekAtLastError() { return g_sticky != cudaSuccess ? g_sticky : g_last; }

const char* cudaGetErrorName(cudaError_t err) {
  switch (err) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInitializationError: return "cudaErrorInitializationError";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevicePointer: return "cudaErrorInvalidDevicePointer";
    case cudaErrorStubLibrary: return "cudaErrorStubLibrary";
    case cudaErrorInsufficientDriver: return "cudaErrorInsufficientDriver";
    case cudaErrorDevicesUnavailable: return "cudaErrorDevicesUnavailable";
    case cudaErrorInvalidDeviceFunction: return "cudaErrorInvalidDeviceFunction";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorNoKernelImageForDevice: return "cudaErrorNoKernelImageForDevice";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorNotReady: return "cudaErrorNotReady";
    case cudaErrorIllegalAddress: return "cudaErrorIllegalAddress";
    case cudaErrorLaunchOutOfResources: return "cudaErrorLaunchOutOfResources";
    case cudaErrorMisalignedAddress: return "cudaErrorMisalignedAddress";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    case cudaErrorSystemNotReady: return "cudaErrorSystemNotReady";
    case cudaErrorSystemDriverMismatch: return "cudaErrorSystemDriverMismatch";
    case cudaErrorCompatNotSupportedOnDevice: return "cudaErrorCompatNotSupportedOnDevice";
    default: return "cudaErrorUnknown";
  }
}

const char* cudaGetErrorString(cudaError_t err) {
  switch (err) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorLaunchFailure: return "unspecified launch failure (emulator: see its failure log)";
    default: return cudaGetErrorName(err);
  }
}

cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int device) { return device == 0 ? cudaSuccess : cudaErrorInvalidValue; }

// An H100/H200-like device (sm_90, 132 SMs): what a launcher may size itself by.
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int) {
  switch (attr) {
    case cudaDevAttrMaxThreadsPerBlock: *value = 1024; break;
    case cudaDevAttrMaxGridDimX: *value = 2147483647; break;
    case cudaDevAttrMaxGridDimY:
    case cudaDevAttrMaxGridDimZ: *value = 65535; break;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = 48 * 1024; break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = 227 * 1024; break;
    case cudaDevAttrWarpSize: *value = 32; break;
    case cudaDevAttrMultiProcessorCount: *value = 132; break;
    case cudaDevAttrComputeCapabilityMajor: *value = 9; break;
    case cudaDevAttrComputeCapabilityMinor: *value = 0; break;
    default: return cudaErrorInvalidValue;
  }
  return cudaSuccess;
}

// Launches run to completion when they are made, so synchronisation only reports the state.
cudaError_t cudaDeviceSynchronize() { return g_sticky; }
cudaError_t cudaStreamSynchronize(cudaStream_t) { return g_sticky; }

cudaError_t cudaMemsetAsync(void* ptr, int value, size_t bytes, cudaStream_t) {
  if (g_sticky != cudaSuccess) return g_sticky;
  std::memset(ptr, value, bytes);
  return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind, cudaStream_t) {
  if (g_sticky != cudaSuccess) return g_sticky;
  std::memmove(dst, src, bytes);
  return cudaSuccess;
}

cudaError_t cudaFuncSetAttributeImpl(const void* func, cudaFuncAttribute attr, int value) {
  if (func == nullptr) return cudaErrorInvalidDeviceFunction;
  if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize && (value < 0 || value > 227 * 1024))
    return cudaErrorInvalidValue;
  return cudaSuccess;
}

// ---- control from the tests (ctypes) ----------------------------------------------------------------

extern "C" {

void emu_reset() {
  g_last = g_sticky = cudaSuccess;
  aef_emu::g_failures.clear();
  aef_emu::g_launches.clear();
}

// An error left by an earlier call, as the next launcher finds it: in the last-error slot only
// (sticky = 0: cudaGetLastError clears it), or sticky (a faulted context, or a runtime that cannot
// start: every later call reports it and nothing runs until emu_reset).
void emu_inject_error(int err, int sticky) {
  (sticky ? g_sticky : g_last) = static_cast<cudaError_t>(err);
}

void emu_set_seed(uint64_t seed) {
  aef_emu::g_seed = seed;
  aef_emu::g_launch_count = 0;
}

// Newline-separated failures since the last reset (empty: none).
const char* emu_failures() {
  static std::string out;
  out.clear();
  for (const auto& f : aef_emu::g_failures) out += f + "\n";
  return out.c_str();
}

// One line per launched kernel instantiation: count, kernel expression, launching function.
const char* emu_launches() {
  static std::string out;
  out.clear();
  for (const auto& [what, count] : aef_emu::g_launches) out += std::to_string(count) + "\t" + what + "\n";
  return out.c_str();
}

const char* emu_mma_layout_check() {
  static std::string out;
  out = aef_emu::layout_check();
  return out.c_str();
}

// kind 0: float32 -> float16, 1: float16 -> float32, 2: float32 -> bfloat16, 3: bfloat16 -> float32.
void emu_convert(int kind, const void* in, void* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    if (kind == 0 || kind == 2) {
      const float f = static_cast<const float*>(in)[i];
      static_cast<uint16_t*>(out)[i] = kind == 0 ? aef_emu::f32_to_f16_rn(f) : aef_emu::f32_to_bf16_rn(f);
    } else {
      const uint16_t h = static_cast<const uint16_t*>(in)[i];
      static_cast<float*>(out)[i] = kind == 1 ? aef_emu::f16_to_f32(h) : aef_emu::bf16_to_f32(h);
    }
  }
}

}  // extern "C"
