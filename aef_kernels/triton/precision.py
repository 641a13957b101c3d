"""Triton precision operator ``x + conv3x3(GELU(conv3x3(GroupNorm(x))))`` and ``group_norm_nhwc``.

Channels-last frames (N, H, W, C); M = N*H*W pixels. Kernels:

- GroupNorm statistics: ``_gn_stats_partials_kernel`` takes one chunk of a frame's pixels and one
  tile of channels per program (GN_PROGRAMS programs in all, so the grid fills the GPU at any batch),
  reads rows of contiguous channels (16-byte accesses) and merges per-channel float32 (mean, M2) over
  its tiles with Chan's formula; ``_gn_stats_combine_kernel`` (one program per (frame, group)) merges
  the chunk partials of the group's channels in a fixed order into mean and rstd (N, G).
  ``_gn_apply_kernel`` then writes the normalised (optionally GELU'd) output: with the two before,
  the whole ``group_norm_nhwc`` forward.
- ``_conv3x3_kernel``: implicit-GEMM 3x3 conv, pad 1. Rows are output pixels (grid axis 0; int32
  pixel indices, int64 block base offsets), columns output channels, and the K loop walks the 9
  taps x input-channel tiles as one flat loop so the pipeliner sees 9*Cin/BLOCK_K iterations. Optional fused prologue (GroupNorm
  affine while loading, zero padding applied after it) and epilogues (bias, GELU, GELU-backward,
  residual). It serves conv1 and conv2 forward and both data gradients (a 3x3 conv with the
  kernel flipped and in/out channels swapped).
- weight (and bias) gradients: the split-K kernel of ``gemm.py`` that the resamplings share.
- GroupNorm backward, on the same chunks: ``_gn_bwd_partials_kernel`` sums d * xhat and d per channel
  and chunk; ``_gn_bwd_combine_kernel`` sums them over the chunks in order (per-frame dgamma, dbeta)
  and forms each group's coefficients a = sum(gamma d) / n and b = sum(gamma d xhat) / n;
  ``_gn_bwd_kernel`` writes dx = rstd (gamma d - a - xhat b), plus an optional residual gradient.

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
from .weights import packed

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
def _gn_tile(ptr, n, p0, end, c0, HW, C, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """(pointers, mask) of the tile of pixels p0..p0+BLOCK_P (up to ``end``) and channels
    c0..c0+BLOCK_C of frame ``n``: the block base in int64 (one frame may hold 2^31 elements), offsets
    inside the tile in int32. A row's channels are contiguous, so the tile loads 16 bytes a thread."""
    offs_p = tl.arange(0, BLOCK_P)
    offs_c = c0 + tl.arange(0, BLOCK_C)
    c_ok = offs_c < C
    mask = (p0 + offs_p < end)[:, None] & c_ok[None, :]
    blk = ptr + (n.to(tl.int64) * HW + p0) * C
    return blk + offs_p[:, None] * C + offs_c[None, :], mask


@triton.jit
def _gn_chunk(HW, CHUNK, S, BLOCK_C: tl.constexpr):
    """(program, frame n, first and end pixel of its chunk, first channel, channels) of a GroupNorm
    pixel-pass program: grid axis 0 is n * S + chunk, axis 1 the channel tile."""
    pid = tl.program_id(0)
    start = (pid % S) * CHUNK
    c0 = tl.program_id(1) * BLOCK_C
    return pid, pid // S, start, tl.minimum(start + CHUNK, HW), c0, c0 + tl.arange(0, BLOCK_C)


