"""Source-to-source rewrite of the constructs host C++ cannot compile: a kernel launch
``kernel<<<grid, block, smem, stream>>>(args)`` becomes a call of ``aef_emu::launch``; the
``mma.sync.aligned.m16n8k16`` inline assembly becomes a call of the emulated warp collective with
the same operands, ``ldmatrix`` into a call of the emulated warp collective that reads the
lanes' row addresses, and the 16-byte ``cp.async`` copy with its ``commit_group`` / ``wait_group``
calls of the runtime's immediate copy and of no-ops. Everything else is left byte for byte,
newlines included, so that compiler messages and the emulator's failure reports point at the
original lines."""

from __future__ import annotations

import re

_MMA = re.compile(r"mma\.sync\.aligned\.m16n8k16\.row\.col\.f32\.(f16|bf16)\.(f16|bf16)\.f32\s+(.*)$", re.S)
_KINDS = {"f16": "::aef_emu::kMmaF16", "bf16": "::aef_emu::kMmaBF16"}
_OPERAND = re.compile(r'^\s*"([^"]*)"\s*\((.*)\)\s*$', re.S)
_CP_ASYNC = re.compile(r"cp\.async\.cg\.shared\.global\s+\[%(\d+)\],\s*\[%(\d+)\],\s*16,\s*%(\d+);?$")
_LDMATRIX = re.compile(r"ldmatrix\.sync\.aligned\.m8n8\.x(1|2|4)(\.trans)?\.shared\.b16\s+\{([^}]*)\},\s*\[%(\d+)\];?$")
_COMMIT = re.compile(r"cp\.async\.commit_group;?$")
_WAIT = re.compile(r"cp\.async\.wait_group\s+%(\d+);?$")


class RewriteError(ValueError):
    """A construct the emulator cannot translate."""


def _skip_string(src: str, i: int) -> int:
    quote = src[i]
    i += 1
    while src[i] != quote:
        i += 2 if src[i] == "\\" else 1
    return i + 1


def _close(src: str, i: int, open_ch: str, close_ch: str) -> int:
    """Index just past the bracket that closes the one at ``src[i]``."""
    depth = 0
    while i < len(src):
        ch = src[i]
        if ch in "\"'":
            i = _skip_string(src, i)
            continue
        if src.startswith("//", i):
            i = src.index("\n", i)
            continue
        if ch == open_ch:
            depth += 1
        elif ch == close_ch:
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise RewriteError(f"unbalanced {open_ch!r} at offset {i}")


