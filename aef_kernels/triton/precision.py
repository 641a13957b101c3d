"""Triton precision operator ``x + conv3x3(GELU(conv3x3(GroupNorm(x))))`` and ``group_norm_nhwc``.

Channels-last frames (N, H, W, C); M = N*H*W pixels. Kernels:

- ``_gn_stats_kernel``: one program per (frame, group), a chunked Welford merge in float32 giving
  mean and rstd (N, G); with APPLY it also writes the normalised (optionally GELU'd) output, which
  is the whole ``group_norm_nhwc`` forward.
- ``_conv3x3_kernel``: implicit-GEMM 3x3 conv, pad 1. Rows are output pixels (grid axis 0; int32
  pixel indices, int64 block base offsets), columns output channels, and the K loop walks the 9
  taps x input-channel tiles as one flat loop so the pipeliner sees 9*Cin/BLOCK_K iterations. Optional fused prologue (GroupNorm
  affine while loading, zero padding applied after it) and epilogues (bias, GELU, GELU-backward,
  residual). It serves conv1 and conv2 forward and both data gradients (a 3x3 conv with the
  kernel flipped and in/out channels swapped).
- weight (and bias) gradients: the split-K kernel of ``gemm.py`` that the resamplings share.
- ``_gn_bwd_kernel``: one program per (frame, group): reduces sum(g) and sum(g*xhat) over the group,
  then writes dx (plus an optional residual gradient); per-frame partial dgamma/dbeta.

Forward of the operator stores the GELU output h (conv2's operand, written once) and, only when a
gradient is needed, conv1's pre-activation z1 from the same epilogue: the backward needs GELU'(z1)
and h, and re-running conv1 would cost 2-3x the time of writing and reading z1 back
(benchmarks/notes/precision_operator.md).
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
from . import gemm
from .gemm import _load_input_tile, dot_precision, split_pixels, tile_size, weight_grad

_INV_SQRT2 = tl.constexpr(0.7071067811865476)
_INV_SQRT_2PI = tl.constexpr(0.3989422804014327)

# Epilogue modes of _conv3x3_kernel.
EPI_NONE, EPI_GELU, EPI_GELU_GRAD = 0, 1, 2



@triton.jit
def _gelu(z):
    return 0.5 * z * (1.0 + tl.math.erf(z * _INV_SQRT2))


@triton.jit
def _gelu_grad(z):
    cdf = 0.5 * (1.0 + tl.math.erf(z * _INV_SQRT2))
    return cdf + z * tl.exp(-0.5 * z * z) * _INV_SQRT_2PI


@triton.jit
def _inv_count(HW, CG):
    """1 / (HW * CG) in float32, the product taken in int64: one group of a large frame holds 2^31
    elements or more, where an int32 product wraps."""
    return 1.0 / ((HW + tl.zeros([], tl.int64)) * CG).to(tl.float32)


@triton.jit
def _gn_stats_kernel(x_ptr, gamma_ptr, beta_ptr, mean_ptr, rstd_ptr, y_ptr, HW, C, CG, G, eps,
                     APPLY: tl.constexpr, GELU: tl.constexpr,
                     BLOCK_P: tl.constexpr, BLOCK_CG: tl.constexpr):
    pid = tl.program_id(0)
    n = pid // G
    g = pid % G
    base = n.to(tl.int64) * HW * C + g * CG
    offs_c = tl.arange(0, BLOCK_CG)
    c_ok = offs_c < CG
    count = 0.0
    mean = 0.0
    m2 = 0.0
    # Chan's parallel merge of per-chunk (count, mean, M2): stable where E[x^2] - E[x]^2 is not.
    for p0 in range(0, HW, BLOCK_P):
        offs_p = p0 + tl.arange(0, BLOCK_P)
        mask = (offs_p < HW)[:, None] & c_ok[None, :]
        v = tl.load(x_ptr + base + offs_p[:, None].to(tl.int64) * C + offs_c[None, :], mask=mask,
                    other=0.0).to(tl.float32)
        cnt = (tl.minimum(HW - p0, BLOCK_P) * CG).to(tl.float32)
        cmean = tl.sum(tl.sum(v, axis=1), axis=0) / cnt
        d = tl.where(mask, v - cmean, 0.0)
        cm2 = tl.sum(tl.sum(d * d, axis=1), axis=0)
        tot = count + cnt
        delta = cmean - mean
        mean += delta * (cnt / tot)
        m2 += cm2 + delta * delta * (count * cnt / tot)
        count = tot
    rstd = 1.0 / tl.sqrt(m2 / count + eps)
    tl.store(mean_ptr + pid, mean)
    tl.store(rstd_ptr + pid, rstd)
    if APPLY:
        gam = tl.load(gamma_ptr + g * CG + offs_c, mask=c_ok, other=0.0).to(tl.float32)
        bet = tl.load(beta_ptr + g * CG + offs_c, mask=c_ok, other=0.0).to(tl.float32)
        for p0 in range(0, HW, BLOCK_P):
            offs_p = p0 + tl.arange(0, BLOCK_P)
            mask = (offs_p < HW)[:, None] & c_ok[None, :]
            off = base + offs_p[:, None].to(tl.int64) * C + offs_c[None, :]
            v = tl.load(x_ptr + off, mask=mask, other=0.0).to(tl.float32)
            y = (v - mean) * rstd * gam[None, :] + bet[None, :]
            if GELU:
                y = _gelu(y)
            tl.store(y_ptr + off, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _conv3x3_kernel(a_ptr, w_ptr, bias_ptr, mean_ptr, rstd_ptr, gamma_ptr, beta_ptr, z_ptr, res_ptr,
                    out_ptr, pre_ptr, M, H, W, CIN, COUT, G, CG,
                    NORM_IN: tl.constexpr, ONE_FRAME: tl.constexpr, HAS_BIAS: tl.constexpr, EPILOGUE: tl.constexpr,
                    STORE_PRE: tl.constexpr, HAS_RES: tl.constexpr, DOT_PREC: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    # Pixel indices fit in int32 (M < 2^31, checked by the dispatcher); element offsets may not, so
    # each block's base pointers are formed in int64 once and the per-element offsets stay int32,
    # which keeps the [BLOCK_M, BLOCK_K] address math (the register-heaviest part) 32-bit.
    m0 = pid_m * BLOCK_M
    loc = tl.arange(0, BLOCK_M)
    offs_m = m0 + loc
    m_ok = offs_m < M
    n_idx, h_idx, w_idx = split_pixels(offs_m, H, W)
    a_blk = a_ptr + m0.to(tl.int64) * CIN
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < COUT
    offs_k = tl.arange(0, BLOCK_K)
    dot_ty = w_ptr.dtype.element_ty
    KT = tl.cdiv(CIN, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for it in range(0, 9 * KT):
        tap = it // KT
        cc = (it - tap * KT) * BLOCK_K + offs_k
        c_ok = cc < CIN
        dy = tap // 3 - 1
        dx = tap % 3 - 1
        hh = h_idx + dy
        ww = w_idx + dx
        ok = m_ok & (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
        a = _load_input_tile(a_blk, mean_ptr, rstd_ptr, gamma_ptr, beta_ptr, loc + dy * W + dx, n_idx,
                             ok, cc, c_ok, CIN, G, CG, NORM_IN, ONE_FRAME, dot_ty)
        b = tl.load(w_ptr + (tap * CIN + cc)[:, None] * COUT + offs_n[None, :],
                    mask=c_ok[:, None] & n_ok[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=DOT_PREC)
    blk = m0.to(tl.int64) * COUT
    off = loc[:, None] * COUT + offs_n[None, :]
    mask = m_ok[:, None] & n_ok[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    if EPILOGUE == 1:
        if STORE_PRE:
            tl.store(pre_ptr + blk + off, acc.to(pre_ptr.dtype.element_ty), mask=mask)
        acc = _gelu(acc)
    if EPILOGUE == 2:
        acc *= _gelu_grad(tl.load(z_ptr + blk + off, mask=mask, other=0.0).to(tl.float32))
    if HAS_RES:
        acc += tl.load(res_ptr + blk + off, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + blk + off, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _gn_bwd_kernel(dn_ptr, x_ptr, mean_ptr, rstd_ptr, gamma_ptr, beta_ptr, dres_ptr, dx_ptr, dgamma_ptr,
                   dbeta_ptr, HW, C, CG, G,
                   GELU: tl.constexpr, HAS_RES: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_CG: tl.constexpr):
    pid = tl.program_id(0)
    n = pid // G
    g = pid % G
    base = n.to(tl.int64) * HW * C + g * CG
    offs_c = tl.arange(0, BLOCK_CG)
    c_ok = offs_c < CG
    mu = tl.load(mean_ptr + pid)
    rs = tl.load(rstd_ptr + pid)
    gam = tl.load(gamma_ptr + g * CG + offs_c, mask=c_ok, other=0.0).to(tl.float32)
    bet = tl.load(beta_ptr + g * CG + offs_c, mask=c_ok, other=0.0).to(tl.float32)
    s_g = 0.0
    s_gx = 0.0
    pdg = tl.zeros((BLOCK_CG,), dtype=tl.float32)
    pdb = tl.zeros((BLOCK_CG,), dtype=tl.float32)
    for p0 in range(0, HW, BLOCK_P):
        offs_p = p0 + tl.arange(0, BLOCK_P)
        mask = (offs_p < HW)[:, None] & c_ok[None, :]
        off = base + offs_p[:, None].to(tl.int64) * C + offs_c[None, :]
        xhat = tl.where(mask, (tl.load(x_ptr + off, mask=mask, other=0.0).to(tl.float32) - mu) * rs, 0.0)
        d = tl.load(dn_ptr + off, mask=mask, other=0.0).to(tl.float32)
        if GELU:
            d *= _gelu_grad(xhat * gam[None, :] + bet[None, :])
        pdg += tl.sum(d * xhat, axis=0)
        pdb += tl.sum(d, axis=0)
        gg = d * gam[None, :]
        s_g += tl.sum(tl.sum(gg, axis=1), axis=0)
        s_gx += tl.sum(tl.sum(gg * xhat, axis=1), axis=0)
    inv_cnt = _inv_count(HW, CG)
    a = s_g * inv_cnt
    b = s_gx * inv_cnt
    for p0 in range(0, HW, BLOCK_P):
        offs_p = p0 + tl.arange(0, BLOCK_P)
        mask = (offs_p < HW)[:, None] & c_ok[None, :]
        off = base + offs_p[:, None].to(tl.int64) * C + offs_c[None, :]
        xhat = (tl.load(x_ptr + off, mask=mask, other=0.0).to(tl.float32) - mu) * rs
        d = tl.load(dn_ptr + off, mask=mask, other=0.0).to(tl.float32)
        if GELU:
            d *= _gelu_grad(xhat * gam[None, :] + bet[None, :])
        dx = rs * (d * gam[None, :] - a - xhat * b)
        if HAS_RES:
            dx += tl.load(dres_ptr + off, mask=mask, other=0.0).to(tl.float32)
        tl.store(dx_ptr + off, dx.to(dx_ptr.dtype.element_ty), mask=mask)
    poff = n.to(tl.int64) * C + g * CG + offs_c
    tl.store(dgamma_ptr + poff, pdg, mask=c_ok)
    tl.store(dbeta_ptr + poff, pdb, mask=c_ok)


# ------------------------------------------------------------------------------------------------
# Configuration: every choice below is enumerated by aot_specs().

# 64-row tiles and 8 warps: with 128 rows (or 4 warps) the gathered [BLOCK_M, BLOCK_K] input tile,
# its addresses and conv1's normalisation push the conv kernels past 255 registers into spills
# (AOT reports for sm_80/sm_90); at 64 rows they need ~190 and do not spill.

def _conv_config(cin: int, cout: int, dtype: torch.dtype) -> dict:
    wide = dtype != torch.float32
    return dict(BLOCK_M=64, BLOCK_N=tile_size(cout, 16, 128), BLOCK_K=tile_size(cin, 16, 64 if wide else 32),
                num_warps=8, num_stages=3 if wide else 2)


def _wgrad_config(cin: int, cout: int, dtype: torch.dtype) -> dict:
    wide = dtype != torch.float32
    # float32 at 16 rows (32 spill on sm_80); its stages: two spill 8 B on sm_90 at C = 96, three
    # spill 8 B on sm_80 at C = 128 (both operands >= 128 channels). Faithful AOT,
    # benchmarks/notes/triton_aot.md.
    stages = 3 if wide or min(cin, cout) < 128 else 2
    return dict(BLOCK_M=64 if wide else 16, BLOCK_CI=tile_size(cin, 16, 64), BLOCK_CO=tile_size(cout, 16, 128),
                num_warps=8, num_stages=stages)


def _gn_config(cg: int) -> dict:
    bcg = triton.next_power_of_2(cg)
    return dict(BLOCK_P=max(16, 2048 // bcg), BLOCK_CG=bcg, num_warps=4, num_stages=3)


# ------------------------------------------------------------------------------------------------
# Launchers (plain functions of contiguous tensors; called inside the triton_ops below).

def _pack_fwd(w: torch.Tensor) -> torch.Tensor:
    """(Cout, Cin, 3, 3) -> (9*Cin, Cout), rows ordered (tap, ci): the B operand of the forward."""
    return w.permute(2, 3, 1, 0).reshape(9 * w.shape[1], w.shape[0]).contiguous()


def _pack_dgrad(w: torch.Tensor) -> torch.Tensor:
    """(Cout, Cin, 3, 3) -> (9*Cout, Cin): the kernel flipped, channels swapped (data gradient)."""
    return w.flip(2, 3).permute(2, 3, 0, 1).reshape(9 * w.shape[0], w.shape[1]).contiguous()


def _conv3x3(a, wmat, cout, out_dtype, *, bias=None, norm=None, epilogue=EPI_NONE, pre=None, z=None, res=None):
    """Implicit-GEMM 3x3 conv of channels-last ``a`` (N, H, W, Cin) with packed weights ``wmat``.

    ``norm`` = (mean, rstd, gamma, beta, G) applies GroupNorm to ``a`` while loading it.
    """
    N, H, W, cin = a.shape
    M = N * H * W
    out = torch.empty((N, H, W, cout), device=a.device, dtype=out_dtype)
    cfg = _conv_config(cin, cout, wmat.dtype)
    mean, rstd, gamma, beta, G = norm if norm is not None else (a, a, a, a, 1)
    grid = (triton.cdiv(M, cfg["BLOCK_M"]), triton.cdiv(cout, cfg["BLOCK_N"]))
    launch(_conv3x3_kernel, grid,
        a, wmat, bias if bias is not None else a, mean, rstd, gamma, beta,
        z if z is not None else a, res if res is not None else a, out, pre if pre is not None else out,
        M, H, W, cin, cout, G, cin // G,
        NORM_IN=norm is not None, ONE_FRAME=norm is not None and (H * W) % cfg["BLOCK_M"] == 0,
        HAS_BIAS=bias is not None, EPILOGUE=epilogue, STORE_PRE=pre is not None,
        HAS_RES=res is not None, DOT_PREC=dot_precision(wmat.dtype), **cfg)
    return out


def _conv3x3_wgrad(a, dy, *, norm=None):
    """(dW (Cout, Cin, 3, 3) float32, db (Cout,) float32) of a 3x3 conv with input ``a``, output grad ``dy``."""
    cin, cout = a.shape[-1], dy.shape[-1]
    dw, db = weight_grad(a, dy, 3, conv3x3=True, cfg=_wgrad_config(cin, cout, dy.dtype), norm=norm)
    return dw.view(3, 3, cin, cout).permute(3, 2, 0, 1), db


def _gn_stats(x, G, eps, gamma=None, beta=None, y=None, gelu=False):
    N, H, W, C = x.shape
    mean = torch.empty((N, G), device=x.device, dtype=torch.float32)
    rstd = torch.empty((N, G), device=x.device, dtype=torch.float32)
    cfg = _gn_config(C // G)
    launch(_gn_stats_kernel, (N * G,),
        x, gamma if gamma is not None else x, beta if beta is not None else x, mean, rstd,
        y if y is not None else x, H * W, C, C // G, G, eps, APPLY=y is not None, GELU=gelu, **cfg)
    return mean, rstd


def _gn_bwd(dn, x, mean, rstd, gamma, beta, dres=None, gelu=False):
    """(dx in x.dtype, dgamma, dbeta float32) from the gradient ``dn`` of the GroupNorm output."""
    N, H, W, C = x.shape
    G = mean.shape[1]
    dx = torch.empty_like(x)
    dgamma = torch.empty((N, C), device=x.device, dtype=torch.float32)
    dbeta = torch.empty((N, C), device=x.device, dtype=torch.float32)
    cfg = _gn_config(C // G)
    launch(_gn_bwd_kernel, (N * G,),
        dn, x, mean, rstd, gamma, beta, dres if dres is not None else x, dx, dgamma, dbeta,
        H * W, C, C // G, G, GELU=gelu, HAS_RES=dres is not None, **cfg)
    return dx, dgamma.sum(0), dbeta.sum(0)


# ------------------------------------------------------------------------------------------------
# torch.library ops. Inputs arrive contiguous, conv parameters in x's dtype, GroupNorm affine in
# float32 (the reference runs GroupNorm in float32).

_EMPTY = (0,)


def _precision_forward(x: torch.Tensor, gn_weight: torch.Tensor, gn_bias: torch.Tensor, w1: torch.Tensor,
                       b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor, num_groups: int, eps: float,
                       save_pre: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, h = GELU(z1), z1 if save_pre else empty, mean, rstd)."""
    N, H, W, C = x.shape
    mean, rstd = _gn_stats(x, num_groups, eps)
    pre = torch.empty((N, H, W, 4 * C), device=x.device, dtype=x.dtype) if save_pre else \
        x.new_empty(_EMPTY)
    h = _conv3x3(x, _pack_fwd(w1), 4 * C, x.dtype, bias=b1, norm=(mean, rstd, gn_weight, gn_bias, num_groups),
                 epilogue=EPI_GELU, pre=pre if save_pre else None)
    y = _conv3x3(h, _pack_fwd(w2), C, x.dtype, bias=b2, res=x)
    return y, h, pre, mean, rstd


