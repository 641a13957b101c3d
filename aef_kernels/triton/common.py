"""What every Triton op shares: where its kernels can run."""

from __future__ import annotations

import os

import torch

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


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
