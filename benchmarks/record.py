"""A benchmark run as data: environment capture, the JSON schema and its validation, rows, speedups,
the printed table and the files written to ``benchmarks/results/``.

File names are ``<device>_<date>_<job>.json`` with the table beside it as ``.txt``; ``<device>`` is the
device name in lower case with runs of other characters turned into '-', ``<date>`` the UTC date.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path
from typing import Iterable, Optional

import torch

SCHEMA = "aef-benchmarks"
SCHEMA_VERSION = 1
REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "benchmarks" / "results"

STATUSES = ("ok", "not available", "skipped", "failed")
# Row fields and their types; timing fields are None unless status is "ok".
ROW_FIELDS: dict[str, tuple] = {
    "section": (str,),
    "shape": (str,),
    "mode": (str,),
    "provider": (str,),
    "status": (str,),
    "reason": (str, type(None)),
    "median_ms": (float, type(None)),
    "p20_ms": (float, type(None)),
    "p80_ms": (float, type(None)),
    "repeats": (int, type(None)),
    "speedup": (float, type(None)),
    "peak_mem_bytes": (int, type(None)),
    "mem_vs_eager": (float, type(None)),
    "bytes": (float, type(None)),
    "flops": (float, type(None)),
    "gbps": (float, type(None)),
    "tflops": (float, type(None)),
    "roofline_fraction": (float, type(None)),
    "bound": (str, type(None)),
}
TOP_FIELDS: dict[str, tuple] = {
    "schema": (str,),
    "schema_version": (int,),
    "job": (str,),
    "created_utc": (str,),
    "environment": (dict,),
    "ceilings": (dict, type(None)),
    "config": (dict,),
    "timing": (dict,),
    "rows": (list,),
}
ENV_FIELDS = ("device", "device_name", "torch", "triton", "cuda", "python", "git_commit")
BASELINE_PROVIDER = "reference"


def _git(*args: str) -> Optional[str]:
    try:
        out = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def environment(device: torch.device) -> dict:
    try:
        import triton

        triton_version = triton.__version__
    except Exception:  # a missing or broken triton is recorded, not fatal
        triton_version = None
    import aef_kernels

    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        name = props.name
        extra = {"sm": f"{props.major}.{props.minor}", "sm_count": props.multi_processor_count,
                 "memory_bytes": props.total_memory}
    else:
        name = cpu_name()
        # Other work on the machine distorts CPU timings; the load average at start-up says how much.
        extra = {"threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                 "load_average_1min": round(os.getloadavg()[0], 2)}
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "device": device.type,
        "device_name": name,
        **extra,
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "aef_kernels": aef_kernels.__version__,
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
        "argv": sys.argv[1:],
    }


def make_row(section: str, shape: str, mode: str, provider: str, status: str, reason: Optional[str] = None,
             **figures) -> dict:
    if status not in STATUSES:
        raise ValueError(f"status: expected one of {STATUSES}, got {status!r}")
    row = {k: None for k in ROW_FIELDS}
    row.update(section=section, shape=shape, mode=mode, provider=provider, status=status, reason=reason)
    for k, v in figures.items():
        if k not in ROW_FIELDS:
            raise ValueError(f"unknown row field {k!r}")
        row[k] = v
    return row


def case_key(row: dict) -> tuple[str, str, str, str]:
    return row["section"], row["shape"], row["mode"], row["provider"]


def add_speedups(rows: Iterable[dict]) -> None:
    """speedup = median of the reference-eager row of the same case / this row's median;
    mem_vs_eager = this row's peak memory / that of reference eager."""
    rows = list(rows)
    base = {case_key(r)[:3]: r for r in rows if r["provider"] == BASELINE_PROVIDER and r["status"] == "ok"}
    for r in rows:
        ref = base.get(case_key(r)[:3])
        ok = ref is not None and r["status"] == "ok"
        r["speedup"] = ref["median_ms"] / r["median_ms"] if ok else None
        r["mem_vs_eager"] = (r["peak_mem_bytes"] / ref["peak_mem_bytes"]
                             if ok and r["peak_mem_bytes"] is not None and ref["peak_mem_bytes"] else None)


def make_result(job: str, environment: dict, ceilings: Optional[dict], config: dict, timing: dict,
                rows: list[dict]) -> dict:
    add_speedups(rows)
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "job": job,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "environment": environment,
        "ceilings": ceilings,
        "config": config,
        "timing": timing,
        "rows": rows,
    }


def _type_error(where: str, value, types: tuple) -> str:
    names = " or ".join("null" if t is type(None) else t.__name__ for t in types)
    return f"{where}: expected {names}, got {type(value).__name__}"


def _is(value, types: tuple) -> bool:
    # JSON turns 3.0 into 3.0 but an int-valued float stays float; bool is never a number here.
    if isinstance(value, bool):
        return bool in types
    if isinstance(value, int) and float in types and int not in types:
        return True
    return isinstance(value, types)


