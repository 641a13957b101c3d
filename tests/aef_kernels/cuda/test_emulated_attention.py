"""The CUDA axial-attention kernels (csrc/axial_attention*.cu, compiled unchanged by g++) run on the
CPU through the SIMT emulator and are compared with float64 references under the suite's error rule
(docs/kernels.md §8.6): forward, lse and all three gradients, with masks of both shapes, fully masked
sequences, NaN stored at masked keys, strided and misaligned operands, more than 65,535 sequences and
input offsets past 2^31 elements. Every case runs the forward and the backward under two fiber
schedules and requires bitwise-equal results; operands that are not 16-byte aligned run the
element-staged kernels, which must agree bit for bit with the 16-byte-staged ones, and sequences with
a single column block run single-buffered kernels, which must agree bit for bit with the
double-buffered ones."""

from __future__ import annotations

import ctypes
import itertools
import math
import re
from dataclasses import dataclass

import pytest
import torch

import emulator
from emulator import ops

pytestmark = pytest.mark.skipif(bool(emulator.UNAVAILABLE), reason=f"emulator: {emulator.UNAVAILABLE}")

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
LN2 = math.log(2.0)


@dataclass(frozen=True)
class Case:
    dtype: torch.dtype
    d: int
    T: int
    Tq: int
    B: int = 2
    H: int = 1
    W: int = 2
    NH: int = 2
    mask: str = "none"  # "none", "bt" (B, T) or "bthw" (B, T, H, W)
    fully_masked: bool = False  # some sequences have no valid key
    nan_masked: bool = False  # NaN stored in K and V at masked keys
    layout: str = "contiguous"  # "fused_qkv", "padded" (odd row padding), "odd_offset"

    def __str__(self):
        flags = [self.mask, self.layout] + ["fully_masked"] * self.fully_masked + ["nan_masked"] * self.nan_masked
        return (f"{str(self.dtype)[6:]}-d{self.d}-T{self.T}-Tq{self.Tq}-{self.B}x{self.H}x{self.W}x{self.NH}-"
                + "-".join(flags))


QUICK = [
    Case(F16, 16, T=1, Tq=1),
    Case(BF16, 32, T=3, Tq=17, mask="bt", fully_masked=True, nan_masked=True),
    Case(F16, 64, T=17, Tq=17, mask="bthw", fully_masked=True, nan_masked=True, layout="fused_qkv"),
    Case(BF16, 128, T=65, Tq=65, mask="bt", layout="padded", NH=1),
    Case(F16, 128, T=64, Tq=3, mask="bthw", nan_masked=True, layout="odd_offset"),
    Case(BF16, 16, T=512, Tq=512, B=1, W=1, NH=1, mask="bt", nan_masked=True),
    Case(F32, 16, T=17, Tq=17, mask="bt", fully_masked=True, nan_masked=True),
    Case(F32, 32, T=64, Tq=64, B=1, layout="fused_qkv"),
    Case(F32, 64, T=65, Tq=3, B=1, layout="padded", mask="bthw"),
    Case(F32, 128, T=3, Tq=17, B=1, layout="odd_offset", mask="bthw", fully_masked=True, nan_masked=True),
]


def _full_cases():
    masks = ["none", "bt", "bthw"]
    same = itertools.cycle(["contiguous", "fused_qkv", "padded", "odd_offset"])
    other = itertools.cycle(["contiguous", "padded", "odd_offset"])
    out, i = [], 0
    for dtype in (F32, F16, BF16):
        for d in (16, 32, 64, 128):
            for T in (1, 3, 17, 64, 65, 512):
                for Tq in sorted({T, {1: 3, 3: 1, 17: 64, 64: 17, 65: 1, 512: 65}[T]}):
                    # Fused QKV slices need Tq = T.
                    layout = next(same) if Tq == T else next(other)
                    mask = masks[i % 3]
                    one = T * Tq >= 512 * 65  # long sequences: one of them keeps the case affordable
                    out.append(Case(dtype, d, T=T, Tq=Tq, B=1 if one else 2, W=1 if one else 2,
                                    NH=1 if one else 2, mask=mask, fully_masked=mask != "none" and i % 2 == 0,
                                    nan_masked=mask != "none", layout=layout))
                    i += 1
    return out


CASES = _full_cases() if emulator.FULL else QUICK


