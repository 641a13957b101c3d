"""The emulated launchers over torch CPU tensors. Outputs are allocated NaN-filled with guard zones
on both sides; a launcher that writes outside its output, or leaves part of it unwritten, shows up
as changed guards or as NaN in the result."""

from __future__ import annotations

import ctypes

import torch

from . import Emulator

GUARD = 64  # elements each side; a multiple of 16 bytes for every dtype, so alignment is kept


class EmulatorFailure(AssertionError):
    """The emulator reported a failed launch, a non-zero status, or a write outside an output."""


def dtype_code(emu: Emulator, dtype: torch.dtype) -> int:
    """csrc's code of ``dtype`` (enum Dtype), as the emulated sources define it."""
    return emu.dtype_codes[str(dtype).removeprefix("torch.")]


def _ptr(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


def _arr(values) -> ctypes.Array:
    return (ctypes.c_int64 * len(values))(*values)


def _fill(dtype: torch.dtype):
    # Integer buffers (masks) are filled with 1: a mask read past its end then admits a key.
    return float("nan") if dtype.is_floating_point else 1


class Guarded:
    """A NaN-filled contiguous tensor of ``shape`` (``offset`` elements past a 16-byte boundary)
    inside a larger NaN-filled buffer."""

    def __init__(self, shape, dtype, offset: int = 0):
        n = 1
        for s in shape:
            n *= s
        self.buf = torch.full((n + 2 * GUARD + offset,), _fill(dtype), dtype=dtype)
        self.offset = GUARD + offset
        self.t = self.buf[self.offset: self.offset + n].view(shape)
        self.n = n

    def intact(self) -> bool:
        def same(x):
            return bool(torch.isnan(x).all()) if x.dtype.is_floating_point else bool((x == _fill(x.dtype)).all())

        return same(self.buf[: self.offset]) and same(self.buf[self.offset + self.n:])


def bits(t: torch.Tensor) -> torch.Tensor:
    """``t``'s bit patterns as integers, so that equality is bitwise (NaN == NaN, -0 != +0)."""
    return t.contiguous().view(torch.int16 if t.element_size() == 2 else torch.int32)


def embed(t: torch.Tensor) -> torch.Tensor:
    """``t`` (contiguous) placed inside a NaN-filled buffer: a read past either end is NaN."""
    g = Guarded(t.shape, t.dtype)
    g.t.copy_(t)
    return g.t


def run(emu: Emulator, what: str, status: int, outputs: list[Guarded]) -> None:
    """Raise unless the launch returned 0, the emulator saw no failure and every guard is intact."""
    failures = emu.failures()
    if status != 0 or failures:
        raise EmulatorFailure(f"{what}: status {status}; emulator: {failures}")
    for g in outputs:
        if not g.intact():
            raise EmulatorFailure(f"{what}: a write outside an output tensor")


def _strides5(x: torch.Tensor) -> list[int]:
    assert x.stride(5) == 1, "the head dim must be contiguous"
    return list(x.stride()[:5])


def _mask_strides(mask: torch.Tensor | None) -> list[int]:
    if mask is None:
        return [0, 0, 0, 0]
    st = list(mask.stride())
    return st + [0, 0] if mask.dim() == 2 else st


def _byte_mask(mask):
    assert mask is None or mask.dtype in (torch.bool, torch.uint8), "the kernels read the mask as bytes"
    return mask


def attention_fwd(emu: Emulator, q, k, v, mask, scale: float):
    """o (B, Tq, H, W, heads, d) and the base-2 lse (B, Tq, H, W, heads) of the CUDA forward."""
    B, Tq, H, W, NH, d = q.shape
    T = k.shape[1]
    o = Guarded((B, Tq, H, W, NH, d), q.dtype)
    lse = Guarded((B, Tq, H, W, NH), torch.float32)
    m = _byte_mask(mask)
    status = emu.lib.emu_attention_fwd(
        _ptr(q), _ptr(k), _ptr(v), _ptr(m), _ptr(o.t), _ptr(lse.t), _arr([B, Tq, T, H, W, NH, d]),
        _arr(_strides5(q)), _arr(_strides5(k)), _arr(_strides5(v)), _arr(_mask_strides(m)), scale,
        dtype_code(emu, q.dtype))
    run(emu, "axial attention forward", status, [o, lse])
    return o.t, lse.t


def attention_bwd(emu: Emulator, grad, q, k, v, o, lse, mask, scale: float):
    """dq, dk, dv of the CUDA backward (grad and o contiguous like the forward's output)."""
    B, Tq, H, W, NH, d = q.shape
    T = k.shape[1]
    delta = Guarded((B, Tq, H, W, NH), torch.float32)
    dq = Guarded(q.shape, q.dtype)
    dk = Guarded(k.shape, k.dtype)
    dv = Guarded(v.shape, v.dtype)
    m = _byte_mask(mask)
    status = emu.lib.emu_attention_bwd(
        _ptr(grad), _ptr(q), _ptr(k), _ptr(v), _ptr(o), _ptr(lse), _ptr(m), _ptr(delta.t), _ptr(dq.t), _ptr(dk.t),
        _ptr(dv.t), _arr([B, Tq, T, H, W, NH, d]), _arr(_strides5(q)), _arr(_strides5(k)), _arr(_strides5(v)),
        _arr(_mask_strides(m)), scale, dtype_code(emu, q.dtype))
    run(emu, "axial attention backward", status, [delta, dq, dk, dv])
    return dq.t, dk.t, dv.t


def vmf_fwd(emu: Emulator, x: torch.Tensor, eps: float, y_row_stride: int | None = None, y_offset: int = 0):
    """y = x / max(||x||, eps) over the rows of the 2-D (row-strided) x; y with the given row
    stride (default: contiguous) and element offset from a 16-byte boundary."""
    rows, D = x.shape
    ys = D if y_row_stride is None else y_row_stride
    y = Guarded((rows, ys), x.dtype, offset=y_offset)
    status = emu.lib.emu_vmf_normalize_fwd(_ptr(x), _ptr(y.t), rows, D, x.stride(0), ys, dtype_code(emu, x.dtype),
                                           eps)
    run(emu, "vmf_normalize forward", status, [y])
    return y.t[:, :D]


def vmf_bwd(emu: Emulator, g: torch.Tensor, x: torch.Tensor, eps: float, dx_offset: int = 0):
    rows, D = x.shape
    dx = Guarded((rows, D), x.dtype, offset=dx_offset)
    status = emu.lib.emu_vmf_normalize_bwd(_ptr(g), _ptr(x), _ptr(dx.t), rows, D, g.stride(0), x.stride(0), D,
                                           dtype_code(emu, x.dtype), eps)
    run(emu, "vmf_normalize backward", status, [dx])
    return dx.t


def uniformity_fwd(emu: Emulator, u: torch.Tensor, max_partials: int = 1024):
    """(loss, dots) of u (B, M, D) with strides (sb, sm, 1)."""
    B, M, D = u.shape
    assert u.stride(2) == 1
    dots = Guarded((B, M), torch.float32)
    partials = Guarded((max_partials,), torch.float32)
    loss = Guarded((1,), u.dtype)
    status = emu.lib.emu_batch_uniformity_fwd(_ptr(u), _ptr(dots.t), _ptr(partials.t), _ptr(loss.t), B, M, D,
                                              u.stride(0), u.stride(1), max_partials, dtype_code(emu, u.dtype))
    run(emu, "batch_uniformity forward", status, [dots, partials, loss])
    return loss.t[0], dots.t


def uniformity_bwd(emu: Emulator, grad: torch.Tensor, u: torch.Tensor, dots: torch.Tensor, du_offset: int = 0):
    B, M, D = u.shape
    du = Guarded((B, M, D), u.dtype, offset=du_offset)
    g = embed(grad.reshape(1).to(u.dtype))
    status = emu.lib.emu_batch_uniformity_bwd(_ptr(g), _ptr(u), _ptr(dots), _ptr(du.t), B, M, D, u.stride(0),
                                              u.stride(1), dtype_code(emu, u.dtype))
    run(emu, "batch_uniformity backward", status, [du])
    return du.t


def group_norm_fwd(emu: Emulator, x, gamma, beta, G: int, eps: float, gelu: bool, y_offset: int = 0):
    """y, mean, rstd of GroupNorm (+ GELU) over contiguous channels-last x (N, HW, C)."""
    N, HW, C = x.shape
    ws_size = emu.lib.emu_group_norm_workspace_size(N, HW, C, G)
    assert ws_size > 0, ws_size
    ws = Guarded((ws_size,), torch.float32)
    y = Guarded((N, HW, C), x.dtype, offset=y_offset)
    mean = Guarded((N, G), torch.float32)
    rstd = Guarded((N, G), torch.float32)
    status = emu.lib.emu_group_norm_fwd(_ptr(x), _ptr(gamma), _ptr(beta), _ptr(y.t), _ptr(mean.t), _ptr(rstd.t),
                                        _ptr(ws.t), ws_size, N, HW, C, G, dtype_code(emu, x.dtype), eps, int(gelu))
    run(emu, "group_norm forward", status, [ws, y, mean, rstd])
    return y.t, mean.t, rstd.t


def group_norm_bwd(emu: Emulator, dy, x, gamma, beta, mean, rstd, G: int, gelu: bool, dx_offset: int = 0):
    N, HW, C = x.shape
    ws_size = emu.lib.emu_group_norm_workspace_size(N, HW, C, G)
    ws = Guarded((ws_size,), torch.float32)
    dx = Guarded((N, HW, C), x.dtype, offset=dx_offset)
    dgamma = Guarded((C,), torch.float32)
    dbeta = Guarded((C,), torch.float32)
    status = emu.lib.emu_group_norm_bwd(_ptr(dy), _ptr(x), _ptr(gamma), _ptr(beta), _ptr(mean), _ptr(rstd),
                                        _ptr(dx.t), _ptr(dgamma.t), _ptr(dbeta.t), _ptr(ws.t), ws_size, N, HW, C,
                                        G, dtype_code(emu, x.dtype), int(gelu))
    run(emu, "group_norm backward", status, [ws, dx, dgamma, dbeta])
    return dx.t, dgamma.t, dbeta.t
