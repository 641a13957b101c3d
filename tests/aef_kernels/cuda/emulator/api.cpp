// C entry points for ctypes: the launchers of launchers.h with plain arrays in place of the
// std::vector arguments, on the null stream (launches complete before they return).
#include <string>
#include <vector>

#include "common.h"
#include "launchers.h"

namespace {
std::vector<int64_t> vec(const int64_t* p, int n) { return std::vector<int64_t>(p, p + n); }
}  // namespace

extern "C" {

// csrc's status and dtype codes, one "status NAME CODE" or "dtype NAME CODE" line each, so that the
// tests take them from the sources they run.
const char* emu_constants() {
  static std::string out;
  out.clear();
  for (const auto& c : aef::kStatusCodes) out += std::string("status ") + c.name + " " + std::to_string(c.code) + "\n";
  for (const auto& c : aef::kDtypeCodes) out += std::string("dtype ") + c.name + " " + std::to_string(c.code) + "\n";
  return out.c_str();
}

int emu_vmf_normalize_fwd(uintptr_t x, uintptr_t y, int64_t rows, int64_t D, int64_t xs, int64_t ys, int dtype,
                          double eps) {
  return aef::launch_vmf_normalize_fwd(x, y, rows, D, xs, ys, dtype, eps, 0);
}

int emu_vmf_normalize_bwd(uintptr_t g, uintptr_t x, uintptr_t dx, int64_t rows, int64_t D, int64_t gs, int64_t xs,
                          int64_t ds, int dtype, double eps) {
  return aef::launch_vmf_normalize_bwd(g, x, dx, rows, D, gs, xs, ds, dtype, eps, 0);
}

int emu_batch_uniformity_fwd(uintptr_t u, uintptr_t dots, uintptr_t partials, uintptr_t loss, int64_t B, int64_t M,
                             int64_t D, int64_t sb, int64_t sm, int64_t max_partials, int dtype) {
  return aef::launch_batch_uniformity_fwd(u, dots, partials, loss, B, M, D, sb, sm, max_partials, dtype, 0);
}

int emu_batch_uniformity_bwd(uintptr_t grad, uintptr_t u, uintptr_t dots, uintptr_t du, int64_t B, int64_t M,
                             int64_t D, int64_t sb, int64_t sm, int dtype) {
  return aef::launch_batch_uniformity_bwd(grad, u, dots, du, B, M, D, sb, sm, dtype, 0);
}

int64_t emu_group_norm_workspace_size(int64_t N, int64_t HW, int64_t C, int64_t G) {
  return aef::group_norm_workspace_size(N, HW, C, G);
}

int emu_group_norm_fwd(uintptr_t x, uintptr_t gamma, uintptr_t beta, uintptr_t y, uintptr_t mean, uintptr_t rstd,
                       uintptr_t ws, int64_t ws_size, int64_t N, int64_t HW, int64_t C, int64_t G, int dtype,
                       double eps, int gelu) {
  return aef::launch_group_norm_fwd(x, gamma, beta, y, mean, rstd, ws, ws_size, N, HW, C, G, dtype, eps, gelu, 0);
}

int emu_group_norm_bwd(uintptr_t dy, uintptr_t x, uintptr_t gamma, uintptr_t beta, uintptr_t mean, uintptr_t rstd,
                       uintptr_t dx, uintptr_t dgamma, uintptr_t dbeta, uintptr_t ws, int64_t ws_size, int64_t N,
                       int64_t HW, int64_t C, int64_t G, int dtype, int gelu) {
  return aef::launch_group_norm_bwd(dy, x, gamma, beta, mean, rstd, dx, dgamma, dbeta, ws, ws_size, N, HW, C, G,
                                    dtype, gelu, 0);
}

// sizes: 7 entries; q/k/v strides: 5 each; mask strides: 4.
int emu_attention_fwd(uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t mask, uintptr_t o, uintptr_t lse,
                      const int64_t* sizes, const int64_t* qs, const int64_t* ks, const int64_t* vs,
                      const int64_t* ms, double scale, int dtype) {
  return aef::launch_axial_attention_fwd(q, k, v, mask, o, lse, vec(sizes, 7), vec(qs, 5), vec(ks, 5), vec(vs, 5),
                                         vec(ms, 4), scale, dtype, 0);
}

int emu_attention_bwd(uintptr_t grad, uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t o, uintptr_t lse,
                      uintptr_t mask, uintptr_t delta, uintptr_t dq, uintptr_t dk, uintptr_t dv, const int64_t* sizes,
                      const int64_t* qs, const int64_t* ks, const int64_t* vs, const int64_t* ms, double scale,
                      int dtype) {
  return aef::launch_axial_attention_bwd(grad, q, k, v, o, lse, mask, delta, dq, dk, dv, vec(sizes, 7), vec(qs, 5),
                                         vec(ks, 5), vec(vs, 5), vec(ms, 4), scale, dtype, 0);
}

}  // extern "C"
