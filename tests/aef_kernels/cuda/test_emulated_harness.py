"""The SIMT emulator itself: it reports each way a kernel can break the CUDA execution model (a
collective reached by part of a warp, a partial shuffle mask, divergent collectives, a barrier
after threads exited, a deadlock, an invalid launch, a misaligned access, a bad ldmatrix row
address), its shuffles, ldmatrix and conversions compute what CUDA defines, its mma fragment layout
owns every element once, and a kernel source with one index
broken (one per kernel family, plus a missing barrier) fails the emulated tests."""

from __future__ import annotations

import pytest
import torch

import emulator
import test_emulated_attention as attention
import test_emulated_group_norm as group_norm
import test_emulated_sphere as sphere

pytestmark = pytest.mark.skipif(bool(emulator.UNAVAILABLE), reason=f"emulator: {emulator.UNAVAILABLE}")

# selftest.cu, enum Probe.
(PARTIAL_WARP, PARTIAL_MASK, BARRIER_AFTER_EXIT, DEADLOCK, DIVERGENT, GRID_Y, BLOCK, RACE, SHUFFLES, BLOCK_SUM,
 MISALIGNED, LDMATRIX, LDMATRIX_MISALIGNED, LDMATRIX_OUTSIDE) = range(14)
CUDA_ERROR_INVALID_CONFIGURATION, CUDA_ERROR_MISALIGNED_ADDRESS, CUDA_ERROR_LAUNCH_FAILURE = 9, 716, 719


def _probe(emu, which, seed=1):
    out = torch.zeros(256 * 8)
    emu.reset(seed)
    status = emu.lib.emu_selftest(which, out.data_ptr())
    return status, emu.failures(), out


@pytest.mark.parametrize("which,status,message", [
    (PARTIAL_WARP, CUDA_ERROR_LAUNCH_FAILURE, "reached by part of a warp"),
    (PARTIAL_MASK, CUDA_ERROR_LAUNCH_FAILURE, "partial mask 0x0000ffff"),
    (BARRIER_AFTER_EXIT, CUDA_ERROR_LAUNCH_FAILURE, "__syncthreads"),
    (DEADLOCK, CUDA_ERROR_LAUNCH_FAILURE, "deadlock"),
    (DIVERGENT, CUDA_ERROR_LAUNCH_FAILURE, "divergent warp collectives"),
    (GRID_Y, CUDA_ERROR_INVALID_CONFIGURATION, "grid y = 65536"),
    (BLOCK, CUDA_ERROR_INVALID_CONFIGURATION, "1025 threads"),
    (MISALIGNED, CUDA_ERROR_MISALIGNED_ADDRESS, "float4' needs 16-byte alignment"),
    (LDMATRIX_MISALIGNED, CUDA_ERROR_MISALIGNED_ADDRESS, "misaligned ldmatrix row address"),
    (LDMATRIX_OUTSIDE, CUDA_ERROR_LAUNCH_FAILURE, "ldmatrix row address past the kernels' shared memory (lane 9)"),
], ids=["partial_warp", "partial_mask", "barrier_after_exit", "deadlock", "divergent", "grid_y", "block_size",
        "misaligned", "ldmatrix_misaligned", "ldmatrix_outside"])
@pytest.mark.parametrize("seed", [1, 2])
def test_a_rule_broken_is_reported(emu, which, status, message, seed):
    """The launch returns the CUDA error a GPU would give (a launch failure for a fault inside the
    kernel, an invalid configuration for a launch the hardware refuses) and the failure log names
    what went wrong, under either schedule."""
    got, failures, _ = _probe(emu, which, seed)
    assert got == status
    assert len(failures) == 1 and message in failures[0], failures


def test_a_fault_is_sticky_until_reset(emu):
    """After a fault every later launch reports it and runs nothing, as in a faulted CUDA context;
    a reset clears it."""
    _probe(emu, PARTIAL_MASK)
    out = torch.zeros(8)
    assert emu.lib.emu_selftest(BLOCK_SUM, out.data_ptr()) == CUDA_ERROR_LAUNCH_FAILURE
    assert (out == 0).all()
    status, failures, out = _probe(emu, BLOCK_SUM)
    assert status == 0 and not failures and out[0] == sum(range(256))


def test_block_reduction_through_shared_memory(emu):
    """Shuffles, shared memory and barriers give the right sum in every block of a 3 x 2 grid."""
    status, failures, out = _probe(emu, BLOCK_SUM)
    assert status == 0 and not failures
    assert (out[:6] == sum(range(256))).all() and (out[6:] == 0).all()


def _cuda_shuffle(values, kind, arg, width):
    """CUDA's definition (Programming Guide, warp shuffle functions) per lane of one warp."""
    out = []
    for lane in range(32):
        base = lane - lane % width
        if kind == "idx":
            src = base + arg % width
        elif kind == "up":
            src = lane - arg if lane - arg >= base else lane
        elif kind == "down":
            src = lane + arg if lane + arg < base + width else lane
        else:
            src = lane ^ arg
            src = src if src < base + width else lane
        out.append(values[src])
    return out


