"""The CUDA sphere kernels (csrc/vmf_normalize.cu, csrc/batch_uniformity.cu, compiled unchanged by
g++) run on the CPU through the SIMT emulator against float64 references under the suite's error
rule, on every launch path their launchers can take (vector widths, lane-group widths and register
chunks, the unaligned fallbacks), with strided and misaligned rows, zero rows below eps, and row
offsets past 2^31 elements; each case runs under two fiber schedules with bitwise-equal results."""

from __future__ import annotations

import ctypes

import pytest
import torch
import torch.nn.functional as F

import emulator
from emulator import ops

pytestmark = pytest.mark.skipif(bool(emulator.UNAVAILABLE), reason=f"emulator: {emulator.UNAVAILABLE}")

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
EPS = 1e-6


def _rows(rows, D, dtype, gen, row_stride=None, offset=0):
    """(rows, D) of random values (row 1 zero, row 2 tiny: both below eps) inside NaN-filled memory
    with the given row stride and element offset from a 16-byte boundary."""
    x = torch.randn(rows, D, generator=gen).to(dtype)
    x[1 % rows] = 0
    if rows > 2:
        x[2] = x[2] * 1e-9 if dtype == F32 else 0
    rs = D if row_stride is None else row_stride
    g = ops.Guarded((rows * rs,), dtype, offset=offset)
    view = g.t.as_strided((rows, D), (rs, 1))
    view.copy_(x)
    return view, x


def _vmf_paths(dtype):
    """(D, row stride, offset) per branch of launch_typed / launch_bwd_typed: the packed register
    paths with 8, 16 and 32 lanes and 1, 2, 4 and 8 chunks, the packed any-D path, and the
    element-wise fallback (odd D, odd row stride, odd offset)."""
    V = 128 // torch.finfo(dtype).bits  # elements per 16-byte pack
    packed = [(V * p, None, 0) for p in (8, 16, 32, 64, 128, 256, 512)]
    return packed + [(37, None, 0), (V * 8, V * 8 + 1, 0), (V * 16, None, 1)]


VMF_CASES = [(dt, *p) for dt in (F32, F16, BF16) for p in _vmf_paths(dt)]


def _vmf_ref(x, g, eps):
    x = x.detach().requires_grad_()
    y = F.normalize(x, dim=-1, eps=eps)
    y.backward(g)
    return y.detach(), x.grad


@pytest.mark.parametrize("dtype,D,row_stride,offset", VMF_CASES,
                         ids=[f"{str(c[0])[6:]}-D{c[1]}-rs{c[2]}-off{c[3]}" for c in VMF_CASES])
def test_vmf_normalize_matches_float64_reference(emu, dtype, D, row_stride, offset, within_reference_error):
    """Forward and backward of one launch path meet the error rule against float64 (rows below eps
    included: y = x / eps, dx = g / eps), write nothing outside their outputs and are bitwise equal
    under two schedules."""
    gen = torch.Generator().manual_seed(D)
    rows = 37
    x, xc = _rows(rows, D, dtype, gen, row_stride, offset)
    g, gc = _rows(rows, D, dtype, gen)
    runs = []
    for seed in (1, 2):
        emu.reset(seed)
        y = ops.vmf_fwd(emu, x, EPS, y_offset=offset)
        dx = ops.vmf_bwd(emu, g, x, EPS, dx_offset=offset)
        runs.append((y, dx))
    assert all(torch.equal(ops.bits(a), ops.bits(b)) for a, b in zip(*runs)), "results depend on the schedule"
    y, dx = runs[0]
    ey, edx = _vmf_ref(xc.double(), gc.double(), EPS)
    ly, ldx = (t.to(dtype) for t in _vmf_ref(xc.float(), gc.float(), EPS))
    within_reference_error(f"vmf y D={D}", y, ly, ey, 2, dtype)
    within_reference_error(f"vmf dx D={D}", dx, ldx, edx, 3, dtype)
    emulator.PASSED["vmf_normalize"] += 1


