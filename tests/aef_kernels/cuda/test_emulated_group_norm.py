"""The CUDA GroupNorm kernels (csrc/group_norm.cu, compiled unchanged by g++) run on the CPU through
the SIMT emulator against float64 references under the suite's error rule, on every launch path
(16-byte packs or single elements, one or several channel passes per block, one or several pixel
chunks per frame, blocks that are not a whole number of warps) with and without GELU; each case
runs under two fiber schedules with bitwise-equal results."""

from __future__ import annotations

import pytest
import torch

import emulator
from emulator import ops

pytestmark = pytest.mark.skipif(bool(emulator.UNAVAILABLE), reason=f"emulator: {emulator.UNAVAILABLE}")

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
EPS = 1e-5


# (N, HW, C, G, x offset, gelu): what each shape exercises is in the comment.
SHAPES = [
    (2, 600, 64, 8, 0, True),  # packed, 3 pixel chunks per frame (chunks of 256 pixels)
    (1, 70, 24, 6, 0, False),  # packed, blocks of 6 x 42 or 3 x 85 threads (not whole warps)
    (2, 50, 30, 5, 0, True),  # C not a multiple of the pack: element-wise, 30 x 8 threads
    (1, 40, 2048, 32, 0, False),  # packed: 512 (float32) or 256 packs, several passes over channels
    (1, 24, 600, 10, 0, True),  # element-wise, 600 channels: three passes of 256 threads
    (2, 100, 64, 4, 1, False),  # misaligned x and y: the element-wise path at an aligned C
]
CASES = [(dt, *s) for dt in (F32, F16, BF16) for s in SHAPES]


