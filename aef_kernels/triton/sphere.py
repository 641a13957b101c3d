"""Triton sphere ops: vMF-mean normalisation and the batch-uniformity loss (docs/kernels.md §6.4).

Both are memory bound, so each direction is one pass over the data:

- ``vmf_normalize``: a program owns ``BLOCK_R`` whole rows (``BLOCK_D >= D``), computes their float32
  norms and writes ``x / max(|x|, eps)``. The backward re-reads x (cheaper than saving and re-reading
  y and the norms) with the incoming gradient and writes dx.
- ``batch_uniformity_loss``: rows are (b, position) pairs of u viewed as (B, M, D). A program loads
  ``BLOCK_R`` rows and their partners in sample b-1, stores the float32 dots (saved for the backward)
  and one partial sum of |dot| per program; a single-program kernel then adds the partials in a
  fixed order. No atomics, so the loss is bitwise reproducible. The backward of row b needs rows
  b-1 and b+1 and the signs of the two dots it takes part in.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from .. import dispatch
from ..autograd import kernel_op
from .aot import AOTCall
from .common import TL_DTYPES, capability, launch, shared_memory_reasons

# Rows longer than this would need a multi-pass loop over D; the model's embeddings are 64 wide.
MAX_D = 2048
MIN_BLOCK_D = 32
# Elements per program: enough loads in flight for bandwidth, few enough to stay in registers (per-row
# int64 index math costs registers too, hence the cap on rows).
TILE_ELEMENTS = 1024
MAX_BLOCK_R = 32
PARTIAL_BLOCK = 1024


def _rows_config(D: int) -> dict:
    """Constexprs and launch options of the row kernels for rows of length D; no kernel has a loop
    to pipeline, so one stage (no shared-memory buffers)."""
    block_d = max(MIN_BLOCK_D, triton.next_power_of_2(D))
    return dict(BLOCK_R=max(1, min(MAX_BLOCK_R, TILE_ELEMENTS // block_d)), BLOCK_D=block_d,
                num_warps=4 if block_d <= 1024 else 8, num_stages=3)


_PARTIALS_CONFIG = dict(BLOCK=PARTIAL_BLOCK, num_warps=4, num_stages=3)


def _rows(x: torch.Tensor) -> torch.Tensor:
    """x as (rows, D) with unit stride along D; copies only layouts that cannot be viewed so."""
    x2 = x.reshape(-1, x.shape[-1])
    return x2 if x2.stride(-1) == 1 or x2.shape[-1] == 1 else x2.contiguous()


@triton.jit
def _vmf_normalize_fwd_kernel(x_ptr, y_ptr, n_rows, D, stride_x, eps,
                              BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_D)
    mask = (rows[:, None] < n_rows) & (cols[None, :] < D)
    x = tl.load(x_ptr + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    # Correctly rounded: tl.sqrt lowers to sqrt.approx.ftz, which flushes a subnormal |x|^2 to 0
    # (then a tiny eps gives 1 / eps = inf where F.normalize gives a unit vector).
    inv = 1.0 / tl.maximum(tl.sqrt_rn(tl.sum(x * x, axis=1)), eps)
    y = x * inv[:, None]
    tl.store(y_ptr + rows[:, None] * D + cols[None, :], y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _vmf_normalize_bwd_kernel(g_ptr, x_ptr, dx_ptr, n_rows, D, stride_g, stride_x, eps,
                              BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_D)
    mask = (rows[:, None] < n_rows) & (cols[None, :] < D)
    x = tl.load(x_ptr + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + rows[:, None] * stride_g + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    norm = tl.sqrt_rn(tl.sum(x * x, axis=1))
    inv = 1.0 / tl.maximum(norm, eps)
    # Below eps the denominator is the constant eps, so the norm's own gradient drops out. In terms
    # of y = x / |x|, so that no |x|^3 underflows (nor 1 / |x|^3 overflows) for tiny x.
    y = x * inv[:, None]
    radial = tl.where(norm >= eps, tl.sum(g * y, axis=1), 0.0)
    dx = (g - y * radial[:, None]) * inv[:, None]
    tl.store(dx_ptr + rows[:, None] * D + cols[None, :], dx.to(dx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _uniformity_fwd_kernel(u_ptr, dots_ptr, partial_ptr, n_rows, B, M, D, stride_b, stride_m,
                           BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_D)
    row_ok = rows < n_rows
    mask = row_ok[:, None] & (cols[None, :] < D)
    b = rows // M
    m = rows - b * M
    prev = tl.where(b == 0, B - 1, b - 1)
    here = tl.load(u_ptr + (b * stride_b + m * stride_m)[:, None] + cols[None, :], mask=mask, other=0.0)
    there = tl.load(u_ptr + (prev * stride_b + m * stride_m)[:, None] + cols[None, :], mask=mask, other=0.0)
    dots = tl.sum(here.to(tl.float32) * there.to(tl.float32), axis=1)
    tl.store(dots_ptr + rows, dots, mask=row_ok)
    tl.store(partial_ptr + pid, tl.sum(tl.where(row_ok, tl.abs(dots), 0.0), axis=0))


@triton.jit
def _sum_partials_kernel(partial_ptr, out_ptr, n_partials, count, BLOCK: tl.constexpr):
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, n_partials, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        acc += tl.load(partial_ptr + offs, mask=offs < n_partials, other=0.0)
    tl.store(out_ptr, (tl.sum(acc, axis=0) / count).to(out_ptr.dtype.element_ty))


@triton.jit
def _uniformity_bwd_kernel(g_ptr, u_ptr, dots_ptr, du_ptr, n_rows, B, M, D, stride_b, stride_m, count,
                           BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_D)
    row_ok = rows < n_rows
    mask = row_ok[:, None] & (cols[None, :] < D)
    b = rows // M
    m = rows - b * M
    prev = tl.where(b == 0, B - 1, b - 1)
    nxt = tl.where(b == B - 1, 0, b + 1)
    # Row b appears in two terms: |u[b] . u[b-1]| (its own dot) and |u[b+1] . u[b]| (row b+1's).
    d_own = tl.load(dots_ptr + rows, mask=row_ok, other=0.0)
    d_next = tl.load(dots_ptr + nxt * M + m, mask=row_ok, other=0.0)
    g = tl.load(g_ptr).to(tl.float32) / count
    s_own = tl.where(d_own > 0, g, tl.where(d_own < 0, -g, 0.0))
    s_next = tl.where(d_next > 0, g, tl.where(d_next < 0, -g, 0.0))
    u_prev = tl.load(u_ptr + (prev * stride_b + m * stride_m)[:, None] + cols[None, :], mask=mask, other=0.0)
    u_next = tl.load(u_ptr + (nxt * stride_b + m * stride_m)[:, None] + cols[None, :], mask=mask, other=0.0)
    du = s_own[:, None] * u_prev.to(tl.float32) + s_next[:, None] * u_next.to(tl.float32)
    tl.store(du_ptr + rows[:, None] * D + cols[None, :], du.to(du_ptr.dtype.element_ty), mask=mask)


def _vmf_forward(x: torch.Tensor, eps: float) -> torch.Tensor:
    x2 = _rows(x)
    n_rows, D = x2.shape
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if n_rows:
        cfg = _rows_config(D)
        launch(_vmf_normalize_fwd_kernel, (triton.cdiv(n_rows, cfg["BLOCK_R"]),), x2, y, n_rows, D, x2.stride(0),
               eps, **cfg)
    return y


def _vmf_backward(grad: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    x2, g2 = _rows(x), _rows(grad)
    n_rows, D = x2.shape
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if n_rows:
        cfg = _rows_config(D)
        launch(_vmf_normalize_bwd_kernel, (triton.cdiv(n_rows, cfg["BLOCK_R"]),), g2, x2, dx, n_rows, D,
               g2.stride(0), x2.stride(0), eps, **cfg)
    return dx


vmf_normalize_fwd, vmf_normalize_bwd = kernel_op("vmf_normalize", "triton", _vmf_forward, _vmf_backward,
                                                   outputs=("y",), saved=("x", "eps"), grads=("x",))


def _batch_rows(u: torch.Tensor) -> torch.Tensor:
    """u (B, ..., D) as (B, M, D) with unit stride along D."""
    u3 = u.reshape(u.shape[0], -1, u.shape[-1])
    return u3 if u3.stride(-1) == 1 or u3.shape[-1] == 1 else u3.contiguous()


def _uniformity_forward(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns the loss and the float32 dots u[b] . u[b-1] per (b, position), saved for the backward."""
    u3 = _batch_rows(u)
    B, M, D = u3.shape
    n_rows = B * M
    cfg = _rows_config(D)
    n_blocks = triton.cdiv(n_rows, cfg["BLOCK_R"])
    dots = torch.empty((B, M), dtype=torch.float32, device=u.device)
    partials = torch.empty((n_blocks,), dtype=torch.float32, device=u.device)
    loss = torch.empty((), dtype=u.dtype, device=u.device)
    if n_rows:
        launch(_uniformity_fwd_kernel, (n_blocks,), u3, dots, partials, n_rows, B, M, D, u3.stride(0),
               u3.stride(1), **cfg)
    launch(_sum_partials_kernel, (1,), partials, loss, n_blocks, float(n_rows), **_PARTIALS_CONFIG)
    return loss, dots


