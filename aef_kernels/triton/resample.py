"""Triton pyramid resampling: ``resample_down``, ``resample_up`` and the fused ``pyramid_exchange``.

Channels-last frames. Kernels:

- ``_exchange_kernel``: one pass that writes each output element once as the sum of up to two
  down-sampling GEMMs (kernel = stride = F, read in place as a space-to-depth view: the K loop walks
  the F*F window positions x input-channel tiles, like an implicit GEMM), up to two bilinear gathers
  of low-resolution maps (align_corners=False with PyTorch's edge clamp), the path's own input and a
  bias. With F = 1 and nothing else it is a plain 1x1 GEMM, which gives the low-resolution maps that
  up-sampling interpolates (the 1x1 map commutes with bilinear interpolation, whose weights sum to 1,
  so it runs on the f*f times smaller grid).
- ``_up_adjoint_kernel``: the adjoint of the bilinear gather, itself a gather: each low-resolution
  pixel sums the (at most 2F x 2F) high-resolution gradients that read it, so no atomics.
- ``_down_dgrad_kernel``: input gradient of a down-sampling GEMM; every input pixel belongs to exactly
  one window, so each program writes its outputs once (optionally adding a gradient already there).
- weight and bias gradients: the split-K kernel of ``gemm.py`` that the 3x3 convolutions share.
"""

from __future__ import annotations

import functools
import math
from typing import Optional

import torch
import triton
import triton.language as tl

from .. import dispatch
from ..autograd import kernel_op
from ..ops import ExchangeParams
from ..reference.resample import _cast
from .aot import AOTCall
from .common import TL_DTYPES, capability, launch, shared_memory_reasons
from . import gemm
from .gemm import dot_precision, split_pixels, weight_grad
from .weights import packed


@triton.jit
def _s2d_gemm(acc, a_ptr, w_ptr, n_idx, i_idx, j_idx, m_ok, offs_n, n_ok, HO, WO, CIN, F, COUT,
              DOT_PREC: tl.constexpr, BLOCK_K: tl.constexpr):
    """acc += space-to-depth(a)[rows] @ w, with a (N, HO*F, WO*F, CIN) and w (F*F*CIN, COUT)."""
    WI = WO * F
    row = ((n_idx * HO + i_idx) * F * WI + j_idx * F) * CIN
    offs_k = tl.arange(0, BLOCK_K)
    KT = tl.cdiv(CIN, BLOCK_K)
    for it in range(0, F * F * KT):
        ab = it // KT
        cc = (it - ab * KT) * BLOCK_K + offs_k
        c_ok = cc < CIN
        r = ab // F
        s = ab - r * F
        a = tl.load(a_ptr + row[:, None] + (r * WI + s) * CIN + cc[None, :], mask=m_ok[:, None] & c_ok[None, :],
                    other=0.0)
        b = tl.load(w_ptr + (ab * CIN + cc)[:, None] * COUT + offs_n[None, :], mask=c_ok[:, None] & n_ok[None, :],
                    other=0.0)
        acc = tl.dot(a.to(b.dtype), b, acc, input_precision=DOT_PREC)
    return acc


@triton.jit
def _source_index(i, INV_F, HU):
    """(i0, i1, lambda1) of output index i under bilinear x F, align_corners=False (PyTorch's rule)."""
    src = tl.maximum((i.to(tl.float32) + 0.5) * INV_F - 0.5, 0.0)
    i0 = src.to(tl.int32)
    i1 = tl.where(i0 < HU - 1, i0 + 1, i0)
    return i0, i1, src - i0.to(tl.float32)


