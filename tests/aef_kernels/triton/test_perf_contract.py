"""The static performance contract of the Triton kernels (issue 15, item 1), read from the faithful AOT
compile of every configuration the launchers launch at the model's shapes, on sm_80 and sm_90 (the
session's ``aot_results``, shared with test_aot). Nothing here runs on a GPU: each rule is a
property of the code the compiler wrote that a slow kernel shows before it is ever timed.

Rules, for every hot configuration of every kernel (``RULES``):

- ``no_local``: no register spills and no local-memory instructions (stack/local bytes in the
  cubin, ld.local/st.local in the PTX, LDL/STL in the SASS).
- ``wgmma``: on sm_90, the matrix products of 16-bit dots run on ``wgmma.mma_async``.
- ``tensor_cores``: every dot runs on a matrix instruction (wgmma or mma.sync), not on FMA.
- ``wide_access``: every load and store of a tile (a pointer tensor of rank 2 or more) has a 16-byte
  access (``ld.global.v4``/``st.global.v4``/``cp.async`` 16), or the widest that the alignment of
  its rows allows where the data cannot be 16-byte aligned (``ALIGNMENT``).
- ``no_duplicated_warps``: no tile's layout places more warps along a dimension than the tile has
  extent for (a duplicated warp computes a copy).
- ``occupancy``: registers and shared memory leave room for the resident warps per SM that the
  kernel's budget asks for (``KERNELS``; reasoning in benchmarks/notes/perf_contract.md).

A breach that exists today is declared in ``KNOWN_BREACHES`` with its reason and the item of issue
15 that removes it; its test is a strict xfail, so the fix has to delete the entry. Every entry was
read off a compile of the configurations it names. The tables (one per kernel) are printed and
written at the end of the run.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from aef_kernels.triton import aot


@dataclass(frozen=True)
class Kernel:
    """A kernel's hot dtypes, whether it does matrix products, and its occupancy budget: the
    resident warps per SM its registers and shared memory must allow."""

    dtypes: tuple
    matrix: bool
    warps_per_sm: int


# Memory-bound kernels need bytes in flight (16 warps x 32 threads x 16 B x a few loads each covers
# the ~23 KB per SM that 4.3 TB/s x ~700 ns of DRAM latency asks of 132 SMs); matrix kernels keep
# their bytes in flight with cp.async stages and need two warps per sub-partition (8 per SM) so
# that one warp's softmax, epilogue or address arithmetic overlaps another's matrix instructions.
MEMORY, MATRIX = 16, 8
KERNELS = {
    "attn_fwd": Kernel(("bf16", "fp32"), True, MATRIX),
    "attn_bwd": Kernel(("bf16",), True, MATRIX),
    "attn_bwd_delta": Kernel(("bf16",), False, MEMORY),
    "conv3x3": Kernel(("bf16", "fp32"), True, MATRIX),
    "weight_grad": Kernel(("bf16", "fp32"), True, MATRIX),
    "down_dgrad": Kernel(("bf16", "fp32"), True, MATRIX),
    "exchange": Kernel(("bf16", "fp32"), True, MATRIX),
    "up_adjoint": Kernel(("bf16", "fp32"), False, MEMORY),
    "gn_stats_partials": Kernel(("bf16", "fp32"), False, MEMORY),
    "gn_stats_combine": Kernel(("fp32",), False, MEMORY),  # reads only the float32 partials
    "gn_apply": Kernel(("bf16", "fp32"), False, MEMORY),
    "gn_bwd_partials": Kernel(("bf16", "fp32"), False, MEMORY),
    "gn_bwd_combine": Kernel(("fp32",), False, MEMORY),  # reads only the float32 partials
    "gn_bwd": Kernel(("bf16", "fp32"), False, MEMORY),
    "vmf_normalize_fwd": Kernel(("bf16", "fp32"), False, MEMORY),
    "vmf_normalize_bwd": Kernel(("bf16", "fp32"), False, MEMORY),
    "uniformity_fwd": Kernel(("bf16", "fp32"), False, MEMORY),
    "uniformity_bwd": Kernel(("bf16", "fp32"), False, MEMORY),
    "sum_partials": Kernel(("bf16", "fp32"), False, MEMORY),
}

# Tiles whose rows cannot be 16-byte aligned: (AOT call, operand) -> the element count whose
# multiples start the contiguous runs. The source projection reads 7-band pixels: its activations
# and their gradient start every run at a multiple of 7 elements (only element-aligned); its
# transposed weight has rows of 2 x 2 x 7 = 28 elements (8-byte aligned in bf16, 16 in fp32).
ALIGNMENT = {("project", "a"): 7, ("project", "dx"): 7, ("project", "wt"): 28}

RULES = ("no_local", "wgmma", "tensor_cores", "wide_access", "no_duplicated_warps", "occupancy")

# (kernel, dtype, cc, rule) -> (why it breaches, the issue 15 item that fixes it). Empty since the
# sm_80 dk/dv pass at d = 128 moved to 64 x 32 blocks at 4 warps (2026-12-03); a new breach goes
# here with its reason, or is fixed.
KNOWN_BREACHES: dict[tuple[str, str, int, str], tuple[str, str]] = {}


def _kernel_of(r: aot.AOTResult) -> str:
    return r.name.split("[", 1)[0]


def _call_of(r: aot.AOTResult) -> str:
    return r.name.split("[", 1)[1].split(" ", 1)[0]


def _elt(r: aot.AOTResult) -> int:
    return 4 if r.dtype == "fp32" else 2


def allowed_bytes(r: aot.AOTResult, access: aot.Access) -> int:
    """16, or the largest power of two dividing the bytes between run starts where ``ALIGNMENT``
    says the rows cannot be 16-byte aligned."""
    run = ALIGNMENT.get((_call_of(r), access.operand))
    if run is None:
        return 16
    nbytes = run * _elt(r)
    return min(16, nbytes & -nbytes)


def register_budget(r: aot.AOTResult, warps_per_sm: int) -> tuple[int, int]:
    """The most registers per thread and shared bytes per block that still give ``warps_per_sm``
    resident warps per SM at this configuration's warps per block (see AOTResult.blocks_per_sm)."""
    blocks = -(-warps_per_sm // r.num_warps)
    per_partition = -(-blocks * r.num_warps // aot.SM_PARTITIONS)
    per_warp = aot.SM_REGISTERS // aot.SM_PARTITIONS // per_partition // aot.REGISTER_UNIT * aot.REGISTER_UNIT
    return min(255, per_warp // 32), aot.SM_SHARED[r.cc] // blocks - aot.BLOCK_RESERVED_SHARED


def breaches(r: aot.AOTResult, rule: str) -> list[str]:
    """What in ``r`` breaks ``rule``, one line each (empty: it holds)."""
    if rule == "no_local":
        return [f"spill/stack {r.spill_bytes} B, ld/st.local {r.local_ptx}, LDL/STL {r.local_sass}"] \
            if r.spill_bytes or r.local_ptx or r.local_sass else []
    if rule == "wgmma":
        sixteen = {"bf16", "f16"} & set(r.dot_types)
        return [f"{'/'.join(sorted(sixteen))} dots on {r.mma}"] if r.cc == 90 and sixteen and r.mma != "wgmma" else []
    if rule == "tensor_cores":
        return [f"dots of {'/'.join(r.dot_types)} on FMA"] if r.mma == "fma" else []
    if rule == "wide_access":
        return [f"{a.operand} ({a.kind}, line {a.line}): {a.bytes} B ({a.instruction}) < {allowed_bytes(r, a)} B"
                for a in r.accesses if a.rank >= 2 and a.bytes < allowed_bytes(r, a)]
    if rule == "no_duplicated_warps":
        return [f"{d.layout} over {'x'.join(map(str, d.shape))}: {d.factor} copies" for d in r.warp_duplication]
    if rule == "occupancy":
        need = KERNELS[_kernel_of(r)].warps_per_sm
        if r.warps_per_sm >= need:
            return []
        regs, smem = register_budget(r, need)
        return [f"{r.warps_per_sm} warps/SM < {need}: {r.registers} regs (budget {regs}), "
                f"{r.shared} B shared (budget {smem}) at {r.num_warps} warps"]
    raise ValueError(rule)


def _hot(results, kernel: str, dtype: str, cc: int) -> list[aot.AOTResult]:
    return [r for r in results if r.hot and r.cc == cc and r.dtype == dtype and _kernel_of(r) == kernel]


def _applies(kernel: str, rule: str, cc: int) -> bool:
    matrix = KERNELS[kernel].matrix
    return (rule not in ("wgmma", "tensor_cores") or matrix) and (rule != "wgmma" or cc == 90)


def _cases():
    for kernel, spec in KERNELS.items():
        for dtype in spec.dtypes:
            for cc in aot.TARGETS:
                for rule in RULES:
                    if not _applies(kernel, rule, cc):
                        continue
                    key = (kernel, dtype, cc, rule)
                    known = KNOWN_BREACHES.get(key)
                    marks = [pytest.mark.xfail(strict=True, reason=f"{known[0]} ({known[1]})")] if known else []
                    yield pytest.param(*key, marks=marks, id=f"{kernel}-{dtype}-sm_{cc}-{rule}")


def _widths(r: aot.AOTResult) -> str:
    """Each tile operand's narrowest access site, in bytes (a trailing ' on stores)."""
    narrowest: dict[str, int] = {}
    for a in r.accesses:
        if a.rank >= 2:
            key = a.operand + ("'" if a.kind == "store" else "")
            narrowest[key] = min(narrowest.get(key, 16), a.bytes)
    return " ".join(f"{k}{v}" for k, v in narrowest.items())


def table(results, kernel: str) -> str:
    rows = [r for r in results if r.hot and _kernel_of(r) == kernel]
    rows.sort(key=lambda r: (r.cc, r.dtype, r.name))
    need = KERNELS[kernel].warps_per_sm
    head = (f"{'configuration':<44} {'sm':>3} {'w':>2} {'st':>2} {'regs':>9} {'smem KB':>13} {'warps/SM':>8} "
            f"{'spill':>5} {'local':>5} {'mma':>5} {'dup':>3}  tile accesses (B)")
    lines = [f"-- {kernel}: hot configurations, budget {need} resident warps/SM "
             f"(regs and smem: used/budget) --", head]
    for r in rows:
        regs, smem = register_budget(r, need)
        dup = max((d.factor for d in r.warp_duplication), default=1)
        lines.append(f"{r.name.split('[', 1)[1].replace(']', ''):<44} {r.cc:>3} {r.num_warps:>2} {r.num_stages:>2} "
                     f"{r.registers:>4}/{regs:<4} {r.shared / 1024:>6.1f}/{smem / 1024:<6.1f} {r.warps_per_sm:>8} "
                     f"{r.spill_bytes:>5} {r.local_ptx + r.local_sass:>5} {r.mma or '-':>5} {dup:>3}  {_widths(r)}")
    return "\n".join(lines)


@pytest.fixture(scope="module")
def contract(aot_results, terminal_summary):
    """The compile, with the tables printed and kept for the end of the run."""
    text = "\n\n".join(table(aot_results, k) for k in KERNELS)
    known = "\n".join(f"  {k[0]} {k[1]} sm_{k[2]} {k[3]}: {why} -> {fix}"
                      for k, (why, fix) in KNOWN_BREACHES.items()) or "  none"
    block = f"\nstatic performance contract (faithful AOT, sm_80 and sm_90)\n{text}\n\nknown breaches:\n{known}"
    print(block)
    terminal_summary.append(block)
    return aot_results


def test_every_hot_kernel_is_declared(contract):
    """The hot configurations' kernels and dtypes are exactly those KERNELS declares, and a kernel
    is declared a matrix kernel exactly when its configurations have dots; so no kernel escapes the
    contract and no rule is checked on nothing."""
    seen = {(_kernel_of(r), r.dtype) for r in contract if r.hot}
    declared = {(k, d) for k, spec in KERNELS.items() for d in spec.dtypes}
    assert seen == declared, (sorted(seen - declared), sorted(declared - seen))
    for kernel, spec in KERNELS.items():
        dots = any(r.dot_types for r in contract if r.hot and _kernel_of(r) == kernel)
        assert dots == spec.matrix, kernel


def test_known_breaches_name_declared_rules():
    """Each known breach names a declared kernel and dtype, a target and a rule that applies to it."""
    for kernel, dtype, cc, rule in KNOWN_BREACHES:
        assert kernel in KERNELS and dtype in KERNELS[kernel].dtypes and cc in aot.TARGETS and rule in RULES
        assert _applies(kernel, rule, cc), (kernel, rule, cc)


def test_alignment_exemptions_match_narrow_sites(contract):
    """Every ALIGNMENT entry names an operand of its call that exists in the hot set, and the width
    it allows is below 16 bytes for at least one dtype (otherwise it exempts nothing)."""
    for (call, operand) in ALIGNMENT:
        found = [(r, a) for r in contract if r.hot and _call_of(r) == call for a in r.accesses
                 if a.operand == operand and a.rank >= 2]
        assert found, (call, operand)
        assert any(allowed_bytes(r, a) < 16 for r, a in found), (call, operand)


@pytest.mark.parametrize("kernel, dtype, cc, rule", list(_cases()))
def test_contract(contract, kernel, dtype, cc, rule):
    """Every hot configuration of ``kernel`` in ``dtype`` compiled for ``cc`` holds ``rule``."""
    rows = _hot(contract, kernel, dtype, cc)
    assert rows, f"no hot configuration of {kernel} {dtype} on sm_{cc}"
    found = [f"{r.name} (warps={r.num_warps}): {line}" for r in rows for line in breaches(r, rule)]
    assert not found, f"{rule} breached:\n" + "\n".join(found)


def test_access_sites_take_the_call_line_of_an_inline_asm_block(tmp_path):
    """A PTX global access is attributed to the first .loc inside its inline-asm block (LLVM numbers
    the block's later lines on from it), named by the tl.load at that line and column, with the rank
    of the TTGIR pointer tensor at the same site; cp.async takes its copy size."""
    src = tmp_path / "k.py"
    src.write_text("def k():\n    x = tl.load(x_ptr + offs, mask=m)\n    tl.store(y_ptr + offs, x)\n")
    ttgir = (f'#loc1 = loc("{src}":2:9)\n#loc2 = loc("x"(#loc1))\n#loc3 = loc("{src}":3:5)\n'
             "    %x = tt.load %p, %m : tensor<64x64x!tt.ptr<bf16>, #blocked> loc(#loc2)\n"
             "    tt.store %q, %x : tensor<64x!tt.ptr<bf16>, #blocked1> loc(#loc3)\n")
    ptx = (f'\t.file\t1 "{src}"\n\t.loc\t1 2 9\n\t// begin inline asm\n\t.loc\t1 2 9\n\tmov.u32 %r1, %r5;\n'
           "\t.loc\t1 3 9\n\t@%p1 ld.global.v4.b32 { %r1, %r2, %r3, %r4 }, [ %rd1 + 0 ];\n\t// end inline asm\n"
           "\t.loc\t1 3 5\n\tst.global.b16 [ %rd2 + 0 ], %rs1;\n"
           "\t.loc\t1 2 9\n\tcp.async.cg.shared.global [ %r9 + 0 ], [ %rd3 + 0 ], 0x8, %r7;\n")
    sites = {(a.operand, a.kind): (a.line, a.rank, a.bytes, a.instruction) for a in aot._accesses(ptx, ttgir)}
    assert sites == {("x", "load"): (2, 2, 16, "ld.global.v4.b32"), ("y", "store"): (3, 1, 2, "st.global.b16")}


def test_warp_duplication_counts_warps_beyond_the_tile():
    """An mma layout with 8 warps along 64 rows (16 rows a warp) holds 2 copies of a 64-row tile; 4
    warps do not; a blocked layout is checked per dimension; tiles with a dimension of 1 are skipped."""
    ttgir = ("#mma = #ttg.nvidia_mma<{versionMajor = 3, versionMinor = 0, warpsPerCTA = [8, 1], instrShape = [16, 64, 16]}>\n"
             "#mma1 = #ttg.nvidia_mma<{versionMajor = 2, versionMinor = 0, warpsPerCTA = [4, 1], instrShape = [16, 8]}>\n"
             "#blocked = #ttg.blocked<{sizePerThread = [1, 8], threadsPerWarp = [4, 8], warpsPerCTA = [1, 4], order = [1, 0]}>\n"
             "  %a = x : tensor<64x64xf32, #mma>\n  %b = x : tensor<64x64xf32, #mma1>\n"
             "  %c = x : tensor<16x64xbf16, #blocked>\n  %d = x : tensor<64x1xf32, #mma>\n")
    found = {(d.layout, tuple(d.shape)): d.factor for d in aot._warp_duplication(ttgir)}
    assert found == {("nvidia_mma warps=[8, 1]", (64, 64)): 2, ("blocked warps=[1, 4]", (16, 64)): 4}


def test_occupancy_follows_registers_shared_memory_and_warps():
    """Blocks per SM: 255 registers take 8192 per warp, two warps per 16K-register sub-partition, so
    one block of 8 warps; 128 registers at 4 warps give four; shared memory caps blocks at
    228 KB / (use + 1 KB) on sm_90 and 164 KB / (use + 1 KB) on sm_80; 64 warps cap small kernels."""
    def result(regs, warps, shared, cc=90):
        return aot.AOTResult("k[x]", "m", "k", cc, warps, 2, shared, aot.SHARED_LIMITS[cc], regs, 0, True, 1, 0.0)

    assert result(255, 8, 0).blocks_per_sm == 1
    assert result(128, 4, 0).blocks_per_sm == 4
    assert result(32, 4, 100 * 1024).blocks_per_sm == 2
    assert result(32, 4, 100 * 1024, cc=80).blocks_per_sm == 1
    assert result(16, 4, 0).warps_per_sm == 64