def _precision_backward(dy: torch.Tensor, x: torch.Tensor, gn_weight: torch.Tensor, gn_bias: torch.Tensor,
                        w1: torch.Tensor, w2: torch.Tensor, h: torch.Tensor, z1: torch.Tensor, mean: torch.Tensor,
                        rstd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                                torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dgn_weight, dgn_bias in float32, dw1, db1, dw2, db2 in the convolutions' dtype)."""
    if z1.numel() == 0:
        raise RuntimeError("precision_operator: the forward ran without saving activations (save_pre=False); "
                           "call it with gradients enabled to differentiate it")
    C = x.shape[-1]
    G = mean.shape[1]
    dw2, db2 = _conv3x3_wgrad(h, dy)
    dz1 = _conv3x3(dy, _pack_dgrad(w2), 4 * C, x.dtype, epilogue=EPI_GELU_GRAD, z=z1)
    norm = (mean, rstd, gn_weight, gn_bias, G)
    dw1, db1 = _conv3x3_wgrad(x, dz1, norm=norm)
    # The gradient of the normalised input stays float32 into the GroupNorm backward, which runs in
    # float32 like the reference's.
    dn = _conv3x3(dz1, _pack_dgrad(w1), C, torch.float32)
    dx, dgw, dgb = _gn_bwd(dn, x, mean, rstd, gn_weight, gn_bias, dres=dy)
    return dx, dgw, dgb, dw1.to(w1.dtype), db1.to(w1.dtype), dw2.to(w2.dtype), db2.to(w2.dtype)


precision_operator_fwd, precision_operator_bwd = kernel_op(
    "precision_operator", "triton", _precision_forward, _precision_backward,
    outputs=("y", "h", "z1", "mean", "rstd"),
    saved=("x", "gn_weight", "gn_bias", "w1", "w2", "h", "z1", "mean", "rstd"),
    grads=("x", "gn_weight", "gn_bias", "w1", "b1", "w2", "b2"))


def _group_norm_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, num_groups: int, eps: float,
                        gelu: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, mean, rstd); weight and bias are float32 (C,)."""
    y = torch.empty_like(x)
    mean, rstd = _gn_stats(x, num_groups, eps, weight, bias, y, gelu)
    return y, mean, rstd


def _group_norm_backward(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                         mean: torch.Tensor, rstd: torch.Tensor, gelu: bool
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dweight, dbias); the GELU pre-activation is recomputed from x (one FMA per element)."""
    return _gn_bwd(dy, x, mean, rstd, weight, bias, gelu=gelu)


