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
memory in bytes (register spills). ``tests/aef_kernels/triton/test_aot.py`` compiles every spec for
sm_80 and sm_90 and fails when shared memory does not fit or a hot kernel spills; ``python -m
aef_kernels.triton.aot`` prints the same table.

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
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.compiler.compiler import make_backend
from triton.runtime import jit as _jit

from .common import Launch, recording

# Maximum dynamic shared memory per block (opt-in), bytes.
SHARED_LIMITS = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}
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

    @property
    def fits(self) -> bool:
        return self.shared <= self.shared_limit

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


def record(calls: list[AOTCall]) -> list[tuple[AOTCall, Launch]]:
    """Every launch of every call, in order."""
    out = []
    for call in calls:
        with recording() as launches:
            call.run()
        if not launches:
            raise RuntimeError(f"AOT call {call.name} launched no kernel")
        out += [(call, launch) for launch in launches]
    return out


def collect_specs(cc: int, modules=None, sweep: bool = False) -> list[AOTSpec]:
    """The distinct compilations of every launch of every call, for compute capability ``cc``; each
    named after the first call that launched it, hot if any hot call launched it."""
    specs: dict[tuple, dict] = {}
    for call, launch in record(collect_calls(modules, sweep)):
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


def _resource_usage(cubin: bytes, name: str) -> tuple[int, int]:
    """(registers, stack + local bytes) per thread of kernel ``name`` in ``cubin``.

    Read from the cubin because the compiled kernel's ``n_regs``/``n_spills`` are only filled in
    when it is loaded on a device. Triton kernels have no local arrays, so stack and local memory
    hold register spills (ptxas puts them in the stack frame when it calls out-of-line helpers).
    """
    tool = triton.knobs.nvidia.cuobjdump.path
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
        path = f.name
    try:
        out = subprocess.run([tool, "--dump-resource-usage", path], check=True, capture_output=True,
                             text=True).stdout
    finally:
        os.remove(path)
    match = re.search(rf"Function {re.escape(name)}:\s*\n\s*REG:(\d+)\s+STACK:(\d+)\s+SHARED:\d+\s+LOCAL:(\d+)", out)
    if match is None:
        raise RuntimeError(f"cuobjdump reported no resource usage for {name}:\n{out}")
    return int(match.group(1)), int(match.group(2)) + int(match.group(3))


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
    registers, spills = _resource_usage(compiled.asm["cubin"], compiled.metadata.name)
    return AOTResult(spec.name, spec.kernel.__module__, spec.kernel.__name__, cc, spec.num_warps, spec.num_stages, compiled.metadata.shared,
                     SHARED_LIMITS[cc], registers, spills, spec.hot, spec.uses, time.perf_counter() - start)


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
