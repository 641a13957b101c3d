"""Keeps nvcc's ptxas resource report (``-Xptxas -v``) from every CUDA compile and merges them into
the report shipped with the package (``aef_kernels/_C_resources.txt``).

    ptxas_log.py compile -- nvcc ARGS... -o OBJECT   (the CUDA compiler launcher of CMakeLists.txt)
    ptxas_log.py merge OUT [HEADER_LINE...] -- OBJECT...

The compile step passes the compiler's output through unchanged, so the report also shows in the
build log, and stores it beside the object as OBJECT.ptxas.txt: Ninja skips up-to-date objects, so
the merged report is built from the stored logs of the module's current objects, not from one
build's output.
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
    sys.stdout.write(proc.stdout)
    sys.stdout.flush()
    if proc.returncode == 0:
        report = [line for line in proc.stdout.splitlines() if line.startswith("ptxas") or line.startswith(" ")]
        Path(_object_path(command) + SUFFIX).write_text("\n".join(report) + "\n")
    return proc.returncode


def merge(out: Path, header: list[str], objects: list[str]) -> int:
    parts = [f"# {line}" for line in header]
    for obj in sorted(objects):
        log = Path(obj + SUFFIX)
        if not log.is_file():
            raise SystemExit(f"ptxas_log.py: {log} is missing; {obj} was not compiled through the launcher")
        parts.append(f"## {Path(obj).name}")
        parts.append(log.read_text().rstrip("\n"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(parts) + "\n")
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
