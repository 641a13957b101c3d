"""Keeps nvcc's ptxas resource report (``-Xptxas -v``) from every CUDA compile and merges them into
the report shipped with the package (``aef_kernels/_C_resources.txt``).

    ptxas_log.py compile -- nvcc ARGS... -o OBJECT   (the CUDA compiler launcher of CMakeLists.txt)
    ptxas_log.py merge OUT [HEADER_LINE...] -- OBJECT...

The compile step stores ptxas's lines beside the object as OBJECT.ptxas.txt and passes the rest of
the compiler's output through (all of it if the compile fails). Ninja skips up-to-date objects, so
the merge step, run whenever the module is relinked, builds the report from the stored logs of the
module's current objects and prints it: a build log shows the whole report once, even when only
some objects were recompiled.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SUFFIX = ".ptxas.txt"


def _object_path(args: list[str]) -> str:
    for flag, value in zip(args, args[1:]):
        if flag == "-o":
            return value
    raise SystemExit(f"ptxas_log.py: no '-o OBJECT' in the compile command: {' '.join(args)}")


def compile_and_log(command: list[str]) -> int:
    proc = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = proc.stdout.splitlines(keepends=True)
    is_ptxas = [line.startswith("ptxas") or (line.startswith(" ") and "bytes stack frame" in line) for line in lines]
    if proc.returncode != 0:
        sys.stdout.write(proc.stdout)
        return proc.returncode
    sys.stdout.write("".join(line for line, p in zip(lines, is_ptxas) if not p))
    Path(_object_path(command) + SUFFIX).write_text("".join(line for line, p in zip(lines, is_ptxas) if p))
    return 0


def merge(out: Path, header: list[str], objects: list[str]) -> int:
    parts = [f"# {line}" for line in header]
    for obj in sorted(objects):
        log = Path(obj + SUFFIX)
        if not log.is_file():
            raise SystemExit(f"ptxas_log.py: {log} is missing; {obj} was not compiled through the launcher")
        parts.append(f"## {Path(obj).name}")
        parts.append(log.read_text().rstrip("\n"))
    text = "\n".join(parts) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    sys.stdout.write(text)
    return 0


def main(argv: list[str]) -> int:
    if len(argv) >= 3 and argv[0] == "compile" and argv[1] == "--":
        return compile_and_log(argv[2:])
    if len(argv) >= 3 and argv[0] == "merge" and "--" in argv[2:]:
        split = argv.index("--", 2)
        return merge(Path(argv[1]), argv[2:split], argv[split + 1 :])
    sys.stderr.write(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