@triton.jit
def _bilinear_gather(acc, u_ptr, n_idx, i_idx, j_idx, m_ok, offs_n, n_ok, HU, WU, COUT, INV_F):
    """acc + bilinear x F of u (N, HU, WU, COUT) at output pixels (n, i, j); one tap at a time, each
    folded into acc as soon as it is loaded, which keeps one tap's tile in registers."""
    y0, y1, ly = _source_index(i_idx, INV_F, HU)
    x0, x1, lx = _source_index(j_idx, INV_F, WU)
    mask = m_ok[:, None] & n_ok[None, :]
    r0 = (n_idx * HU + y0) * WU
    r1 = (n_idx * HU + y1) * WU
    col = offs_n[None, :]
    acc += ((1.0 - ly) * (1.0 - lx))[:, None] * tl.load(u_ptr + ((r0 + x0) * COUT)[:, None] + col, mask=mask,
                                                         other=0.0).to(tl.float32)
    acc += ((1.0 - ly) * lx)[:, None] * tl.load(u_ptr + ((r0 + x1) * COUT)[:, None] + col, mask=mask,
                                                 other=0.0).to(tl.float32)
    acc += (ly * (1.0 - lx))[:, None] * tl.load(u_ptr + ((r1 + x0) * COUT)[:, None] + col, mask=mask,
                                                 other=0.0).to(tl.float32)
    acc += (ly * lx)[:, None] * tl.load(u_ptr + ((r1 + x1) * COUT)[:, None] + col, mask=mask,
                                         other=0.0).to(tl.float32)
    return acc