# ---- inputs ------------------------------------------------------------------------------------------

def _key_mask(case: Case, gen: torch.Generator) -> torch.Tensor | None:
    """True = attend. Fully masked cases lose batch 0 (a (B, T) mask) or pixel (0, 0) (a (B, T, H, W) one)."""
    if case.mask == "none":
        return None
    shape = (case.B, case.T) if case.mask == "bt" else (case.B, case.T, case.H, case.W)
    m = torch.rand(shape, generator=gen) > 0.3
    if case.fully_masked:
        if case.mask == "bt":
            m[0] = False
        else:
            m[:, :, 0, 0] = False
    return m


def _place(values: list[torch.Tensor], layout: str) -> list[torch.Tensor]:
    """The kernel's operands: ``values`` laid out as ``layout`` inside NaN-filled memory, so that an
    element the kernel should not read poisons its result."""
    if layout == "fused_qkv":
        shape = values[0].shape
        d = shape[-1]
        buf = torch.full((*shape[:-1], 3 * d), float("nan"), dtype=values[0].dtype)
        out = []
        for i, x in enumerate(values):
            view = buf[..., i * d:(i + 1) * d]
            view.copy_(x)
            out.append(view)
        return out
    out = []
    for x in values:
        if layout == "padded":
            buf = torch.full((*x.shape[:-1], x.shape[-1] + 3), float("nan"), dtype=x.dtype)
            view = buf[..., : x.shape[-1]]
        elif layout == "odd_offset":
            flat = torch.full((x.numel() + 1 + 2 * ops.GUARD,), float("nan"), dtype=x.dtype)
            view = flat[ops.GUARD + 1: ops.GUARD + 1 + x.numel()].view(x.shape)
        else:
            view = ops.Guarded(x.shape, x.dtype).t
        view.copy_(x)
        out.append(view)
    return out


def _key_positions(mask: torch.Tensor, shape) -> torch.Tensor:
    """The mask as a bool over (B, T, H, W, heads, d) for K and V."""
    B, T, H, W, NH, d = shape
    m = mask[:, :, None, None] if mask.dim() == 2 else mask
    return m[..., None, None].expand(B, T, H, W, NH, d)


# ---- reference ---------------------------------------------------------------------------------------

def reference(q, k, v, mask, scale, grad):
    """o, lse2, dq, dk, dv in the precision of the inputs; masked keys get probability 0 and a query
    without any valid key gets o = 0, lse2 = +inf and zero gradients."""
    q, k, v = (x.detach().requires_grad_() for x in (q, k, v))
    B, Tq, H, W, NH, d = q.shape
    T = k.shape[1]
    qs, ks, vs = (x.permute(0, 2, 3, 4, 1, 5) for x in (q, k, v))  # (B, H, W, heads, frames, d)
    s = (qs @ ks.transpose(-1, -2)) * scale
    if mask is None:
        valid = torch.ones((1,) * 6, dtype=torch.bool)
        s_in = s
    else:
        m = mask[:, None, None, None, None, :] if mask.dim() == 2 else mask.permute(0, 2, 3, 1)[:, :, :, None, None, :]
        valid = m.any(-1, keepdim=True)
        s_in = torch.where(valid, torch.where(m, s, float("-inf")), 0.0)
    p = torch.where(valid, torch.softmax(s_in, -1), 0.0)
    o = (p @ vs).permute(0, 4, 1, 2, 3, 5)
    lse = torch.where(valid, torch.logsumexp(s_in.detach().to(torch.promote_types(s.dtype, F32)), -1, keepdim=True),
                      float("inf"))
    lse2 = (lse[..., 0] / LN2).permute(0, 4, 1, 2, 3)
    o.backward(grad.to(o.dtype))
    return o.detach(), lse2, q.grad, k.grad, v.grad