def test_shuffles_follow_the_cuda_definition(emu):
    """Every shuffle form at widths 32 and 8 returns the lane CUDA defines, including the edge
    cases (up/down past a segment keep the own value; xor into a later segment keeps it too)."""
    status, failures, out = _probe(emu, SHUFFLES)
    assert status == 0 and not failures
    got = out[: 64 * 8].view(64, 8)
    forms = [("idx", 5, 32), ("up", 3, 32), ("down", 3, 32), ("xor", 9, 32),
             ("idx", 13, 8), ("up", 3, 8), ("down", 3, 8), ("xor", 9, 8)]
    for warp in range(2):
        values = [float((warp * 32 + l) * 10 + 1) for l in range(32)]
        for i, (kind, arg, width) in enumerate(forms):
            assert got[warp * 32: warp * 32 + 32, i].tolist() == _cuda_shuffle(values, kind, arg, width), (kind, width)


def _ldmatrix_reference(tile, rows, count, trans):
    """PTX ISA ("Warp-level matrix load instruction: ldmatrix", fragment layout of .m8n8 .b16): lanes
    8i .. 8i + 7 give the addresses of rows 0-7 of matrix i; register i of lane 4g + t holds elements
    (g, 2t) and (g, 2t + 1) of matrix i, the first in the low 16 bits; .trans: (2t, g) and (2t + 1, g)."""
    out = [[0] * 4 for _ in range(32)]
    for i in range(count):
        m = [tile[rows[8 * i + j]] for j in range(8)]
        for lane in range(32):
            g, t = lane // 4, lane % 4
            lo, hi = (m[2 * t][g], m[2 * t + 1][g]) if trans else (m[g][2 * t], m[g][2 * t + 1])
            out[lane][i] = lo | hi << 16
    return out


def test_ldmatrix_follows_the_ptx_layout(emu):
    """Every ldmatrix form (.x1, .x2, .x4, with and without .trans) gives each lane the registers the
    PTX ISA's fragment layout defines, from rows whose addresses the lanes supply in a permuted
    order (two warps, 32 rows each), and reads no address of a lane the form leaves out (those
    point past shared memory)."""
    status, failures, out = _probe(emu, LDMATRIX)
    assert status == 0 and not failures, failures
    got = out[: 64 * 24].view(torch.int32).view(64, 6, 4)
    tile = [[r * 8 + c for c in range(8)] for r in range(64)]
    for warp in range(2):
        rows = [warp * 32 + (lane * 5 + 3) % 32 for lane in range(32)]
        for form, (count, trans) in enumerate([(1, False), (2, False), (4, False), (1, True), (2, True), (4, True)]):
            want = torch.tensor(_ldmatrix_reference(tile, rows, count, trans), dtype=torch.int64).to(torch.int32)
            assert torch.equal(got[warp * 32: warp * 32 + 32, form], want), (warp, count, trans)


def test_a_race_shows_as_schedule_dependence(emu):
    """A shared-memory read with no barrier after the write it needs gives different results under
    different schedules (the write's value, or the NaN poison of unwritten shared memory), which
    is what the two-schedule comparison of the kernel tests relies on."""
    results = {_probe(emu, RACE, seed)[2][0].item() for seed in range(8)}
    assert 1.0 in results and any(r != r for r in results), results


def test_mma_fragment_layout_owns_every_element_once(emu):
    """The A (16 x 16), B (16 x 8) and C/D (16 x 8) fragment layouts of mma.m16n8k16, as the
    emulator takes them from the PTX ISA, cover each matrix element exactly once."""
    assert emu.lib.emu_mma_layout_check() == b""


def _convert(emu, kind, x, out_dtype):
    out = torch.empty(x.shape, dtype=out_dtype)
    emu.lib.emu_convert(kind, x.data_ptr(), out.data_ptr(), x.numel())
    return out