@triton.jit
def _gn_stats_partials_kernel(x_ptr, mean_ptr, m2_ptr, HW, C, CHUNK, S,
                              BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """Per-channel (mean, M2) of chunk s of frame n (program (n * S + s, channel tile)), merged over
    its BLOCK_P-pixel tiles with Chan's formula: stable where E[x^2] - E[x]^2 is not."""
    pid, n, start, end, c0, offs_c = _gn_chunk(HW, CHUNK, S, BLOCK_C)
    count = 0.0
    mean = tl.zeros((BLOCK_C,), dtype=tl.float32)
    m2 = tl.zeros((BLOCK_C,), dtype=tl.float32)
    for p0 in range(start, end, BLOCK_P):
        ptrs, mask = _gn_tile(x_ptr, n, p0, end, c0, HW, C, BLOCK_P, BLOCK_C)
        v = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
        cnt = tl.minimum(end - p0, BLOCK_P).to(tl.float32)
        cmean = tl.sum(v, axis=0) / cnt
        d = tl.where(mask, v - cmean[None, :], 0.0)
        cm2 = tl.sum(d * d, axis=0)
        tot = count + cnt
        delta = cmean - mean
        mean += delta * (cnt / tot)
        m2 += cm2 + delta * delta * (count * cnt / tot)
        count = tot
    out = pid.to(tl.int64) * C + offs_c
    tl.store(mean_ptr + out, mean, mask=offs_c < C)
    tl.store(m2_ptr + out, m2, mask=offs_c < C)


@triton.jit
def _gn_group(C, CG, G, S, BLOCK_CG: tl.constexpr):
    """(program, frame n, the group's channels and their mask, start of frame n's (S, C) partials)
    of a combine program: one per (frame, group), program n * G + g."""
    pid = tl.program_id(0)
    n = pid // G
    offs_c = (pid % G) * CG + tl.arange(0, BLOCK_CG)
    return pid, n, offs_c, offs_c < (pid % G) * CG + CG, n.to(tl.int64) * S * C


@triton.jit
def _gn_stats_combine_kernel(pmean_ptr, pm2_ptr, mean_ptr, rstd_ptr, HW, C, CG, G, CHUNK, S, eps,
                             BLOCK_CG: tl.constexpr):
    """mean and rstd of group g of frame n (program n * G + g) from its channels' chunk partials, in a
    fixed order: the mean first, then every partial's M2 and its spread about that mean."""
    pid, n, offs_c, c_ok, base = _gn_group(C, CG, G, S, BLOCK_CG)
    total = tl.zeros((BLOCK_CG,), dtype=tl.float32)
    for s in range(0, S):
        cnt = tl.minimum(HW - s * CHUNK, CHUNK).to(tl.float32)
        total += cnt * tl.load(pmean_ptr + base + s * C + offs_c, mask=c_ok, other=0.0)
    inv_cnt = _inv_count(HW, CG)
    mean = tl.sum(total, axis=0) * inv_cnt
    m2 = tl.zeros((BLOCK_CG,), dtype=tl.float32)
    for s in range(0, S):
        cnt = tl.minimum(HW - s * CHUNK, CHUNK).to(tl.float32)
        dm = tl.load(pmean_ptr + base + s * C + offs_c, mask=c_ok, other=0.0) - mean
        m2 += tl.load(pm2_ptr + base + s * C + offs_c, mask=c_ok, other=0.0) + tl.where(c_ok, cnt * dm * dm, 0.0)
    tl.store(mean_ptr + pid, mean)
    tl.store(rstd_ptr + pid, 1.0 / tl.sqrt(tl.sum(m2, axis=0) * inv_cnt + eps))


@triton.jit
def _gn_scale_shift(mean_ptr, rstd_ptr, gamma_ptr, beta_ptr, n, offs_c, c_ok, G, CG):
    """Per-channel (mean, rstd, gamma, beta) of frame n: the group statistics gathered per channel."""
    sidx = n * G + offs_c // CG
    mu = tl.load(mean_ptr + sidx, mask=c_ok, other=0.0)
    rs = tl.load(rstd_ptr + sidx, mask=c_ok, other=0.0)
    gam = tl.load(gamma_ptr + offs_c, mask=c_ok, other=0.0).to(tl.float32)
    bet = tl.load(beta_ptr + offs_c, mask=c_ok, other=0.0).to(tl.float32)
    return mu, rs, gam, bet


@triton.jit
def _gn_apply_kernel(x_ptr, mean_ptr, rstd_ptr, gamma_ptr, beta_ptr, y_ptr, HW, C, CG, G, CHUNK, S,
                     GELU: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """y = (x - mean) rstd gamma + beta (then GELU) over chunk s of frame n, one channel tile."""
    pid, n, start, end, c0, offs_c = _gn_chunk(HW, CHUNK, S, BLOCK_C)
    mu, rs, gam, bet = _gn_scale_shift(mean_ptr, rstd_ptr, gamma_ptr, beta_ptr, n, offs_c, offs_c < C, G, CG)
    scale = rs * gam
    shift = bet - mu * scale
    for p0 in range(start, end, BLOCK_P):
        ptrs, mask = _gn_tile(x_ptr, n, p0, end, c0, HW, C, BLOCK_P, BLOCK_C)
        y = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32) * scale[None, :] + shift[None, :]
        if GELU:
            y = _gelu(y)
        yptrs, _ = _gn_tile(y_ptr, n, p0, end, c0, HW, C, BLOCK_P, BLOCK_C)
        tl.store(yptrs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _gn_grad_in(dn_ptr, x_ptr, n, p0, end, c0, HW, C, mu, rs, gam, bet,
                GELU: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """(xhat, d, mask): the normalised input and the gradient reaching the affine
    output (through GELU' of the recomputed pre-activation with GELU), zero outside the tile."""
    xptrs, mask = _gn_tile(x_ptr, n, p0, end, c0, HW, C, BLOCK_P, BLOCK_C)
    xhat = tl.where(mask, (tl.load(xptrs, mask=mask, other=0.0).to(tl.float32) - mu[None, :]) * rs[None, :], 0.0)
    dptrs, _ = _gn_tile(dn_ptr, n, p0, end, c0, HW, C, BLOCK_P, BLOCK_C)
    d = tl.load(dptrs, mask=mask, other=0.0).to(tl.float32)
    if GELU:
        d *= _gelu_grad(xhat * gam[None, :] + bet[None, :])
    return xhat, d, mask


@triton.jit
def _gn_bwd_partials_kernel(dn_ptr, x_ptr, mean_ptr, rstd_ptr, gamma_ptr, beta_ptr, pdg_ptr, pdb_ptr,
                            HW, C, CG, G, CHUNK, S,
                            GELU: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """Per-channel sums of d * xhat (dgamma) and d (dbeta) over chunk s of frame n."""
    pid, n, start, end, c0, offs_c = _gn_chunk(HW, CHUNK, S, BLOCK_C)
    c_ok = offs_c < C
    mu, rs, gam, bet = _gn_scale_shift(mean_ptr, rstd_ptr, gamma_ptr, beta_ptr, n, offs_c, c_ok, G, CG)
    pdg = tl.zeros((BLOCK_C,), dtype=tl.float32)
    pdb = tl.zeros((BLOCK_C,), dtype=tl.float32)
    for p0 in range(start, end, BLOCK_P):
        xhat, d, _ = _gn_grad_in(dn_ptr, x_ptr, n, p0, end, c0, HW, C, mu, rs, gam, bet, GELU, BLOCK_P, BLOCK_C)
        pdg += tl.sum(d * xhat, axis=0)
        pdb += tl.sum(d, axis=0)
    out = pid.to(tl.int64) * C + offs_c
    tl.store(pdg_ptr + out, pdg, mask=c_ok)
    tl.store(pdb_ptr + out, pdb, mask=c_ok)


@triton.jit
def _gn_bwd_combine_kernel(ppdg_ptr, ppdb_ptr, gamma_ptr, dgamma_ptr, dbeta_ptr, coef_ptr, HW, C, CG, G, S,
                           BLOCK_CG: tl.constexpr):
    """Group g of frame n (program n * G + g): its channels' dgamma and dbeta partials summed over the
    chunks in order, and the dx coefficients a = sum(gamma dbeta) / count, b = sum(gamma dgamma) / count."""
    pid, n, offs_c, c_ok, base = _gn_group(C, CG, G, S, BLOCK_CG)
    pdg = tl.zeros((BLOCK_CG,), dtype=tl.float32)
    pdb = tl.zeros((BLOCK_CG,), dtype=tl.float32)
    for s in range(0, S):
        pdg += tl.load(ppdg_ptr + base + s * C + offs_c, mask=c_ok, other=0.0)
        pdb += tl.load(ppdb_ptr + base + s * C + offs_c, mask=c_ok, other=0.0)
    gam = tl.load(gamma_ptr + offs_c, mask=c_ok, other=0.0).to(tl.float32)
    inv_cnt = _inv_count(HW, CG)
    tl.store(coef_ptr + 2 * pid, tl.sum(gam * pdb, axis=0) * inv_cnt)
    tl.store(coef_ptr + 2 * pid + 1, tl.sum(gam * pdg, axis=0) * inv_cnt)
    out = n.to(tl.int64) * C + offs_c
    tl.store(dgamma_ptr + out, pdg, mask=c_ok)
    tl.store(dbeta_ptr + out, pdb, mask=c_ok)


@triton.jit
def _gn_bwd_kernel(dn_ptr, x_ptr, mean_ptr, rstd_ptr, gamma_ptr, beta_ptr, coef_ptr, dres_ptr, dx_ptr,
                   HW, C, CG, G, CHUNK, S,
                   GELU: tl.constexpr, HAS_RES: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """dx = rstd (d gamma - a - xhat b) (plus the residual's gradient) over chunk s of frame n."""
    pid, n, start, end, c0, offs_c = _gn_chunk(HW, CHUNK, S, BLOCK_C)
    c_ok = offs_c < C
    mu, rs, gam, bet = _gn_scale_shift(mean_ptr, rstd_ptr, gamma_ptr, beta_ptr, n, offs_c, c_ok, G, CG)
    cidx = 2 * (n * G + offs_c // CG)
    a = tl.load(coef_ptr + cidx, mask=c_ok, other=0.0)
    b = tl.load(coef_ptr + cidx + 1, mask=c_ok, other=0.0)
    for p0 in range(start, end, BLOCK_P):
        xhat, d, mask = _gn_grad_in(dn_ptr, x_ptr, n, p0, end, c0, HW, C, mu, rs, gam, bet, GELU, BLOCK_P, BLOCK_C)
        dx = rs[None, :] * (d * gam[None, :] - a[None, :] - xhat * b[None, :])
        if HAS_RES:
            rptrs, _ = _gn_tile(dres_ptr, n, p0, end, c0, HW, C, BLOCK_P, BLOCK_C)
            dx += tl.load(rptrs, mask=mask, other=0.0).to(tl.float32)
        optrs, _ = _gn_tile(dx_ptr, n, p0, end, c0, HW, C, BLOCK_P, BLOCK_C)
        tl.store(optrs, dx.to(dx_ptr.dtype.element_ty), mask=mask)


# ------------------------------------------------------------------------------------------------
# Configuration: every choice below is enumerated by aot_specs().

# 64-row tiles: with 128 rows the gathered [BLOCK_M, BLOCK_K] input tile, its addresses and conv1's
# normalisation push the conv kernels past 255 registers into spills (AOT reports for sm_80/sm_90).
# 16-bit tiles run 8 warps (4 where a tile is too small for 16 bytes a thread); float32 ones run 4
# on at most 64 output channels: at 8 the tf32x3 dots' [8, 1] warps cover the 64 rows twice, and 4
# warps on 128 channels spill 120-128 B on sm_80 (faithful AOT, benchmarks/notes/triton_aot.md).

def _conv_config(cin: int, cout: int, dtype: torch.dtype) -> dict:
    wide = dtype != torch.float32
    bn, bk = tile_size(cout, 16, 128 if wide else 64), tile_size(cin, 16, 64 if wide else 32)
    return dict(BLOCK_M=64, BLOCK_N=bn, BLOCK_K=bk, num_warps=_tile_warps(64, bn, bk, dtype) if wide else 4,
                num_stages=3 if wide else 2)


def _tile_warps(bm: int, bn: int, bk: int, dtype: torch.dtype) -> int:
    """8 warps, or 4 where the smallest of the three tiles of a (bm x bk) by (bk x bn) product holds
    under 16 bytes a thread at 8 (C = 16: a 64 x 16 16-bit tile is 8 bytes a thread)."""
    smallest = min(bm * bk, bk * bn, bm * bn) * torch.empty((), dtype=dtype).element_size()
    return 8 if smallest >= 8 * 32 * 16 else 4


def _wgrad_config(cin: int, cout: int, dtype: torch.dtype) -> dict:
    wide = dtype != torch.float32
    # float32 at 16 rows (32 spill on sm_80), 32 at C = 16 (16 x 16 float32 tiles are 8 bytes a
    # thread), and 4 warps (8 cover the 64-row dw tiles twice); its stages: two spill 8 B on sm_90
    # at C = 96, three spill 8 B on sm_80 at C = 128 (both operands >= 128 channels). Faithful AOT,
    # benchmarks/notes/triton_aot.md.
    stages = 3 if wide or min(cin, cout) < 128 else 2
    bm, bci, bco = 64 if wide else 32 if min(cin, cout) <= 16 else 16, tile_size(cin, 16, 64), tile_size(cout, 16, 128)
    return dict(BLOCK_M=bm, BLOCK_CI=bci, BLOCK_CO=bco, num_warps=4 if not wide else _tile_warps(bm, bco, bci, dtype),
                num_stages=stages)


# GroupNorm programs per call: frames are split into chunks of pixels so that the statistics and the
# backward fill the 132 SMs of an H100/H200 several times over at any batch size (N * G programs, the
# old split, gave 16 x 32 = 512 at the large preset and N * 8 for C = 16); the chunks' partials are
# combined in a fixed order by one small program per group, so results stay bitwise reproducible.
GN_PROGRAMS = 1024
# Elements of one GroupNorm tile: 8 per thread at 8 warps, read as 16-byte vectors along C. At 4
# warps (16 per thread) the GELU backward's partials take 151-155 registers at C = 96 in bf16, 12
# resident warps per SM; at 8 warps every pass takes <= 122 and keeps 16 (faithful AOT, 2026-12-02).
GN_TILE = 2048


@functools.lru_cache(maxsize=None)
def _gn_config(n: int, hw: int, c: int) -> dict:
    """Tile, chunk and launch options of the GroupNorm pixel passes for N = ``n`` frames of ``hw``
    pixels and ``c`` channels: S chunks of CHUNK pixels per frame, channel tiles of BLOCK_C."""
    block_c = min(128, triton.next_power_of_2(c))
    block_p = max(1, GN_TILE // block_c)
    tiles = triton.cdiv(hw, block_p)
    split = max(1, min(tiles, triton.cdiv(GN_PROGRAMS, n * triton.cdiv(c, block_c))))
    chunk = triton.cdiv(tiles, split) * block_p
    return dict(BLOCK_P=block_p, BLOCK_C=block_c, CHUNK=chunk, S=triton.cdiv(hw, chunk), num_warps=8,
                num_stages=1)


def _gn_grid(n: int, c: int, cfg: dict) -> tuple[int, int]:
    return n * cfg["S"], triton.cdiv(c, cfg["BLOCK_C"])


def _gn_combine_config(cg: int) -> dict:
    return dict(BLOCK_CG=triton.next_power_of_2(cg), num_warps=1, num_stages=1)


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


def _gn_stats(x, G, eps):
    """(mean, rstd) (N, G) float32 of channels-last ``x``: per-chunk partials, then their combine."""
    N, H, W, C = x.shape
    cfg = _gn_config(N, H * W, C)
    pmean = torch.empty((N, cfg["S"], C), device=x.device, dtype=torch.float32)
    pm2 = torch.empty_like(pmean)
    launch(_gn_stats_partials_kernel, _gn_grid(N, C, cfg), x, pmean, pm2, H * W, C, **cfg)
    mean = torch.empty((N, G), device=x.device, dtype=torch.float32)
    rstd = torch.empty((N, G), device=x.device, dtype=torch.float32)
    launch(_gn_stats_combine_kernel, (N * G,), pmean, pm2, mean, rstd, H * W, C, C // G, G, cfg["CHUNK"],
           cfg["S"], eps, **_gn_combine_config(C // G))
    return mean, rstd


def _gn_bwd(dn, x, mean, rstd, gamma, beta, dres=None, gelu=False):
    """(dx in x.dtype, dgamma, dbeta float32) from the gradient ``dn`` of the GroupNorm output."""
    N, H, W, C = x.shape
    G = mean.shape[1]
    cfg = _gn_config(N, H * W, C)
    grid = _gn_grid(N, C, cfg)
    ppdg = torch.empty((N, cfg["S"], C), device=x.device, dtype=torch.float32)
    ppdb = torch.empty_like(ppdg)
    launch(_gn_bwd_partials_kernel, grid, dn, x, mean, rstd, gamma, beta, ppdg, ppdb, H * W, C, C // G, G,
           GELU=gelu, **cfg)
    dgamma = torch.empty((N, C), device=x.device, dtype=torch.float32)
    dbeta = torch.empty((N, C), device=x.device, dtype=torch.float32)
    coef = torch.empty((N, G, 2), device=x.device, dtype=torch.float32)
    launch(_gn_bwd_combine_kernel, (N * G,), ppdg, ppdb, gamma, dgamma, dbeta, coef, H * W, C, C // G, G,
           cfg["S"], **_gn_combine_config(C // G))
    dx = torch.empty_like(x)
    launch(_gn_bwd_kernel, grid, dn, x, mean, rstd, gamma, beta, coef, dres if dres is not None else x, dx,
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
    h = _conv3x3(x, packed(w1, _pack_fwd), 4 * C, x.dtype, bias=b1,
                 norm=(mean, rstd, gn_weight, gn_bias, num_groups),
                 epilogue=EPI_GELU, pre=pre if save_pre else None)
    y = _conv3x3(h, packed(w2, _pack_fwd), C, x.dtype, bias=b2, res=x)
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
    dz1 = _conv3x3(dy, packed(w2, _pack_dgrad), 4 * C, x.dtype, epilogue=EPI_GELU_GRAD, z=z1)
    norm = (mean, rstd, gn_weight, gn_bias, G)
    dw1, db1 = _conv3x3_wgrad(x, dz1, norm=norm)
    # The gradient of the normalised input stays float32 into the GroupNorm backward, which runs in
    # float32 like the reference's.
    dn = _conv3x3(dz1, packed(w1, _pack_dgrad), C, torch.float32)
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
    N, H, W, C = x.shape
    mean, rstd = _gn_stats(x, num_groups, eps)
    y = torch.empty_like(x)
    cfg = _gn_config(N, H * W, C)
    launch(_gn_apply_kernel, _gn_grid(N, C, cfg), x, mean, rstd, weight, bias, y, H * W, C, C // num_groups,
           num_groups, GELU=gelu, **cfg)
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