def gradient_term_scales(q, k, v, mask, scale, grad) -> tuple[float, float]:
    """Magnitudes of the terms whose sums and differences dq and dk are. dS = P (dP - delta) with
    dP = dO . v and delta = dO . o, two d-term dot products that cancel exactly where one key takes
    all the probability, so the error floor of dq and dk is set by P (|dO| . |v| + |dO| . |o|) times
    |k| (or |q|), the size of the terms summed, not by the (possibly zero) result."""
    q, k, v, grad = (x.double() for x in (q, k, v, grad))
    qs, ks, vs, gs = (x.permute(0, 2, 3, 4, 1, 5) for x in (q, k, v, grad))
    s = (qs @ ks.transpose(-1, -2)) * scale
    if mask is not None:
        m = mask[:, None, None, None, None, :] if mask.dim() == 2 else mask.permute(0, 2, 3, 1)[:, :, :, None, None, :]
        s = torch.where(m, s, float("-inf"))
    p = torch.nan_to_num(torch.softmax(s, -1), nan=0.0)
    o = p @ vs
    ds_abs = p * (gs.abs() @ vs.abs().transpose(-1, -2) + (gs * o).abs().sum(-1, keepdim=True))
    return (scale * (ds_abs @ ks.abs()).max().item(), scale * (ds_abs.transpose(-1, -2) @ qs.abs()).max().item())


def check_case(emu, case: Case, check, seed: int = 0, schedules=(1, 2)):
    gen = torch.Generator().manual_seed(seed)
    dt = case.dtype
    qshape = (case.B, case.Tq, case.H, case.W, case.NH, case.d)
    kshape = (case.B, case.T, case.H, case.W, case.NH, case.d)
    q = torch.randn(qshape, generator=gen).to(dt)
    k = torch.randn(kshape, generator=gen).to(dt)
    v = torch.randn(kshape, generator=gen).to(dt)
    grad = torch.randn(qshape, generator=gen).to(dt)
    mask = _key_mask(case, gen)
    scale = case.d ** -0.5

    kq, kk, kv = _place([q, k, v], case.layout)
    if case.nan_masked and mask is not None:
        hidden = ~_key_positions(mask, kshape)
        kk.masked_fill_(hidden, float("nan"))
        kv.masked_fill_(hidden, float("nan"))
    kmask = None if mask is None else ops.embed(mask.to(torch.uint8))

    runs = []
    for schedule in schedules:
        emu.reset(seed=schedule)
        o, lse = ops.attention_fwd(emu, kq, kk, kv, kmask, scale)
        g = ops.embed(grad)
        dq, dk, dv = ops.attention_bwd(emu, g, kq, kk, kv, o, lse, kmask, scale)
        runs.append((o, lse, dq, dk, dv))
    for name, a, b in zip(("o", "lse", "dq", "dk", "dv"), runs[0], runs[-1]):
        assert torch.equal(ops.bits(a), ops.bits(b)), f"{case}: {name} differs between two fiber schedules"
    o, lse, dq, dk, dv = runs[0]

    exact = reference(q.double(), k.double(), v.double(), mask, scale, grad.double())
    low = reference(q, k, v, mask, scale, grad)
    terms = dict(zip(("dq", "dk"), gradient_term_scales(q, k, v, mask, scale, grad)))
    for name, out, lo, ex, factor in zip(("o", "lse", "dq", "dk", "dv"), (o, lse, dq, dk, dv), low, exact,
                                         (2, 2, 3, 3, 3)):
        if name in terms:
            check(f"{case}: {name}", out, lo, ex, factor, dt, scale=max(terms[name], ex.abs().max().item()))
            continue
        if name == "lse":
            finite = torch.isfinite(ex)
            assert torch.equal(torch.isinf(out), ~finite), f"{case}: lse is +inf exactly where a query has no key"
            if finite.any():
                check(f"{case}: lse", out[finite], lo[finite], ex[finite], factor, dt)
            continue
        check(f"{case}: {name}", out, lo, ex, factor, dt)
    if mask is not None:
        none_valid = ~exact[1].isfinite()
        assert (o[none_valid] == 0).all() and (dq[none_valid] == 0).all(), f"{case}: rows without keys"
        hidden = ~_key_positions(mask, kshape)
        assert (dk[hidden] == 0).all() and (dv[hidden] == 0).all(), f"{case}: masked keys get zero dk, dv"


@pytest.mark.parametrize("case", CASES, ids=str)
def test_attention_matches_float64_reference_under_two_schedules(emu, case, within_reference_error):
    """The emulated forward and backward meet the error rule against float64 (o, lse, dq, dk, dv),
    give exact zeros for queries without keys and for masked keys' gradients (NaN stored there
    included), read nothing outside their operands (NaN-filled surroundings), and are bitwise equal
    under two different fiber and block schedules."""
    check_case(emu, case, within_reference_error)
    emulator.PASSED["attention"] += 1


