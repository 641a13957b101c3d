"""The static performance contract of the CUDA kernels (issue 15, item 1), read from the installed
extension's machine code: ``cuobjdump --dump-sass`` and ``--dump-resource-usage`` of aef_kernels._C
(the same binary the tests import; the ptxas report beside it is test_build's). Nothing runs on a GPU.

Rules, for every kernel of every family (``FAMILIES``), per dtype and architecture:

- ``no_local``: no stack frame or local memory (where ptxas puts spills and local arrays) and no
  local-memory instructions (LDL/STL in the SASS).
- ``hmma``: the 16-bit attention kernels do their matrix products on the tensor cores (HMMA or
  HGMMA instructions).
- ``wide_kv``: the attention kernels read their K/V (and Q, dO) tiles in 16-byte loads: the SASS has
  128-bit global loads (LDG.E.128, or LDGSTS .128 copies to shared memory) and, in the 16-bit
  kernels, no 2-byte global loads (the mask is 1-byte, the log-sum-exp and delta rows 4-byte, so a
  2-byte load is an element of a tile). An attention kernel's last template argument is VEC, the
  elements per load that stages a tile in shared memory; the VEC = 1 variants, which the launchers
  pick for operands that are not 16-byte aligned, load element by element by design, and the rule
  holds the 16-byte variants (VEC = 16 / element size) only.
- ``cp_async``: the 16-byte-staged attention kernels copy their column blocks (K and V; Q and dO in
  the dk/dv pass) to shared memory with cp.async, double-buffered where shared memory allows: the
  SASS has LDGSTS. The VEC = 1 variants load through registers and are exempt.
- ``ldmatrix``: the 16-bit attention kernels (both staging variants: they share the fragment
  loads) read their B fragments from the shared tiles with ldmatrix (LDSM in the SASS), transposed
  for the V-type operands, instead of per-thread 2- and 4-byte LDS. float32 keeps plain loads (its
  products are an FMA emulation with no ldmatrix form).

Breaches that exist today are declared in ``KNOWN_BREACHES`` with the reason and the item of issue
15 that removes them; each is a strict xfail. Every entry was read off the SASS of the build this
file was written against. The table is written to the terminal (past pytest's capture) when the
build is read.
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import subprocess
from dataclasses import dataclass

import pytest

ARCHS = ("sm_80", "sm_90")
DTYPES = {"13__nv_bfloat16": "bf16", "6__half": "fp16", "f": "fp32"}
ALL, FLOAT = ("bf16", "fp16", "fp32"), ("fp32",)
# family -> (its dtypes, whether it is a matrix kernel: the hmma, wide_kv, cp_async and ldmatrix
# rules apply). The GroupNorm statistics kernels work on float2 partial sums whatever the input's dtype.
FAMILIES = {
    "axial_attention_fwd": (ALL, True),
    "axial_attention_bwd": (ALL, True),
    "axial_attention_bwd_delta": (ALL, False),
    "group_norm_fwd_partials": (ALL, False),
    "group_norm_fwd_stats": (FLOAT, False),
    "group_norm_fwd_apply": (ALL, False),
    "group_norm_bwd_partials": (ALL, False),
    "group_norm_bwd_coefs": (FLOAT, False),
    "group_norm_bwd_params": (FLOAT, False),
    "group_norm_bwd_apply": (ALL, False),
    "vmf_normalize_fwd_regs": (ALL, False),
    "vmf_normalize_fwd_rows": (ALL, False),
    "vmf_normalize_bwd_regs": (ALL, False),
    "vmf_normalize_bwd_rows": (ALL, False),
    "batch_uniformity_fwd_dots": (ALL, False),
    "batch_uniformity_fwd_sum": (ALL, False),
    "batch_uniformity_bwd": (ALL, False),
}
RULES = ("no_local", "hmma", "wide_kv", "cp_async", "ldmatrix")
LDS = r"LDS(\..*)?"  # plain shared loads; LDSM (ldmatrix) is counted on its own

# (family, dtype, arch, rule) -> (why it breaches, the issue 15 item that fixes it)
KNOWN_BREACHES: dict[tuple[str, str, str, str], tuple[str, str]] = {}


@dataclass(frozen=True)
class Kernel:
    name: str  # mangled
    family: str
    dtype: str
    params: tuple  # the integer template arguments (head dim, variant)
    arch: str
    registers: int
    stack: int
    local: int
    ops: collections.Counter

    @property
    def label(self) -> str:
        return f"{self.family}<{self.dtype}{''.join(f', {p}' for p in self.params)}>"

    def count(self, pattern: str) -> int:
        return sum(n for op, n in self.ops.items() if re.fullmatch(pattern, op))


def _cuobjdump() -> str | None:
    found = shutil.which("cuobjdump")
    if found:
        return found
    try:
        import triton
    except ImportError:
        return None
    path = triton.knobs.nvidia.cuobjdump.path
    return path if path and os.path.exists(path) else None


def _family(name: str) -> tuple[str, str, tuple] | None:
    """(family, dtype, integer template arguments) of a mangled kernel name."""
    for family in sorted(FAMILIES, key=len, reverse=True):
        m = re.search(rf"\d+{family}(?:I({'|'.join(DTYPES)})((?:Li\d+E)*)E)?", name)
        if m:
            dtype = DTYPES.get(m.group(1), "fp32") if m.group(1) else "fp32"
            return family, dtype, tuple(int(p) for p in re.findall(r"Li(\d+)E", m.group(2) or ""))
    return None


def _parse_sass(text: str) -> dict[tuple[str, str], collections.Counter]:
    """(arch, mangled name) -> opcode counts (with modifiers, predicates dropped)."""
    out = {}
    parts = re.split(r"^\s*code for (sm_\d+)a?\s*$", text, flags=re.M)
    for arch, body in zip(parts[1::2], parts[2::2]):
        for m in re.finditer(r"Function : (\S+)\n(.*?)(?=^\s*Function : |\Z)", body, re.S | re.M):
            ops = re.findall(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", m.group(2))
            out[(arch, m.group(1))] = collections.Counter(ops)
    return out


def _parse_usage(text: str) -> dict[tuple[str, str], tuple[int, int, int]]:
    """(arch, mangled name) -> (registers, stack bytes, local bytes) from --dump-resource-usage."""
    out, arch = {}, None
    for line in text.splitlines():
        if m := re.match(r"arch = (sm_\d+)", line):
            arch = m.group(1)
        elif m := re.search(r"Function (\S+):", line):
            name = m.group(1)
        elif (m := re.search(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:\d+\s+LOCAL:(\d+)", line)) and arch:
            out[(arch, name)] = tuple(int(g) for g in m.groups())
    return out


@pytest.fixture(scope="module")
def kernels(request) -> list[Kernel]:
    try:
        from aef_kernels import _C
    except ImportError as exc:
        pytest.skip(f"aef_kernels._C is not built ({exc})")
    if not _C.with_cuda:
        pytest.skip(f"the extension was built without CUDA: {_C.cuda_skip_reason}")
    tool = _cuobjdump()
    if tool is None:
        pytest.skip("no cuobjdump (CUDA toolkit or Triton's bundled copy) to read the SASS with")
    run = lambda *a: subprocess.run([tool, *a, _C.__file__], check=True, capture_output=True, text=True).stdout
    sass, usage = _parse_sass(run("--dump-sass")), _parse_usage(run("--dump-resource-usage"))
    out = []
    for (arch, name), ops in sass.items():
        family = _family(name)
        assert family is not None, f"a kernel of no declared family: {name}"
        registers, stack, local = usage[(arch, name)]
        out.append(Kernel(name, *family, arch, registers, stack, local, ops))
    out.sort(key=lambda k: (list(FAMILIES).index(k.family), k.dtype, k.params, k.arch))
    # Written past pytest's capture, so that CI's log shows it without -s.
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():
        reporter.ensure_newline()
        reporter.write_line(table(out))
    return out


def _widths(k: Kernel) -> str:
    loads = {"1": k.count(r"LDG\.E\.(U|S)8.*"), "2": k.count(r"LDG\.E\.(U|S)16.*"),
             "4": k.count(r"LDG\.E(\.CONSTANT|\.STRONG\.\w+|\.EL|\.EF|\.LU)*"), "8": k.count(r"LDG\.E\.64.*"),
             "16": k.count(r"LDG\.E\.128.*") + k.count(r"LDGSTS.*128.*")}
    return " ".join(f"{w}B:{n}" for w, n in loads.items() if n)


def table(kernels: list[Kernel]) -> str:
    lines = ["\nstatic performance contract of the CUDA build (SASS, sm_80 and sm_90)",
             f"{'kernel':<44} {'arch':<5} {'regs':>4} {'stack':>5} {'LDL/STL':>7} {'HMMA':>5} {'LDS':>5} "
             f"{'LDSM':>5} {'LDGSTS':>6}  "
             "global loads by width (B:count)"]
    for k in kernels:
        lines.append(f"{k.label:<44} {k.arch:<5} {k.registers:>4} {k.stack + k.local:>5} "
                     f"{k.count(r'(LDL|STL).*'):>7} {k.count(r'H(G)?MMA.*'):>5} {k.count(LDS):>5} "
                     f"{k.count(r'LDSM.*'):>5} {k.count(r'LDGSTS.*'):>6}  {_widths(k)}")
    known = "\n".join(f"  {f} {d} {a} {r}: {why} -> {fix}" for (f, d, a, r), (why, fix) in KNOWN_BREACHES.items())
    return "\n".join(lines) + "\nknown breaches:\n" + known


def breaches(k: Kernel, rule: str) -> list[str]:
    if rule == "no_local":
        local = k.count(r"(LDL|STL).*")
        return [f"{k.stack} B stack, {k.local} B local, {local} LDL/STL"] if k.stack or k.local or local else []
    if rule == "hmma":
        return [] if k.dtype == "fp32" or k.count(r"H(G)?MMA.*") else ["no HMMA/HGMMA"]
    if rule == "wide_kv":
        if k.params[-1] == 1:  # VEC = 1: the element-staged variant for operands not 16-byte aligned
            return []
        wide = k.count(r"LDG\.E\.128.*") + k.count(r"LDGSTS.*128.*")
        narrow = k.count(r"LDG\.E\.(U|S)16.*") if k.dtype != "fp32" else 0
        return [f"{wide} 16-byte loads, {narrow} 2-byte loads ({_widths(k)})"] if not wide or narrow else []
    if rule == "cp_async":
        if k.params[-1] == 1:
            return []
        return [] if k.count(r"LDGSTS.*") else [f"no LDGSTS ({_widths(k)})"]
    if rule == "ldmatrix":
        return [] if k.dtype == "fp32" or k.count(r"LDSM.*") else [f"no LDSM ({k.count(LDS)} LDS)"]
    raise ValueError(rule)


def _cases():
    for family, (dtypes, matrix) in FAMILIES.items():
        for dtype in dtypes:
            for arch in ARCHS:
                for rule in RULES:
                    if rule != "no_local" and not matrix:
                        continue
                    known = KNOWN_BREACHES.get((family, dtype, arch, rule))
                    marks = [pytest.mark.xfail(strict=True, reason=f"{known[0]} ({known[1]})")] if known else []
                    yield pytest.param(family, dtype, arch, rule, marks=marks, id=f"{family}-{dtype}-{arch}-{rule}")


def test_family_parser_reads_mangled_names():
    """Mangled names map to (family, dtype, template integers), the longest family name winning."""
    assert _family("_ZN3aef4attn51_GLOBAL__N__d644fb41_18_axial_attention_cu_f776d6bc19axial_attention_fwdI"
                   "13__nv_bfloat16Li128ELi8EEEvPKT_S6_S6_PS4_PfNS0_7ProblemE") == ("axial_attention_fwd", "bf16",
                                                                                 (128, 8))
    assert _family("_ZN3aef12_GLOBAL__N_125axial_attention_bwd_deltaI6__halfEEvv") == \
        ("axial_attention_bwd_delta", "fp16", ())
    assert _family("_ZN3aef12_GLOBAL__N_119axial_attention_bwdIfLi64ELi1EEEvv") == ("axial_attention_bwd", "fp32",
                                                                                       (64, 1))
    assert _family("_ZN3aef12_GLOBAL__N_120group_norm_fwd_statsEPK6float2") == ("group_norm_fwd_stats", "fp32", ())
    assert _family("_Z5otherv") is None


def test_sass_parser_counts_opcodes_per_function_and_arch():
    """The SASS parser splits by architecture and function and counts opcodes, predicated or not."""
    text = """
