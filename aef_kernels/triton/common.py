"""What every Triton op shares: what its kernels can run (its capability), the Triton name of each dtype, the launch
through ``wrap_triton`` (with the launch configuration always explicit), the recording of launches
that the ahead-of-time compilation derives its specs from, and the device's shared-memory limit."""

from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import torch
from torch._subclasses.fake_tensor import is_fake
from torch.library import wrap_triton

from ..checks import KERNEL_DTYPES
from ..spec import Capability

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

# The dtypes the kernels take, by the names Triton signatures use.
TL_DTYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


@dataclass(frozen=True)
class Launch:
    """One kernel launch as a launcher issued it: the kernel, its grid, and its arguments exactly as
    passed (tensors included), so that the JIT's specialisation can be recomputed from them."""

    kernel: Any
    grid: tuple
    args: tuple
    kwargs: dict


_RECORDERS: list[tuple[list[Launch], int]] = []


@contextlib.contextmanager
def recording(family: int = 90) -> Iterator[list[Launch]]:
    """Inside the block, launches are collected into the yielded list instead of being run; the
    launchers themselves (shapes, strides, configuration) run as in a real call, so on meta tensors
    this shows what a call would launch without a GPU, on a device of code ``family`` (80 or 90,
    see code_family: where a launcher's configuration differs per target)."""
    launches: list[Launch] = []
    _RECORDERS.append((launches, family))
    try:
        yield launches
    finally:
        _RECORDERS.pop()


def target_family(t: torch.Tensor) -> int:
    """The code family (80 or 90) whose configuration a launcher picks for ``t``: the one being
    recorded, else that of ``t``'s CUDA device; 90 for CPU tensors under the interpreter."""
    if _RECORDERS:
        return _RECORDERS[-1][1]
    limit = device_shared_limit(t)
    return 90 if limit is None else code_family(limit[0])


def launch(kernel, grid, *args, num_warps: int, num_stages: int, **kwargs) -> None:
    """Launch ``kernel`` through ``wrap_triton`` so tracing and fake tensors see it.

    ``num_warps`` and ``num_stages`` are required: a launch that leaves them out gets Triton's
    defaults (4 warps, 3 stages), which is not what the ahead-of-time compilation checked. Every
    launcher takes both from its kernel's config function, the one its AOT calls go through too.

    Under the interpreter ``wrap_triton`` hands back the raw kernel, which would dereference the
    fake tensors of a fake-mode run (opcheck, meta propagation); there the output allocation alone
    is the fake implementation, so the launch is skipped.
    """
    kwargs = dict(kwargs, num_warps=num_warps, num_stages=num_stages)
    if _RECORDERS:
        _RECORDERS[-1][0].append(Launch(kernel, tuple(grid), args, kwargs))
        return
    if INTERPRET and any(is_fake(a) for a in args if isinstance(a, torch.Tensor)):
        return
    wrap_triton(kernel)[grid](*args, **kwargs)


def capability(check=None, **limits) -> Capability:
    """What a Triton implementation runs: CUDA tensors (and CPU tensors under the interpreter) of the
    kernel dtypes, within ``limits`` (``one_of=``/``at_most=`` of the op's named sizes) and the
    op-specific ``check``."""
    return Capability(devices=("cuda", "cpu") if INTERPRET else ("cuda",), dtypes=KERNEL_DTYPES, check=check,
                      device_note="CPU tensors need the Triton interpreter: set TRITON_INTERPRET=1 before import",
                      **limits)


@functools.lru_cache(maxsize=None)
def _cuda_shared_limit(index: int) -> tuple[int, int]:
    props = torch.cuda.get_device_properties(index)
    return props.major * 10 + props.minor, props.shared_memory_per_block_optin


def device_shared_limit(t: torch.Tensor) -> Optional[tuple[int, int]]:
    """(compute capability as 80/86/90..., opt-in shared memory per block in bytes) of the CUDA
    device of ``t``, read once per device; None for other devices (the interpreter has no limit)."""
    if t.device.type != "cuda":
        return None
    index = t.device.index if t.device.index is not None else torch.cuda.current_device()
    return _cuda_shared_limit(index)


def code_family(cc: int) -> int:
    """The AOT target whose generated code a device of compute capability ``cc`` runs: sm_90 for
    Hopper and the data-centre Blackwells (wgmma, TMA), sm_80 for the others (mma.sync and cp.async
    on sm_80, sm_86, sm_87, sm_89 and sm_120, with the same shared-memory buffers)."""
    return 90 if 90 <= cc < 120 else 80


def shared_memory_reasons(what: str, shared_bytes: dict[int, int], t: torch.Tensor) -> list[str]:
    """A reason when ``shared_bytes[code_family(cc)]`` (the most shared memory per block that the
    kernels of ``what`` take, from the AOT table of ``aef_kernels.triton.aot``) exceeds the opt-in
    limit of ``t``'s device, e.g. on 64 KB Turing parts; none off CUDA."""
    limit = device_shared_limit(t)
    if limit is None:
        return []
    cc, available = limit
    needed = shared_bytes[code_family(cc)]
    if needed > available:
        return [f"{what}: its Triton kernels need up to {needed} bytes of shared memory per block; this "
                f"device (sm_{cc}) allows {available}"]
    return []