group_norm_nhwc_fwd, group_norm_nhwc_bwd = kernel_op(
    "group_norm_nhwc", "triton", _group_norm_forward, _group_norm_backward, outputs=("y", "mean", "rstd"),
    saved=("x", "weight", "bias", "mean", "rstd", "gelu"), grads=("x", "weight", "bias"))


# ------------------------------------------------------------------------------------------------
# Dispatcher entry points.

# The most shared memory any configuration of this module's kernels takes per block, on sm_80-class
# and sm_90-class code (tests/aef_kernels/triton/test_aot.py fails when a compiled one exceeds it).
SHARED_BYTES = {80: 60 * 1024, 90: 76 * 1024}


_SHARED_NEEDED = gemm.with_weight_grad(SHARED_BYTES)


def _shared_memory(**inputs) -> list[str]:
    return shared_memory_reasons("precision_operator / group_norm_nhwc", _SHARED_NEEDED, inputs["x"])


# The conv kernels index pixels in int32.
@dispatch.register("precision_operator", "triton", capability(at_most={"pixels": 2**31 - 1}, check=_shared_memory))
def precision_operator(x, gn_weight, gn_bias, w1, b1, w2, b2, num_groups, eps):
    dt = x.dtype
    params = (gn_weight, gn_bias, w1, b1, w2, b2)
    save = torch.is_grad_enabled() and any(t.requires_grad for t in (x,) + params)
    f32 = torch.float32
    y, *_ = precision_operator_fwd(x.contiguous(), gn_weight.to(f32), gn_bias.to(f32), w1.to(dt), b1.to(dt),
                                   w2.to(dt), b2.to(dt), num_groups, eps, save)
    return y