\tcode for sm_90
\t\tFunction : _Z1fv
        /*0000*/                   LDG.E.128 R4, desc[UR4][R2.64] ;
        /*0010*/               @P0 LDL.64 R2, [R1] ;
        /*0020*/                   HMMA.16816.F32.BF16 R8, R4, R6, R8 ;
\t\tFunction : _Z1gv
        /*0000*/              @!P1 STL [R1], R2 ;
\tcode for sm_80
\t\tFunction : _Z1fv
        /*0000*/                   LDG.E.U16 R4, desc[UR4][R2.64] ;
"""
    parsed = _parse_sass(text)
    assert parsed[("sm_90", "_Z1fv")] == collections.Counter({"LDG.E.128": 1, "LDL.64": 1, "HMMA.16816.F32.BF16": 1})
    assert parsed[("sm_90", "_Z1gv")] == collections.Counter({"STL": 1})
    assert parsed[("sm_80", "_Z1fv")] == collections.Counter({"LDG.E.U16": 1})


def test_the_ldmatrix_rule_fails_without_ldmatrix(kernels):
    """Each 16-bit attention kernel of the build with its LDSM instructions turned into plain LDS
    (what the kernels were before) breaches ``ldmatrix``, as it holds it unchanged: the rule reads
    the instruction, not something every kernel has."""
    matrix = [k for k in kernels if FAMILIES[k.family][1] and k.dtype != "fp32"]
    assert matrix, "no 16-bit attention kernel in the build"
    for k in matrix:
        assert not breaches(k, "ldmatrix"), k.label
        ops = collections.Counter({("LDS" + op[4:] if op.startswith("LDSM") else op): n for op, n in k.ops.items()})
        without = Kernel(k.name, k.family, k.dtype, k.params, k.arch, k.registers, k.stack, k.local, ops)
        assert breaches(without, "ldmatrix"), f"{k.label} ({k.arch}) without LDSM holds the ldmatrix rule"


def test_every_kernel_belongs_to_a_declared_family_and_dtype(kernels):
    """The build's (family, dtype) pairs on each of its architectures are exactly those declared
    (so no rule is checked on nothing); the fixture refuses a kernel of no declared family."""
    declared = {(f, d) for f, (dtypes, _) in FAMILIES.items() for d in dtypes}
    for arch in {k.arch for k in kernels}:
        seen = {(k.family, k.dtype) for k in kernels if k.arch == arch}
        assert seen == declared, (arch, sorted(declared - seen), sorted(seen - declared))


@pytest.mark.parametrize("family, dtype, arch, rule", list(_cases()))
def test_sass_contract(kernels, family, dtype, arch, rule):
    """Every kernel of ``family`` in ``dtype`` compiled for ``arch`` holds ``rule``."""
    rows = [k for k in kernels if k.family == family and k.dtype == dtype and k.arch == arch]
    if not any(k.arch == arch for k in kernels):
        pytest.skip(f"{arch} is not in this build (AEF_CUDA_ARCHS)")
    assert rows, f"no {dtype} kernel of {family} for {arch}"
    if rule in ("wide_kv", "cp_async"):
        assert any(k.params[-1] > 1 for k in rows), f"no 16-byte-staged {dtype} kernel of {family} for {arch}"
    found = [f"{k.label} ({k.arch}): {line}" for k in rows for line in breaches(k, rule)]
    assert not found, f"{rule} breached:\n" + "\n".join(found)