def _uniformity_backward(grad: torch.Tensor, u: torch.Tensor, dots: torch.Tensor) -> torch.Tensor:
    u3 = _batch_rows(u)
    B, M, D = u3.shape
    n_rows = B * M
    du = torch.empty(u.shape, dtype=u.dtype, device=u.device)
    if n_rows:
        cfg = _rows_config(D)
        launch(_uniformity_bwd_kernel, (triton.cdiv(n_rows, cfg["BLOCK_R"]),), grad, u3, dots, du, n_rows, B, M, D,
               u3.stride(0), u3.stride(1), float(n_rows), **cfg)
    return du


batch_uniformity_loss_fwd, batch_uniformity_loss_bwd = kernel_op(
    "batch_uniformity_loss", "triton", _uniformity_forward, _uniformity_backward, outputs=("loss", "dots"),
    saved=("u", "dots"), grads=("u",))


# The most shared memory any configuration of this module's kernels takes per block, on sm_80-class
# and sm_90-class code (tests/aef_kernels/triton/test_aot.py fails when a compiled one exceeds it).
SHARED_BYTES = {80: 8 * 1024, 90: 8 * 1024}


def _vmf_check(x, eps) -> list[str]:
    return shared_memory_reasons("vmf_normalize", SHARED_BYTES, x)


