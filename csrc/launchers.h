// Host entry points of the CUDA kernels. They take raw device pointers, sizes, strides (in
// elements) and a cudaStream_t as an integer, so the extension never links libtorch; each returns an
// aef::Status or a cudaError_t code (see common.h).
#pragma once

#include <cstdint>

namespace aef {

// y[r, :] = x[r, :] / max(||x[r, :]||, eps) for r < rows; rows of length D, last dim contiguous.
int launch_vmf_normalize_fwd(uintptr_t x, uintptr_t y, int64_t rows, int64_t D, int64_t x_row_stride,
                             int64_t y_row_stride, int dtype, double eps, uintptr_t stream);

}  // namespace aef
