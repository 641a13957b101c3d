// The Python module aef_kernels._C: build metadata and the raw kernel launchers. Launchers take
// integers (pointers, sizes, strides in elements, stream handle) and return a status code; the
// Python wrappers in aef_kernels/cuda turn a non-zero code into an exception naming the kernel.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <iterator>
#include <string>
#include <vector>

#include "common.h"

#ifdef AEF_WITH_CUDA
#include <cuda_runtime_api.h>

#include "launchers.h"
#endif

namespace py = pybind11;

namespace {

std::vector<std::string> split_archs(const std::string& archs) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start < archs.size()) {
    size_t end = archs.find(',', start);
    if (end == std::string::npos) end = archs.size();
    if (end > start) out.push_back(archs.substr(start, end - start));
    start = end + 1;
  }
  return out;
}

template <size_t N>
py::dict code_dict(const aef::NamedCode (&codes)[N]) {
  py::dict out;
  for (const auto& c : codes) out[c.name] = c.code;
  return out;
}

std::string error_string(int code) {
  if (const char* ours = aef::status_string(code)) return ours;
#ifdef AEF_WITH_CUDA
  return cudaGetErrorString(static_cast<cudaError_t>(code));
#else
  return "CUDA error " + std::to_string(code);
#endif
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "aef_kernels compiled extension: CUDA kernel launchers over raw pointers (no libtorch).";
  m.attr("__version__") = AEF_VERSION;
  m.attr("cxx_compiler") = AEF_CXX_COMPILER;
#ifdef AEF_WITH_CUDA
  m.attr("with_cuda") = true;
  m.attr("cuda_archs") = split_archs(AEF_CUDA_ARCHS);
  m.attr("nvcc_version") = AEF_NVCC_VERSION;
  m.attr("cuda_skip_reason") = "";
#else
  m.attr("with_cuda") = false;
  m.attr("cuda_archs") = std::vector<std::string>{};
  m.attr("nvcc_version") = "";
  m.attr("cuda_skip_reason") = AEF_CUDA_SKIP_REASON;
#endif

  // csrc's constants (common.h), which aef_kernels/cuda/_launch.py and attention.py build on at import.
  m.attr("status_codes") = code_dict(aef::kStatusCodes);
  m.attr("dtype_codes") = code_dict(aef::kDtypeCodes);
  m.attr("attention_head_dims") =
      py::tuple(py::cast(std::vector<int>(std::begin(aef::kAttentionHeadDims), std::end(aef::kAttentionHeadDims))));

  m.def("error_string", &error_string, py::arg("code"),
        "Message for a launcher's return code (an argument error or a cudaError_t).");

#ifdef AEF_WITH_CUDA
  m.def("launch_vmf_normalize_fwd", &aef::launch_vmf_normalize_fwd, py::arg("x"), py::arg("y"), py::arg("rows"),
        py::arg("D"), py::arg("x_row_stride"), py::arg("y_row_stride"), py::arg("dtype"), py::arg("eps"),
        py::arg("stream"), py::call_guard<py::gil_scoped_release>(),
        "y = x / max(||x||, eps) over rows of length D; strides in elements. Returns a status code.");
  m.def("launch_vmf_normalize_bwd", &aef::launch_vmf_normalize_bwd, py::arg("g"), py::arg("x"), py::arg("dx"),
        py::arg("rows"), py::arg("D"), py::arg("g_row_stride"), py::arg("x_row_stride"), py::arg("dx_row_stride"),
        py::arg("dtype"), py::arg("eps"), py::arg("stream"), py::call_guard<py::gil_scoped_release>(),
        "dx of vmf_normalize from its output gradient g and input x. Returns a status code.");
  m.def("launch_batch_uniformity_fwd", &aef::launch_batch_uniformity_fwd, py::arg("u"), py::arg("dots"),
        py::arg("partials"), py::arg("loss"), py::arg("B"), py::arg("M"), py::arg("D"), py::arg("u_batch_stride"),
        py::arg("u_row_stride"), py::arg("max_partials"), py::arg("dtype"), py::arg("stream"),
        py::call_guard<py::gil_scoped_release>(),
        "loss = mean |u[b, m] . u[b-1, m]| over u (B, M, D), and the float32 dots. Returns a status code.");
  m.def("launch_batch_uniformity_bwd", &aef::launch_batch_uniformity_bwd, py::arg("grad"), py::arg("u"),
        py::arg("dots"), py::arg("du"), py::arg("B"), py::arg("M"), py::arg("D"), py::arg("u_batch_stride"),
        py::arg("u_row_stride"), py::arg("dtype"), py::arg("stream"), py::call_guard<py::gil_scoped_release>(),
        "du of the batch-uniformity loss (du contiguous). Returns a status code.");
  m.def("group_norm_workspace_size", &aef::group_norm_workspace_size, py::arg("N"), py::arg("HW"), py::arg("C"),
        py::arg("G"), "float32 workspace entries the group_norm launchers need (negative status for bad sizes).");
  m.def("launch_group_norm_fwd", &aef::launch_group_norm_fwd, py::arg("x"), py::arg("gamma"), py::arg("beta"),
        py::arg("y"), py::arg("mean"), py::arg("rstd"), py::arg("workspace"), py::arg("workspace_size"), py::arg("N"),
        py::arg("HW"), py::arg("C"), py::arg("G"), py::arg("dtype"), py::arg("eps"), py::arg("gelu"),
        py::arg("stream"), py::call_guard<py::gil_scoped_release>(),
        "GroupNorm (+ GELU) of contiguous channels-last x (N, HW, C). Returns a status code.");
  m.def("launch_group_norm_bwd", &aef::launch_group_norm_bwd, py::arg("dy"), py::arg("x"), py::arg("gamma"),
        py::arg("beta"), py::arg("mean"), py::arg("rstd"), py::arg("dx"), py::arg("dgamma"), py::arg("dbeta"),
        py::arg("workspace"), py::arg("workspace_size"), py::arg("N"), py::arg("HW"), py::arg("C"), py::arg("G"),
        py::arg("dtype"), py::arg("gelu"), py::arg("stream"), py::call_guard<py::gil_scoped_release>(),
        "dx, dgamma, dbeta of group_norm (+ GELU). Returns a status code.");
  m.def("launch_axial_attention_fwd", &aef::launch_axial_attention_fwd, py::arg("q"), py::arg("k"), py::arg("v"),
        py::arg("mask"), py::arg("o"), py::arg("lse"), py::arg("sizes"), py::arg("q_strides"), py::arg("k_strides"),
        py::arg("v_strides"), py::arg("mask_strides"), py::arg("scale"), py::arg("dtype"), py::arg("stream"),
        py::call_guard<py::gil_scoped_release>(),
        "Axial time attention forward; sizes (B, Tq, T, H, W, heads, d), strides in elements over (B, T, H, W, "
        "heads) and the mask's (B, T, H, W) (mask = 0: none). Writes o and the base-2 lse. Returns a status code.");
  m.def("launch_axial_attention_bwd", &aef::launch_axial_attention_bwd, py::arg("grad"), py::arg("q"), py::arg("k"),
        py::arg("v"), py::arg("o"), py::arg("lse"), py::arg("mask"), py::arg("delta"), py::arg("dq"), py::arg("dk"),
        py::arg("dv"), py::arg("sizes"), py::arg("q_strides"), py::arg("k_strides"), py::arg("v_strides"),
        py::arg("mask_strides"), py::arg("scale"), py::arg("dtype"), py::arg("stream"),
        py::call_guard<py::gil_scoped_release>(),
        "Axial time attention backward (grad and o contiguous, delta float32 scratch of lse's size). Writes dq, "
        "dk, dv contiguous. Returns a status code.");
#endif
}
