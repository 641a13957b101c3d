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
import time
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


def tell(message: str) -> None:
    """One line for the person running the install, also without ``pip -v``.

    pip runs this build in a subprocess whose stdout and stderr it keeps to itself unless the build
    fails or -v is given, so a line on either is never seen during a minutes-long build (pip shows
    only "still running..."). The line goes to the log (stdout) and, when that is not the terminal,
    to the controlling terminal itself, which pip leaves to its child.
    """
    print(message, flush=True)
    if sys.stdout.isatty():
        return
    try:
        fd = os.open("/dev/tty", os.O_WRONLY | os.O_NOCTTY)
    except OSError:  # no controlling terminal (CI, a detached job): the log is all there is
        return
    try:
        os.write(fd, f"\n{message}\n".encode())
    finally:
        os.close(fd)


# Measured on an idle 2-core x86 machine with nvcc 13.0 (AEF_CUDA_ARCHS=90: 67 s of Ninja; "80;90":
# 195 s): CPU seconds of each arch's compile of the five .cu files, and of its longest single step,
# axial_attention_bwd.cu, which bounds the build however many cores there are. Unknown archs count as
# the dearest. Parallel jobs share the machine unevenly, hence the factor.
ARCH_CPU_S = {"80": 200, "90": 100}
ARCH_LONGEST_S = {"80": 150, "90": 65}
FIXED_S = 10  # configure, the host module, linking
PARALLEL_LOSS = 1.3


def build_estimate_s(archs: str, cores: int) -> float:
    """Rough wall time of the CUDA build for ``archs`` (CMake list) with ``cores`` parallel jobs."""
    names = [re.match(r"\d+", a)[0] for a in archs.split(";")]
    work = sum(ARCH_CPU_S.get(a, max(ARCH_CPU_S.values())) for a in names)
    longest = max(ARCH_LONGEST_S.get(a, max(ARCH_LONGEST_S.values())) for a in names)
    return max(PARALLEL_LOSS * work / max(cores, 1), longest) + FIXED_S


def cuda_build_notice(nvcc: str, archs: str, jobs: int) -> str:
    """What the CUDA build compiles, roughly how long it takes, and how to skip it."""
    minutes = max(1, round(build_estimate_s(archs, jobs) / 60))
    sms = ", ".join("sm_" + a for a in archs.split(";"))
    one = "" if ";" not in archs else "; one arch (e.g. AEF_CUDA_ARCHS=90 for H100/H200) takes about half"
    return (f"aef-kernels: compiling the CUDA kernels (attention, GroupNorm, vMF, uniformity) with {nvcc} for "
            f"{sms}: roughly {minutes} min with {jobs} parallel job{'s' if jobs != 1 else ''}{one}. "
            "AEF_SKIP_CUDA_BUILD=1 skips them (the Triton and reference backends do not need them).")


def _duration(seconds: float) -> str:
    return f"{int(seconds // 60)} min {int(seconds % 60)} s" if seconds >= 60 else f"{seconds:.0f} s"


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
        # Ninja's own default when MAX_JOBS is unset.
        jobs = int(os.environ.get("MAX_JOBS") or (os.cpu_count() or 1) + 2)
        if nvcc:
            tell(cuda_build_notice(nvcc, archs, min(jobs, os.cpu_count() or 1)))
            args += ["-DAEF_WITH_CUDA=ON", f"-DCMAKE_CUDA_COMPILER={nvcc}", f"-DAEF_CUDA_ARCHS={archs}"]
        else:
            tell(f"aef-kernels: CUDA kernels SKIPPED ({skip_reason}); building the C++-only "
                 "extension, the cuda backend will be unavailable")
            args += ["-DAEF_WITH_CUDA=OFF", f"-DAEF_CUDA_SKIP_REASON={skip_reason}"]

        build = [cmake, "--build", ".", "--config", "Release"]
        if os.environ.get("MAX_JOBS"):
            build += ["--parallel", os.environ["MAX_JOBS"]]
        start = time.monotonic()
        try:
            subprocess.run([cmake, "-S", str(ROOT), "-B", ".", *args], cwd=build_temp, check=True)
            subprocess.run(build, cwd=build_temp, check=True)
        except subprocess.CalledProcessError:
            tell(f"aef-kernels: the build of aef_kernels._C FAILED after {_duration(time.monotonic() - start)} "
                 "(the compiler's messages are in pip's output; AEF_SKIP_CUDA_BUILD=1 builds without the "
                 "CUDA kernels)")
            raise
        what = f"with the CUDA kernels for {archs.replace(';', ', ')}" if nvcc else "without CUDA"
        tell(f"aef-kernels: built aef_kernels._C {what} in {_duration(time.monotonic() - start)}; "
             "python -m aef_kernels.info (run outside the checkout) shows what it can run")

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
