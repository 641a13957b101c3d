"""What the Triton convolutions (precision.py) and resamplings (resample.py) share: tile sizes, the
dot precision per dtype, the gathered input tile with GroupNorm applied on load, and the one split-K
weight-gradient kernel.

Both ops are GEMMs over output pixels whose input rows are gathered from an F x F window per output
pixel: a 3x3 convolution reads the pixel's neighbours (r - 1, s - 1) with zero padding (F = 3),
a space-to-depth down-sampling reads the pixels (r, s) of its F x F block (stride F; a 1x1 map is
F = 1). So their weight gradients, dW[(r, s, ci), co] = sum over output pixels m of
A[gather(m, r, s), ci] * dY[m, co], are one kernel that differs only in the gather.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import launch

# The most shared memory any configuration of the weight-gradient kernel takes per block, on
# sm_80-class and sm_90-class code (tests/aef_kernels/triton/test_aot.py fails when a compiled one
# exceeds it); the modules that launch it add it to their own bound.
SHARED_BYTES = {80: 60 * 1024, 90: 60 * 1024}


def with_weight_grad(shared_bytes: dict[int, int]) -> dict[int, int]:
    """A launching module's shared-memory bound per code family, raised to the weight gradient's."""
    return {cc: max(n, SHARED_BYTES[cc]) for cc, n in shared_bytes.items()}

# Target number of programs for the split-K weight gradient: enough to fill an H100's 132 SMs a few
# times over, few enough that the float32 partials stay small.
WGRAD_PROGRAMS = 1024


def tile_size(c: int, lo: int, hi: int) -> int:
    """Largest power of two in [lo, hi] dividing c; else the smallest power of two >= c, clamped."""
    t = hi
    while t > lo and c % t:
        t //= 2
    if c % t == 0:
        return t
    return max(lo, min(hi, triton.next_power_of_2(c)))


def dot_precision(dtype: torch.dtype) -> str:
    # float32 on tensor cores with float32 accuracy: tf32x3 splits each operand into two TF32 parts
    # and keeps three of the four products (an emulation of it stays within 1.3x of float32 FMA's
    # error at K = 144..2304, benchmarks/notes/triton_aot.md); 16-bit inputs ignore this.
    return "tf32x3" if dtype == torch.float32 else "tf32"


@triton.jit
def split_pixels(m, H, W):
    """(frame, row, column) of flat pixel indices ``m`` of (N, H, W) frames."""
    w = m % W
    t = m // W
    return t // H, t % H, w


@triton.jit
def _load_input_tile(a_ptr, mean_ptr, rstd_ptr, gamma_ptr, beta_ptr, src, n_idx, ok, cc, c_ok, CIN, G, CG,
                     NORM_IN: tl.constexpr, ONE_FRAME: tl.constexpr, dot_ty: tl.constexpr):
    """[len(src), len(cc)] input tile at pixels ``src`` (rows) and channels ``cc`` (columns).

    With NORM_IN the GroupNorm affine is applied on the fly; out-of-bounds taps are zero *after*
    normalisation, as the reference pads the normalised tensor. ONE_FRAME (H*W a multiple of the
    row block, so all rows, and all their in-bounds taps, lie in frame n_idx[0]) turns the per-element
    statistics gathers into one scale and shift per channel: one FMA per element and far fewer
    registers.
    """
    mask = ok[:, None] & c_ok[None, :]
    a = tl.load(a_ptr + src[:, None] * CIN + cc[None, :], mask=mask, other=0.0)
    if NORM_IN:
        gam = tl.load(gamma_ptr + cc, mask=c_ok, other=0.0)
        bet = tl.load(beta_ptr + cc, mask=c_ok, other=0.0)
        if ONE_FRAME:
            sidx = tl.min(n_idx, axis=0) * G + cc // CG
            # A row block past the last frame (the tail of a weight-gradient chunk) reads no statistics.
            s_ok = c_ok & ((cc * 0 + tl.max(ok.to(tl.int32), axis=0)) > 0)
            scale = tl.load(rstd_ptr + sidx, mask=s_ok, other=0.0) * gam
            shift = bet - tl.load(mean_ptr + sidx, mask=s_ok, other=0.0) * scale
            a = a.to(tl.float32) * scale[None, :] + shift[None, :]
        else:
            sidx = n_idx[:, None] * G + (cc // CG)[None, :]
            mu = tl.load(mean_ptr + sidx, mask=mask, other=0.0)
            rs = tl.load(rstd_ptr + sidx, mask=mask, other=0.0)
            a = (a.to(tl.float32) - mu) * rs * gam[None, :] + bet[None, :]
        a = tl.where(mask, a, 0.0)
    return a.to(dot_ty)


@triton.jit
def _weight_grad_kernel(a_ptr, dy_ptr, mean_ptr, rstd_ptr, gamma_ptr, beta_ptr, dw_ptr, db_ptr,
                        M, HO, WO, CIN, COUT, F, G, CG, CHUNK,
                        CONV3X3: tl.constexpr, NORM_IN: tl.constexpr, ONE_FRAME: tl.constexpr,
                        DOT_PREC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_CI: tl.constexpr,
                        BLOCK_CO: tl.constexpr, CO_ROWS: tl.constexpr):
    """Partial dw[split, (r, s, ci), co] and db[split, co] over the output pixels of chunk ``split``
    (grid axis 0); axis 1 walks window position x input-channel tiles, axis 2 output-channel tiles.
    CO_ROWS computes the tile transposed, dy^T a, with output channels on the dot's rows."""
    pid_s = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_n = tl.program_id(2)
    CIT = tl.cdiv(CIN, BLOCK_CI)
    tap = pid_k // CIT
    cc = (pid_k - tap * CIT) * BLOCK_CI + tl.arange(0, BLOCK_CI)
    c_ok = cc < CIN
    r = tap // F
    s = tap - r * F
    offs_co = pid_n * BLOCK_CO + tl.arange(0, BLOCK_CO)
    co_ok = offs_co < COUT
    # The GEMM runs in the input's dtype; the gradient may arrive in float32 (the adjoint of the
    # bilinear gather), which the bias sum keeps.
    dot_ty = a_ptr.dtype.element_ty
    if CO_ROWS:
        acc = tl.zeros((BLOCK_CO, BLOCK_CI), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_CI, BLOCK_CO), dtype=tl.float32)
    db = tl.zeros((BLOCK_CO,), dtype=tl.float32)
    loc = tl.arange(0, BLOCK_M)
    for i in range(0, CHUNK, BLOCK_M):
        if CONV3X3:
            # int32 pixel indices (the launcher refuses 2^31 pixels), int64 block base: fewer registers.
            m0 = pid_s * CHUNK + i
        else:
            m0 = pid_s.to(tl.int64) * CHUNK + i
        offs_m = m0 + loc
        m_ok = offs_m < M
        n_idx, h_idx, w_idx = split_pixels(offs_m, HO, WO)
        if CONV3X3:
            hh = h_idx + r - 1
            ww = w_idx + s - 1
            ok = m_ok & (hh >= 0) & (hh < HO) & (ww >= 0) & (ww < WO)
            a = _load_input_tile(a_ptr + m0.to(tl.int64) * CIN, mean_ptr, rstd_ptr, gamma_ptr, beta_ptr,
                                 loc + (r - 1) * WO + (s - 1), n_idx, ok, cc, c_ok, CIN, G, CG, NORM_IN, ONE_FRAME,
                                 dot_ty)
        else:
            WI = WO * F
            src = (n_idx * HO + h_idx) * F * WI + w_idx * F + r * WI + s
            a = _load_input_tile(a_ptr, mean_ptr, rstd_ptr, gamma_ptr, beta_ptr, src, n_idx, m_ok, cc, c_ok, CIN,
                                 G, CG, NORM_IN, ONE_FRAME, dot_ty)
        g = tl.load(dy_ptr + m0.to(tl.int64) * COUT + loc[:, None] * COUT + offs_co[None, :],
                    mask=m_ok[:, None] & co_ok[None, :], other=0.0)
        if dot_ty == tl.float32:
            # tf32 operands have no transposed shared-memory form, so this tile is transposed on its
            # way there: the select keeps it in registers, loaded 16 bytes a thread, where the
            # pipeliner would otherwise cp.async it straight into the transposed tile 4 bytes at a time.
            a = tl.where(c_ok[None, :], a, 0.0)
        if CO_ROWS:
            acc = tl.dot(tl.trans(g.to(dot_ty)), a, acc, input_precision=DOT_PREC)
        else:
            acc = tl.dot(tl.trans(a), g.to(dot_ty), acc, input_precision=DOT_PREC)
        db += tl.sum(g.to(tl.float32), axis=0)
    part = pid_s.to(tl.int64) * F * F * CIN * COUT
    rows = tap * CIN + cc
    if CO_ROWS:
        tl.store(dw_ptr + part + rows[None, :] * COUT + offs_co[:, None], acc, mask=c_ok[None, :] & co_ok[:, None])
    else:
        tl.store(dw_ptr + part + rows[:, None] * COUT + offs_co[None, :], acc, mask=c_ok[:, None] & co_ok[None, :])
    # Every window/channel tile sees the same dy rows; only the first writes the bias partial.
    tl.store(db_ptr + pid_s.to(tl.int64) * COUT + offs_co, db, mask=co_ok & ((offs_co * 0 + pid_k) == 0))