def _split_top(text: str, sep: str = ",") -> list[str]:
    """Split at ``sep`` outside brackets and strings (template angle brackets are not tracked, so
    callers only split text whose commas are all inside parentheses)."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(text):
        ch = text[i]
        if ch in "\"'":
            i = _skip_string(text, i)
            continue
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == sep and depth == 0:
            if sep == ":" and (text[i + 1: i + 2] == ":" or text[i - 1: i] == ":"):
                i += 1
                continue
            parts.append(text[start:i])
            start = i + 1
        i += 1
    parts.append(text[start:])
    return parts


def _kernel_start(src: str, end: int) -> int:
    """Start of the kernel expression that ends just before ``src[end]`` (``<<<`` follows it):
    a possibly qualified name with an optional template argument list."""
    i = end
    while src[i - 1].isspace():
        i -= 1
    if src[i - 1] == ">":
        depth = 0
        while True:
            i -= 1
            if src[i] == ">":
                depth += 1
            elif src[i] == "<":
                depth -= 1
                if depth == 0:
                    break
    while i > 0 and (src[i - 1].isalnum() or src[i - 1] in "_:"):
        i -= 1
    return i


def _rewrite_launches(src: str) -> tuple[str, int]:
    out, pos, count = [], 0, 0
    while True:
        lt = src.find("<<<", pos)
        if lt < 0:
            break
        start = _kernel_start(src, lt)
        kernel = src[start:lt].strip()
        gt = src.find(">>>", lt)
        config = _split_top(src[lt + 3: gt])
        if len(config) == 2:
            config += ["0", "nullptr"]
        elif len(config) == 3:
            config.append("nullptr")
        if len(config) != 4:
            raise RewriteError(f"launch of {kernel}: expected <<<grid, block[, smem[, stream]]>>>")
        paren = src.index("(", gt)
        if src[gt + 3: paren].strip():
            raise RewriteError(f"launch of {kernel}: arguments must follow >>>")
        close = _close(src, paren, "(", ")")
        args = src[paren + 1: close - 1]
        name = kernel.replace('"', "")
        lead = "\n" * src[start:lt].count("\n")
        call = (f'::aef_emu::launch("{name}", __FILE__, __LINE__, __PRETTY_FUNCTION__, &{kernel}, '
                f"{', '.join(config)}{', ' if args.strip() else ''}{args})")
        out += [src[pos:start], lead, call]
        pos, count = close, count + 1
    out.append(src[pos:])
    return "".join(out), count


def _mma_call(template: str, mm: re.Match, operands: list[tuple[str, str]]) -> str:
    """The emulated warp collective for an mma statement (a block, so it needs no ';')."""
    groups = [g.strip() for g in re.findall(r"\{([^}]*)\}", mm.group(3))]
    if len(groups) != 4:
        raise RewriteError(f"mma needs the operand groups {{D}}, {{A}}, {{B}}, {{C}}: {template!r}")
    refs = [[int(r.strip().lstrip("%")) for r in g.split(",")] for g in groups]
    if [len(r) for r in refs] != [4, 4, 2, 4]:
        raise RewriteError(f"m16n8k16 with f32 accumulators takes 4, 4, 2 and 4 registers: {template!r}")
    d, a, b, c = ([operands[i][1] for i in r] for r in refs)
    for i in refs[0]:
        if not operands[i][0].startswith(("=", "+")):
            raise RewriteError(f"mma output %{i} is not an output operand")
    a = [f"static_cast<uint32_t>({x})" for x in a]
    b = [f"static_cast<uint32_t>({x})" for x in b]
    c = [f"static_cast<float>({x})" for x in c]
    stores = " ".join(f"{x} = aef_emu_d_[{i}];" for i, x in enumerate(d))
    return (f"{{ float aef_emu_d_[4]; ::aef_emu::mma_m16n8k16({_KINDS[mm.group(1)]}, aef_emu_d_, "
            f"{{{', '.join(a)}}}, {{{', '.join(b)}}}, {{{', '.join(c)}}}); {stores} }}")


def _cp_async_call(template: str, operands: list[tuple[str, str]]) -> str | None:
    """The runtime call for a cp.async statement, or None if ``template`` is none of them."""
    if _COMMIT.match(template):
        return "::aef_emu::cp_async_commit_group();"
    if (m := _WAIT.match(template)) is not None:
        constraint, expr = operands[int(m.group(1))]
        if constraint != "n":
            raise RewriteError(f"cp.async.wait_group takes an immediate (\"n\"): {template!r}")
        return f"::aef_emu::cp_async_wait_group({expr});"
    if (m := _CP_ASYNC.match(template)) is not None:
        dst, src, size = (operands[int(i)][1] for i in m.groups())
        return (f"::aef_emu::cp_async_16(static_cast<uint32_t>({dst}), {src}, "
                f"static_cast<uint32_t>({size}));")
    return None


def _ldmatrix_call(template: str, operands: list[tuple[str, str]]) -> str | None:
    """The emulated warp collective for an ldmatrix statement (a block), or None if ``template`` is
    not one."""
    m = _LDMATRIX.match(template)
    if m is None:
        return None
    count = int(m.group(1))
    regs = [int(r.strip().lstrip("%")) for r in m.group(3).split(",")]
    if len(regs) != count:
        raise RewriteError(f"ldmatrix .x{count} writes {count} registers: {template!r}")
    for i in regs:
        if operands[i][0] != "=r":
            raise RewriteError(f"ldmatrix destination %{i} is not a 32-bit output (\"=r\"): {template!r}")
    constraint, addr = operands[int(m.group(4))]
    if constraint != "r":
        raise RewriteError(f"ldmatrix takes a 32-bit shared address (\"r\"): {template!r}")
    stores = " ".join(f"{operands[r][1]} = aef_emu_r_[{i}];" for i, r in enumerate(regs))
    return (f"{{ uint32_t aef_emu_r_[4]; ::aef_emu::ldmatrix({count}, {'true' if m.group(2) else 'false'}, "
            f"aef_emu_r_, static_cast<uint32_t>({addr})); {stores} }}")


def _rewrite_asm(src: str) -> tuple[str, int, int, int]:
    out, pos, count, asyncs, ldsm = [], 0, 0, 0, 0
    pattern = re.compile(r"\basm\s*(volatile\s*)?\(")
    while True:
        m = pattern.search(src, pos)
        if not m:
            break
        paren = m.end() - 1
        close = _close(src, paren, "(", ")")
        body = src[paren + 1: close - 1]
        sections = _split_top(body, ":")
        template = "".join(re.findall(r'"((?:[^"\\]|\\.)*)"', sections[0])).replace("\\n", "").strip()
        operands = []
        for section in sections[1:3]:
            for op in _split_top(section):
                if op.strip():
                    om = _OPERAND.match(op)
                    if not om:
                        raise RewriteError(f"unparsed asm operand {op!r}")
                    operands.append((om.group(1), om.group(2).strip()))
        call = _cp_async_call(template, operands)
        mm = _MMA.match(template)
        if call is not None:
            asyncs += 1
        elif (call := _ldmatrix_call(template, operands)) is not None:
            ldsm += 1
        elif not mm or mm.group(1) != mm.group(2):
            raise RewriteError(f"inline assembly the emulator cannot translate: {template!r}")
        else:
            call = _mma_call(template, mm, operands)
            count += 1
        semi = close
        while src[semi].isspace():
            semi += 1
        if src[semi] != ";":
            raise RewriteError("asm statement not followed by ';'")
        out += [src[pos:m.start()], call, "\n" * body.count("\n")]
        pos = semi + 1
    out.append(src[pos:])
    return "".join(out), count, asyncs, ldsm


def rewrite(src: str, path: str) -> tuple[str, dict[str, int]]:
    """The emulator's version of one source file, and how many launches, mma, cp.async and
    ldmatrix statements it translated. ``path`` is what ``#line`` names, so diagnostics cite the original
    file."""
    text, launches = _rewrite_launches(src)
    text, mmas, asyncs, ldsm = _rewrite_asm(text)
    return f'#line 1 "{path}"\n{text}', {"launches": launches, "mma": mmas, "cp_async": asyncs, "ldmatrix": ldsm}
