"""Launcher safety, on every CUDA launcher of csrc through the SIMT emulator: a data pointer that is
not aligned for the narrowest access the kernels make through it (one element; two elements for the
attention outputs written in pairs and the dO and O read in pairs; four bytes for float32 buffers) is
refused with kMisaligned before anything is launched, instead of faulting on the GPU; an earlier,
unrelated error left in CUDA's last-error slot is not reported as the launch's own; a sticky error
(a faulted context) is refused with kContextFaulted and launches nothing, and a CUDA runtime that
cannot start is reported as its own error."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

import emulator
from emulator import ops

pytestmark = pytest.mark.skipif(bool(emulator.UNAVAILABLE), reason=f"emulator: {emulator.UNAVAILABLE}")

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
# cudaError_t values (driver_types.h) left behind by an "earlier call".
CUDA_ERROR_INVALID_VALUE, CUDA_ERROR_INSUFFICIENT_DRIVER, CUDA_ERROR_ILLEGAL_ADDRESS = 1, 35, 700


@dataclass(frozen=True)
class Ptr:
    """A pointer argument to ``count`` items of its kind: "element" (the launch's dtype), "pair" (the
    dtype, accessed two elements at a time), "float" (float32 whatever the dtype), "byte" (the key
    mask) or "workspace" (float32, its 8-byte alignment a contract of its own: kBadWorkspace)."""

    name: str
    kind: str
    count: int


# Small sizes; every output is written.
ROWS, D = 4, 64  # vmf_normalize
B, M = 3, 5  # batch_uniformity, rows of D
N, HW, C, G = 2, 16, 64, 8  # group_norm
ATTN_SIZES = [1, 3, 3, 1, 2, 1, 16]  # attention (B, Tq, T, H, W, heads, d)
QKV = 1 * 3 * 1 * 2 * 1 * 16
SEQ_ROWS = QKV // 16
ATTN_STRIDES = [96, 32, 32, 16, 16]
MASK_STRIDES = [3, 1, 0, 0]  # a (B, T) mask


def _gn(name: str) -> Ptr:
    if name in ("x", "y", "dy", "dx"):
        return Ptr(name, "element", N * HW * C)
    return Ptr(name, "float", C if name in ("gamma", "beta", "dgamma", "dbeta") else N * G)


def _attn(*names: str) -> list[Ptr]:
    kinds = {"q": "element", "k": "element", "v": "element", "mask": "byte", "lse": "float", "delta": "float"}
    counts = {"mask": 3, "lse": SEQ_ROWS, "delta": SEQ_ROWS}
    return [Ptr(n, kinds.get(n, "pair"), counts.get(n, QKV)) for n in names]


# Per launcher: the emulator's entry point and a well-formed call, pointers as Ptr, "dtype" and
# "ws_size" (GroupNorm's workspace entries) filled in per call.
LAUNCHERS = {
    "vmf_normalize_fwd": ("emu_vmf_normalize_fwd",
                          [Ptr("x", "element", ROWS * D), Ptr("y", "element", ROWS * D), ROWS, D, D, D, "dtype",
                           1e-6]),
    "vmf_normalize_bwd": ("emu_vmf_normalize_bwd",
                          [Ptr("g", "element", ROWS * D), Ptr("x", "element", ROWS * D),
                           Ptr("dx", "element", ROWS * D), ROWS, D, D, D, D, "dtype", 1e-6]),
    "batch_uniformity_fwd": ("emu_batch_uniformity_fwd",
                             [Ptr("u", "element", B * M * D), Ptr("dots", "float", B * M),
                              Ptr("partials", "float", 8), Ptr("loss", "element", 1), B, M, D, M * D, D, 8, "dtype"]),
    "batch_uniformity_bwd": ("emu_batch_uniformity_bwd",
                             [Ptr("grad", "element", 1), Ptr("u", "element", B * M * D), Ptr("dots", "float", B * M),
                              Ptr("du", "element", B * M * D), B, M, D, M * D, D, "dtype"]),
    "group_norm_fwd": ("emu_group_norm_fwd",
                       [*map(_gn, ("x", "gamma", "beta", "y", "mean", "rstd")), Ptr("ws", "workspace", 0),
                        "ws_size", N, HW, C, G, "dtype", 1e-5, 1]),
    "group_norm_bwd": ("emu_group_norm_bwd",
                       [*map(_gn, ("dy", "x", "gamma", "beta", "mean", "rstd", "dx", "dgamma", "dbeta")),
                        Ptr("ws", "workspace", 0), "ws_size", N, HW, C, G, "dtype", 1]),
    "axial_attention_fwd": ("emu_attention_fwd",
                            [*_attn("q", "k", "v", "mask", "o", "lse"), ATTN_SIZES, ATTN_STRIDES, ATTN_STRIDES,
                             ATTN_STRIDES, MASK_STRIDES, 0.25, "dtype"]),
    "axial_attention_bwd": ("emu_attention_bwd",
                            [*_attn("grad", "q", "k", "v", "o", "lse", "mask", "delta", "dq", "dk", "dv"), ATTN_SIZES,
                             ATTN_STRIDES, ATTN_STRIDES, ATTN_STRIDES, MASK_STRIDES, 0.25, "dtype"]),
}
SLACK = 64  # bytes past each buffer: room for a shifted pointer's accesses


class Call:
    """One launcher's well-formed call in ``dtype``: a zeroed buffer per pointer (the mask all 1:
    every key valid), each on a 64-byte boundary; ``run(shift)`` moves the pointers named in
    ``shift`` by that many bytes."""

    def __init__(self, emu, launcher: str, dtype: torch.dtype):
        self.emu = emu
        self.fn, self.spec = LAUNCHERS[launcher]
        self.dtype = dtype
        self.elem = torch.finfo(dtype).bits // 8
        self.ws_size = emu.lib.emu_group_norm_workspace_size(N, HW, C, G)
        self.buffers = {}
        for a in self.pointers():
            count = self.ws_size if a.kind == "workspace" else a.count
            size = {"element": self.elem, "pair": self.elem, "float": 4, "byte": 1, "workspace": 4}[a.kind]
            buf = torch.full((count * size + SLACK,), 1 if a.kind == "byte" else 0, dtype=torch.uint8)
            assert buf.data_ptr() % 64 == 0
            self.buffers[a.name] = buf

    def pointers(self) -> list[Ptr]:
        return [a for a in self.spec if isinstance(a, Ptr)]

    def run(self, shift: dict[str, int] | None = None) -> int:
        shift = shift or {}
        args = []
        for a in self.spec:
            if isinstance(a, Ptr):
                args.append(self.buffers[a.name].data_ptr() + shift.get(a.name, 0))
            elif isinstance(a, list):
                args.append(ops._arr(a))
            elif a == "dtype":
                args.append(ops.dtype_code(self.emu, self.dtype))
            elif a == "ws_size":
                args.append(self.ws_size)
            else:
                args.append(a)
        return getattr(self.emu.lib, self.fn)(*args)


def _shifts(p: Ptr, elem: int) -> list[int]:
    """Byte offsets that break ``p``'s required alignment: half an element (a float32 buffer: 2
    bytes); for a pair pointer also one element, aligned for single elements but not for pairs."""
    if p.kind == "float":
        return [2]
    if p.kind == "element":
        return [elem // 2]
    if p.kind == "pair":
        return [elem // 2, elem]
    return []


@pytest.fixture
def clean(emu):
    """The emulator reset before and after: a test that leaves a sticky error behind would make
    every later launch in the process fail."""
    emu.reset(1)
    yield emu
    emu.reset(1)


@pytest.mark.parametrize("dtype", [F32, F16, BF16], ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_a_misaligned_pointer_is_refused_before_any_launch(clean, launcher, dtype):
    """With every pointer aligned the call runs (status 0, no emulator failure); with any one data
    pointer moved off its required alignment the launcher returns kMisaligned, launches nothing and
    touches nothing (on a GPU the access would fault and leave the context unusable)."""
    emu = clean
    call = Call(emu, launcher, dtype)
    status = call.run()
    assert status == 0 and not emu.failures() and emu.launches(), (status, emu.failures())
    wrong = []
    for p in call.pointers():
        for off in _shifts(p, call.elem):
            emu.reset(1)
            status = call.run({p.name: off})
            if status != emu.status_codes["misaligned"] or emu.failures() or emu.launches():
                wrong.append(f"{p.name} + {off} bytes: status {status}, launches {emu.launches()}, "
                             f"failures {emu.failures()[:1]}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_an_earlier_non_sticky_error_is_not_reported_by_the_next_launch(clean, launcher):
    """An error an earlier call left in the last-error slot (cudaErrorInvalidValue, say from a bad
    cudaMemcpy nobody checked) is cleared before the launch: the launch runs and returns 0."""
    emu = clean
    call = Call(emu, launcher, F16)
    emu.inject_error(CUDA_ERROR_INVALID_VALUE, sticky=False)
    status = call.run()
    assert status == 0 and not emu.failures() and emu.launches(), (status, emu.failures())


@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_a_sticky_error_is_refused_as_an_earlier_fault(clean, launcher):
    """In a context an earlier kernel faulted (cudaErrorIllegalAddress, sticky), the launcher returns
    kContextFaulted, not the fault's code (which would read as its own), and launches nothing."""
    emu = clean
    call = Call(emu, launcher, F16)
    emu.inject_error(CUDA_ERROR_ILLEGAL_ADDRESS, sticky=True)
    status = call.run()
    assert status == emu.status_codes["context_faulted"] and not emu.launches(), (status, emu.launches())


@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_a_runtime_that_cannot_start_is_reported_as_its_own_error(clean, launcher):
    """Without a usable driver every call reports cudaErrorInsufficientDriver, as a sticky error
    does; that is no earlier kernel's fault, so the launcher returns it as is, launching nothing."""
    emu = clean
    call = Call(emu, launcher, F16)
    emu.inject_error(CUDA_ERROR_INSUFFICIENT_DRIVER, sticky=True)
    status = call.run()
    assert status == CUDA_ERROR_INSUFFICIENT_DRIVER and not emu.launches(), (status, emu.launches())