def _uniformity_check(u) -> list[str]:
    return shared_memory_reasons("batch_uniformity_loss", SHARED_BYTES, u)


# Rows longer than MAX_D would need a multi-pass loop over D.
@dispatch.register("vmf_normalize", "triton", capability(at_most={"width": MAX_D}, check=_vmf_check))
def vmf_normalize(x, eps):
    return vmf_normalize_fwd(x, eps)


@dispatch.register("batch_uniformity_loss", "triton", capability(at_most={"width": MAX_D}, check=_uniformity_check))
def batch_uniformity_loss(u):
    return batch_uniformity_loss_fwd(u)[0]


def aot_calls(sweep: bool = False) -> list[AOTCall]:
    """Forward and backward of both ops for every dtype at the model's width (the 64-wide
    embeddings of a (B, L, L) tile, and the text adapter's (B, 64) vectors); the sweep adds every
    BLOCK_D up to MAX_D, odd widths and row-strided views."""
    calls = []
    shapes = [((2, 128, 128, 64), True), ((8, 64), True)]
    if sweep:
        shapes += [((3, 5, 7, d), False) for d in (1, 17, 100, 200, 513, 1500, 2048)]
    # float16 compiles to the same shared memory and spills as bfloat16 (benchmarks/notes/triton_aot.md).
    dtypes = (torch.bfloat16, torch.float32) + ((torch.float16,) if sweep else ())
    for dtype, ty in ((dt, TL_DTYPES[dt]) for dt in dtypes):
        for shape, hot in shapes:
            for strided in (False, True) if sweep else (False,):
                tag = f"{ty} {'x'.join(map(str, shape))}{' strided' if strided else ''}"
                calls += [AOTCall(f"vmf {tag}", functools.partial(_aot_run, vmf_normalize, dtype, shape, strided), hot),
                          AOTCall(f"uniformity {tag}",
                                  functools.partial(_aot_run, batch_uniformity_loss, dtype, shape, strided), hot)]
    return calls


def _aot_run(op, dtype, shape, strided) -> None:
    x = torch.empty(shape[:-1] + (shape[-1] + 3 * strided,), dtype=dtype, device="meta", requires_grad=True)
    x = x[..., 3 * strided:]
    y = op(x, 1e-12) if op is vmf_normalize else op(x)
    y.backward(torch.empty_like(y))
