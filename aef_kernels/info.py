"""``python -m aef_kernels.info``: version, build, device, and which backend can run each op.

Whether a backend can run depends on the inputs, so each op is asked about one small, typical input
(bfloat16 on a GPU, float32 on CPU) on the device this machine would use.
"""

from __future__ import annotations

import argparse
import importlib.machinery
import os
import platform
import sys
from pathlib import Path

import torch

from . import __version__, dispatch
from .functional import ExchangeParams


def example_args(op: str, device: torch.device, dtype: torch.dtype) -> tuple:
    """A small, valid argument tuple for ``op``, as the dispatcher passes it to a backend."""

    def t(*shape):
        return torch.randn(*shape, device=device, dtype=dtype)

    if op == "axial_time_attention":
        q = t(2, 16, 8, 8, 8, 64)
        mask = torch.ones(2, 16, device=device, dtype=torch.bool)
        return (q, t(*q.shape), t(*q.shape), mask, 0.125)
    if op == "precision_operator":
        C = 64
        return (t(4, 16, 16, C), t(C), t(C), t(4 * C, C, 3, 3), t(4 * C), t(C, 4 * C, 3, 3), t(C), 32, 1e-5)
    if op == "group_norm_nhwc":
        return (t(4, 16, 16, 64), t(64), t(64), 32, 1e-5, "gelu")
    if op == "resample_down":
        return (t(4, 16, 16, 64), t(128, 64, 4, 4), t(128), 4)
    if op == "resample_up":
        return (t(4, 4, 4, 128), t(64, 128), t(64), 4)
    if op == "pyramid_exchange":
        ds, dt, dp = 128, 96, 64
        params = ExchangeParams(t(ds, dp, 8, 8), t(ds), t(ds, dt, 2, 2), t(ds), t(dt, dp, 4, 4), t(dt),
                                t(dt, ds), t(dt), t(dp, dt), t(dp), t(dp, ds), t(dp))
        return (t(4, 2, 2, ds), t(4, 4, 4, dt), t(4, 16, 16, dp), params)
    if op == "vmf_normalize":
        return (t(4, 32, 32, 64), 1e-12)
    if op == "batch_uniformity_loss":
        return (t(4, 32, 32, 64),)
    raise ValueError(f"unknown op {op!r}")


def shadowed_builds(path: list[str] | None = None) -> list[Path]:
    """Built extensions ``aef_kernels/_C`` of other copies of the package on ``path`` (default
    sys.path) than the one imported: an installed package hidden by the source tree that comes first
    on sys.path (the current directory, for ``python -m`` run inside the checkout)."""
    here = Path(__file__).resolve().parent
    found = []
    for entry in sys.path if path is None else path:
        spec = importlib.machinery.PathFinder.find_spec(__package__, [entry or os.getcwd()])
        if spec is None or not spec.submodule_search_locations:
            continue
        for location in spec.submodule_search_locations:
            package = Path(location).resolve()
            if package == here:
                continue
            found += [package / f"_C{suffix}" for suffix in importlib.machinery.EXTENSION_SUFFIXES
                      if (package / f"_C{suffix}").is_file()]
    return list(dict.fromkeys(found))


def build_info() -> dict:
    try:
        from . import _C
    except ImportError as exc:
        here = Path(__file__).resolve().parent
        hidden = shadowed_builds()
        if not hidden:
            return {"extension": f"not built ({exc})"}
        return {"extension": (
            f"not built in {here}, the copy of aef_kernels imported here (it comes first on sys.path, "
            f"e.g. because the current directory is the source checkout); the installed build "
            f"{hidden[0]} is shadowed by it. Run from outside the checkout (cd / && python -m "
            f"aef_kernels.info) to use the installed package, or build the extension in place: "
            f"python setup.py build_ext --inplace")}
    info = {
        "extension": "aef_kernels._C",
        "extension version": _C.__version__,
        "with CUDA": _C.with_cuda,
        "C++ compiler": _C.cxx_compiler,
    }
    if _C.with_cuda:
        info["CUDA archs"] = _C.cuda_archs
        info["nvcc"] = _C.nvcc_version
    else:
        info["CUDA skipped"] = _C.cuda_skip_reason
    return info


def backend_table(device: torch.device, dtype: torch.dtype) -> list[tuple[str, str, str, list[str]]]:
    """Rows (op, auto's choice, backend, reasons it cannot run) for every op and backend."""
    rows = []
    for op in dispatch.OPS:
        args = example_args(op, device, dtype)
        try:
            chosen = dispatch.select(op, args, "auto").backend
        except dispatch.BackendUnavailableError:
            chosen = "none"
        for backend in dispatch.BACKENDS:
            rows.append((op, chosen, backend, dispatch.not_supported_reasons(op, backend, *args)))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aef_kernels.info", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="device to ask about (default: cuda if present, else cpu)")
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32

    print(f"aef_kernels {__version__}")
    print(f"python {platform.python_version()}, torch {torch.__version__}", end="")
    try:
        import triton

        print(f", triton {triton.__version__}")
    except Exception as exc:  # a broken triton install must not hide the rest of the report
        print(f", triton not importable ({type(exc).__name__})")
    for key, value in build_info().items():
        print(f"{key}: {value}")
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        print(f"device: {props.name} (sm_{props.major}{props.minor}, {props.total_memory / 2**30:.0f} GiB)")
    else:
        print(f"device: {device} (no CUDA device in use)")
    print(f"requested backend: {dispatch.requested_backend()} (AEF_KERNELS_BACKEND / use_backend)")
    print(f"\nops, asked about a typical {str(dtype).replace('torch.', '')} input on {device}:")
    last_op = None
    for op, chosen, backend, reasons in backend_table(device, dtype):
        if op != last_op:
            print(f"\n{op}  (auto -> {chosen})")
            last_op = op
        status = "can run" if not reasons else "cannot run: " + "; ".join(reasons)
        print(f"  {backend:<10} {status}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
