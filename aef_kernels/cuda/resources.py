"""The ptxas resource report of the installed extension (registers, stack, spills per kernel and
architecture), written by the build to ``aef_kernels/_C_resources.txt``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

REPORT = "_C_resources.txt"

_ENTRY = re.compile(r"Compiling entry function '(?P<kernel>[^']+)' for '(?P<arch>sm_\w+)'")
_PROPERTIES = re.compile(r"Function properties for (?P<kernel>\S+)")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")


@dataclass(frozen=True)
class KernelResources:
    kernel: str  # mangled name, as ptxas prints it
    arch: str  # e.g. "sm_90"
    registers: int
    stack_bytes: int
    spill_store_bytes: int
    spill_load_bytes: int

    @property
    def spills(self) -> bool:
        return self.spill_store_bytes > 0 or self.spill_load_bytes > 0


def read_report() -> str:
    """The report's text; FileNotFoundError if the extension was never built."""
    return resources.files("aef_kernels").joinpath(REPORT).read_text()


def parse(text: str) -> list[KernelResources]:
    """One record per (entry function, arch) in ptxas ``-v`` output."""
    records = []
    entry = arch = frame = None
    properties_of = None
    for line in text.splitlines():
        if m := _ENTRY.search(line):
            entry, arch, frame, properties_of = m["kernel"], m["arch"], None, None
        elif m := _PROPERTIES.search(line):
            properties_of = m["kernel"]
        elif (m := _FRAME.search(line)) and entry is not None and properties_of == entry:
            frame = tuple(int(g) for g in m.groups())
        elif (m := _USED.search(line)) and entry is not None:
            if frame is None:
                raise ValueError(f"ptxas report: no stack/spill line for {entry} ({arch})")
            records.append(KernelResources(entry, arch, int(m[1]), *frame))
            entry = None
    return records


def installed() -> list[KernelResources]:
    return parse(read_report())