def _reference(x, gamma, beta, G, gelu, dy):
    """y, mean, rstd, dx, dgamma, dbeta in the precision of x."""
    x, gamma, beta = (t.detach().requires_grad_() for t in (x, gamma, beta))
    N, HW, C = x.shape
    xg = x.reshape(N, HW, G, C // G)
    mean = xg.mean(dim=(1, 3), keepdim=True)
    var = ((xg - mean) ** 2).mean(dim=(1, 3), keepdim=True)
    rstd = (var + EPS).rsqrt()
    z = ((xg - mean) * rstd).reshape(N, HW, C) * gamma + beta
    y = torch.nn.functional.gelu(z) if gelu else z
    y.backward(dy)
    return (y.detach(), mean.reshape(N, G).detach(), rstd.reshape(N, G).detach(), x.grad, gamma.grad, beta.grad)


@pytest.mark.parametrize("dtype,N,HW,C,G,offset,gelu", CASES,
                         ids=[f"{str(c[0])[6:]}-N{c[1]}-HW{c[2]}-C{c[3]}-G{c[4]}-off{c[5]}-gelu{int(c[6])}"
                              for c in CASES])
def test_group_norm_matches_float64_reference(emu, dtype, N, HW, C, G, offset, gelu, within_reference_error):
    """y, mean, rstd, dx, dgamma and dbeta meet the error rule against float64 (the low-precision
    reference: statistics and affine in float32 from the rounded inputs, as the reference op runs),
    nothing is written outside the outputs or the workspace, and two schedules agree bitwise."""
    gen = torch.Generator().manual_seed(C * 7 + HW)
    xc = (torch.randn(N, HW, C, generator=gen) * 2 + 0.5).to(dtype)
    dyc = torch.randn(N, HW, C, generator=gen).to(dtype)
    gamma = ops.embed(torch.randn(C, generator=gen))
    beta = ops.embed(torch.randn(C, generator=gen))
    xg = ops.Guarded((N, HW, C), dtype, offset=offset)
    xg.t.copy_(xc)
    dyg = ops.Guarded((N, HW, C), dtype, offset=offset)
    dyg.t.copy_(dyc)
    runs = []
    for seed in (1, 2):
        emu.reset(seed)
        y, mean, rstd = ops.group_norm_fwd(emu, xg.t, gamma, beta, G, EPS, gelu, y_offset=offset)
        dx, dgamma, dbeta = ops.group_norm_bwd(emu, dyg.t, xg.t, gamma, beta, mean, rstd, G, gelu, dx_offset=offset)
        runs.append((y, mean, rstd, dx, dgamma, dbeta))
    names = ("y", "mean", "rstd", "dx", "dgamma", "dbeta")
    for name, a, b in zip(names, *runs):
        assert torch.equal(ops.bits(a), ops.bits(b)), f"{name} depends on the schedule"
    exact = _reference(xc.double(), gamma.double(), beta.double(), G, gelu, dyc.double())
    low = _reference(xc.float(), gamma.float(), beta.float(), G, gelu, dyc.float())
    for name, out, lo, ex, factor in zip(names, runs[0], low, exact, (2, 2, 2, 3, 3, 3)):
        low_dtype = dtype if name in ("y", "dx") else F32
        within_reference_error(f"group_norm {name}", out, lo.to(low_dtype), ex, factor, low_dtype)
    emulator.PASSED["group_norm"] += 1


@pytest.mark.parametrize("dtype,gelu", [
    pytest.param(dt, gelu, id=f"{str(dt)[6:]}-gelu{int(gelu)}") for dt in (F32, F16, BF16) for gelu in (False, True)])
def test_group_norm_of_constant_and_near_constant_groups(emu, dtype, gelu, within_reference_error):
    """A group whose values are all equal (variance 0: rstd = 1/sqrt(eps)) and one with a spread of
    1e-3 around 3 (a large rstd that amplifies any inconsistency between the statistics and the
    normalised values) meet the error rule forward and backward, packed and element-wise."""
    for C, offset in ((32, 0), (32, 1)):
        N, HW, G = 2, 300, 4
        CG = C // G
        gen = torch.Generator().manual_seed(3)
        xc = torch.randn(N, HW, C, generator=gen)
        xc[0, :, :CG] = 2.5
        xc[1, :, CG:2 * CG] = 3 + 1e-3 * torch.randn(HW, CG, generator=gen)
        xc = xc.to(dtype)
        dyc = torch.randn(N, HW, C, generator=gen).to(dtype)
        gamma, beta = ops.embed(torch.randn(C, generator=gen)), ops.embed(torch.randn(C, generator=gen))
        xg, dyg = ops.Guarded((N, HW, C), dtype, offset=offset), ops.Guarded((N, HW, C), dtype, offset=offset)
        xg.t.copy_(xc)
        dyg.t.copy_(dyc)
        emu.reset(1)
        y, mean, rstd = ops.group_norm_fwd(emu, xg.t, gamma, beta, G, EPS, gelu, y_offset=offset)
        dx, dgamma, dbeta = ops.group_norm_bwd(emu, dyg.t, xg.t, gamma, beta, mean, rstd, G, gelu, dx_offset=offset)
        exact = _reference(xc.double(), gamma.double(), beta.double(), G, gelu, dyc.double())
        low = _reference(xc.float(), gamma.float(), beta.float(), G, gelu, dyc.float())
        names = ("y", "mean", "rstd", "dx", "dgamma", "dbeta")
        for name, out, lo, ex, factor in zip(names, (y, mean, rstd, dx, dgamma, dbeta), low, exact, (2, 2, 2, 3, 3, 3)):
            low_dtype = dtype if name in ("y", "dx") else F32
            within_reference_error(f"group_norm C={C} offset={offset} {name}", out, lo.to(low_dtype), ex, factor,
                                   low_dtype)
        emulator.PASSED["group_norm"] += 1


@pytest.mark.parametrize("dtype", [F32, F16, BF16])
def test_group_norm_launch_paths_are_all_taken(emu, dtype):
    """The shapes above reach both pack widths of every GroupNorm kernel for ``dtype``, forward and
    backward, with and without GELU."""
    emu.reset(0)
    seen = set()
    for N, HW, C, G, offset, gelu in SHAPES:
        for act in (False, True):
            x = ops.Guarded((N, HW, C), dtype, offset=offset)
            x.t.normal_()
            gamma, beta = ops.embed(torch.ones(C)), ops.embed(torch.zeros(C))
            _, mean, rstd = ops.group_norm_fwd(emu, x.t, gamma, beta, G, EPS, act, y_offset=offset)
            ops.group_norm_bwd(emu, x.t, x.t, gamma, beta, mean, rstd, G, act, dx_offset=offset)
            seen |= {(kernel, "VEC = 1" in caller) for _, kernel, caller in emu.launches()}
    per_vec = {k for k, _ in seen if k.endswith("<T, VEC>")}
    assert {(k, v) for k in per_vec for v in (False, True)} <= seen and len(per_vec) == 4, sorted(seen)
    assert {"group_norm_fwd_stats", "group_norm_bwd_coefs", "group_norm_bwd_params"} <= {k for k, _ in seen}
