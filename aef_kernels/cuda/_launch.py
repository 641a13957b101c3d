"""Calling the extension's launchers: dtype codes, the current stream, and status codes to exceptions."""

from __future__ import annotations

import torch

from .. import _C

# Must match csrc/common.h (enum Dtype).
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


class KernelLaunchError(RuntimeError):
    """A CUDA launcher returned a non-zero status (bad arguments or a CUDA error)."""


def check(kernel: str, code: int) -> None:
    """Raise naming ``kernel`` unless its launcher returned 0."""
    if code != 0:
        kind = "bad arguments" if code < 0 else "CUDA error"
        raise KernelLaunchError(f"aef_kernels._C {kernel}: {kind}: {_C.error_string(code)} (code {code})")


def stream_handle(device: torch.device) -> int:
    """The raw cudaStream_t of ``device``'s current stream."""
    return torch.cuda.current_stream(device).cuda_stream