def test_attention_over_65535_sequences(emu, within_reference_error):
    """More sequences than a grid's y or z axis holds (256 x 257 pixels = 65,792): every sequence is
    computed, forward and backward (the launcher puts sequences on grid axis 0)."""
    # One schedule: the schedule comparison is the other tests' business, and this grid is 16,448 blocks.
    check_case(emu, Case(F16, 16, T=1, Tq=1, B=1, H=256, W=257, NH=1, mask="bthw", nan_masked=True),
               within_reference_error, schedules=(1,))
    emulator.PASSED["attention"] += 1


def _sparse(n_elements: int, dtype: torch.dtype) -> torch.Tensor:
    """A flat tensor of ``n_elements`` over an anonymous mapping that reserves no memory: only the
    pages the test and the kernel touch are ever backed."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    nbytes = n_elements * torch.finfo(dtype).bits // 8
    prot_rw, map_private_anon_noreserve = 0x1 | 0x2, 0x02 | 0x20 | 0x4000
    addr = libc.mmap(None, nbytes, prot_rw, map_private_anon_noreserve, -1, 0)
    if addr in (None, ctypes.c_void_p(-1).value):
        pytest.skip(f"cannot map {nbytes} bytes of address space (errno {ctypes.get_errno()})")
    return torch.frombuffer((ctypes.c_uint8 * nbytes).from_address(addr), dtype=dtype)


@pytest.mark.parametrize("dtype", [BF16, F32])
def test_attention_reads_operands_past_2_31_elements(emu, dtype, within_reference_error):
    """q, k and v whose batch stride is 2^31 + 96 elements: batch 1 starts past 2^31 elements of one
    sparse mapping, so the operand offsets need 64-bit arithmetic (an offset cut to 32 bits reads
    unwritten pages, which are zero). The outputs are contiguous and small: offsets past 2^31 in
    the outputs are not exercised."""
    B, T, H, W, NH, d = 2, 17, 1, 2, 2, 32
    per_batch = T * H * W * NH * d
    stride_b = 2 ** 31 + 96
    big = _sparse(stride_b + 3 * per_batch + 64, dtype)
    gen = torch.Generator().manual_seed(5)
    shape = (B, T, H, W, NH, d)
    strides = (stride_b, H * W * NH * d, W * NH * d, NH * d, d, 1)
    views = [big.as_strided(shape, strides, storage_offset=i * per_batch) for i in range(3)]
    values = [torch.randn(shape, generator=gen).to(dtype) for _ in range(3)]
    for view, x in zip(views, values):
        view.copy_(x)
    mask = torch.rand((B, T), generator=gen) > 0.25
    grad = torch.randn(shape, generator=gen).to(dtype)
    scale = d ** -0.5
    emu.reset(seed=3)
    o, lse = ops.attention_fwd(emu, *views, ops.embed(mask.to(torch.uint8)), scale)
    dq, dk, dv = ops.attention_bwd(emu, ops.embed(grad), *views, o, lse, ops.embed(mask.to(torch.uint8)), scale)
    exact = reference(*(x.double() for x in values), mask, scale, grad.double())
    low = reference(*values, mask, scale, grad)
    terms = dict(zip(("dq", "dk"), gradient_term_scales(*values, mask, scale, grad)))
    for name, out, lo, ex, factor in zip(("o", "dq", "dk", "dv"), (o, dq, dk, dv), low[:1] + low[2:],
                                         exact[:1] + exact[2:], (2, 3, 3, 3)):
        within_reference_error(f"offsets past 2^31: {name}", out, lo, ex, factor, dtype,
                               scale=max(terms.get(name, 0.0), ex.abs().max().item()))
    emulator.PASSED["attention"] += 1


@pytest.mark.parametrize("dtype", [F32, F16, BF16])
@pytest.mark.parametrize("poison", [float("nan"), float("inf")])
def test_a_non_finite_sequence_leaves_the_others_bitwise_unchanged(emu, dtype, poison):
    """NaN or Inf in q, k, v and dO of one sequence (pixel (0, 0), head 0 of sample 0, at valid
    positions) changes no bit of any other sequence's o, lse, dq, dk or dv: a warp's tile never
    mixes sequences."""
    B, T, H, W, NH, d = 2, 17, 2, 2, 2, 32
    gen = torch.Generator().manual_seed(9)
    shape = (B, T, H, W, NH, d)
    q, k, v, grad = (torch.randn(shape, generator=gen).to(dtype) for _ in range(4))
    mask = ops.embed((torch.rand((B, T, H, W), generator=gen) > 0.2).to(torch.uint8))
    results = []
    for poisoned in (False, True):
        xs = [x.clone() for x in (q, k, v, grad)]
        if poisoned:
            for x in xs:
                x[0, 3:7, 0, 0, 0, :5] = poison
        kq, kk, kv, kg = (ops.embed(x) for x in xs)
        emu.reset(seed=4)
        o, lse = ops.attention_fwd(emu, kq, kk, kv, mask, d ** -0.5)
        results.append((o, lse, *ops.attention_bwd(emu, kg, kq, kk, kv, o, lse, mask, d ** -0.5)))
    assert not torch.isfinite(results[1][0][0, :, 0, 0, 0]).all(), "the poison did not reach its own sequence"
    others = torch.ones((B, H, W, NH), dtype=torch.bool)
    others[0, 0, 0, 0] = False
    for name, clean, dirty in zip(("o", "lse", "dq", "dk", "dv"), *results):
        sel = others[:, None].expand(B, T, H, W, NH)
        assert torch.equal(ops.bits(clean[sel]), ops.bits(dirty[sel])), f"{name} of a clean sequence changed"
    emulator.PASSED["attention"] += 1


def _staging(emu) -> set[int]:
    """VEC (elements per staging load) of every attention kernel launched since the last reset."""
    return {int(m.group(1)) for _, _, caller in emu.launches() if (m := re.search(r"int VEC = (\d+)", caller))}


@pytest.mark.parametrize("dtype", [F32, BF16])
def test_element_staging_matches_16_byte_staging_bitwise(emu, dtype):
    """The launchers stage tiles in 16-byte loads only where every row of q, k, v (and, in the
    backward, dO) starts on a 16-byte boundary, a dimension of length one not counting; otherwise
    they run the element-staged kernels (VEC = 1), which fill the same shared tiles and so give
    o, lse, dq, dk and dv equal bit for bit to the 16-byte-staged kernels'. 33 frames: 96-thread
    blocks (three row tiles)."""
    B, T, H, W, NH, d = 2, 33, 1, 2, 1, 32
    gen = torch.Generator().manual_seed(11)
    shape = (B, T, H, W, NH, d)
    values = [torch.randn(shape, generator=gen).to(dtype) for _ in range(4)]
    mask = ops.embed((torch.rand((B, T), generator=gen) > 0.3).to(torch.uint8))
    vector = 16 // values[0].element_size()

    def run(layout="contiguous", grad_offset=0, odd_h_stride=False):
        q, k, v = _place(values[:3], layout)
        if odd_h_stride:  # H = 1: the h stride never steps, so an odd one keeps the rows aligned
            q, k, v = (x.as_strided(x.shape, x.stride()[:2] + (3,) + x.stride()[3:]) for x in (q, k, v))
        grad = ops.Guarded(shape, dtype, offset=grad_offset)
        grad.t.copy_(values[3])
        emu.reset(seed=1)
        o, lse = ops.attention_fwd(emu, q, k, v, mask, d ** -0.5)
        fwd = _staging(emu)
        emu.reset(seed=1)
        grads = ops.attention_bwd(emu, grad.t, q, k, v, o, lse, mask, d ** -0.5)
        return (o, lse, *grads), (fwd, _staging(emu))

    reference_run, staging = run()
    assert staging == ({vector}, {vector})
    for changes, want in ((dict(layout="odd_offset"), ({1}, {1})), (dict(grad_offset=2), ({vector}, {1})),
                          (dict(odd_h_stride=True), ({vector}, {vector}))):
        outputs, staging = run(**changes)
        assert staging == want, (changes, staging)
        for name, a, b in zip(("o", "lse", "dq", "dk", "dv"), reference_run, outputs):
            assert torch.equal(ops.bits(a), ops.bits(b)), f"{changes}: {name} differs from the 16-byte-staged run"
    emulator.PASSED["attention"] += 1


def test_a_key_block_copied_over_the_one_in_use_fails(within_reference_error):
    """A forward whose two key-block buffers are one (each next block's copy, issued before the
    warps read the current one, lands on it) must fail the emulated test: the double buffering of
    the 16-byte-staged kernels is shown to be checked, not only its single-buffered fallback."""
    emu = emulator.load(("axial_attention.cu",
                         "return tile + (kb / kKeyBlock % kBuffers) * 2 * kKeyBlock * kStride;", "return tile;"))
    emulator.MUTANTS["built"] += 1
    with pytest.raises(AssertionError):
        check_case(emu, Case(BF16, 16, T=512, Tq=512, B=1, W=1, NH=1, mask="bt"), within_reference_error,
                   schedules=(1,))
    emulator.MUTANTS["failed"] += 1


def _buffers(emu) -> set[tuple[str, int, int]]:
    """(launcher, pass, BUFFERS) of every attention kernel launched since the last reset; the pass is
    -1 for the forward."""
    out = set()
    for _, _, caller in emu.launches():
        if (m := re.search(r"(launch_\w+_kernel).*int BUFFERS = (\d+)", caller)):
            passed = re.search(r"int PASS = (\d+)", caller)
            out.add((m.group(1), int(passed.group(1)) if passed else -1, int(m.group(2))))
    return out


# Both instantiations from one source: the variant's single_block_buffers never picks one buffer.
DOUBLE_BUFFERED = ("axial_attention.cuh", "return shared_rows(1, buffer_rows) <", "return shared_rows(1, buffer_rows) >")
FWD, DQ, DKDV = ("launch_fwd_kernel", -1), ("launch_pass_kernel", 0), ("launch_pass_kernel", 1)


@pytest.mark.parametrize("case, single", [
    # Every pass has one column block (the model's T = 16).
    (Case(BF16, 64, T=16, Tq=16, mask="bt", nan_masked=True), {FWD, DQ, DKDV}),
    # 40 keys fit one block of 64; 70 queries do not (the dk/dv pass's blocks of 64 at d = 32).
    (Case(F16, 32, T=40, Tq=70, B=1, mask="bthw", fully_masked=True, nan_masked=True), {FWD, DQ}),
    (Case(F32, 16, T=9, Tq=9, mask="bt", nan_masked=True), {FWD, DQ, DKDV}),
], ids=str)
def test_single_buffered_kernels_match_double_buffered_bitwise(emu, case, single):
    """Where a pass's columns (keys; queries in the dk/dv pass) fit one column block the launchers
    run its single-buffered instantiation (BUFFERS = 1: half the column tile, nothing to overlap);
    o, lse, dq, dk and dv equal bit for bit those of the double-buffered kernels, which a build
    whose single_block_buffers never picks one buffer runs for the same inputs."""
    gen = torch.Generator().manual_seed(13)
    qshape = (case.B, case.Tq, case.H, case.W, case.NH, case.d)
    kshape = (case.B, case.T, case.H, case.W, case.NH, case.d)
    q, grad = (torch.randn(qshape, generator=gen).to(case.dtype) for _ in range(2))
    k, v = (torch.randn(kshape, generator=gen).to(case.dtype) for _ in range(2))
    mask = _key_mask(case, gen)
    kq, kk, kv = _place([q, k, v], case.layout)
    hidden = ~_key_positions(mask, kshape)
    kk.masked_fill_(hidden, float("nan"))
    kv.masked_fill_(hidden, float("nan"))
    kmask, kgrad = ops.embed(mask.to(torch.uint8)), ops.embed(grad)
    scale = case.d ** -0.5
    runs = []
    for build in (emu, emulator.load(DOUBLE_BUFFERED)):
        build.reset(seed=2)
        o, lse = ops.attention_fwd(build, kq, kk, kv, kmask, scale)
        runs.append(((o, lse, *ops.attention_bwd(build, kgrad, kq, kk, kv, o, lse, kmask, scale)), _buffers(build)))
    (single_run, single_launches), (double_run, double_launches) = runs
    assert double_launches == {(*which, 2) for which in (FWD, DQ, DKDV)}, double_launches
    assert single_launches == {(*which, 1 if which in single else 2) for which in (FWD, DQ, DKDV)}, single_launches
    for name, a, b in zip(("o", "lse", "dq", "dk", "dv"), single_run, double_run):
        assert torch.equal(ops.bits(a), ops.bits(b)), f"{case}: {name} differs between one and two buffers"
    emulator.PASSED["attention"] += 1
