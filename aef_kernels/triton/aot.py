"""Ahead-of-time compilation of exactly what the Triton launchers launch, for GPUs this machine may
not have.

The interpreter (how CPU-only CI runs the kernels) checks arithmetic, not what only the GPU compiler
sees: ``tl.dot`` shape and dtype rules, layouts, shared-memory overflow, register pressure and
spills. So every configuration a launcher can pick is also compiled for each supported target with
``triton.compile`` and a ``GPUTarget``, which needs ``ptxas`` (bundled with Triton) but no GPU.

What is compiled is what the JIT would compile
-----------------------------------------------
A spec is not written by hand. Every module listed in ``aef_kernels.triton.OP_MODULES`` exposes
``aot_calls(sweep=False) -> list[AOTCall]``: calls of its ops (forward and backward) on meta tensors
of the model's shapes, covering both values of every runtime path flag. Running a call inside
:func:`aef_kernels.triton.common.recording` executes the real launchers (the same config functions,
argument lists, strides and ``num_warps``/``num_stages``) and collects their launches. Each launch is
then turned into a compilation by Triton's own JIT code (the binder built by
``create_function_from_signature`` and ``JITFunction._pack_args``): integers divisible by 16 get
``tt.divisibility``, integers equal to 1 become constants, pointers 16-byte aligned (the caching
allocator's blocks plus the view's storage offset) get ``tt.divisibility``, and unspecified options
take the backend's defaults. Launches that compile to the same kernel are compiled once.
``sweep=True`` adds shapes outside the model's (odd sizes, unaligned views, other widths).

:func:`compile_spec` compiles one spec for one compute capability and reports the shared memory the
kernel needs against the target's limit, its registers per thread and its per-thread stack + local
memory in bytes (register spills), and what decides its speed as the compiler wrote it (see
:class:`AOTResult`): local-memory instructions in the PTX and the SASS, which instructions carry its
matrix products (``wgmma.mma_async``, ``mma.sync`` or neither), the widest global access of every
load and store site, and the tiles over which its layouts place more warps than the tile has work
for. ``tests/aef_kernels/triton/test_aot.py`` compiles every spec for sm_80 and sm_90 and fails when
shared memory does not fit or a hot kernel spills, ``tests/aef_kernels/triton/test_perf_contract.py``
holds the hot kernels to the static performance contract; ``python -m aef_kernels.triton.aot``
prints the table.

Under ``TRITON_INTERPRET=1`` ``@triton.jit`` (including the jitted helpers of ``triton.language``
such as ``tl.sum``) yields interpreter wrappers the compiler cannot take, so a process that runs the
interpreted tests compiles through :func:`run_isolated`: child processes without the variable (each
a share of the specs of one target, side by side) run :func:`main` and the results come back as
:class:`AOTResult`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.compiler.compiler import make_backend
from triton.runtime import jit as _jit

from .common import Launch, code_family, recording

# Maximum dynamic shared memory per block (opt-in), bytes.
SHARED_LIMITS = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}
# Per SM (CUDA C Programming Guide, "Compute Capabilities", table of technical specifications):
# shared memory, resident warps and blocks; 64K 32-bit registers in four sub-partitions on all of
# them; each block also takes 1 KB of shared memory for the system.
SM_SHARED = {80: 164 * 1024, 86: 100 * 1024, 89: 100 * 1024, 90: 228 * 1024}
SM_WARPS = {80: 64, 86: 48, 89: 48, 90: 64}
SM_BLOCKS = {80: 32, 86: 16, 89: 24, 90: 32}
SM_REGISTERS, SM_PARTITIONS, REGISTER_UNIT, BLOCK_RESERVED_SHARED = 64 * 1024, 4, 256, 1024
TARGETS = (80, 90)
# The Triton versions whose JIT internals the specialisation below reuses (binder and _pack_args
# have the same shape from 3.6 to 3.9).
SUPPORTED_TRITON = ((3, 6), (3, 9))


@dataclass(frozen=True)
class AOTCall:
    """A call of an op on meta tensors: ``run()`` does what a caller would (forward, and backward
    when the op has one); ``hot`` marks the model's hot path, where spills fail the test."""

    name: str
    run: Callable[[], Any]
    hot: bool = True