@pytest.mark.parametrize("dtype,to_kind,from_kind", [(torch.float16, 0, 1), (torch.bfloat16, 2, 3)])
def test_conversions_round_to_nearest_even(emu, dtype, to_kind, from_kind):
    """float32 -> 16-bit rounds to nearest even (ties, subnormals, overflow to inf, NaN kept NaN)
    exactly as torch does, and every one of the 65,536 16-bit patterns widens exactly."""
    gen = torch.Generator().manual_seed(0)
    bits = torch.randint(-2 ** 31, 2 ** 31, (1 << 20,), generator=gen, dtype=torch.int64).to(torch.int32)
    x = torch.cat([bits.view(torch.float32), torch.tensor([0.0, -0.0, 65504.0, 65519.99, 65520.0, 2.0 ** -25,
                                                           2.0 ** -24 * 1.5, 2.0 ** -24 * 2.5, float("inf"),
                                                           1.0 + 2.0 ** -11, 1.0 + 3 * 2.0 ** -11,
                                                           1.0 + 2.0 ** -8, 3.0e38, float("nan")])])
    got = _convert(emu, to_kind, x, dtype)
    want = x.to(dtype)
    nan = torch.isnan(want)
    assert torch.equal(torch.isnan(got), nan)
    assert torch.equal(got[~nan].view(torch.int16), want[~nan].view(torch.int16))
    patterns = torch.arange(-2 ** 15, 2 ** 15, dtype=torch.int32).to(torch.int16).view(dtype)
    wide = _convert(emu, from_kind, patterns, torch.float32)
    ref = patterns.float()
    assert torch.equal(torch.isnan(wide), torch.isnan(ref))
    assert torch.equal(wide[~torch.isnan(ref)].view(torch.int32), ref[~torch.isnan(ref)].view(torch.int32))


# ---- mutation check ------------------------------------------------------------------------------------

MUTATIONS = {
    # The validity bit of score column 2t + e taken from column 2t + 1 - e.
    "attention_fwd": ("axial_attention.cu",
                      "valid |= unsigned(key_valid(p, ms, kb + j * 8 + 2 * t + e)) << (2 * j + e);",
                      "valid |= unsigned(key_valid(p, ms, kb + j * 8 + 2 * t + 1 - e)) << (2 * j + e);"),
    # The V-type B fragments (V; C1 and C2 in the backward) read with ldmatrix without .trans: each
    # lane gets a row of the tile where the mma wants a column.
    "attention_ldmatrix": ("axial_attention.cuh", "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16",
                           "ldmatrix.sync.aligned.m8n8.x4.shared.b16"),
    # The 16-column slice of dS and P multiplied with the C rows of the slice half a step earlier.
    "attention_bwd": ("axial_attention_bwd.cu", "const int64_t y0 = cb + c * 16;", "const int64_t y0 = cb + c * 8;"),
    # A group's statistics merged from the partials one channel to the right.
    "group_norm": ("group_norm.cu", "const float2* pg = partials + n * s.chunks * s.C + (ng - n * s.G) * s.CG;",
                   "const float2* pg = partials + n * s.chunks * s.C + (ng - n * s.G) * s.CG + 1;"),
    # Neighbouring lanes of a row group swap the packs they load (register path, forward).
    "vmf_normalize": ("vmf_normalize.cu",
                      "const int64_t col = static_cast<int64_t>(c * LANES + lane) * VEC;\n"
                      "      if (active && col < D) {\n        v[c] =",
                      "const int64_t col = static_cast<int64_t>(c * LANES + (lane ^ 1)) * VEC;\n"
                      "      if (active && col < D) {\n        v[c] ="),
    # Each sample paired with itself instead of the previous one.
    "batch_uniformity": ("batch_uniformity.cu", "const T* there = u + prev * r.sb + m * r.sm;",
                         "const T* there = u + b * r.sb + m * r.sm;"),
    # The barrier between the per-warp sums and thread 0 adding them removed: a race.
    "batch_uniformity_race": ("batch_uniformity.cu",
                              "warp_sums[threadIdx.x / 32] = v;\n  __syncthreads();",
                              "warp_sums[threadIdx.x / 32] = v;\n"),
}


def _runs(family, emu, check):
    """The family's emulated test cases, as callables that raise AssertionError on a failure."""
    if family.startswith("attention"):
        return [lambda c=c: attention.check_case(emu, c, check) for c in attention.QUICK]
    if family.startswith("group_norm"):
        return [lambda c=c: group_norm.test_group_norm_matches_float64_reference(emu, *c, check)
                for c in group_norm.CASES]
    if family == "vmf_normalize":
        return [lambda c=c: sphere.test_vmf_normalize_matches_float64_reference(emu, *c, check)
                for c in sphere.VMF_CASES]
    return [lambda c=c: sphere.test_batch_uniformity_matches_float64_reference(emu, *c, check)
            for c in sphere.UNIFORMITY_CASES]


@pytest.mark.parametrize("family", list(MUTATIONS))
def test_a_broken_kernel_fails_its_emulated_tests(family, within_reference_error):
    """A copy of the kernel source with one index broken (or one barrier removed) is built, and
    the family's emulated tests must fail on it: the harness is shown able to fail."""
    emu = emulator.load(MUTATIONS[family])
    emulator.MUTANTS["built"] += 1
    counts = emulator.PASSED.copy()
    caught = None
    try:
        for run in _runs(family, emu, within_reference_error):
            try:
                run()
            except AssertionError as e:
                caught = e
                break
    finally:
        emulator.PASSED.clear()
        emulator.PASSED.update(counts)
    assert caught is not None, f"{family}: every emulated case passed on the broken kernel"
    emulator.MUTANTS["failed"] += 1
