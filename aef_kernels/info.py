"""``python -m aef_kernels.info``: version, build, device, and which backend can run each op.

Whether a backend can run depends on the inputs, so each op is asked about the typical input of its
spec (bfloat16 on a GPU, float32 on CPU) on the device this machine would use.
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import torch

from . import __version__, dispatch
from .installation import shadowed_builds
from .ops import SPECS


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
    for spec in SPECS:
        inputs = spec.typical(device, dtype)
        try:
            chosen = dispatch.select(spec.name, inputs, "auto").backend
        except dispatch.BackendUnavailableError:
            chosen = "none"
        for backend in dispatch.BACKENDS:
            rows.append((spec.name, chosen, backend, dispatch.not_supported_reasons(spec.name, backend, inputs)))
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
