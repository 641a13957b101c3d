// Shared by every launcher and by the bindings: status codes, dtype codes and argument checks that
// run on the host before any launch, so bad arguments are caught (and testable) without a GPU.
#pragma once

#include <cstdint>
#include <initializer_list>

namespace aef {

// A launcher returns 0 on success, a positive cudaError_t from the launch, or one of these
// (negative, so the two ranges never collide).
enum Status : int {
  kOk = 0,
  kNullPointer = -1,
  kBadSize = -2,
  kBadDtype = -3,
  kBadStride = -4,
  kBadEps = -5,
  kBadHeadDim = -6,
  kBadGroups = -7,
  kBadWorkspace = -8,
  kTooLarge = -9,
  kMisaligned = -10,
  kContextFaulted = -11,
};

inline const char* status_string(int code) {
  switch (code) {
    case kOk: return "success";
    case kNullPointer: return "null data pointer";
    case kBadSize: return "sizes must be positive";
    case kBadDtype: return "unknown dtype code (0 = float32, 1 = float16, 2 = bfloat16)";
    case kBadStride: return "bad row stride (input stride must be >= 0; output rows must not overlap)";
    case kBadEps: return "eps must be >= 0 (and not NaN)";
    case kBadHeadDim: return "unsupported head dim (supported: 16, 32, 64, 128)";
    case kBadGroups: return "num_groups must divide the channel count";
    case kBadWorkspace: return "workspace too small or not 8-byte aligned";
    case kTooLarge: return "sizes exceed the kernel's index range";
    case kMisaligned:
      return "data pointer not aligned for the kernel's accesses (every pointer to its element size; attention's "
             "o, dO, dq, dk and dv to two elements)";
    case kContextFaulted: return "an earlier CUDA error left the context unusable";
    default: return nullptr;  // not ours: a cudaError_t
  }
}

enum Dtype : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// The codes by name, exported by the bindings (aef_kernels._C.status_codes, .dtype_codes) so that
// Python takes them from here instead of keeping a copy.
struct NamedCode {
  const char* name;
  int code;
};
constexpr NamedCode kStatusCodes[] = {
    {"ok", kOk},
    {"null_pointer", kNullPointer},
    {"bad_size", kBadSize},
    {"bad_dtype", kBadDtype},
    {"bad_stride", kBadStride},
    {"bad_eps", kBadEps},
    {"bad_head_dim", kBadHeadDim},
    {"bad_groups", kBadGroups},
    {"bad_workspace", kBadWorkspace},
    {"too_large", kTooLarge},
    {"misaligned", kMisaligned},
    {"context_faulted", kContextFaulted},
};
constexpr NamedCode kDtypeCodes[] = {{"float32", kFloat32}, {"float16", kFloat16}, {"bfloat16", kBFloat16}};

// Head dims of the CUDA attention kernels (a template instance each in axial_attention*.cu).
constexpr int kAttentionHeadDims[] = {16, 32, 64, 128};

inline bool valid_dtype(int dtype) { return dtype == kFloat32 || dtype == kFloat16 || dtype == kBFloat16; }

// Bytes of one element of a valid dtype.
inline uintptr_t dtype_size(int dtype) { return dtype == kFloat32 ? 4 : 2; }

// True when every pointer is a multiple of `bytes`. The launchers refuse (kMisaligned) pointers
// that are not aligned for the narrowest access their kernels make through them: a misaligned
// access faults on the GPU and leaves the context unusable. Wider (vector) alignment, where a
// kernel has an element-wise path, only picks the kernel.
inline bool all_aligned(std::initializer_list<uintptr_t> ptrs, uintptr_t bytes) {
  for (uintptr_t p : ptrs)
    if (p % bytes != 0) return false;
  return true;
}

// Checks shared by launchers over (rows, D) matrices with a row stride and a contiguous last dim.
inline int check_rows_args(uintptr_t x, uintptr_t y, int64_t rows, int64_t D, int64_t x_row_stride,
                           int64_t y_row_stride, int dtype) {
  if (x == 0 || y == 0) return kNullPointer;
  if (rows <= 0 || D <= 0) return kBadSize;
  if (!valid_dtype(dtype)) return kBadDtype;
  if (x_row_stride < 0) return kBadStride;
  if (rows > 1 && y_row_stride < D) return kBadStride;
  return kOk;
}

// True when every row of a (rows, D) matrix at `ptr` starts on a `bytes` boundary and D fills whole
// `bytes` chunks, so each row can be moved in `bytes`-wide vectors.
inline bool rows_aligned(uintptr_t ptr, int64_t rows, int64_t D, int64_t row_stride, int elem, int bytes) {
  const int64_t vec = bytes / elem;
  return ptr % bytes == 0 && D % vec == 0 && (rows == 1 || row_stride % vec == 0);
}

constexpr int64_t kMaxGridX = 2147483647;  // grid axis 0 limit; kernels loop past it (grid-stride)

inline int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace aef
