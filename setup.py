"""Builds the extension aef_kernels._C with CMake + Ninja (see CMakeLists.txt); metadata lives in
pyproject.toml.

Environment:
    AEF_CUDA_ARCHS       CUDA architectures, e.g. "80;90" (the default) or "8.0,9.0"
    AEF_SKIP_CUDA_BUILD  "1" builds the C++-only module even where nvcc is present
    MAX_JOBS             parallel compile jobs (ninja -j); Ninja's default when unset
    CUDA_HOME            where to look for bin/nvcc when it is not on PATH

Without nvcc (or with AEF_SKIP_CUDA_BUILD=1) the CUDA kernels are skipped with one line in the log
and the package still installs; the Triton and reference backends do not need the extension.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
DEFAULT_CUDA_ARCHS = "80;90"
RESOURCE_REPORT = "_C_resources.txt"


def find_nvcc() -> str | None:
    """nvcc from PATH, then $CUDA_HOME/bin, then /usr/local/cuda/bin."""
    found = shutil.which("nvcc")
    if found:
        return found
    candidates = [Path(os.environ["CUDA_HOME"]) / "bin" / "nvcc"] if os.environ.get("CUDA_HOME") else []
    candidates.append(Path("/usr/local/cuda/bin/nvcc"))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def cuda_plan() -> tuple[str | None, str]:
    """(nvcc to build the CUDA kernels with, or None; why they are skipped, or "")."""
    if os.environ.get("AEF_SKIP_CUDA_BUILD", "") == "1":
        return None, "AEF_SKIP_CUDA_BUILD=1 is set"
    nvcc = find_nvcc()
    if nvcc is None:
        return None, "nvcc not found on PATH, in $CUDA_HOME/bin or in /usr/local/cuda/bin"
    return nvcc, ""


def cuda_archs() -> str:
    """AEF_CUDA_ARCHS as a CMake list: separators ';', ',' or spaces, "8.0" written as "80"."""
    raw = os.environ.get("AEF_CUDA_ARCHS", "").strip() or DEFAULT_CUDA_ARCHS
    archs = [a.replace(".", "") for a in re.split(r"[;,\s]+", raw) if a]
    if not all(re.fullmatch(r"\d+[af]?(-real|-virtual)?", a) for a in archs):
        raise SystemExit(f"AEF_CUDA_ARCHS={raw!r}: expected architectures like '80;90' or '8.0,9.0'")
    return ";".join(archs)


def _tool(module: str, attr: str, name: str) -> str:
    """The binary shipped by build requirement ``module`` (pip's isolated env), else the one on PATH."""
    try:
        candidate = Path(getattr(__import__(module), attr)) / name
    except (ImportError, AttributeError):
        candidate = None
    if candidate is not None and candidate.is_file():
        return str(candidate)
    found = shutil.which(name)
    if not found:
        raise SystemExit(f"{name} is needed to build aef_kernels._C: pip install {module}")
    return found


def _version() -> str:
    text = (ROOT / "aef_kernels" / "_version.py").read_text()
    return re.search(r"__version__\s*=\s*[\"']([^\"']+)[\"']", text).group(1)


class CMakeExtension(Extension):
    def __init__(self, name: str):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        import pybind11

        extdir = Path(self.get_ext_fullpath(ext.name)).parent.resolve()
        build_temp = Path(self.build_temp).resolve() / ext.name
        build_temp.mkdir(parents=True, exist_ok=True)
        cmake = _tool("cmake", "CMAKE_BIN_DIR", "cmake")
        ninja = _tool("ninja", "BIN_DIR", "ninja")

        nvcc, skip_reason = cuda_plan()
        archs = cuda_archs()
        args = [
            "-G", "Ninja",
            f"-DCMAKE_MAKE_PROGRAM={ninja}",
            "-DCMAKE_BUILD_TYPE=Release",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={extdir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DAEF_VERSION={_version()}",
            f"-DAEF_RESOURCE_REPORT={extdir / RESOURCE_REPORT}",
        ]
        if nvcc:
            print(f"aef-kernels: building CUDA kernels with {nvcc} for archs {archs}", flush=True)
            args += ["-DAEF_WITH_CUDA=ON", f"-DCMAKE_CUDA_COMPILER={nvcc}", f"-DAEF_CUDA_ARCHS={archs}"]
        else:
            print(f"aef-kernels: CUDA kernels SKIPPED ({skip_reason}); building the C++-only "
                  "extension, the cuda backend will be unavailable", flush=True)
            args += ["-DAEF_WITH_CUDA=OFF", f"-DAEF_CUDA_SKIP_REASON={skip_reason}"]

        build = [cmake, "--build", ".", "--config", "Release"]
        if os.environ.get("MAX_JOBS"):
            build += ["--parallel", os.environ["MAX_JOBS"]]
        subprocess.run([cmake, "-S", str(ROOT), "-B", ".", *args], cwd=build_temp, check=True)
        subprocess.run(build, cwd=build_temp, check=True)

    def _report_paths(self) -> list[tuple[str, str]]:
        """(built report, its in-place copy) beside each extension."""
        pairs = []
        build_py = self.get_finalized_command("build_py")
        for ext in self.extensions:
            inplace_file, regular_file = self._get_inplace_equivalent(build_py, ext)
            pairs.append((os.path.join(os.path.dirname(regular_file), RESOURCE_REPORT),
                          os.path.join(os.path.dirname(inplace_file), RESOURCE_REPORT)))
        return pairs

    def copy_extensions_to_source(self) -> None:
        super().copy_extensions_to_source()
        for regular, inplace in self._report_paths():
            self.copy_file(regular, inplace, level=self.verbose)

    def get_outputs(self) -> list[str]:
        outputs = super().get_outputs()
        if self.inplace:
            return outputs
        return sorted(outputs + [regular for regular, _ in self._report_paths()])

    def get_output_mapping(self) -> dict[str, str]:
        mapping = super().get_output_mapping()
        if self.inplace:
            mapping.update(dict(self._report_paths()))
        return mapping


if __name__ == "__main__":
    setup(ext_modules=[CMakeExtension("aef_kernels._C")], cmdclass={"build_ext": CMakeBuild})