def wgrad_split(M: int, block_m: int, tiles: int) -> tuple[int, int]:
    """(chunks, pixels per chunk) of the split-K reduction over M pixels for ``tiles`` output tiles."""
    blocks = triton.cdiv(M, block_m)
    split = max(1, min(blocks, WGRAD_PROGRAMS // max(1, tiles)))
    chunk = triton.cdiv(blocks, split) * block_m
    return triton.cdiv(M, chunk), chunk


def weight_grad(a: torch.Tensor, dy: torch.Tensor, F: int, *, conv3x3: bool, cfg: dict, norm=None):
    """(dW as (F*F*Cin, Cout) float32 with rows (r, s, ci), db (Cout,) float32).

    ``a`` (N, Hi, Wi, Cin) is the forward's input, ``dy`` (N, HO, WO, Cout) its output gradient: Hi = HO
    for the 3x3 convolution (F = 3), Hi = F * HO for a space-to-depth GEMM. ``norm`` = (mean, rstd,
    gamma, beta, G) applies GroupNorm to ``a`` on load (3x3 only). The float32 partials of each chunk
    are summed afterwards in a fixed order: no float atomics, bitwise reproducible.
    """
    N, HO, WO, cout = dy.shape
    cin = a.shape[-1]
    M = N * HO * WO
    ci_tiles = triton.cdiv(cin, cfg["BLOCK_CI"])
    co_tiles = triton.cdiv(cout, cfg["BLOCK_CO"])
    split, chunk = wgrad_split(M, cfg["BLOCK_M"], F * F * ci_tiles * co_tiles)
    dw = torch.empty((split, F * F * cin, cout), device=a.device, dtype=torch.float32)
    db = torch.empty((split, cout), device=a.device, dtype=torch.float32)
    mean, rstd, gamma, beta, G = norm if norm is not None else (a, a, a, a, 1)
    launch(_weight_grad_kernel, (split, F * F * ci_tiles, co_tiles),
           a, dy, mean, rstd, gamma, beta, dw, db, M, HO, WO, cin, cout, F, G, cin // G, chunk,
           CONV3X3=conv3x3, NORM_IN=norm is not None,
           ONE_FRAME=norm is not None and (HO * WO) % cfg["BLOCK_M"] == 0, DOT_PREC=dot_precision(a.dtype),
           # wgmma takes 64 rows a warpgroup: an input-channel tile under 64 goes on the dot's columns.
           CO_ROWS=cfg["BLOCK_CI"] < min(64, cfg["BLOCK_CO"]), **cfg)
    return dw.sum(0), db.sum(0)