@pytest.mark.parametrize("dtype", [F32, F16, BF16])
def test_vmf_normalize_launch_paths_are_all_taken(emu, dtype):
    """The cases above reach every kernel instantiation the launchers can choose for ``dtype``: the
    six register variants and the two row variants forward, five and two backward."""
    gen = torch.Generator().manual_seed(0)
    emu.reset(0)
    seen = set()
    for D, rs, off in _vmf_paths(dtype):
        x, _ = _rows(9, D, dtype, gen, rs, off)
        ops.vmf_fwd(emu, x, EPS, y_offset=off)
        ops.vmf_bwd(emu, x, x, EPS, dx_offset=off)
        seen |= {caller for _, _, caller in emu.launches()}
    fwd = {c for c in seen if "launch_regs" in c or "launch_rows" in c}
    bwd = {c for c in seen if "launch_bwd_regs" in c or "launch_bwd_rows" in c}
    assert (len(fwd), len(bwd)) == (8, 7), sorted(seen)


def _uniformity_ref(u, grad):
    u = u.detach().requires_grad_()
    dots = (u * u.roll(1, dims=0)).sum(-1)
    loss = dots.abs().mean()
    loss.backward(grad)
    return loss.detach(), dots.detach(), u.grad


def _uniformity_cases():
    out = []
    for dt in (F32, F16, BF16):
        V = 128 // torch.finfo(dt).bits  # elements per 16-byte pack
        # (B, M, D, row padding, u offset, du offset, max_partials)
        out += [(dt, 4, 33, V * 8, 0, 0, 0, 1024),  # short rows: 8-lane groups
                (dt, 3, 20, V * 24, V, 0, 0, 3),  # warp rows, padded, fewer partials than blocks
                (dt, 1, 7, 37, 0, 0, 0, 1024),  # B = 1: each row pairs with itself; unaligned D
                (dt, 2, 5, V * 8, 0, 1, 0, 1024),  # misaligned u: the element-wise fallback
                (dt, 5, 9, V * 8, 0, 0, 1, 1024)]  # aligned u, misaligned du: backward falls back
    return out


UNIFORMITY_CASES = _uniformity_cases()


@pytest.mark.parametrize("dtype,B,M,D,pad,u_off,du_off,max_partials", UNIFORMITY_CASES,
                         ids=[f"{str(c[0])[6:]}-B{c[1]}-M{c[2]}-D{c[3]}-pad{c[4]}-off{c[5]}{c[6]}-p{c[7]}"
                              for c in UNIFORMITY_CASES])
def test_batch_uniformity_matches_float64_reference(emu, dtype, B, M, D, pad, u_off, du_off, max_partials,
                                                    within_reference_error):
    """Loss, dots and du of one launch path meet the error rule against float64, with nothing
    written outside the outputs, bitwise equal under two schedules."""
    gen = torch.Generator().manual_seed(B * 100 + D)
    uc = torch.randn(B, M, D, generator=gen).to(dtype)
    uc[0, M - 1] = 0  # dots of exactly 0: no sign, no gradient through them
    grad = torch.randn((), generator=gen).to(dtype)
    g = ops.Guarded((B * M * (D + pad),), dtype, offset=u_off)
    u = g.t.as_strided((B, M, D), (M * (D + pad), D + pad, 1))
    u.copy_(uc)
    runs = []
    for seed in (1, 2):
        emu.reset(seed)
        loss, dots = ops.uniformity_fwd(emu, u, max_partials)
        du = ops.uniformity_bwd(emu, grad, u, dots, du_offset=du_off)
        runs.append((loss.reshape(1), dots, du))
    assert all(torch.equal(ops.bits(a), ops.bits(b)) for a, b in zip(*runs)), "results depend on the schedule"
    loss, dots, du = runs[0]
    eloss, edots, edu = _uniformity_ref(uc.double(), grad.double())
    lloss, ldots, ldu = _uniformity_ref(uc.float(), grad.float())
    within_reference_error("uniformity loss", loss, lloss.to(dtype).reshape(1), eloss.reshape(1), 2, dtype)
    within_reference_error("uniformity dots", dots, ldots, edots, 2, F32 if dtype == F32 else dtype,
                           scale=(uc.double().abs() * uc.double().roll(1, 0).abs()).sum(-1).max().item())
    within_reference_error("uniformity du", du, ldu.to(dtype), edu, 3, dtype)
    emulator.PASSED["batch_uniformity"] += 1