def validate(result: dict) -> None:
    """Raise ValueError naming the first field that breaks the schema."""
    if not isinstance(result, dict):
        raise ValueError(f"result: expected a JSON object, got {type(result).__name__}")
    for k, types in TOP_FIELDS.items():
        if k not in result:
            raise ValueError(f"result: missing field {k!r}")
        if not _is(result[k], types):
            raise ValueError(_type_error(k, result[k], types))
    if result["schema"] != SCHEMA or result["schema_version"] != SCHEMA_VERSION:
        raise ValueError(f"schema: expected {SCHEMA} version {SCHEMA_VERSION}, got "
                         f"{result['schema']} version {result['schema_version']}")
    for k in ENV_FIELDS:
        if k not in result["environment"]:
            raise ValueError(f"environment: missing field {k!r}")
    for i, row in enumerate(result["rows"]):
        if not isinstance(row, dict):
            raise ValueError(f"rows[{i}]: expected an object")
        for k, types in ROW_FIELDS.items():
            if k not in row:
                raise ValueError(f"rows[{i}]: missing field {k!r}")
            if not _is(row[k], types):
                raise ValueError(_type_error(f"rows[{i}].{k}", row[k], types))
        if row["status"] not in STATUSES:
            raise ValueError(f"rows[{i}].status: expected one of {STATUSES}, got {row['status']!r}")
        if row["status"] == "ok":
            if row["median_ms"] is None or row["median_ms"] <= 0:
                raise ValueError(f"rows[{i}].median_ms: expected a positive time for an ok row")
            if not row["p20_ms"] <= row["median_ms"] <= row["p80_ms"]:
                raise ValueError(f"rows[{i}]: expected p20 <= median <= p80")
        elif not row["reason"]:
            raise ValueError(f"rows[{i}].reason: a row that is {row['status']!r} must say why")


def load(path: str | os.PathLike) -> dict:
    with open(path) as f:
        result = json.load(f)
    validate(result)
    return result


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "device"


def default_stem(result: dict) -> str:
    env = result["environment"]
    name = env["device_name"] if env["device"] == "cuda" else f"cpu-{env['device_name']}"
    return f"{slug(name)}_{result['created_utc'][:10]}_{result['job']}"


def output_paths(result: dict, out: Optional[str]) -> tuple[Path, Path]:
    """``--out`` names a .json file or a directory; the table goes beside the JSON as .txt."""
    if out and out.endswith(".json"):
        json_path = Path(out)
    else:
        json_path = (Path(out) if out else RESULTS_DIR) / f"{default_stem(result)}.json"
    return json_path, json_path.with_suffix(".txt")


def write(result: dict, table: str, out: Optional[str]) -> tuple[Path, Path]:
    validate(result)
    json_path, txt_path = output_paths(result, out)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    with open(json_path, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    with open(txt_path, "w") as f:
        f.write(table)
    return json_path, txt_path


def _fmt(x: Optional[float], spec: str) -> str:
    return "-" if x is None else format(x, spec)


def format_table(result: dict) -> str:
    """One line per row: median (p20-p80), speedup against reference eager, peak memory, and for rows
    with floors the achieved GB/s, TFLOP/s and fraction of the roofline floor."""
    env, rows = result["environment"], result["rows"]
    with_floors = any(r["bytes"] is not None for r in rows)
    head = [f"{result['job']} on {env['device_name']} ({env['device']}), torch {env['torch']}, "
            f"triton {env['triton']}, CUDA {env['cuda']}, commit {(env['git_commit'] or 'unknown')[:12]}"
            f"{' (dirty)' if env.get('git_dirty') else ''}, {result['created_utc']}"]
    cfg = ", ".join(f"{k}={v}" for k, v in result["config"].items() if not isinstance(v, (dict, list)))
    head.append(f"config: {cfg}")
    t = result["timing"]
    head.append(f"timing: {t.get('method')}, median of repeats after warm-up, p20-p80 in brackets; "
                f"peak memory: {t.get('memory_method')}")
    if env["device"] != "cuda":
        load = env.get("load_average_1min")
        head.append("CPU run: it shows that the harness runs, not how fast the kernels are; Triton and CUDA "
                    "rows are not available on CPU by design. These are not GPU figures."
                    + (f" Load average at start: {load} on {env.get('cpu_count')} CPUs." if load is not None else ""))
    c = result["ceilings"]
    if c:
        head.append(f"ceilings measured now: copy {c['bandwidth_GBps']:.4g} GB/s, "
                    f"{c['matmul_dtype']} matmul {c['matmul_TFLOPs']:.4g} TFLOP/s")
    cols = ["case", "shape", "mode", "provider", "median ms", "(p20-p80)", "vs eager", "peak MiB", "mem/eager"]
    if with_floors:
        cols += ["GB/s", "TFLOP/s", "roofline"]
    lines = []
    for r in rows:
        if r["status"] == "ok":
            cells = [r["section"], r["shape"], r["mode"], r["provider"], _fmt(r["median_ms"], ".4g"),
                     f"({r['p20_ms']:.4g}-{r['p80_ms']:.4g})", _fmt(r["speedup"], ".2f") + ("x" if r["speedup"] else ""),
                     _fmt(None if r["peak_mem_bytes"] is None else r["peak_mem_bytes"] / 2**20, ".1f"),
                     _fmt(r["mem_vs_eager"], ".2f")]
            if with_floors:
                cells += [_fmt(r["gbps"], ".4g"), _fmt(r["tflops"], ".3g"),
                          "-" if r["roofline_fraction"] is None else f"{r['roofline_fraction']:.1%} {r['bound']}"]
        else:
            reason = (r["reason"] or "").splitlines()[0]
            cells = [r["section"], r["shape"], r["mode"], r["provider"], f"{r['status']}: {reason}"]
        lines.append(cells)
    widths = [max(len(cols[i]), *(len(c[i]) for c in lines if len(c) > i and len(c) == len(cols)))
              if lines else len(cols[i]) for i in range(len(cols))]
    out = head + ["", "  ".join(c.ljust(w) for c, w in zip(cols, widths)).rstrip()]
    out.append("  ".join("-" * w for w in widths))
    for cells in lines:
        if len(cells) == len(cols):
            out.append("  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip())
        else:
            out.append("  ".join(c.ljust(w) for c, w in zip(cells[:4], widths)) + "  " + cells[4])
    return "\n".join(out) + "\n"
