"""A SIMT emulator for the CUDA kernels of csrc/: the unchanged sources, rewritten only where host
C++ cannot compile them (see rewrite.py), compiled by g++ with the shim headers in include/ and
the fiber runtime in runtime.cpp, and loaded with ctypes.

Objects are cached under ``$AEF_EMULATOR_CACHE`` (default: ``aef_emulator`` in the temp dir),
keyed by the hash of everything that goes into them, so a second run links nothing it has not
already built. ``build(mutation=...)`` builds a variant with one textual change to one source file,
which is how the tests show that the harness fails on a broken kernel.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from subprocess_helpers import run

from .rewrite import rewrite

HERE = Path(__file__).resolve().parent
CSRC = HERE.parents[3] / "csrc"
KERNEL_SOURCES = ("axial_attention.cu", "axial_attention_bwd.cu", "group_norm.cu", "vmf_normalize.cu",
                  "batch_uniformity.cu")
CXX = os.environ.get("CXX", "g++")
OBJCOPY = os.environ.get("OBJCOPY", "objcopy")
# -fno-strict-aliasing: the kernels reinterpret element pointers as packs, as CUDA code does.
FLAGS = ["-std=c++17", "-O2", "-fPIC", "-fno-strict-aliasing", "-Wno-unknown-pragmas", "-w"]
# Kernel sources only: every access checked against its type's alignment (runtime.cpp reports it).
KERNEL_FLAGS = ["-fsanitize=alignment"]
# Seconds one compiler, objcopy or linker run may take before it and all it started are killed: the
# whole emulator builds in about 20 s of CPU time, so a run past this is a hung tool, not a slow one.
TOOL_TIMEOUT_S = 600

# The case set: a quick one for CI, the full one with AEF_EMULATOR_FULL=1.
FULL = os.environ.get("AEF_EMULATOR_FULL", "") not in ("", "0")
# Why the emulator cannot run here ("" where it can): its fiber switch is x86-64 assembly.
UNAVAILABLE = ("needs x86-64" if platform.machine() not in ("x86_64", "AMD64")
               else f"no C++ compiler ({CXX})" if not shutil.which(CXX)
               else f"no {OBJCOPY}" if not shutil.which(OBJCOPY) else "")
# Cases that passed, per kernel family, for the summary line (conftest.py prints it).
PASSED: Counter = Counter()
# Broken kernel variants built and how many of them failed their tests (test_emulated_harness.py).
MUTANTS: Counter = Counter()


def cache_dir() -> Path:
    return Path(os.environ.get("AEF_EMULATOR_CACHE", Path(tempfile.gettempdir()) / "aef_emulator"))


def _digest(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode() if isinstance(p, str) else p)
        h.update(b"\0")
    return h.hexdigest()[:24]


def _compiler_id() -> str:
    return run([CXX, "--version"], timeout=60, capture_output=True, text=True, check=True).stdout


def _sources(mutation: tuple[str, str, str] | None) -> dict[str, str]:
    """Every csrc file the kernels include, rewritten; ``mutation`` = (file, old, new) replaces the
    one occurrence of ``old`` in ``file`` first."""
    files = {}
    for path in sorted(CSRC.iterdir()):
        if path.suffix in (".cu", ".cuh", ".h"):
            files[path.name] = path.read_text()
    if mutation is not None:
        name, old, new = mutation
        if files[name].count(old) != 1:
            raise ValueError(f"mutation of {name}: {old!r} occurs {files[name].count(old)} times, not once")
        files[name] = files[name].replace(old, new)
    return {name: rewrite(text, f"csrc/{name}")[0] for name, text in files.items()}


def _atomic_write_dir(final: Path, fill) -> None:
    if final.exists():
        return
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=".tmp-"))
    try:
        fill(tmp)
        try:
            os.replace(tmp, final)
        except OSError:  # another process finished the same build first
            if not final.exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _compile(obj_dir: Path, sources: dict[str, str], main: str, include: list[Path]) -> None:
    def fill(tmp: Path) -> None:
        for name, text in sources.items():
            (tmp / name).write_text(text)
        extra = KERNEL_FLAGS if main.endswith(".cu") else []
        cmd = [CXX, *FLAGS, *extra, *(f"-I{p}" for p in include), f"-I{tmp}", "-x", "c++", "-c", str(tmp / main),
               "-o", str(tmp / "out.o")]
        res = run(cmd, timeout=TOOL_TIMEOUT_S, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"emulator build: {' '.join(cmd)}\n{res.stderr[-6000:]}")
        if main.endswith(".cu"):
            # The kernels' zero-initialised statics (their __shared__ arrays, and nothing else in
            # csrc) go to the section the runtime poisons before each block. A section attribute in
            # the shim cannot do it: GCC 12 ignores it on the statics of function templates.
            cmd = [OBJCOPY, "--rename-section", ".bss=aef_emu_shared", str(tmp / "out.o")]
            res = run(cmd, timeout=TOOL_TIMEOUT_S, capture_output=True, text=True)
            if res.returncode != 0:
                raise RuntimeError(f"emulator build: {' '.join(cmd)}\n{res.stderr[-6000:]}")

    _atomic_write_dir(obj_dir, fill)


def build(mutation: tuple[str, str, str] | None = None) -> Path:
    """Path of the emulator library for csrc as it is (or with ``mutation``), building what the
    cache lacks."""
    root = cache_dir()
    shim = {p.name: p.read_text() for p in sorted((HERE / "include").iterdir())}
    runtime_src = (HERE / "runtime.cpp").read_text()
    api_src = (HERE / "api.cpp").read_text()
    selftest_src = rewrite((HERE / "selftest.cu").read_text(), str(HERE / "selftest.cu"))[0]
    sources = _sources(mutation)
    headers = {n: t for n, t in sources.items() if not n.endswith(".cu")}
    base = _digest(_compiler_id(), " ".join(FLAGS), " ".join(KERNEL_FLAGS), "objcopy .bss", *(f"{n}\n{t}" for n, t in sorted(shim.items())))
    hdr = _digest(base, *(f"{n}\n{t}" for n, t in sorted(headers.items())))
    include = [HERE / "include"]
    jobs = [(root / "obj" / _digest(base, "runtime", runtime_src), {"runtime.cpp": runtime_src}, "runtime.cpp"),
            (root / "obj" / _digest(hdr, "api", api_src), {**headers, "api.cpp": api_src}, "api.cpp"),
            (root / "obj" / _digest(base, "selftest", selftest_src), {"selftest.cu": selftest_src}, "selftest.cu")]
    for name in KERNEL_SOURCES:
        jobs.append((root / "obj" / _digest(hdr, name, sources[name]), {**headers, name: sources[name]}, name))
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for f in [pool.submit(_compile, d, s, m, include) for d, s, m in jobs if not d.exists()]:
            f.result()
    objects = [d / "out.o" for d, _, _ in jobs]
    lib_dir = root / "lib" / _digest(*(str(o) for o in objects))

    def link(tmp: Path) -> None:
        cmd = [CXX, "-shared", "-o", str(tmp / "libaef_emu.so"), *map(str, objects)]
        res = run(cmd, timeout=TOOL_TIMEOUT_S, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"emulator link: {' '.join(cmd)}\n{res.stderr[-6000:]}")

    _atomic_write_dir(lib_dir, link)
    return lib_dir / "libaef_emu.so"


_P = ctypes.c_void_p
_I64 = ctypes.c_int64
_I64P = ctypes.POINTER(ctypes.c_int64)
_SIGNATURES = {
    "emu_reset": ([], None),
    "emu_inject_error": ([ctypes.c_int, ctypes.c_int], None),
    "emu_constants": ([], ctypes.c_char_p),
    "emu_set_seed": ([ctypes.c_uint64], None),
    "emu_failures": ([], ctypes.c_char_p),
    "emu_launches": ([], ctypes.c_char_p),
    "emu_mma_layout_check": ([], ctypes.c_char_p),
    "emu_convert": ([ctypes.c_int, _P, _P, _I64], None),
    "emu_selftest": ([ctypes.c_int, _P], ctypes.c_int),
    "emu_vmf_normalize_fwd": ([_P, _P, _I64, _I64, _I64, _I64, ctypes.c_int, ctypes.c_double], ctypes.c_int),
    "emu_vmf_normalize_bwd": ([_P, _P, _P, _I64, _I64, _I64, _I64, _I64, ctypes.c_int, ctypes.c_double],
                              ctypes.c_int),
    "emu_batch_uniformity_fwd": ([_P, _P, _P, _P, _I64, _I64, _I64, _I64, _I64, _I64, ctypes.c_int], ctypes.c_int),
    "emu_batch_uniformity_bwd": ([_P, _P, _P, _P, _I64, _I64, _I64, _I64, _I64, ctypes.c_int], ctypes.c_int),
    "emu_group_norm_workspace_size": ([_I64, _I64, _I64, _I64], _I64),
    "emu_group_norm_fwd": ([_P] * 7 + [_I64] * 5 + [ctypes.c_int, ctypes.c_double, ctypes.c_int], ctypes.c_int),
    "emu_group_norm_bwd": ([_P] * 10 + [_I64] * 5 + [ctypes.c_int, ctypes.c_int], ctypes.c_int),
    "emu_attention_fwd": ([_P] * 6 + [_I64P] * 5 + [ctypes.c_double, ctypes.c_int], ctypes.c_int),
    "emu_attention_bwd": ([_P] * 11 + [_I64P] * 5 + [ctypes.c_double, ctypes.c_int], ctypes.c_int),
}


class Emulator:
    """One loaded emulator library: the launchers (``lib.emu_*``), its failure and launch logs, and
    csrc's status and dtype codes by name (``status_codes``, ``dtype_codes``: csrc/common.h)."""

    def __init__(self, path: Path):
        self.path = path
        self.lib = ctypes.CDLL(str(path))
        for name, (args, res) in _SIGNATURES.items():
            fn = getattr(self.lib, name)
            fn.argtypes, fn.restype = args, res
        tables: dict[str, dict[str, int]] = {"status": {}, "dtype": {}}
        for line in self.lib.emu_constants().decode().split("\n"):
            if line:
                table, name, code = line.split(" ")
                tables[table][name] = int(code)
        self.status_codes, self.dtype_codes = tables["status"], tables["dtype"]

    def inject_error(self, err: int, sticky: bool) -> None:
        """Leave the CUDA error ``err`` behind as an earlier call would: in the last-error slot, or
        sticky (see runtime.cpp, emu_inject_error)."""
        self.lib.emu_inject_error(err, int(sticky))

    def reset(self, seed: int = 0) -> None:
        """Clear the error state and the logs; ``seed`` picks the fiber and block schedule."""
        self.lib.emu_reset()
        self.lib.emu_set_seed(seed)

    def failures(self) -> list[str]:
        return [f for f in self.lib.emu_failures().decode().split("\n") if f]

    def launches(self) -> list[tuple[int, str, str]]:
        """(count, kernel expression, launching function with its template arguments) per
        instantiation launched since the last reset."""
        out = []
        for line in self.lib.emu_launches().decode().split("\n"):
            if line:
                count, kernel, caller = line.split("\t")
                out.append((int(count), kernel, caller))
        return out


_LOADED: dict[tuple[str, str, str] | None, Emulator] = {}


def load(mutation: tuple[str, str, str] | None = None) -> Emulator:
    """The emulator for csrc (or a mutated copy), built on first use and cached per process."""
    if mutation not in _LOADED:
        _LOADED[mutation] = Emulator(build(mutation))
    return _LOADED[mutation]
