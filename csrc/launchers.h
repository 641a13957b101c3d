// Host entry points of the CUDA kernels. They take raw device pointers, sizes, strides (in
// elements) and a cudaStream_t as an integer, so the extension never links libtorch; each returns an
// aef::Status or a cudaError_t code (see common.h).
#pragma once

#include <cstdint>
#include <vector>

namespace aef {

// y[r, :] = x[r, :] / max(||x[r, :]||, eps) for r < rows; rows of length D, last dim contiguous.
int launch_vmf_normalize_fwd(uintptr_t x, uintptr_t y, int64_t rows, int64_t D, int64_t x_row_stride,
                             int64_t y_row_stride, int dtype, double eps, uintptr_t stream);

// Its backward: dx = g / n - x (g . x) / n^3 with n = ||x[r, :]|| (dx = g / eps where n < eps).
int launch_vmf_normalize_bwd(uintptr_t g, uintptr_t x, uintptr_t dx, int64_t rows, int64_t D, int64_t g_row_stride,
                             int64_t x_row_stride, int64_t dx_row_stride, int dtype, double eps, uintptr_t stream);

// Batch-uniformity loss of u viewed as (B, M, D) with strides (u_batch_stride, u_row_stride, 1):
// dots (B, M) float32 = u[b, m] . u[b-1 mod B, m], loss (a scalar in u's dtype) = mean |dots|.
// partials is float32 scratch of max_partials (>= 1) entries: one per block of the first pass.
int launch_batch_uniformity_fwd(uintptr_t u, uintptr_t dots, uintptr_t partials, uintptr_t loss, int64_t B, int64_t M,
                                int64_t D, int64_t u_batch_stride, int64_t u_row_stride, int64_t max_partials,
                                int dtype, uintptr_t stream);

// Its backward from the scalar grad (u's dtype) and the forward's dots; du is written contiguous.
int launch_batch_uniformity_bwd(uintptr_t grad, uintptr_t u, uintptr_t dots, uintptr_t du, int64_t B, int64_t M,
                                int64_t D, int64_t u_batch_stride, int64_t u_row_stride, int dtype, uintptr_t stream);

// GroupNorm of contiguous channels-last frames x (N, HW, C) in G groups; gamma, beta float32 (C,);
// mean, rstd float32 (N, G). The float32 workspace needs group_norm_workspace_size(N, HW, C, G)
// entries (a negative status for bad sizes) and is 8-byte aligned. gelu != 0 applies GELU (erf).
int64_t group_norm_workspace_size(int64_t N, int64_t HW, int64_t C, int64_t G);
int launch_group_norm_fwd(uintptr_t x, uintptr_t gamma, uintptr_t beta, uintptr_t y, uintptr_t mean, uintptr_t rstd,
                          uintptr_t workspace, int64_t workspace_size, int64_t N, int64_t HW, int64_t C, int64_t G,
                          int dtype, double eps, int gelu, uintptr_t stream);

// Its backward from dy (x's dtype and layout) and the forward's mean and rstd: dx like x, dgamma and
// dbeta float32 (C,).
int launch_group_norm_bwd(uintptr_t dy, uintptr_t x, uintptr_t gamma, uintptr_t beta, uintptr_t mean, uintptr_t rstd,
                          uintptr_t dx, uintptr_t dgamma, uintptr_t dbeta, uintptr_t workspace,
                          int64_t workspace_size, int64_t N, int64_t HW, int64_t C, int64_t G, int dtype, int gelu,
                          uintptr_t stream);

// Axial time attention over sequences (b, h, w, head). sizes = (B, Tq, T, H, W, heads, d) with d in
// {16, 32, 64, 128}; *_strides are the element strides of q, k, v over (B, T, H, W, heads) (d is
// contiguous) and of the bool key mask over (B, T, H, W) (mask = 0: no mask). o (B, Tq, H, W, heads, d)
// is written contiguous, lse (B, Tq, H, W, heads) as float32 in base 2 (+inf for a query with no key).
int launch_axial_attention_fwd(uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t mask, uintptr_t o, uintptr_t lse,
                               const std::vector<int64_t>& sizes, const std::vector<int64_t>& q_strides,
                               const std::vector<int64_t>& k_strides, const std::vector<int64_t>& v_strides,
                               const std::vector<int64_t>& mask_strides, double scale, int dtype, uintptr_t stream);

// Its backward. grad (dO) and o are contiguous like the forward's output; delta is float32 scratch
// of lse's size. dq, dk, dv are written contiguous; every element has exactly one writer.
int launch_axial_attention_bwd(uintptr_t grad, uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t o, uintptr_t lse,
                               uintptr_t mask, uintptr_t delta, uintptr_t dq, uintptr_t dk, uintptr_t dv,
                               const std::vector<int64_t>& sizes, const std::vector<int64_t>& q_strides,
                               const std::vector<int64_t>& k_strides, const std::vector<int64_t>& v_strides,
                               const std::vector<int64_t>& mask_strides, double scale, int dtype, uintptr_t stream);

}  // namespace aef
