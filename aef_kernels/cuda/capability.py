"""What the CUDA kernels of csrc/ can run, as data (docs/kernels.md §4)."""

from __future__ import annotations

from ..checks import KERNEL_DTYPES
from ..spec import Capability


def capability(check=None, **limits) -> Capability:
    """CUDA tensors of the kernel dtypes, within ``limits`` (``one_of=``/``at_most=`` of the op's
    named sizes) and the op-specific ``check``."""
    return Capability(devices=("cuda",), dtypes=KERNEL_DTYPES, check=check, **limits)