@triton.jit
def _exchange_kernel(out_ptr, own_ptr, bias_ptr, a1_ptr, w1_ptr, a2_ptr, w2_ptr, u1_ptr, u2_ptr,
                     M, HO, WO, COUT, CIN1, F1, CIN2, F2, HU1, WU1, INV_F1, HU2, WU2, INV_F2,
                     NUM_DOWN: tl.constexpr, NUM_UP: tl.constexpr, HAS_OWN: tl.constexpr,
                     HAS_BIAS: tl.constexpr, DOT_PREC: tl.constexpr, BLOCK_M: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_K1: tl.constexpr, BLOCK_K2: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = offs_m < M
    n_idx, i_idx, j_idx = split_pixels(offs_m, HO, WO)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < COUT
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if NUM_DOWN >= 1:
        acc = _s2d_gemm(acc, a1_ptr, w1_ptr, n_idx, i_idx, j_idx, m_ok, offs_n, n_ok, HO, WO, CIN1, F1, COUT,
                        DOT_PREC, BLOCK_K1)
    if NUM_DOWN >= 2:
        acc = _s2d_gemm(acc, a2_ptr, w2_ptr, n_idx, i_idx, j_idx, m_ok, offs_n, n_ok, HO, WO, CIN2, F2, COUT,
                        DOT_PREC, BLOCK_K2)
    if NUM_UP >= 1:
        acc = _bilinear_gather(acc, u1_ptr, n_idx, i_idx, j_idx, m_ok, offs_n, n_ok, HU1, WU1, COUT, INV_F1)
    if NUM_UP >= 2:
        acc = _bilinear_gather(acc, u2_ptr, n_idx, i_idx, j_idx, m_ok, offs_n, n_ok, HU2, WU2, COUT, INV_F2)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    off = offs_m[:, None] * COUT + offs_n[None, :]
    mask = m_ok[:, None] & n_ok[None, :]
    if HAS_OWN:
        acc += tl.load(own_ptr + off, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + off, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bilinear_weight(i, j, INV_F, HU):
    """Weight with which low-resolution index j enters output index i (0 for most pairs)."""
    i0, i1, l1 = _source_index(i, INV_F, HU)
    return tl.where(i0 == j, 1.0 - l1, 0.0) + tl.where(i1 == j, l1, 0.0)


@triton.jit
def _up_adjoint_kernel(dy_ptr, du_ptr, M, HU, WU, HO, WO, C, F, INV_F,
                       BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_c = tl.program_id(1)
    offs_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = offs_m < M
    jx = offs_m % WU
    t = offs_m // WU
    jy = t % HU
    n_idx = t // HU
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = offs_c < C
    acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
    # Output rows reading low-resolution row j lie in [j*F - ceil(F/2), j*F - ceil(F/2) + 2F): those
    # whose lower source row is j or j - 1 (exact for power-of-two F, where 1/F is exact).
    lo = (F + 1) // 2
    for ty in range(0, 2 * F):
        iy = jy * F - lo + ty
        wy = tl.where((iy >= 0) & (iy < HO), _bilinear_weight(iy, jy, INV_F, HU), 0.0)
        row = (n_idx * HO + iy) * WO
        for tx in range(0, 2 * F):
            ix = jx * F - lo + tx
            wgt = tl.where((ix >= 0) & (ix < WO), _bilinear_weight(ix, jx, INV_F, WU), 0.0) * wy
            ok = m_ok & (wgt != 0.0)
            g = tl.load(dy_ptr + ((row + ix) * C)[:, None] + offs_c[None, :], mask=ok[:, None] & c_ok[None, :],
                        other=0.0)
            acc += wgt[:, None] * g.to(tl.float32)
    tl.store(du_ptr + (offs_m * C)[:, None] + offs_c[None, :], acc.to(du_ptr.dtype.element_ty),
             mask=m_ok[:, None] & c_ok[None, :])


@triton.jit
def _down_dgrad_kernel(dy_ptr, wt_ptr, prev_ptr, dx_ptr, M, HO, WO, CIN, F, COUT,
                       HAS_PREV: tl.constexpr, DOT_PREC: tl.constexpr, K_ALIGN: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """dx (N, HO*F, WO*F, CIN) [+= prev] from dy (N, HO, WO, COUT) and wt (COUT, F*F*CIN)."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = offs_m < M
    n_idx, i_idx, j_idx = split_pixels(offs_m, HO, WO)
    # wt's rows are K = F*F*Cin long; K_ALIGN (a power of two dividing K, from the launcher) lets
    # the loads of a row be vectorised where K itself is not a multiple of 16 (the projection's 28).
    K = tl.multiple_of(F * F * CIN, K_ALIGN)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < K
    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, COUT, BLOCK_K):
        kk = k0 + offs_k
        k_ok = kk < COUT
        a = tl.load(dy_ptr + (offs_m * COUT)[:, None] + kk[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(wt_ptr + kk[:, None] * K + offs_n[None, :], mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=DOT_PREC)
    WI = WO * F
    row = ((n_idx * HO + i_idx) * F * WI + j_idx * F) * CIN
    ab = offs_n // CIN
    r = ab // F
    col = (r * WI + ab - r * F) * CIN + offs_n - ab * CIN
    off = row[:, None] + col[None, :]
    mask = m_ok[:, None] & n_ok[None, :]
    if HAS_PREV:
        acc += tl.load(prev_ptr + off, mask=mask, other=0.0).to(tl.float32)
    tl.store(dx_ptr + off, acc.to(dx_ptr.dtype.element_ty), mask=mask)


# ------------------------------------------------------------------------------------------------
# Configuration: every choice is enumerated by aot_specs().

# One tile per dtype for every width: the resampling passes are as much gathers and sums as GEMMs,
# and width-specific tiles would multiply the configurations to compile ahead of time (by 4-5 per
# kernel) for little gain; 96- and 16-wide channels waste part of a masked tile. Tiles are 64 rows
# at 4 warps (one warpgroup: wgmma on sm_90), except float32 passes with bilinear gathers, whose four
# gathered taps per output in flight spill at 64 rows and take 32 (faithful AOT reports,
# benchmarks/notes/triton_aot.md; 16-bit gathers at 8 warps over 32 rows ran mma.sync).

def _gemm_config(dtype: torch.dtype, gathers: bool) -> dict:
    wide = dtype != torch.float32
    bk = 64 if wide else 32
    # float32 at 4 warps: 8 spill a few bytes on sm_90.
    return dict(BLOCK_M=64 if wide or not gathers else 32, BLOCK_N=64, BLOCK_K1=bk, BLOCK_K2=bk, num_warps=4,
                num_stages=3 if wide else 2)


def _dgrad_config(dtype: torch.dtype) -> dict:
    wide = dtype != torch.float32
    # float32 at 4 warps: at 8 the tf32x3 dots' [8, 1] warps cover the 64-row tile twice.
    return dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=64 if wide else 32, num_warps=8 if wide else 4,
                num_stages=3 if wide else 2)


def _wgrad_config(dtype: torch.dtype) -> dict:
    wide = dtype != torch.float32
    # 16-bit: two stages (three, with a float32 gradient, spill). float32: 16 rows (32 rows of an
    # unaligned 7-band input spill), three stages (two spill 8 B on sm_90) and 4 warps (8 cover the
    # 64-row dw tile twice). Faithful AOT.
    return dict(BLOCK_M=64 if wide else 16, BLOCK_CI=64 if wide else 32, BLOCK_CO=64, num_warps=8 if wide else 4,
                num_stages=2 if wide else 3)


_ADJOINT_CONFIG = dict(BLOCK_M=32, BLOCK_C=64, num_warps=8, num_stages=3)


# ------------------------------------------------------------------------------------------------
# Launchers.

def _pack_down(w: torch.Tensor) -> torch.Tensor:
    """(Cout, Cin, F, F) -> (F*F*Cin, Cout), rows ordered (window row, window col, channel)."""
    return w.permute(2, 3, 1, 0).reshape(-1, w.shape[0]).contiguous()


def _exchange(out_shape, dtype, device, *, own=None, bias=None, downs=(), ups=()):
    """One pass: out = own + sum(s2d(a) @ wmat for a, wmat, F in downs) + sum(bilinear(u, F)) + bias."""
    N, HO, WO, cout = out_shape
    out = torch.empty(out_shape, device=device, dtype=dtype)
    M = N * HO * WO
    # The GEMMs run in the weights' dtype (activations are cast on load).
    compute = downs[0][1].dtype if downs else dtype
    cfg = _gemm_config(compute, bool(ups))
    d = list(downs) + [(out, out, 1)] * (2 - len(downs))
    u = [(v, v.shape[1], v.shape[2], 1.0 / f) for v, f in ups] + [(out, 1, 1, 1.0)] * (2 - len(ups))
    grid = (triton.cdiv(M, cfg["BLOCK_M"]), triton.cdiv(cout, cfg["BLOCK_N"]))
    launch(_exchange_kernel, grid,
        out, own if own is not None else out, bias if bias is not None else out,
        d[0][0], d[0][1], d[1][0], d[1][1], u[0][0], u[1][0],
        M, HO, WO, cout, d[0][0].shape[-1], d[0][2], d[1][0].shape[-1], d[1][2],
        u[0][1], u[0][2], u[0][3], u[1][1], u[1][2], u[1][3],
        NUM_DOWN=len(downs), NUM_UP=len(ups), HAS_OWN=own is not None, HAS_BIAS=bias is not None,
        DOT_PREC=dot_precision(compute), **cfg)
    return out


def _linear_lowres(x, w, b):
    """The 1x1 map of an up-sampling, at low resolution, kept in float32 for the gather."""
    N, H, W, _ = x.shape
    return _exchange((N, H, W, w.shape[0]), torch.float32, x.device, bias=b, downs=((x, w.t().contiguous(), 1),))


def _up_adjoint(dy, lowres_hw, factor):
    N, HO, WO, C = dy.shape
    HU, WU = lowres_hw
    du = torch.empty((N, HU, WU, C), device=dy.device, dtype=torch.float32)
    M = N * HU * WU
    cfg = _ADJOINT_CONFIG
    grid = (triton.cdiv(M, cfg["BLOCK_M"]), triton.cdiv(C, cfg["BLOCK_C"]))
    launch(_up_adjoint_kernel, grid, dy, du, M, HU, WU, HO, WO, C, factor, 1.0 / factor, **cfg)
    return du


def _down_dgrad(dy, w, factor, in_shape, prev=None):
    N, HO, WO, cout = dy.shape
    cin = w.shape[1]
    K = factor * factor * cin
    dx = torch.empty(in_shape, device=dy.device, dtype=dy.dtype if prev is None else prev.dtype)
    wt = w.permute(0, 2, 3, 1).reshape(cout, K).to(dy.dtype).contiguous()
    M = N * HO * WO
    cfg = _dgrad_config(dy.dtype)
    grid = (triton.cdiv(M, cfg["BLOCK_M"]), triton.cdiv(K, cfg["BLOCK_N"]))
    launch(_down_dgrad_kernel, grid, dy, wt, prev if prev is not None else dx, dx, M, HO, WO, cin, factor, cout,
           HAS_PREV=prev is not None, DOT_PREC=dot_precision(dy.dtype), K_ALIGN=math.gcd(K, 16), **cfg)
    return dx


def _s2d_wgrad(a, dy, factor):
    """(dW as (F*F*Cin, Cout) float32, db (Cout,) float32)."""
    return weight_grad(a, dy, factor, conv3x3=False, cfg=_wgrad_config(a.dtype))


def _down_weight_grad(a, dy, factor, w):
    dw, db = _s2d_wgrad(a, dy, factor)
    cin = a.shape[-1]
    return dw.view(factor, factor, cin, -1).permute(3, 2, 0, 1).to(w.dtype), db


def _linear_weight_grad(a, du, w):
    dw, db = _s2d_wgrad(a, du, 1)
    return dw.t().to(w.dtype), db


# ------------------------------------------------------------------------------------------------
# torch.library ops (inputs contiguous, parameters already in x's dtype).

def _down_forward(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], factor: int) -> torch.Tensor:
    N, H, W, _ = x.shape
    f = factor
    return _exchange((N, H // f, W // f, weight.shape[0]), x.dtype, x.device, bias=bias,
                     downs=((x, packed(weight, _pack_down), f),))


def _down_backward(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, factor: int
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dweight, dbias)."""
    dx = _down_dgrad(dy, weight, factor, tuple(x.shape))
    dw, db = _down_weight_grad(x, dy, factor, weight)
    return dx, dw, db.to(weight.dtype)


_RESAMPLE_AUTOGRAD = dict(outputs=("y",), saved=("x", "weight", "factor"), grads=("x", "weight", "bias"))
resample_down_fwd, resample_down_bwd = kernel_op("resample_down", "triton", _down_forward, _down_backward,
                                                 **_RESAMPLE_AUTOGRAD)


def _up_forward(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], factor: int) -> torch.Tensor:
    N, H, W, _ = x.shape
    u = _linear_lowres(x, weight, bias)
    return _exchange((N, H * factor, W * factor, weight.shape[0]), x.dtype, x.device, ups=((u, factor),))


def _up_backward(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, factor: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dweight, dbias)."""
    N, H, W, cin = x.shape
    du = _up_adjoint(dy, (H, W), factor)
    dx = _exchange((N, H, W, cin), x.dtype, x.device, downs=((du, weight.contiguous(), 1),))
    dw, db = _linear_weight_grad(x, du, weight)
    return dx, dw, db.to(weight.dtype)


resample_up_fwd, resample_up_bwd = kernel_op("resample_up", "triton", _up_forward, _up_backward, **_RESAMPLE_AUTOGRAD)


def _sum_bias(*biases):
    present = [b for b in biases if b is not None]
    if not present:
        return None
    return torch.stack(present).sum(0) if len(present) > 1 else present[0]


def _exchange_forward(xs: torch.Tensor, xt: torch.Tensor, xp: torch.Tensor,
                      p_to_s_w: torch.Tensor, p_to_s_b: Optional[torch.Tensor],
                      t_to_s_w: torch.Tensor, t_to_s_b: Optional[torch.Tensor],
                      p_to_t_w: torch.Tensor, p_to_t_b: Optional[torch.Tensor],
                      s_to_t_w: torch.Tensor, s_to_t_b: Optional[torch.Tensor],
                      t_to_p_w: torch.Tensor, t_to_p_b: Optional[torch.Tensor],
                      s_to_p_w: torch.Tensor, s_to_p_b: Optional[torch.Tensor]
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ts = xt.shape[1] // xs.shape[1]
    pt = xp.shape[1] // xt.shape[1]
    dt = xs.dtype
    ys = _exchange(tuple(xs.shape), dt, xs.device, own=xs, bias=_sum_bias(p_to_s_b, t_to_s_b),
                   downs=((xp, packed(p_to_s_w, _pack_down), ts * pt),
                          (xt, packed(t_to_s_w, _pack_down), ts)))
    u_st = _linear_lowres(xs, s_to_t_w, s_to_t_b)
    yt = _exchange(tuple(xt.shape), dt, xt.device, own=xt, bias=p_to_t_b,
                   downs=((xp, packed(p_to_t_w, _pack_down), pt),), ups=((u_st, ts),))
    u_tp = _linear_lowres(xt, t_to_p_w, t_to_p_b)
    u_sp = _linear_lowres(xs, s_to_p_w, s_to_p_b)
    yp = _exchange(tuple(xp.shape), dt, xp.device, own=xp, ups=((u_tp, pt), (u_sp, ts * pt)))
    return ys, yt, yp


def _exchange_backward(dys: torch.Tensor, dyt: torch.Tensor, dyp: torch.Tensor, xs: torch.Tensor, xt: torch.Tensor,
                       xp: torch.Tensor, p_to_s_w: torch.Tensor, t_to_s_w: torch.Tensor, p_to_t_w: torch.Tensor,
                       s_to_t_w: torch.Tensor, t_to_p_w: torch.Tensor, s_to_p_w: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                  torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                  torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dxs, dxt, dxp, then (dweight, dbias) of p_to_s, t_to_s, p_to_t, s_to_t, t_to_p, s_to_p)."""
    ts = xt.shape[1] // xs.shape[1]
    pt = xp.shape[1] // xt.shape[1]
    ps = ts * pt
    du_st = _up_adjoint(dyt, xs.shape[1:3], ts)
    du_sp = _up_adjoint(dyp, xs.shape[1:3], ps)
    du_tp = _up_adjoint(dyp, xt.shape[1:3], pt)
    dt = xs.dtype
    dxs = _exchange(tuple(xs.shape), dt, xs.device, own=dys,
                    downs=((du_st, s_to_t_w.contiguous(), 1), (du_sp, s_to_p_w.contiguous(), 1)))
    dxt = _exchange(tuple(xt.shape), dt, xt.device, own=dyt, downs=((du_tp, t_to_p_w.contiguous(), 1),))
    dxt = _down_dgrad(dys, t_to_s_w, ts, tuple(xt.shape), prev=dxt)
    dxp = _down_dgrad(dys, p_to_s_w, ps, tuple(xp.shape), prev=dyp)
    dxp = _down_dgrad(dyt, p_to_t_w, pt, tuple(xp.shape), prev=dxp)
    dw_ps, db_s = _down_weight_grad(xp, dys, ps, p_to_s_w)
    dw_ts, db_ts = _down_weight_grad(xt, dys, ts, t_to_s_w)
    dw_pt, db_t = _down_weight_grad(xp, dyt, pt, p_to_t_w)
    dw_st, db_st = _linear_weight_grad(xs, du_st, s_to_t_w)
    dw_tp, db_tp = _linear_weight_grad(xt, du_tp, t_to_p_w)
    dw_sp, db_sp = _linear_weight_grad(xs, du_sp, s_to_p_w)
    return (dxs, dxt, dxp, dw_ps, db_s.to(dt), dw_ts, db_ts.to(dt), dw_pt, db_t.to(dt), dw_st, db_st.to(dt),
            dw_tp, db_tp.to(dt), dw_sp, db_sp.to(dt))


_EXCHANGE_WEIGHTS = tuple(f"{name}_w" for name in ("p_to_s", "t_to_s", "p_to_t", "s_to_t", "t_to_p", "s_to_p"))
pyramid_exchange_fwd, pyramid_exchange_bwd = kernel_op(
    "pyramid_exchange", "triton", _exchange_forward, _exchange_backward, outputs=("ys", "yt", "yp"),
    differentiable=3, saved=("xs", "xt", "xp") + _EXCHANGE_WEIGHTS,
    grads=("xs", "xt", "xp") + tuple(f"{w[:-2]}_{p}" for w in _EXCHANGE_WEIGHTS for p in ("w", "b")))


# ------------------------------------------------------------------------------------------------
# Dispatcher entry points.

def _power_of_two(f: int) -> bool:
    return f >= 1 and f & (f - 1) == 0


# The most shared memory any configuration of this module's kernels takes per block, on sm_80-class
# and sm_90-class code (tests/aef_kernels/triton/test_aot.py fails when a compiled one exceeds it).
SHARED_BYTES = {80: 48 * 1024, 90: 64 * 1024}


_SHARED_NEEDED = gemm.with_weight_grad(SHARED_BYTES)


def _shared_memory(x) -> list[str]:
    return shared_memory_reasons("resampling", _SHARED_NEEDED, x)


def _down_check(x, weight, bias, factor) -> list[str]:
    return _shared_memory(x)


def _up_check(x, weight, bias, factor) -> list[str]:
    reasons = _shared_memory(x)
    if not _power_of_two(factor):
        reasons.append(f"factor = {factor} is not a power of two (the gather needs an exact 1/factor)")
    return reasons


@dispatch.register("resample_down", "triton", capability(check=_down_check))
def resample_down(x, weight, bias, factor):
    return resample_down_fwd(x.contiguous(), weight.to(x.dtype), _cast(bias, x.dtype), factor)


@dispatch.register("resample_up", "triton", capability(check=_up_check))
def resample_up(x, weight, bias, factor):
    return resample_up_fwd(x.contiguous(), weight.to(x.dtype), _cast(bias, x.dtype), factor)


def _exchange_check(xs, xt, xp, params) -> list[str]:
    reasons = _shared_memory(xs)
    ts = xt.shape[1] // xs.shape[1]
    pt = xp.shape[1] // xt.shape[1]
    if not (_power_of_two(ts) and _power_of_two(pt)):
        reasons.append(f"resolution ratios {ts}, {pt} are not powers of two")
    return reasons


@dispatch.register("pyramid_exchange", "triton", capability(check=_exchange_check))
def pyramid_exchange(xs, xt, xp, params: ExchangeParams):
    dt = xs.dtype
    return pyramid_exchange_fwd(xs.contiguous(), xt.contiguous(), xp.contiguous(), *(_cast(p, dt) for p in params))


# ------------------------------------------------------------------------------------------------
# Ahead-of-time compilation.

def aot_calls(sweep: bool = False) -> list[AOTCall]:
    """Forward and backward of every resampling the model runs, for every dtype, at the widths of
    the presets tiny and large on a 128-pixel tile: the source projection (resample_down x2 of a
    7-band frame), the path initialisations (down x4, x8), the final fuse (up x4, x8) and the pyramid
    exchange. The sweep adds odd frame sizes and widths."""
    calls = []
    presets = [(16, 32, 64), (128, 512, 1024)]
    tiles = [(4, 128, 7, True)] + ([(3, 80, 5, False)] if sweep else [])
    # float16 compiles to the same shared memory and spills as bfloat16 (benchmarks/notes/triton_aot.md).
    dtypes = (torch.bfloat16, torch.float32) + ((torch.float16,) if sweep else ())
    for dtype, ty in ((dt, TL_DTYPES[dt]) for dt in dtypes):
        for d_p, d_t, d_s in presets + ([(24, 40, 72)] if sweep else []):
            for n, L, bands, hot in tiles:
                tag = f"{ty} {d_p}/{d_t}/{d_s} L{L}"
                calls += [AOTCall(f"project {tag}", functools.partial(_aot_down, dtype, n, L, bands, d_p, 2), hot),
                          AOTCall(f"init_t {tag}", functools.partial(_aot_down, dtype, n, L // 2, d_p, d_t, 4), hot),
                          AOTCall(f"init_s {tag}", functools.partial(_aot_down, dtype, n, L // 2, d_p, d_s, 8), hot),
                          AOTCall(f"fuse_t {tag}", functools.partial(_aot_up, dtype, n, L // 8, d_t, d_p, 4), hot),
                          AOTCall(f"fuse_s {tag}", functools.partial(_aot_up, dtype, n, L // 16, d_s, d_p, 8), hot),
                          AOTCall(f"exchange {tag}", functools.partial(_aot_exchange, dtype, n, L, d_p, d_t, d_s),
                                  hot)]
    return calls


def _meta(*shape, dtype=torch.float32):
    return torch.empty(shape, dtype=dtype, device="meta", requires_grad=True)


def _aot_down(dtype, n, size, cin, cout, factor) -> None:
    y = resample_down(_meta(n, size, size, cin, dtype=dtype), _meta(cout, cin, factor, factor), _meta(cout), factor)
    y.backward(torch.empty_like(y))


def _aot_up(dtype, n, size, cin, cout, factor) -> None:
    y = resample_up(_meta(n, size, size, cin, dtype=dtype), _meta(cout, cin), _meta(cout), factor)
    y.backward(torch.empty_like(y))


def _aot_exchange(dtype, n, L, d_p, d_t, d_s) -> None:
    xs, xt, xp = (_meta(n, L // f, L // f, c, dtype=dtype) for f, c in ((16, d_s), (8, d_t), (2, d_p)))
    params = ExchangeParams(_meta(d_s, d_p, 8, 8), _meta(d_s), _meta(d_s, d_t, 2, 2), _meta(d_s),
                            _meta(d_t, d_p, 4, 4), _meta(d_t), _meta(d_t, d_s), _meta(d_t), _meta(d_p, d_t), _meta(d_p),
                            _meta(d_p, d_s), _meta(d_p))
    ys, yt, yp = pyramid_exchange(xs, xt, xp, params)
    torch.autograd.backward((ys, yt, yp), (torch.empty_like(ys), torch.empty_like(yt), torch.empty_like(yp)))
