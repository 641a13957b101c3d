"""Calling the extension's launchers: dtype codes, the current stream, and status codes to exceptions.

The dtype and status codes are csrc's own (csrc/common.h), exported by the extension; they are
checked at import, so an extension built from other sources than this package fails here, by name,
instead of launching kernels with the wrong dtype."""

from __future__ import annotations

import torch

from .. import _C, checks


def _exported(name: str):
    value = getattr(_C, name, None)
    if value is None:
        raise ImportError(f"aef_kernels._C ({_C.__file__}) does not export {name}: it was built from other "
                          "csrc sources than this package; rebuild it (pip install .)")
    return value


def dtype_codes(exported: dict[str, int]) -> dict[torch.dtype, int]:
    """The launchers' dtype codes by torch dtype, from the extension's {dtype name: code}. Raises
    ImportError unless they are exactly the dtypes the dispatcher sends to the kernels
    (``checks.KERNEL_DTYPES``), each with its own code."""
    codes: dict[torch.dtype, int] = {}
    for name, code in exported.items():
        dtype = getattr(torch, name, None)
        if not isinstance(dtype, torch.dtype):
            raise ImportError(f"aef_kernels._C exports dtype code {code} for {name!r}, which is not a torch dtype: "
                              "the extension does not match this package; rebuild it (pip install .)")
        codes[dtype] = code
    if set(codes) != set(checks.KERNEL_DTYPES) or len(set(codes.values())) != len(codes):
        raise ImportError(f"aef_kernels._C's dtype codes {exported} are not one code for each of "
                          f"{[str(d) for d in checks.KERNEL_DTYPES]} (the dtypes aef_kernels sends to the kernels): "
                          "the extension does not match this package; rebuild it (pip install .)")
    return codes


DTYPE_CODES = dtype_codes(_exported("dtype_codes"))
CONTEXT_FAULTED = _exported("status_codes")["context_faulted"]


class KernelLaunchError(RuntimeError):
    """A CUDA launcher returned a non-zero status (bad arguments or a CUDA error)."""


def check(kernel: str, code: int) -> None:
    """Raise naming ``kernel`` unless its launcher returned 0."""
    if code == 0:
        return
    if code == CONTEXT_FAULTED:
        raise KernelLaunchError(
            f"aef_kernels._C {kernel}: not launched: {_C.error_string(code)} (code {code}). The error is not "
            f"{kernel}'s: an earlier kernel or CUDA call failed with a sticky error (an illegal or misaligned "
            "address, a device-side assert, ...), and this process can run no more CUDA work; "
            "CUDA_LAUNCH_BLOCKING=1 reports it at the call that caused it")
    kind = "bad arguments" if code < 0 else "CUDA error"
    raise KernelLaunchError(f"aef_kernels._C {kernel}: {kind}: {_C.error_string(code)} (code {code})")


def stream_handle(device: torch.device) -> int:
    """The raw cudaStream_t of ``device``'s current stream."""
    return torch.cuda.current_stream(device).cuda_stream
