// The Python module aef_kernels._C: build metadata and the raw kernel launchers. Launchers take
// integers (pointers, sizes, strides in elements, stream handle) and return a status code; the
// Python wrappers in aef_kernels/cuda turn a non-zero code into an exception naming the kernel.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

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

  m.def("error_string", &error_string, py::arg("code"),
        "Message for a launcher's return code (an argument error or a cudaError_t).");

#ifdef AEF_WITH_CUDA
  m.def("launch_vmf_normalize_fwd", &aef::launch_vmf_normalize_fwd, py::arg("x"), py::arg("y"), py::arg("rows"),
        py::arg("D"), py::arg("x_row_stride"), py::arg("y_row_stride"), py::arg("dtype"), py::arg("eps"),
        py::arg("stream"), py::call_guard<py::gil_scoped_release>(),
        "y = x / max(||x||, eps) over rows of length D; strides in elements. Returns a status code.");
#endif
}