@dataclass(frozen=True)
class AOTSpec:
    """One distinct compilation: what the JIT would pass to ``triton.compile`` for a launch."""

    name: str
    kernel: Any
    signature: dict
    constexprs: dict
    attrs: dict
    options: dict
    hot: bool
    uses: int = 1

    @property
    def num_warps(self) -> int:
        return self.options["num_warps"]

    @property
    def num_stages(self) -> int:
        return self.options["num_stages"]


@dataclass(frozen=True)
class Access:
    """One global load or store site of the kernel source (``line``:``column`` of ``tl.load`` or
    ``tl.store``): the pointer's name without ``_ptr``, the rank of the tensor of pointers in the
    TTGIR (0: scalar, 1: a vector, 2+: a tile) and the widest access the PTX makes for it, in bytes
    (``ld.global``/``st.global`` vector width times element size, or a ``cp.async`` copy size)."""

    operand: str
    kind: str
    line: int
    column: int
    rank: int
    bytes: int
    instruction: str


@dataclass(frozen=True)
class WarpDuplication:
    """A tile whose distributed layout places ``factor`` times more warps along some dimension
    than the tile has (each extra warp holds and computes a copy)."""

    layout: str
    shape: list
    factor: int


@dataclass(frozen=True)
class AOTResult:
    name: str
    module: str
    kernel: str
    cc: int
    num_warps: int
    num_stages: int
    shared: int
    shared_limit: int
    registers: int
    spill_bytes: int
    hot: bool
    uses: int
    seconds: float
    # The element type of the kernel's floating-point tensors: a 16-bit one if any pointer is to
    # bf16/fp16, else fp32.
    dtype: str = ""
    # ld.local/st.local in the PTX (local arrays) and LDL/STL in the SASS (also ptxas's spills).
    local_ptx: int = 0
    local_sass: int = 0
    # Element types of the operands of the TTGIR's dots, and what carries them in the PTX:
    # "wgmma", "mma" (mma.sync), "fma" (dots but no matrix instruction), "" (no dot).
    dot_types: list = field(default_factory=list)
    mma: str = ""
    accesses: list = field(default_factory=list)
    warp_duplication: list = field(default_factory=list)

    def __post_init__(self):
        # From JSON (run_isolated) the nested records arrive as dicts.
        object.__setattr__(self, "accesses", [a if isinstance(a, Access) else Access(**a) for a in self.accesses])
        object.__setattr__(self, "warp_duplication", [d if isinstance(d, WarpDuplication) else WarpDuplication(**d)
                                                      for d in self.warp_duplication])

    @property
    def fits(self) -> bool:
        return self.shared <= self.shared_limit

    @property
    def blocks_per_sm(self) -> int:
        """Resident blocks per SM that registers, shared memory, warps and the block limit allow on
        a ``cc`` device (registers are allocated per warp in units of 256, and a warp's registers
        come from one of the four sub-partitions)."""
        per_warp = -(-self.registers * 32 // REGISTER_UNIT) * REGISTER_UNIT
        by_registers = SM_PARTITIONS * (SM_REGISTERS // SM_PARTITIONS // per_warp) // self.num_warps
        by_shared = SM_SHARED[self.cc] // (self.shared + BLOCK_RESERVED_SHARED)
        return min(by_registers, by_shared, SM_WARPS[self.cc] // self.num_warps, SM_BLOCKS[self.cc])

    @property
    def warps_per_sm(self) -> int:
        return self.blocks_per_sm * self.num_warps

    def row(self) -> str:
        return (f"{self.name:<64} sm_{self.cc}  warps={self.num_warps} stages={self.num_stages}  "
                f"smem={self.shared:>7} / {self.shared_limit}  regs={self.registers:>3}  "
                f"spill_bytes={self.spill_bytes}{'  hot' if self.hot else ''}")


def _check_triton() -> None:
    version = tuple(int(p) for p in re.findall(r"\d+", triton.__version__)[:2])
    if not (SUPPORTED_TRITON[0] <= version <= SUPPORTED_TRITON[1]) or not (
            hasattr(_jit, "create_function_from_signature") and hasattr(_jit.JITFunction, "_pack_args")):
        raise RuntimeError(f"Triton {triton.__version__}: the AOT specialisation reuses the JIT's binder and "
                           f"_pack_args, checked on Triton {SUPPORTED_TRITON[0]}-{SUPPORTED_TRITON[1]}")


class _Pointer:
    """A tensor as the JIT's specialisation sees it: its dtype and its address. A meta tensor has no
    address, so the view's byte offset stands in (the CUDA caching allocator returns 512-byte
    aligned blocks, so alignment is decided by the offset alone)."""

    def __init__(self, t: torch.Tensor):
        self.dtype = t.dtype
        self._ptr = t.storage_offset() * t.element_size()

    def data_ptr(self) -> int:
        return self._ptr


def _jit_options(kernel, kwargs: dict) -> dict:
    """The keyword arguments ``JITFunction.run`` passes on, with the options it adds itself."""
    kwargs = dict(kwargs)
    knobs = triton.knobs
    kwargs["debug"] = kwargs.get("debug", kernel.debug) or knobs.runtime.debug
    for name in ("instrumentation_mode", "fpsan_homomorphic_casts"):
        if hasattr(knobs.compilation, name):
            kwargs[name] = getattr(knobs.compilation, name)
    return kwargs


def specialize(launch: Launch, cc: int) -> tuple[dict, dict, dict, Any]:
    """(signature, constexprs, attrs, options) the JIT computes for ``launch`` on a ``cc`` device."""
    _check_triton()
    kernel = launch.kernel
    backend = make_backend(GPUTarget("cuda", cc, 32))
    binder = _jit.create_function_from_signature(kernel.signature, kernel.params, backend)
    args = [_Pointer(a) if isinstance(a, torch.Tensor) else a for a in launch.args]
    kwargs = _jit_options(kernel, {k: _Pointer(v) if isinstance(v, torch.Tensor) else v
                                   for k, v in launch.kwargs.items()})
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, specialization, options)
    return signature, constexprs, attrs, options


def _key(kernel, signature, constexprs, attrs, options) -> tuple:
    return (kernel.__module__, kernel.__name__, tuple(signature.items()), repr(sorted(constexprs.items())),
            repr(sorted(attrs.items())), repr(sorted(options.__dict__.items())))


def collect_calls(modules=None, sweep: bool = False) -> list[AOTCall]:
    from . import OP_MODULES

    calls: list[AOTCall] = []
    for module in OP_MODULES if modules is None else modules:
        calls.extend(importlib.import_module(f"{__package__}.{module}").aot_calls(sweep))
    return calls


def record(calls: list[AOTCall], family: int = 90) -> list[tuple[AOTCall, Launch]]:
    """Every launch of every call, in order, as on a device of code ``family``."""
    out = []
    for call in calls:
        with recording(family) as launches:
            call.run()
        if not launches:
            raise RuntimeError(f"AOT call {call.name} launched no kernel")
        out += [(call, launch) for launch in launches]
    return out


def collect_specs(cc: int, modules=None, sweep: bool = False) -> list[AOTSpec]:
    """The distinct compilations of every launch of every call, for compute capability ``cc``; each
    named after the first call that launched it, hot if any hot call launched it."""
    specs: dict[tuple, dict] = {}
    for call, launch in record(collect_calls(modules, sweep), code_family(cc)):
        signature, constexprs, attrs, options = specialize(launch, cc)
        key = _key(launch.kernel, signature, constexprs, attrs, options)
        if key in specs:
            specs[key]["hot"] |= call.hot
            specs[key]["uses"] += 1
            continue
        name = f"{launch.kernel.__name__.strip('_').removesuffix('_kernel')}[{call.name}]"
        specs[key] = dict(name=name, kernel=launch.kernel, signature=signature, constexprs=constexprs, attrs=attrs,
                          options=options, hot=call.hot, uses=1)
    names = [s["name"] for s in specs.values()]
    for i, s in enumerate(specs.values()):
        if names.count(s["name"]) > 1:
            s["name"] += f"#{names[:i].count(s['name'])}"
    return [AOTSpec(**{**s, "options": s["options"].__dict__}) for s in specs.values()]


def _resource_usage(cubin: bytes, name: str) -> tuple[int, int, int]:
    """(registers, stack + local bytes, LDL + STL instructions) per thread of kernel ``name`` in
    ``cubin``.

    Read from the cubin because the compiled kernel's ``n_regs``/``n_spills`` are only filled in
    when it is loaded on a device. Triton kernels have no local arrays, so stack and local memory
    hold register spills (ptxas puts them in the stack frame when it calls out-of-line helpers).
    Without a stack frame or local memory there is nowhere for LDL/STL to go, so the SASS (half a
    second per kernel to dump) is read only when there is one.
    """
    tool = triton.knobs.nvidia.cuobjdump.path
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
        path = f.name
    try:
        dump = lambda *flags: subprocess.run([tool, *flags, path], check=True, capture_output=True, text=True).stdout
        out = dump("--dump-resource-usage")
        match = re.search(rf"Function {re.escape(name)}:\s*\n\s*REG:(\d+)\s+STACK:(\d+)\s+SHARED:\d+\s+LOCAL:(\d+)",
                          out)
        if match is None:
            raise RuntimeError(f"cuobjdump reported no resource usage for {name}:\n{out}")
        frame = int(match.group(2)) + int(match.group(3))
        local = len(re.findall(r"^\s*/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?(?:LDL|STL)\b", dump("--dump-sass"), re.M)) \
            if frame else 0
    finally:
        os.remove(path)
    return int(match.group(1)), frame, local


_FLOAT_POINTER = re.compile(r"\*(bf16|fp16|fp32)$")
_ELEMENT_BYTES = {"b8": 1, "u8": 1, "s8": 1, "b16": 2, "u16": 2, "s16": 2, "f16": 2, "b32": 4, "u32": 4, "s32": 4,
                  "f32": 4, "b64": 8, "u64": 8, "s64": 8, "f64": 8, "b128": 16}


def _dtype(signature: dict) -> str:
    types = {m.group(1) for t in signature.values() if (m := _FLOAT_POINTER.match(str(t)))}
    return next((t for t in ("bf16", "fp16") if t in types), "fp32")


def _mlir_site(text: str):
    m = re.match(r'"([^"]+)":(\d+):(\d+)', text)
    return None if m is None else (m.group(1), int(m.group(2)), int(m.group(3)))


def _mlir_locations(ttgir: str) -> dict:
    """``#locN`` -> (file, line, column) of the innermost call (what the PTX's ``.loc`` names)."""
    raw = dict(re.findall(r"^(#loc\d*) = loc\((.*)\)\s*$", ttgir, re.M))
    resolved: dict = {}

    def resolve(text: str):
        if (site := _mlir_site(text)) is not None:
            return site
        if (m := re.match(r"callsite\((#loc\d*) at", text)) or (m := re.match(r'"[^"]*"\((#loc\d*)\)', text)):
            return lookup(m.group(1))
        return None

    def lookup(ref: str):
        if ref not in resolved:
            resolved[ref] = None
            resolved[ref] = resolve(raw.get(ref, "unknown"))
        return resolved[ref]

    return {ref: lookup(ref) for ref in raw}


def _pointer_ranks(ttgir: str) -> dict:
    """(file, line, column) of every global load, async copy and store -> rank of its pointer tensor."""
    locations = _mlir_locations(ttgir)
    ranks: dict = {}
    for line in ttgir.splitlines():
        if not re.search(r"= tt\.load |\btt\.store |ttg\.async_copy_global_to_local ", line):
            continue
        where = re.search(r"loc\((#loc\d*|\"[^\"]+\":\d+:\d+)\)\s*$", line)
        site = None if where is None else locations.get(where.group(1)) or _mlir_site(where.group(1))
        if site is None:
            continue
        shape = re.search(r"tensor<([0-9x]+)x!tt\.ptr<", line)
        ranks[site] = max(ranks.get(site, 0), len(shape.group(1).split("x")) if shape else 0)
    return ranks


def _accesses(ptx: str, ttgir: str) -> list[Access]:
    """Every global load/store site with the widest access the PTX makes for it."""
    files = dict(re.findall(r'^\s*\.file\s+(\d+)\s+"([^"]+)"', ptx, re.M))
    ranks = _pointer_ranks(ttgir)
    sources: dict = {}
    widest: dict = {}
    loc, in_asm, asm_loc = None, False, None
    for line in ptx.splitlines():
        # LLVM numbers the lines of an inline asm block on from its call's line (one .loc per asm
        # line), so inside a block only its first .loc is the call's.
        if "// begin inline asm" in line:
            in_asm, asm_loc = True, None
        elif "// end inline asm" in line:
            in_asm = False
        if (m := re.match(r"\s*\.loc\s+(\d+)\s+(\d+)\s+(\d+)", line)) is not None:
            if not in_asm or asm_loc is None:
                loc = (files.get(m.group(1)), int(m.group(2)), int(m.group(3)))
                asm_loc = loc if in_asm else None
            continue
        if (m := re.search(r"\b(ld|st)\.global((?:\.[\w:]+)*)\s", line)) is not None:
            parts = m.group(2).split(".")
            vector = next((int(p[1:]) for p in parts if re.fullmatch(r"v\d+", p)), 1)
            width = vector * next((_ELEMENT_BYTES[p] for p in reversed(parts) if p in _ELEMENT_BYTES), 0)
            kind, instruction = ("load" if m.group(1) == "ld" else "store"), f"{m.group(1)}.global{m.group(2)}"
        elif (m := re.search(r"\bcp\.async\.\w+\.shared\.global\s+\[[^]]*\],\s*\[[^]]*\],\s*(\w+)", line)) is not None:
            width, kind, instruction = int(m.group(1), 0), "load", "cp.async"
        else:
            continue
        if loc is None or loc[0] is None:
            continue
        if widest.get(loc, (0,))[0] < width:
            widest[loc] = (width, kind, instruction)
    out = []
    for (path, line_no, column), (width, kind, instruction) in sorted(widest.items(), key=lambda i: i[0][1:]):
        if path not in sources:
            try:
                with open(path) as f:
                    sources[path] = f.read().splitlines()
            except OSError:
                sources[path] = []
        text = sources[path][line_no - 1] if line_no <= len(sources[path]) else ""
        calls = [(c.start() + 1, c.group(1)) for c in re.finditer(r"tl\.(?:load|store|atomic_\w+)\(\s*(\w+)", text)]
        name = next((n for col, n in calls if col == column), calls[0][1] if calls else f"{os.path.basename(path)}:{line_no}")
        out.append(Access(name.removesuffix("_ptr"), kind, line_no, column,
                          ranks.get((path, line_no, column), 0), width, instruction))
    return out


def _layouts(ttgir: str) -> dict:
    """Layout alias -> (kind, warps per dimension, the extent one warp covers per dimension)."""
    layouts = {}
    for alias, kind, body in re.findall(r"^(#\w+) = #ttg\.(blocked|nvidia_mma)<\{(.*)\}>\s*$", ttgir, re.M):
        fields = {k: [int(v) for v in re.findall(r"\d+", vals)]
                  for k, vals in re.findall(r"(\w+) = \[([^\]]*)\]", body)}
        warps = fields["warpsPerCTA"]
        if kind == "blocked":
            unit = [s * t for s, t in zip(fields["sizePerThread"], fields["threadsPerWarp"])]
        else:
            # One warp of an mma layout covers 16 rows and one instruction's columns (for wgmma the
            # instruction is a warpgroup's, so a warp covers 16 of its 64 rows and all its columns).
            unit = [16, fields["instrShape"][1]]
        layouts[alias] = (kind, warps, unit, f"{kind} warps={warps}")
    return layouts


def _warp_duplication(ttgir: str) -> list[WarpDuplication]:
    """Tiles (tensors of rank 2 or more, no dimension of size 1) in a blocked or mma layout with
    more warps along a dimension than the tile has extent for: each such warp duplicates another."""
    layouts = _layouts(ttgir)
    found = {}
    for shape, alias in set(re.findall(r"tensor<((?:\d+x){2,})[^,>]*, (#\w+)>", ttgir)):
        dims = [int(d) for d in shape.rstrip("x").split("x")]
        if alias not in layouts or 1 in dims or len(dims) != len(layouts[alias][1]):
            continue
        _, warps, unit, desc = layouts[alias]
        factor = 1
        for extent, w, u in zip(dims, warps, unit):
            needed = max(1, -(-extent // u))
            factor *= max(1, w // needed)
        if factor > 1:
            found[(desc, tuple(dims))] = factor
    return [WarpDuplication(desc, list(dims), f) for (desc, dims), f in sorted(found.items())]


def _dots(ttgir: str, ptx: str) -> tuple[list, str]:
    types = set()
    for line in ttgir.splitlines():
        if re.search(r"= (tt\.dot|ttng\.warp_group_dot) ", line):
            operands = line.split(" : ", 1)[1].split("->")[0]
            types |= set(re.findall(r"<(?:\d+x)+(\w+)[,>]", operands))
    if not types:
        return [], ""
    if "wgmma.mma_async" in ptx:
        return sorted(types), "wgmma"
    return sorted(types), "mma" if re.search(r"\bmma\.sync\.", ptx) else "fma"


def compile_spec(spec: AOTSpec, cc: int) -> AOTResult:
    """Compile ``spec`` (made for ``cc`` by :func:`collect_specs`) and report its resources."""
    if not isinstance(spec.kernel, _jit.JITFunction):
        raise RuntimeError(
            f"{spec.name}: the kernel is a {type(spec.kernel).__name__}, not a JITFunction; compile in a "
            "process without TRITON_INTERPRET=1 (see run_isolated)"
        )
    start = time.perf_counter()
    src = ASTSource(spec.kernel, spec.signature, spec.constexprs, spec.attrs)
    compiled = triton.compile(src, target=GPUTarget("cuda", cc, 32), options=dict(spec.options))
    registers, spills, local_sass = _resource_usage(compiled.asm["cubin"], compiled.metadata.name)
    ptx, ttgir = compiled.asm["ptx"], compiled.asm["ttgir"]
    dot_types, mma = _dots(ttgir, ptx)
    return AOTResult(spec.name, spec.kernel.__module__, spec.kernel.__name__, cc, spec.num_warps, spec.num_stages,
                     compiled.metadata.shared, SHARED_LIMITS[cc], registers, spills, spec.hot, spec.uses,
                     time.perf_counter() - start, dtype=_dtype(spec.signature),
                     local_ptx=len(re.findall(r"\b(?:ld|st)\.local\b", ptx)), local_sass=local_sass,
                     dot_types=dot_types, mma=mma, accesses=_accesses(ptx, ttgir),
                     warp_duplication=_warp_duplication(ttgir))


def run_isolated(targets=TARGETS, modules=None, sweep: bool = False, jobs: int | None = None,
                 timeout: float = 3600) -> list[AOTResult]:
    """Compile every spec for ``targets`` in child processes without the Triton interpreter: ``jobs``
    of them (default: one per CPU, at least one per target) side by side, each taking every n-th
    spec of its target (compilation is single-threaded and CPU bound)."""
    jobs = max(len(targets), jobs or os.cpu_count() or 1)
    per_target = [jobs // len(targets) + (i < jobs % len(targets)) for i in range(len(targets))]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        children = []
        for cc, shards in zip(targets, per_target):
            for shard in range(shards):
                out = os.path.join(tmp, f"aot_{cc}_{shard}.json")
                # Not ``-m``: the package imports this module before runpy would run it as __main__.
                cmd = [sys.executable, "-c", f"import sys; from {__name__} import main; main(sys.argv[1:])",
                       "--json", out, "--cc", str(cc), "--shard", str(shard), str(shards), "--quiet"]
                cmd += (["--modules", *modules] if modules else []) + (["--sweep"] if sweep else [])
                children.append((out, subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                                                       stderr=subprocess.STDOUT, text=True)))
        for out, child in children:
            log, _ = child.communicate(timeout=timeout)
            if child.returncode:
                raise RuntimeError(f"AOT compilation failed (exit {child.returncode}):\n{log}")
            with open(out) as f:
                results += [AOTResult(**r) for r in json.load(f)]
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cc", type=int, nargs="+", default=list(TARGETS))
    parser.add_argument("--modules", nargs="+", help="op modules to compile (default: all of OP_MODULES)")
    parser.add_argument("--sweep", action="store_true", help="also shapes outside the model's")
    parser.add_argument("--shard", type=int, nargs=2, default=(0, 1), metavar=("INDEX", "COUNT"),
                        help="compile only every COUNT-th spec, starting at INDEX")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--quiet", action="store_true", help="print nothing")
    args = parser.parse_args(argv)
    index, count = args.shard
    results = []
    for cc in args.cc:
        for spec in collect_specs(cc, args.modules, args.sweep)[index::count]:
            results.append(compile_spec(spec, cc))
            if not args.quiet:
                print(results[-1].row(), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump([asdict(r) for r in results], f)


if __name__ == "__main__":
    main()
