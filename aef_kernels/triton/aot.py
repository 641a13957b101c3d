"""Ahead-of-time compilation of the Triton kernels for GPUs this machine may not have.

The interpreter (how CPU-only CI runs the kernels) checks arithmetic, not what only the GPU compiler
sees: ``tl.dot`` shape and dtype rules, layouts, shared-memory overflow, register pressure. So every
kernel is also compiled for each supported target with ``triton.compile`` and a ``GPUTarget``, which
needs ``ptxas`` (bundled with Triton) but no GPU.

Contract
--------
Every module listed in ``aef_kernels.triton.OP_MODULES`` exposes ``aot_specs() -> list[AOTSpec]``
naming *every* configuration its launchers or autotuners can pick (each dtype, head dim, block
config, code path, ...). A spec gives the kernel, its full signature (pointer and scalar types, and
``"constexpr"`` for compile-time arguments, in argument order), the constexpr values, ``num_warps``
and ``num_stages``. :func:`compile_spec` compiles one spec for one compute capability and reports the
shared memory the kernel needs against the target's limit, its registers per thread and its
per-thread stack + local memory in bytes (register spills). :func:`make_spec` builds a signature
from the kernel's argument names. ``tests/aef_kernels/triton/test_aot.py`` compiles all specs for sm_80 and
sm_90 and fails when shared memory does not fit; ``python -m aef_kernels.triton.aot`` prints the same
table.

Pointer arguments are compiled as 16-byte aligned, the specialisation the JIT applies to the
tensors PyTorch allocates; integer arguments stay generic (the JIT further specialises those equal
to 1 or divisible by 16, which can only simplify the code), so the numbers are an upper bound.

Under ``TRITON_INTERPRET=1`` ``@triton.jit`` (including the jitted helpers of ``triton.language``
such as ``tl.sum``) yields interpreter wrappers the compiler cannot take, so a process that runs the
interpreted tests compiles through :func:`run_isolated`: child processes without the variable (one
per target, side by side) run :func:`main` and the results come back as :class:`AOTResult`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Any

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.jit import JITFunction

# Maximum dynamic shared memory per block (opt-in), bytes.
SHARED_LIMITS = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}
TARGETS = (80, 90)


@dataclass(frozen=True)
class AOTSpec:
    """One configuration of one kernel, as a launcher may compile it."""

    name: str
    kernel: Any
    signature: dict[str, str]
    constexprs: dict[str, Any] = field(default_factory=dict)
    num_warps: int = 4
    num_stages: int = 2


def make_spec(name: str, kernel, pointers: dict[str, str], constexprs: dict[str, Any], floats=(),
              num_warps: int = 4, num_stages: int = 2) -> AOTSpec:
    """An :class:`AOTSpec` whose signature is built from the kernel's argument names: ``pointers``
    maps pointer arguments to their types (``"*fp16"``), ``floats`` names fp32 scalars, every other
    runtime argument is an i32 (the type the JIT gives an int below 2^31)."""
    signature = {}
    for arg in kernel.arg_names:
        if arg in constexprs:
            signature[arg] = "constexpr"
        elif arg in pointers:
            signature[arg] = pointers[arg]
        else:
            signature[arg] = "fp32" if arg in floats else "i32"
    missing = set(pointers) - set(signature)
    if missing:
        raise ValueError(f"{name}: {sorted(missing)} are not arguments of the kernel")
    return AOTSpec(name, kernel, signature, dict(constexprs), num_warps, num_stages)


@dataclass(frozen=True)
class AOTResult:
    name: str
    cc: int
    num_warps: int
    num_stages: int
    shared: int
    shared_limit: int
    registers: int
    spill_bytes: int

    @property
    def fits(self) -> bool:
        return self.shared <= self.shared_limit

    def row(self) -> str:
        return (f"{self.name:<60} sm_{self.cc}  warps={self.num_warps} stages={self.num_stages}  "
                f"smem={self.shared:>7} / {self.shared_limit}  regs={self.registers:>3}  "
                f"spill_bytes={self.spill_bytes}")


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
    """Compile ``spec`` for compute capability ``cc`` (e.g. 80, 90) and report its resources."""
    if not isinstance(spec.kernel, JITFunction):
        raise RuntimeError(
            f"{spec.name}: the kernel is a {type(spec.kernel).__name__}, not a JITFunction; compile in a "
            "process without TRITON_INTERPRET=1 (see run_isolated)"
        )
    fn = spec.kernel
    unknown = set(spec.constexprs) - set(spec.signature)
    if unknown:
        raise ValueError(f"{spec.name}: constexprs {sorted(unknown)} are not in the signature")
    names = fn.arg_names
    if list(spec.signature) != list(names):
        raise ValueError(f"{spec.name}: signature keys {list(spec.signature)} != kernel arguments {names}")
    aligned = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names)
               if spec.signature[n].startswith("*")}
    src = ASTSource(fn=fn, signature=dict(spec.signature), constexprs=dict(spec.constexprs), attrs=aligned)
    options = {"num_warps": spec.num_warps, "num_stages": spec.num_stages}
    compiled = triton.compile(src, target=GPUTarget("cuda", cc, 32), options=options)
    registers, spills = _resource_usage(compiled.asm["cubin"], compiled.metadata.name)
    return AOTResult(spec.name, cc, spec.num_warps, spec.num_stages, compiled.metadata.shared,
                     SHARED_LIMITS[cc], registers, spills)


def collect_specs(modules=None) -> list[AOTSpec]:
    """The specs of ``modules`` (names in ``OP_MODULES``; default all of them)."""
    import importlib

    from . import OP_MODULES

    specs: list[AOTSpec] = []
    for module in OP_MODULES if modules is None else modules:
        specs.extend(importlib.import_module(f"{__package__}.{module}").aot_specs())
    return specs


def run_isolated(targets=TARGETS, modules=None, timeout: float = 3600) -> list[AOTResult]:
    """Compile every spec for ``targets`` in child processes without the Triton interpreter, one per
    target, running side by side (compilation is single-threaded and CPU bound)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        children = []
        for cc in targets:
            out = os.path.join(tmp, f"aot_{cc}.json")
            # Not ``-m``: the package imports this module before runpy would run it as __main__.
            cmd = [sys.executable, "-c", f"import sys; from {__name__} import main; main(sys.argv[1:])",
                   "--json", out, "--cc", str(cc)] + (["--modules", *modules] if modules else [])
            children.append((out, subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                   text=True)))
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
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    results = []
    for spec in collect_specs(args.modules):
        for cc in args.cc:
            results.append(compile_spec(spec, cc))
            print(results[-1].row(), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump([asdict(r) for r in results], f)


if __name__ == "__main__":
    main()