@pytest.mark.parametrize("dtype", [F32, F16, BF16])
def test_batch_uniformity_launch_paths_are_all_taken(emu, dtype):
    """The cases above reach every instantiation the launchers can choose for ``dtype``: 8-lane
    packed, 32-lane packed and element-wise rows, forward and backward, and the final sum."""
    emu.reset(0)
    seen = set()
    for _, B, M, D, pad, u_off, du_off, max_partials in [c for c in UNIFORMITY_CASES if c[0] == dtype]:
        g = ops.Guarded((B * M * (D + pad),), dtype, offset=u_off)
        u = g.t.as_strided((B, M, D), (M * (D + pad), D + pad, 1))
        u.normal_()
        _, dots = ops.uniformity_fwd(emu, u, max_partials)
        ops.uniformity_bwd(emu, torch.ones((), dtype=dtype), u, dots, du_offset=du_off)
        seen |= {(kernel, caller) for _, kernel, caller in emu.launches()}
    variants = {"<T, V, 8>", "<T, V, 32>", "<T, 1, 32>"}  # as the launch statements spell them
    for kernel in ("batch_uniformity_fwd_dots", "batch_uniformity_bwd"):
        got = {k for k, _ in seen if k.startswith(kernel + "<")}
        assert got == {kernel + v for v in variants}, sorted(seen)
    assert any(k == "batch_uniformity_fwd_sum<T>" for k, _ in seen)


def _sparse(n_elements, dtype):
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    nbytes = n_elements * torch.finfo(dtype).bits // 8
    addr = libc.mmap(None, nbytes, 0x1 | 0x2, 0x02 | 0x20 | 0x4000, -1, 0)  # rw, private anonymous noreserve
    if addr in (None, ctypes.c_void_p(-1).value):
        pytest.skip(f"cannot map {nbytes} bytes of address space (errno {ctypes.get_errno()})")
    return torch.frombuffer((ctypes.c_uint8 * nbytes).from_address(addr), dtype=dtype)


@pytest.mark.parametrize("dtype", [F16, F32])
def test_sphere_rows_past_2_31_elements(emu, dtype, within_reference_error):
    """Row strides of 2^31 + 64 elements in one sparse mapping: vmf_normalize reads x and g and
    writes y and dx past 2^31 elements, batch_uniformity reads u's second sample there."""
    D, stride = 64, 2 ** 31 + 64
    big = _sparse(2 * stride + 4 * D, dtype)
    gen = torch.Generator().manual_seed(11)
    xc, gc, uc = (torch.randn(2, D, generator=gen).to(dtype) for _ in range(3))
    x, g, y, dx = (big.as_strided((2, D), (stride, 1), storage_offset=i * D) for i in range(4))
    x.copy_(xc)
    g.copy_(gc)
    code = ops.dtype_code(emu, dtype)
    emu.reset(1)
    status = emu.lib.emu_vmf_normalize_fwd(x.data_ptr(), y.data_ptr(), 2, D, stride, stride, code, EPS)
    status |= emu.lib.emu_vmf_normalize_bwd(g.data_ptr(), x.data_ptr(), dx.data_ptr(), 2, D, stride, stride, stride,
                                            code, EPS)
    assert status == 0 and not emu.failures(), emu.failures()
    ey, edx = _vmf_ref(xc.double(), gc.double(), EPS)
    ly, ldx = (t.to(dtype) for t in _vmf_ref(xc.float(), gc.float(), EPS))
    within_reference_error("vmf y past 2^31", y, ly, ey, 2, dtype)
    within_reference_error("vmf dx past 2^31", dx, ldx, edx, 3, dtype)

    u = big.as_strided((2, 1, D), (stride, D, 1), storage_offset=4 * D)
    u.copy_(uc[:, None])
    loss, dots = ops.uniformity_fwd(emu, u)
    du = ops.uniformity_bwd(emu, torch.ones((), dtype=dtype), u, dots)
    eloss, _, edu = _uniformity_ref(uc[:, None].double(), torch.ones((), dtype=torch.float64))
    lloss, _, ldu = _uniformity_ref(uc[:, None].float(), torch.ones(()))
    within_reference_error("uniformity loss past 2^31", loss.reshape(1), lloss.to(dtype).reshape(1),
                           eloss.reshape(1), 2, dtype)
    within_reference_error("uniformity du past 2^31", du, ldu.to(dtype), edu, 3, dtype)
    emulator.PASSED["vmf_normalize"] += 1
    emulator.PASSED["batch_uniformity"] += 1
