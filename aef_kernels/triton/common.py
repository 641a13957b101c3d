"""What every Triton op shares: where its kernels can run, the Triton name of each dtype, and the
launch through ``wrap_triton``."""

from __future__ import annotations

import os

import torch
from torch._subclasses.fake_tensor import is_fake
from torch.library import wrap_triton

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

# The dtypes the kernels take, by the names Triton signatures use.
TL_DTYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def launch(kernel, grid, *args, **kwargs) -> None:
    """Launch ``kernel`` through ``wrap_triton`` so tracing and fake tensors see it.

    Under the interpreter ``wrap_triton`` hands back the raw kernel, which would dereference the
    fake tensors of a fake-mode run (opcheck, meta propagation); there the output allocation alone
    is the fake implementation, so the launch is skipped.
    """
    if INTERPRET and any(is_fake(a) for a in args if isinstance(a, torch.Tensor)):
        return
    wrap_triton(kernel)[grid](*args, **kwargs)


def device_reasons(*tensors: torch.Tensor) -> list[str]:
    """Reasons the Triton kernels cannot run on the devices of ``tensors``."""
    for t in tensors:
        if t is None:
            continue
        if t.device.type == "cpu" and not INTERPRET:
            return ["CPU tensors need the Triton interpreter (set TRITON_INTERPRET=1 before import)"]
        if t.device.type not in ("cuda", "cpu"):
            return [f"device {t.device.type} is not supported (CUDA, or CPU under the interpreter)"]
    return []