@dispatch.register("group_norm_nhwc", "triton", capability(check=_shared_memory))
def group_norm_nhwc(x, weight, bias, num_groups, eps, activation):
    C = x.shape[-1]
    f32 = torch.float32
    w = weight.to(f32) if weight is not None else x.new_ones(C, dtype=f32)
    b = bias.to(f32) if bias is not None else x.new_zeros(C, dtype=f32)
    y, _, _ = group_norm_nhwc_fwd(x.contiguous(), w, b, num_groups, eps, activation == "gelu")
    return y


# ------------------------------------------------------------------------------------------------
# Ahead-of-time compilation: every configuration the launchers above can pick.

def _groups(c: int) -> int:
    """The model's group count (docs/model.md §4.3): 32, or C/2 below 64 channels."""
    return 32 if c >= 64 else c // 2


def aot_calls(sweep: bool = False) -> list[AOTCall]:
    """The precision operator (training: forward and backward; inference: forward without saved
    activations) and group_norm_nhwc (with and without GELU, forward and backward) for every dtype at
    the presets' widths d_p, on 64 x 64 frames (L/2 of a 128-pixel tile), so that a row block never
    straddles two frames. The sweep adds 5 x 7 frames (row blocks across frames, odd sizes) and
    other widths."""
    calls = []
    widths = (16, 32, 64, 96, 128, 256) if sweep else (16, 64, 96, 128)
    shapes = [(16, 64, 64, True)] + ([(3, 5, 7, False)] if sweep else [])
    # float16 compiles to the same shared memory and spills as bfloat16 (benchmarks/notes/triton_aot.md).
    dtypes = (torch.bfloat16, torch.float32) + ((torch.float16,) if sweep else ())
    for dtype, ty in ((dt, TL_DTYPES[dt]) for dt in dtypes):
        for c in widths:
            for n, h, w, hot in shapes:
                tag = f"{ty} C{c} {h}x{w}"
                calls += [AOTCall(f"precision train {tag}", functools.partial(_aot_precision, dtype, n, h, w, c, True),
                                  hot),
                          AOTCall(f"precision infer {tag}",
                                  functools.partial(_aot_precision, dtype, n, h, w, c, False), hot)]
                calls += [AOTCall(f"group_norm {act} {tag}",
                                  functools.partial(_aot_group_norm, dtype, n, h, w, c, act), hot)
                          for act in (None, "gelu")]
    return calls


def _aot_precision(dtype, n, h, w, c, train) -> None:
    meta = dict(device="meta", requires_grad=train)
    x = torch.empty((n, h, w, c), dtype=dtype, **meta)
    params = [torch.empty(shape, **meta) for shape in ((c,), (c,), (4 * c, c, 3, 3), (4 * c,), (c, 4 * c, 3, 3), (c,))]
    with torch.set_grad_enabled(train):
        y = precision_operator(x, *params, _groups(c), 1e-5)
    if train:
        y.backward(torch.empty_like(y))


def _aot_group_norm(dtype, n, h, w, c, activation) -> None:
    x = torch.empty((n, h, w, c), dtype=dtype, device="meta", requires_grad=True)
    weight, bias = (torch.empty((c,), device="meta", requires_grad=True) for _ in range(2))
    y = group_norm_nhwc(x, weight, bias, _groups(c), 1e-5, activation)
    y.backward(torch.empty_like(y))
