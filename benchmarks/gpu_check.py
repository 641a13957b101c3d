"""One budgeted command that verifies the kernels on a GPU and times them, leaving its results behind
even when cut off.

    python benchmarks/gpu_check.py                      # on a CUDA machine: everything, in --budget-s 480
    python benchmarks/gpu_check.py --dry-run            # anywhere: the plan, each stage's estimate, the fit
    python benchmarks/gpu_check.py --stages parity,large --budget-s 200 --out /tmp/check

Stages run in this order, most valuable first, each stopped at its share of the budget (time a stage
leaves unused passes on to the next):

  setup        versions (device, driver, torch, Triton, CUDA), whether aef_kernels._C was built with
               CUDA for this device's architecture, and the two ceilings (device copy, bf16 matmul);
  warm         the Triton kernels (and Inductor graphs) of the later stages compiled by worker
               processes in parallel, so that compilation does not run inside the checks;
  parity       every op on every backend in fp32, fp16 and bf16 at a small and a model-sized shape,
               outputs and gradients by the test suite's rule (aef_kernels.testing), with uninitialised
               memory NaN-filled, NaN/Inf in one sample that must not reach the others, and (attention)
               NaN/Inf at masked keys that must not reach anything;
  large        more than 65,535 sequences and more than 2^31 elements for attention and the sphere ops;
  determinism  two backward runs of every op on each kernel backend are bitwise equal;
  compile      torch.compile(fullgraph=True) of the STP block with backend auto matches eager;
  timings      each op's providers at the large preset in bf16 with achieved GB/s and TFLOP/s against
               the measured ceilings, then the STP block fwd and fwd+bwd against eager and torch.compile.

Every result is appended to DIR/gpu_check.jsonl as one JSON line the moment it exists; at the end (or
on SIGTERM/SIGINT) DIR/summary.txt gets the table that is printed last, and DIR/timings.json/.txt the
timings in the format of the other benchmarks (benchmarks/record.py, usable with --check).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as _dt
import heapq
import json
import math
import multiprocessing
import os
import signal
import subprocess
import sys
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence

if __package__ in (None, ""):
    # Run as a script: make the `benchmarks` package importable. Appended, not prepended, so an
    # installed aef_kernels (with its compiled extension) wins over the source tree beside it.
    sys.path.append(str(Path(__file__).resolve().parent.parent))

import torch
import torch.nn.functional as F

import aef_kernels as K
from aef_kernels import testing
from aef.model.config import AEFConfig
from benchmarks import harness, ops, record, runner, stp_block
from benchmarks.providers import COMPILE

JOB = "gpu_check"
BUILD_COMMAND = "MAX_JOBS=16 pip install --no-build-isolation --no-deps ."
DEFAULT_BUDGET_S = 480.0
STAGE_ORDER = ("setup", "warm", "parity", "large", "determinism", "compile", "timings")
# Fractions of the budget. They follow the estimates below with room to spare, the checks of
# correctness first; what a stage leaves unused passes on to the next.
SHARES = {"setup": 0.03, "warm": 0.18, "parity": 0.17, "large": 0.15, "determinism": 0.04, "compile": 0.10,
          "timings": 0.33}
PROVES = {
    "setup": "versions; _C built with CUDA for this arch; copy GB/s and bf16 matmul TFLOP/s",
    "warm": "(compiles the Triton kernels and Inductor graphs of the stages below in worker processes)",
    "parity": "every op x backend x dtype x 2 shapes within the suite's error rule, poisoned memory and inputs",
    "large": ">65,535 sequences and >2^31 elements: attention, vmf_normalize, batch_uniformity_loss",
    "determinism": "two backward runs of each op on each kernel backend are bitwise equal",
    "compile": "torch.compile(fullgraph=True) of the STP block (auto) within the rule of eager",
    "timings": "each op's providers (large preset, bf16) vs the ceilings; STP block vs eager and compile",
}

OPS = ("axial_time_attention", "precision_operator", "group_norm_nhwc", "resample_down", "resample_up",
       "pyramid_exchange", "vmf_normalize", "batch_uniformity_loss")
BACKENDS = ("reference", "triton", "cuda")
KERNEL_BACKENDS = ("triton", "cuda")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
SIZES = ("small", "model")
LARGE = AEFConfig.from_preset("large")

# Estimated seconds per item on an H200, run after the warm-up, and the compile seconds of its warm-up.
# These are assumptions (from CPU measurements of ~0.4 s per Triton compilation and the H200's rates),
# not measurements: each result line of a real run records the time it took, and these figures are
# to be replaced by what such a run shows.
EST = {
    "environment": 1.0, "build": 0.5, "ceilings": 6.0,
    "parity/small": 0.6, "parity/model": 2.0,
    "large/attention_sequences": 6.0, "large/attention_elements": 25.0, "large/vmf_rows": 2.0,
    "large/vmf_elements": 10.0, "large/uniformity_rows": 2.0, "large/uniformity_elements": 12.0,
    "determinism": 0.5, "compile": 20.0,
    "timing/op_row": 0.4, "timing/block_row": 1.0, "timing/compile_row": 15.0,
}
WARM_EST = {"parity": 4.0, "compile": 60.0, "timing/op": 4.0, "timing/block": 6.0, "timing/block_compile": 60.0}
WORKER_START_S = 20.0  # spawning a worker and importing torch, Triton and aef_kernels in it

TIMING_SWEEP = dict(attention_T=(16, 64), pixels=128, frames=(32,), side_p=64, sphere_batch=(8,), sphere_side=128,
                    resample_frames=32)
TIMING_POLICY = harness.TimingPolicy(warmup_s=0.05, budget_s=0.25, min_repeats=10, max_repeats=200)
TIMING_PROVIDERS = ("reference", "triton", "cuda", "auto")
BLOCK_SIZES = dict(B=2, T=16, L=128)

PASS, FAIL, NOT_AVAILABLE, SKIPPED, CUT, ERROR, INFO = "pass", "fail", "not available", "skipped", "cut", "error", "info"
EXIT_OK, EXIT_FAILED, EXIT_NO_DEVICE, EXIT_TERMINATED = 0, 1, 2, 143


# ---------------------------------------------------------------------------------------------------
# The plan and the budgeted runner (no GPU needed; tested on CPU).


@dataclass(frozen=True)
class Item:
    """One unit of a stage: ``fn`` names an entry of ITEM_FUNCTIONS so that a worker process can run
    it from its name; ``warm_s`` > 0 marks an item whose compilation a warm-up worker does first."""

    name: str
    fn: str
    kwargs: dict = field(default_factory=dict)
    estimate_s: float = 0.0
    warm_s: float = 0.0


@dataclass
class Stage:
    name: str
    share: float
    items: list
    proves: str = ""
    estimate: Optional[float] = None  # where the items' sum is not the stage's cost (parallel warm-up)

    @property
    def estimate_s(self) -> float:
        return self.estimate if self.estimate is not None else sum(i.estimate_s for i in self.items)


class StageTimeout(BaseException):
    """The stage's deadline passed while an item ran. A BaseException, so that the broad ``except
    Exception`` of the benchmark runner does not swallow it and go on past the deadline."""


class Terminated(BaseException):
    """SIGTERM arrived: stop, write the summary, exit 143."""


class SignalTimer:
    """Raise StageTimeout in the main thread when ``seconds`` have passed inside the ``with`` block."""

    @contextlib.contextmanager
    def __call__(self, seconds: float):
        def fire(signum, frame):
            raise StageTimeout()

        previous = signal.signal(signal.SIGALRM, fire)
        signal.setitimer(signal.ITIMER_REAL, max(seconds, 1e-3))
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)


class NoTimer:
    """No hard stop (fake clocks in tests): stages stop between items only."""

    @contextlib.contextmanager
    def __call__(self, seconds: float):
        yield


def _json_safe(x):
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return str(x)


class ResultLog:
    """Appends one JSON object per line to ``path``, each with a single unbuffered write, so that a run
    killed at any moment leaves only whole lines behind."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.monotonic):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.clock, self.t0 = path, clock, clock()
        self.records: list[dict] = []
        self._f = open(path, "wb", buffering=0)

    def write(self, kind: str, **fields) -> dict:
        rec = _json_safe({"kind": kind, "t_s": round(self.clock() - self.t0, 3), **fields})
        self._f.write((json.dumps(rec) + "\n").encode())
        self.records.append(rec)
        return rec

    def close(self) -> None:
        self._f.close()


def read_log(path: Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def warm_items(stages: Sequence[Stage]) -> list[Item]:
    """The items of ``stages`` that compile, longest compile first (so that the longest one does not
    start last and set the end of the warm-up)."""
    items = [i for s in stages for i in s.items if i.warm_s > 0]
    return sorted(items, key=lambda i: -i.warm_s)


def makespan(durations: Iterable[float], workers: int) -> float:
    """End time of running ``durations`` in the given order on ``workers`` (each job goes to the worker
    that is free first), as a process pool does."""
    free = [0.0] * max(1, workers)
    for d in durations:
        heapq.heappush(free, heapq.heappop(free) + d)
    return max(free)


def warm_estimate(items: Sequence[Item], workers: int) -> float:
    return WORKER_START_S + makespan((i.warm_s for i in items), workers) if items else 0.0


def run_stages(stages: Sequence[Stage], budget_s: float, log: ResultLog, run_item: Callable[[Item], Iterable[dict]],
               clock: Callable[[], float] = time.monotonic, timer=None,
               run_warm: Optional[Callable[[Sequence[Item], float], Iterator[tuple]]] = None) -> list[dict]:
    """Run ``stages`` in order within ``budget_s``. Stage i may run until its share of the budget plus
    what earlier stages left unused has passed, never past the budget's end. Items are run in order by
    ``run_item`` (each yields result rows); the one running at the deadline is interrupted by
    ``timer`` and recorded as cut, as is every item not started. The stage named "warm" hands its items
    to ``run_warm(items, seconds)`` instead, which yields the same events as workers finish them.
    Returns one summary per stage (also logged)."""
    timer = timer or SignalTimer()
    start = clock()
    slack = 0.0
    summaries = []
    for stage in stages:
        t0 = clock()
        allowance = max(0.0, min(stage.share * budget_s + slack, start + budget_s - t0))
        deadline = t0 + allowance
        log.write("stage_start", stage=stage.name, allowance_s=round(allowance, 3), items=len(stage.items))
        finished, running, counts = set(), None, Counter()
        interrupted = False

        def record(item_name: str, row: dict) -> None:
            status = row.get("status", INFO)
            counts[status] += 1
            log.write("result", stage=stage.name, item=item_name, **{**row, "status": status})

        if stage.name == "warm" and run_warm is not None:
            events = run_warm(stage.items, allowance)
        else:
            events = _sequential(stage.items, run_item, deadline, clock)
        try:
            with timer(deadline - clock()):
                for event, name, row in events:
                    if event == START:
                        running = name
                    elif event == ROW:
                        record(name, row)
                    else:
                        finished.add(name)
                        running = None
                    if clock() >= deadline and event == DONE:
                        break
        except StageTimeout:
            interrupted = True
        finally:
            events.close()
        for item in stage.items:
            if item.name in finished:
                continue
            if item.name == running:
                how = "interrupted" if interrupted else "stopped"
                reason = f"{how} at the stage's deadline ({allowance:.0f} s) while running"
            else:
                reason = f"not started: the stage's {allowance:.0f} s were spent"
            record(item.name, {"status": CUT, "reason": reason})
        used = clock() - t0
        slack = max(0.0, allowance - used)
        summary = {"stage": stage.name, "allowance_s": round(allowance, 3), "used_s": round(used, 3),
                   "cut": counts[CUT] > 0, "counts": dict(counts)}
        log.write("stage_end", **summary)
        summaries.append(summary)
    return summaries


START, ROW, DONE = "start", "row", "done"


def _sequential(items: Sequence[Item], run_item, deadline: float, clock) -> Iterator[tuple[str, str, Optional[dict]]]:
    """Events (START, item, None), (ROW, item, row) for each row, (DONE, item, None); no item starts
    once the deadline has passed. A failing item gives an error row, and the next item runs."""
    for item in items:
        if clock() >= deadline:
            return
        yield START, item.name, None
        t0 = clock()
        try:
            for row in run_item(item):
                yield ROW, item.name, {**row, "seconds": round(clock() - t0, 3)}
        except Exception as exc:  # a check that broke is a result, not the end of the run
            yield ROW, item.name, {"status": ERROR, "reason": _exc_line(exc), "seconds": round(clock() - t0, 3)}
        yield DONE, item.name, None


def _exc_line(exc: BaseException) -> str:
    return " ".join(traceback.format_exception_only(type(exc), exc)[-1].split())


def build_plan(stages: Sequence[str] = STAGE_ORDER, backends: Sequence[str] = BACKENDS,
               dtypes: Sequence[str] = tuple(DTYPES), sizes: Sequence[str] = SIZES, ops_: Sequence[str] = OPS,
               workers: int = 15, op_compile: bool = False) -> list[Stage]:
    """The stages to run, in STAGE_ORDER whatever order ``stages`` names them in, with their items."""
    unknown = [s for s in stages if s not in STAGE_ORDER]
    if unknown:
        raise ValueError(f"stages: unknown {', '.join(unknown)}; choose from {', '.join(STAGE_ORDER)}")
    kernels = tuple(b for b in backends if b in KERNEL_BACKENDS)
    items: dict[str, list[Item]] = {
        "setup": [Item("environment", "environment", estimate_s=EST["environment"]),
                  Item("build", "build", estimate_s=EST["build"]),
                  Item("ceilings", "ceilings", estimate_s=EST["ceilings"])],
        "parity": [Item(f"{op} {dt} {size}", "parity", dict(op=op, dtype=dt, size=size, backends=tuple(backends)),
                        EST[f"parity/{size}"], WARM_EST["parity"] if "triton" in backends else 0.0)
                   for size in sizes for dt in dtypes for op in ops_],
        "large": [Item(name, "large", dict(case=name, backends=tuple(backends)), EST[f"large/{name}"])
                  for name in LARGE_CASES],
        "determinism": [Item(f"{op} {b}", "determinism", dict(op=op, backend=b), EST["determinism"])
                        for b in kernels for op in ops_],
        "compile": [Item("stp_block auto", "compile", {}, EST["compile"], WARM_EST["compile"])],
        "timings": _timing_items(backends, op_compile),
    }
    chosen = [s for s in STAGE_ORDER if s in stages]
    plan = [Stage(s, SHARES[s], items.get(s, []), PROVES[s]) for s in chosen]
    if "warm" in chosen:
        warm = next(s for s in plan if s.name == "warm")
        later = [s for s in plan if STAGE_ORDER.index(s.name) > STAGE_ORDER.index("warm")]
        warm.items = [Item(i.name, i.fn, {**i.kwargs, "warm": True}, i.warm_s, i.warm_s) for i in warm_items(later)]
        warm.estimate = warm_estimate(warm.items, workers)
    return plan


def _timing_items(backends: Sequence[str], op_compile: bool) -> list[Item]:
    """Op rows for every provider but compile first, then the STP block for every provider, then (with
    --op-compile) torch.compile of each op: compiling 26 op graphs costs more than the rest together."""
    providers = [p for p in TIMING_PROVIDERS if p in backends or p == "auto"]
    counts = family_case_counts(TIMING_SWEEP)
    items = []
    for fam in ops.FAMILIES:
        for p in providers:
            items.append(Item(f"{fam} {p}", "timing_ops", dict(family=fam, provider=p), counts[fam] * EST["timing/op_row"],
                              WARM_EST["timing/op"] if p == "triton" else 0.0))
    for p in providers + [COMPILE]:
        est = 2 * (EST["timing/compile_row"] if p == COMPILE else EST["timing/block_row"])
        warm = WARM_EST["timing/block_compile"] if p == COMPILE else WARM_EST["timing/block"] if p == "triton" else 0.0
        items.append(Item(f"stp_block {p}", "timing_block", dict(provider=p), est, warm))
    if op_compile:
        for fam in ops.FAMILIES:
            items.append(Item(f"{fam} {COMPILE}", "timing_ops", dict(family=fam, provider=COMPILE),
                              counts[fam] * EST["timing/compile_row"], WARM_EST["compile"]))
    return items


def family_case_counts(sweep: dict) -> dict[str, int]:
    """Cases (shape x mode) benchmarks/ops.py builds per family for ``sweep``: for the estimates only."""
    return {"attention": 2 * len(sweep["attention_T"]), "precision": 2 * len(sweep["frames"]), "group_norm": 2,
            "exchange": 2 * len(sweep["frames"]), "resample": 12, "sphere": 4 * len(sweep["sphere_batch"])}


def format_plan(plan: Sequence[Stage], budget_s: float) -> tuple[str, bool]:
    """The plan as a table (stage, items, estimate, share) and whether every stage's estimate fits
    its own share and the total fits the budget."""
    lines = [f"gpu_check plan, budget {budget_s:.0f} s (estimates are assumptions for an H200, "
             "not measurements; see EST in benchmarks/gpu_check.py)", "",
             f"{'stage':<12} {'items':>5} {'est s':>7} {'share s':>8}  fits  proves"]
    fits, total = True, 0.0
    for s in plan:
        est, share = s.estimate_s, s.share * budget_s
        ok = est <= share
        fits &= ok
        total += est
        lines.append(f"{s.name:<12} {len(s.items):>5} {est:>7.1f} {share:>8.1f}  {'yes' if ok else 'NO':<4}  {s.proves}")
    fits &= total <= budget_s
    lines.append(f"{'total':<12} {sum(len(s.items) for s in plan):>5} {total:>7.1f} {budget_s:>8.1f}  "
                 f"{'yes' if total <= budget_s else 'NO'}")
    lines.append("")
    lines.append("the plan fits the budget" if fits else "the plan does NOT fit the budget: raise --budget-s "
                 "or pick --stages")
    return "\n".join(lines), fits


# ---------------------------------------------------------------------------------------------------
# The checks themselves.


@dataclass
class Context:
    device: torch.device
    seed: int = 0
    tiny: bool = False  # every shape shrunk: runs the stage code on CPU (tests), proves nothing about a GPU
    ceilings: Optional[dict] = None
    env: dict = field(default_factory=dict)
    timing_rows: list = field(default_factory=list)
    cache: dict = field(default_factory=dict)

    def cached(self, key, make):
        """One cached value at a time: the benchmark cases of a family hold GBs of input sets."""
        if key not in self.cache:
            self.cache.clear()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            self.cache[key] = make()
        return self.cache[key]


@contextlib.contextmanager
def strict_fp32():
    """TF32 off: the references and the parity runs compute fp32 in fp32, so a kernel's precision is
    measured against fp32 and not against torch's global TF32 choice."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@dataclass
class OpCase:
    """An op's inputs in float64 on CPU and how to judge them.

    ``acts`` are the differentiated activations, ``params`` the differentiated weights; ``sample``
    is the index (over each activation-shaped result) of the one sample that ``poison`` makes
    non-finite, whose neighbours must not change; ``masked`` names the key/value tensors that get
    NaN/Inf wherever the key mask is False (nothing may change)."""

    op: str
    tensors: dict
    acts: tuple
    params: tuple
    outputs: tuple
    call: Callable
    sample: Optional[tuple] = None
    poison: tuple = ()
    masked: tuple = ()


def _randn(gen, *shape, scale=1.0):
    return torch.randn(shape, generator=gen, dtype=torch.float64) * scale


def _frames(op: str, size: str) -> dict:
    small = size == "small"
    if op in ("precision_operator", "group_norm_nhwc"):
        return dict(N=2, side=8, C=64, G=32) if small else dict(N=32, side=64, C=LARGE.d_p, G=LARGE.precision_groups)
    if op == "resample_down":
        return dict(N=2, side=8, cin=64, cout=128, f=4) if small else dict(N=32, side=64, cin=LARGE.d_p, cout=LARGE.d_s, f=8)
    if op == "resample_up":
        return dict(N=2, side=2, cin=128, cout=64, f=4) if small else dict(N=32, side=8, cin=LARGE.d_s, cout=LARGE.d_p, f=8)
    if op == "pyramid_exchange":
        return dict(N=2, hs=2, ds=128, dt=96, dp=64) if small else dict(N=32, hs=8, ds=LARGE.d_s, dt=LARGE.d_t, dp=LARGE.d_p)
    if op in ("vmf_normalize", "batch_uniformity_loss"):
        return dict(shape=(3, 5, 4, 64)) if small else dict(shape=(8, 128, 128, LARGE.embed_dim))
    heads = LARGE.num_heads(LARGE.d_t)
    return (dict(B=2, T=7, H=3, W=2, nh=2, d=64, mask="bt") if small
            else dict(B=2, T=16, H=16, W=16, nh=heads, d=LARGE.d_t // heads, mask="bthw"))


def make_case(op: str, size: str, seed: int = 0) -> OpCase:
    """The inputs of ``op`` at the ``small`` or ``model`` (large preset) shape, drawn from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    s = _frames(op, size)
    if op == "axial_time_attention":
        B, T, H, W, nh, d = (s[k] for k in ("B", "T", "H", "W", "nh", "d"))
        t = {n: _randn(g, B, T, H, W, nh, d) for n in ("q", "k", "v")}
        mask = torch.rand((B, T) if s["mask"] == "bt" else (B, T, H, W), generator=g) > 0.1
        if s["mask"] == "bt":
            mask[B - 1] = False  # a sample with every key masked
            mask[0, T - 1] = True
            poisoned = (0, 0, 0, 0)
        else:
            mask[0, :, 0, 0] = False  # a pixel with every key masked
            mask[0, T - 1, 0, 1] = True
            poisoned = (0, 0, 1, 0)
        t["mask"] = mask
        b, h, w, hd = poisoned
        return OpCase(op, t, ("q", "k", "v"), (), ("o",),
                      lambda t, be: (K.axial_time_attention(t["q"], t["k"], t["v"], key_padding_mask=t["mask"], backend=be),),
                      sample=(b, slice(None), h, w, hd), poison=(("q", (b, 0, h, w, hd, 0), math.nan),
                                                                 ("v", (b, T - 1, h, w, hd, 1), math.inf)),
                      masked=("k", "v"))
    if op in ("vmf_normalize", "batch_uniformity_loss"):
        x = _randn(g, *s["shape"])
        if op == "vmf_normalize":
            return OpCase(op, {"x": x}, ("x",), (), ("u",), lambda t, be: (K.vmf_normalize(t["x"], backend=be),),
                          sample=(0, 0, 0), poison=(("x", (0, 0, 0, 0), math.nan), ("x", (0, 0, 0, 1), math.inf)))
        # One scalar over the whole batch: any non-finite input reaches it by definition, so no isolation.
        return OpCase(op, {"u": F.normalize(x, dim=-1)}, ("u",), (), ("loss",),
                      lambda t, be: (K.batch_uniformity_loss(t["u"], backend=be),))

    def frame_poison(name, shape):  # NaN at frame 0's first element, Inf at its last
        return (name, (0, 0, 0, 0), math.nan), (name, (0, *(n - 1 for n in shape[1:])), math.inf)

    if op in ("precision_operator", "group_norm_nhwc"):
        N, side, C, G = s["N"], s["side"], s["C"], s["G"]
        t = {"x": _randn(g, N, side, side, C), "gw": 1 + _randn(g, C, scale=0.1), "gb": _randn(g, C, scale=0.1)}
        if op == "group_norm_nhwc":
            return OpCase(op, t, ("x",), ("gw", "gb"), ("y",),
                          lambda t, be: (K.group_norm_nhwc(t["x"], t["gw"], t["gb"], G, 1e-5, "gelu", backend=be),),
                          sample=(0,), poison=frame_poison("x", (N, side, side, C)))
        t.update(w1=_randn(g, 4 * C, C, 3, 3, scale=(9 * C) ** -0.5), b1=_randn(g, 4 * C, scale=0.1),
                 w2=_randn(g, C, 4 * C, 3, 3, scale=(36 * C) ** -0.5), b2=_randn(g, C, scale=0.1))
        return OpCase(op, t, ("x",), ("gw", "gb", "w1", "b1", "w2", "b2"), ("y",),
                      lambda t, be: (K.precision_operator(t["x"], t["gw"], t["gb"], t["w1"], t["b1"], t["w2"], t["b2"],
                                                          G, backend=be),),
                      sample=(0,), poison=frame_poison("x", (N, side, side, C)))
    if op in ("resample_down", "resample_up"):
        N, side, cin, cout, f = (s[k] for k in ("N", "side", "cin", "cout", "f"))
        down = op == "resample_down"
        wshape = (cout, cin, f, f) if down else (cout, cin)
        t = {"x": _randn(g, N, side, side, cin), "w": _randn(g, *wshape, scale=(cin * (f * f if down else 1)) ** -0.5),
             "b": _randn(g, cout, scale=0.1)}
        fn = K.resample_down if down else K.resample_up
        return OpCase(op, t, ("x",), ("w", "b"), ("y",), lambda t, be: (fn(t["x"], t["w"], t["b"], f, backend=be),),
                      sample=(0,), poison=frame_poison("x", (N, side, side, cin)))
    if op == "pyramid_exchange":
        N, hs, ds, dt, dp = (s[k] for k in ("N", "hs", "ds", "dt", "dp"))
        ht, hp = 2 * hs, 8 * hs
        t = {"xs": _randn(g, N, hs, hs, ds), "xt": _randn(g, N, ht, ht, dt), "xp": _randn(g, N, hp, hp, dp)}
        shapes = {"p_to_s_w": (ds, dp, 8, 8), "t_to_s_w": (ds, dt, 2, 2), "p_to_t_w": (dt, dp, 4, 4),
                  "s_to_t_w": (dt, ds), "t_to_p_w": (dp, dt), "s_to_p_w": (dp, ds)}
        for name in K.ExchangeParams._fields:
            if name.endswith("_w"):
                sh = shapes[name]
                t[name] = _randn(g, *sh, scale=math.prod(sh[1:]) ** -0.5)
            else:
                t[name] = _randn(g, shapes[name[:-2] + "_w"][0], scale=0.1)

        def call(t, be):
            return K.pyramid_exchange(t["xs"], t["xt"], t["xp"], K.ExchangeParams(*(t[n] for n in K.ExchangeParams._fields)),
                                      backend=be)

        return OpCase(op, t, ("xs", "xt", "xp"), tuple(K.ExchangeParams._fields), ("ys", "yt", "yp"), call,
                      sample=(0,), poison=(("xs", (0, 0, 0, 0), math.nan), ("xp", (0, hp - 1, hp - 1, dp - 1), math.inf)))
    raise ValueError(f"op: unknown {op!r}")


def _cotangents(case: OpCase, outs: Sequence[torch.Tensor], seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed + 1)
    return [torch.randn(o.shape, generator=g, dtype=torch.float64) if o.dim() else torch.ones((), dtype=torch.float64)
            for o in outs]


def run_case(case: OpCase, tensors: dict, backend: str, dtype: torch.dtype, device: torch.device,
             cots: Optional[list] = None) -> tuple[dict, list]:
    """Outputs and gradients (of activations and weights) of one run, by name ("o", "dq", ...), and
    the cotangents used (drawn from the outputs' shapes when not given)."""
    t = {n: (x.to(device, dtype).requires_grad_(n in case.acts or n in case.params) if x.is_floating_point()
             else x.to(device)) for n, x in tensors.items()}
    outs = case.call(t, backend)
    if cots is None:
        cots = _cotangents(case, outs, 0)
    wrt = list(case.acts + case.params)
    grads = torch.autograd.grad(outs, [t[n] for n in wrt], [c.to(device, dtype) for c in cots])
    results = dict(zip(case.outputs, outs))
    results.update({f"d{n}": gr for n, gr in zip(wrt, grads)})
    return {n: r.detach() for n, r in results.items()}, cots


def _poisoned_inputs(case: OpCase, variant: str) -> dict:
    t = {n: x.clone() for n, x in case.tensors.items()}
    if variant == "sample":
        for name, idx, value in case.poison:
            t[name][idx] = value
    else:
        mask = t["mask"]
        B, T = mask.shape[:2]
        H, W = t["k"].shape[2:4]
        invalid = ~(mask[:, :, None, None] if mask.dim() == 2 else mask).expand(B, T, H, W)
        t["k"][invalid] = math.nan
        t["v"][invalid] = math.inf
    return t


def _neighbours(case: OpCase, name: str, shape) -> Optional[torch.Tensor]:
    """Elements of result ``name`` that the poisoned sample must not reach, or None for results that
    legitimately mix samples (weight gradients)."""
    if name[1:] in case.params:
        return None
    keep = torch.ones(shape, dtype=torch.bool)
    keep[case.sample] = False
    return keep


def _judge(results: dict, low: dict, exact: dict, dtype, outputs: Sequence[str], region=None):
    """The suite's rule on every result (factor 2 for ``outputs``, 3 for gradients), restricted to
    ``region(name, shape)`` where given (None there skips the result). Returns (ok, figures, why)."""
    figures, first = {}, None
    for name, out in results.items():
        if region is None:
            o, lo, ex = out, low[name], exact[name]
        else:
            keep = region(name, out.shape)
            if keep is None:
                continue
            keep = keep.to(out.device)
            o, lo, ex = out[keep], low[name][keep], exact[name][keep]
        factor = testing.OUTPUT_FACTOR if name in outputs else testing.GRADIENT_FACTOR
        r = testing.reference_error(o, lo, ex, factor, dtype)
        figures[name] = {"error": r.error, "limit": r.limit, "ref_error": r.reference_error}
        if not r.ok and first is None:
            first = r.message(name)
    return first is None, figures, first


def parity(ctx: Context, op: str, dtype: str, size: str, backends: Sequence[str], warm: bool = False) -> Iterator[dict]:
    """One op, dtype and shape on each backend: clean, one non-finite sample, non-finite masked keys."""
    case = make_case(op, "small" if ctx.tiny else size, ctx.seed)
    dt, dev = DTYPES[dtype], ctx.device
    variants = ["clean"] + (["sample"] if case.sample is not None else []) + (["masked"] if case.masked else [])
    if warm:
        for backend in backends:
            with contextlib.suppress(K.BackendUnavailableError):
                for v in variants:
                    run_case(case, case.tensors if v == "clean" else _poisoned_inputs(case, v), backend, dt, dev)
        return
    with strict_fp32():
        exact, cots = run_case(case, case.tensors, "reference", torch.float64, dev)
        low, _ = run_case(case, case.tensors, "reference", dt, dev, cots)
        for backend in backends:
            row = {"op": op, "dtype": dtype, "size": size, "backend": backend}
            try:
                checks = {}
                for v in variants:
                    inputs = case.tensors if v == "clean" else _poisoned_inputs(case, v)
                    with testing.poisoned_memory():
                        got, _ = run_case(case, inputs, backend, dt, dev, cots)
                    region = (lambda n, shp: _neighbours(case, n, shp)) if v == "sample" else None
                    ok, figures, why = _judge(got, low, exact, dt, case.outputs, region)
                    checks[v] = {"ok": ok, "figures": figures, **({"why": why} if why else {})}
            except K.BackendUnavailableError as exc:
                yield {**row, "status": NOT_AVAILABLE, "reason": " ".join(str(exc).split())}
                continue
            bad = [f"{v}: {c['why']}" for v, c in checks.items() if not c["ok"]]
            yield {**row, "status": FAIL if bad else PASS, "checks": checks, **({"reason": "; ".join(bad)} if bad else {})}


# Large cases: (op, shape) at full size; tiny shapes keep the same code path on CPU.
LARGE_CASES = {
    "attention_sequences": ("axial_time_attention", (1, 64, 125, 70, 8, 64)),  # 70,000 sequences, one per program
    "attention_elements": ("axial_time_attention", (1, 16, 513, 512, 8, 64)),  # 2.15e9 elements per tensor
    "vmf_rows": ("vmf_normalize", (1, 250, 280, 64)),  # 70,000 rows
    "vmf_elements": ("vmf_normalize", (2, 4097, 4096, 64)),
    "uniformity_rows": ("batch_uniformity_loss", (2, 250, 140, 64)),
    "uniformity_elements": ("batch_uniformity_loss", (2, 4097, 4096, 64)),
}
TINY_LARGE = {"axial_time_attention": (1, 3, 5, 4, 2, 16), "vmf_normalize": (2, 5, 7, 16),
              "batch_uniformity_loss": (2, 5, 7, 16)}


def picks(count: int, per_item: int, numel: int) -> list[int]:
    """Indices of the items (sequences, rows, pixels) worth checking among ``count`` items of
    ``per_item`` contiguous elements: the first, the last, those around grid axis limits (65,535)
    and the ones holding element 2^31 and its neighbour (int32 offset overflow)."""
    chosen = {0, count - 1}
    chosen |= {i for i in (65_534, 65_535, 65_536) if i < count}
    if numel > 2**31:
        chosen |= {(2**31 - 1) // per_item, 2**31 // per_item}
    return sorted(i for i in chosen if 0 <= i < count)


def _device_randn(shape, dtype, device, seed):
    g = torch.Generator(device=device).manual_seed(seed)
    return torch.randn(shape, generator=g, device=device, dtype=dtype)


def large(ctx: Context, case: str, backends: Sequence[str], warm: bool = False) -> Iterator[dict]:
    op, shape = LARGE_CASES[case]
    if ctx.tiny:
        shape = TINY_LARGE[op]
    dt, dev = torch.bfloat16, ctx.device
    fn = {"axial_time_attention": _large_attention, "vmf_normalize": _large_vmf,
          "batch_uniformity_loss": _large_uniformity}[op]
    for backend in backends:
        row = {"op": op, "shape": list(shape), "backend": backend, "numel": math.prod(shape)}
        try:
            ok, figures, why = fn(shape, backend, dt, dev, ctx.seed)
        except K.BackendUnavailableError as exc:
            yield {**row, "status": NOT_AVAILABLE, "reason": " ".join(str(exc).split())}
            continue
        finally:
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        yield {**row, "status": PASS if ok else FAIL, "figures": figures, **({"reason": why} if why else {})}


def _all_finite(named: dict) -> Optional[str]:
    for name, x in named.items():
        if not torch.isfinite(x).all():
            return f"{name}: non-finite values (or unwritten elements) somewhere in the full result"
    return None


def _large_attention(shape, backend, dt, dev, seed):
    B, T, H, W, nh, d = shape
    q, k, v = (_device_randn(shape, dt, dev, seed + i).requires_grad_() for i in range(3))
    do = _device_randn(shape, dt, dev, seed + 3)
    with testing.poisoned_memory():
        o = K.axial_time_attention(q, k, v, backend=backend)
        dq, dk, dv = torch.autograd.grad(o, (q, k, v), do)
    full = {"o": o, "dq": dq, "dk": dk, "dv": dv}
    broken = _all_finite(full)
    seqs = picks(B * H * W * nh, T * d, q.numel())
    idx = [torch.unravel_index(torch.tensor(s), (B, H, W, nh)) for s in seqs]

    def gather(x):  # selected sequences as heads of one (1, T, 1, 1, n, d) problem
        return torch.stack([x[int(b), :, int(h), int(w), int(hd), :] for b, h, w, hd in idx], dim=1)[None, :, None, None]

    got = {n: gather(x) for n, x in full.items()}
    sel = [gather(x.detach()) for x in (q, k, v, do)]
    del q, k, v, do, o, dq, dk, dv, full
    refs = {}
    for name, rdt in (("exact", torch.float64), ("low", dt)):
        leaves = [x.to(rdt).requires_grad_() for x in sel[:3]]
        ro = K.axial_time_attention(*leaves, backend="reference")
        refs[name] = dict(zip(("o", "dq", "dk", "dv"), (ro, *torch.autograd.grad(ro, leaves, sel[3].to(rdt)))))
    ok, figures, why = _judge(got, refs["low"], refs["exact"], dt, ("o",))
    figures["checked_sequences"] = seqs
    return ok and broken is None, figures, broken or why


def _large_vmf(shape, backend, dt, dev, seed):
    x = _device_randn(shape, dt, dev, seed).requires_grad_()
    du = _device_randn(shape, dt, dev, seed + 1)
    with testing.poisoned_memory():
        u = K.vmf_normalize(x, backend=backend)
        (dx,) = torch.autograd.grad(u, (x,), du)
    broken = _all_finite({"u": u, "dx": dx})
    D = shape[-1]
    rows = picks(x.numel() // D, D, x.numel())
    sel = torch.tensor(rows, device=dev)

    def gather(t):
        return t.detach().reshape(-1, D).index_select(0, sel)

    got = {"u": gather(u), "dx": gather(dx)}
    xs, dus = gather(x), gather(du)
    del x, du, u, dx
    refs = {}
    for name, rdt in (("exact", torch.float64), ("low", dt)):
        leaf = xs.to(rdt).requires_grad_()
        ru = K.vmf_normalize(leaf, backend="reference")
        refs[name] = {"u": ru, "dx": torch.autograd.grad(ru, leaf, dus.to(rdt))[0]}
    ok, figures, why = _judge(got, refs["low"], refs["exact"], dt, ("u",))
    figures["checked_rows"] = rows
    return ok and broken is None, figures, broken or why


def _large_uniformity(shape, backend, dt, dev, seed):
    B, D = shape[0], shape[-1]
    with torch.no_grad():
        u = F.normalize(_device_randn(shape, dt, dev, seed), dim=-1)
    u.requires_grad_()
    with testing.poisoned_memory():
        loss = K.batch_uniformity_loss(u, backend=backend)
        (du,) = torch.autograd.grad(loss, (u,))
    broken = _all_finite({"loss": loss, "du": du})
    pixels = math.prod(shape[1:-1])
    with torch.no_grad():
        low_loss = K.batch_uniformity_loss(u, backend="reference")
        total = torch.zeros((), dtype=torch.float64, device=dev)
        flat = u.detach().reshape(B, pixels, D)
        step = max(1, (1 << 26) // (B * D))
        for p0 in range(0, pixels, step):
            c = flat[:, p0:p0 + step].double()
            total += (c * c.roll(1, dims=0)).sum(-1).abs().sum()
        exact_loss = total / (B * pixels)
    # A pixel's gradient depends on that pixel's B vectors only: the loss over the chosen pixels,
    # scaled by their share of all pixels, has the same gradient there as the full loss.
    chosen = picks(pixels, D, u.numel())  # element 2^31 lies in sample (2^31 // (pixels*D)) at this pixel
    if u.numel() > 2**31:
        chosen = sorted(set(chosen) | {((2**31) % (pixels * D)) // D})
    sel = torch.tensor(chosen, device=dev)
    got = {"loss": loss.detach(), "du": du.reshape(B, pixels, D).index_select(1, sel)}
    us = flat.index_select(1, sel)
    del u, du, flat
    refs = {}
    for name, rdt in (("exact", torch.float64), ("low", dt)):
        leaf = us.to(rdt).requires_grad_()
        g = torch.autograd.grad(K.batch_uniformity_loss(leaf, backend="reference"), leaf)[0]
        refs[name] = {"du": g.double() * (len(chosen) / pixels)}
    refs["exact"]["loss"], refs["low"]["loss"] = exact_loss, low_loss
    ok, figures, why = _judge(got, refs["low"], refs["exact"], dt, ("loss",))
    figures["checked_pixels"] = chosen
    return ok and broken is None, figures, broken or why


def determinism(ctx: Context, op: str, backend: str) -> Iterator[dict]:
    """Two forward+backward runs on the same inputs and cotangents give bitwise equal results."""
    case = make_case(op, "small" if ctx.tiny else "model", ctx.seed)
    row = {"op": op, "backend": backend, "dtype": "bf16"}
    try:
        first, cots = run_case(case, case.tensors, backend, torch.bfloat16, ctx.device)
        second, _ = run_case(case, case.tensors, backend, torch.bfloat16, ctx.device, cots)
    except K.BackendUnavailableError as exc:
        yield {**row, "status": NOT_AVAILABLE, "reason": " ".join(str(exc).split())}
        return
    differ = [n for n in first if not torch.equal(first[n], second[n])]
    yield {**row, "status": FAIL if differ else PASS,
           **({"reason": f"results differ between two runs: {', '.join(differ)}"} if differ else {})}


def _block_setup(ctx: Context) -> stp_block.Setup:
    cfg = AEFConfig.from_preset("tiny" if ctx.tiny else "large")
    B, T, L = (1, 3, 32) if ctx.tiny else (BLOCK_SIZES["B"], BLOCK_SIZES["T"], BLOCK_SIZES["L"])
    dtype = torch.float32 if ctx.device.type == "cpu" else torch.bfloat16
    return stp_block.Setup(cfg, B, T, L, dtype, ctx.device, True, ctx.seed, True)


def compile_block(ctx: Context, warm: bool = False) -> Iterator[dict]:
    """torch.compile(fullgraph=True) of one STP block with backend auto: outputs and gradients within
    the suite's rule, taking eager auto as the low-precision result and float64 reference as exact."""
    setup = _block_setup(ctx)
    block, make, out_shapes = stp_block.block_inputs(setup)
    inputs = make(True)
    cots = [setup.randn(*s) for s in out_shapes]
    params = [p for p in block.parameters() if p.requires_grad]
    names = ["ys", "yt", "yp", "dxs", "dxt", "dxp"] + [f"d{n}" for n, p in block.named_parameters() if p.requires_grad]

    def fwd_bwd(module, args, ps, cs):
        outs = module(*args)
        grads = torch.autograd.grad(outs, list(args[:3]) + list(ps), cs)
        return dict(zip(names, [o.detach() for o in (*outs, *grads)]))

    compiled = torch.compile(block, fullgraph=True)
    with K.use_backend("auto"):
        got = fwd_bwd(compiled, inputs, params, cots)
    if warm:
        return
    with K.use_backend("auto"):
        eager = fwd_bwd(block, inputs, params, cots)
    block64 = copy.deepcopy(block).double()
    args64 = [x.detach().double().requires_grad_(x.requires_grad) if x is not None and x.is_floating_point() else x
              for x in inputs]
    with K.use_backend("reference"):
        exact = fwd_bwd(block64, args64, [p for p in block64.parameters() if p.requires_grad],
                        [c.double() for c in cots])
    ok, figures, why = _judge(got, eager, exact, setup.dtype, names[:3])
    worst = max(figures, key=lambda n: figures[n]["error"] / max(figures[n]["limit"], 1e-30))
    yield {"status": PASS if ok else FAIL, "dtype": str(setup.dtype).removeprefix("torch."),
           "worst": {worst: figures[worst]}, "outputs": {n: figures[n] for n in names[:6]},
           **({"reason": why} if why else {})}


def timing_ops(ctx: Context, family: str, provider: str, warm: bool = False) -> Iterator[dict]:
    dtype = torch.float32 if ctx.device.type == "cpu" else torch.bfloat16
    sweep = ops.SWEEPS[True] if ctx.tiny else TIMING_SWEEP
    cases = ctx.cached(("ops", family), lambda: getattr(
        ops.OpCases(runner.Inputs(ctx.device, dtype, ctx.seed), sweep), family)())
    yield from _time_cases(ctx, cases, provider, warm)


def timing_block(ctx: Context, provider: str, warm: bool = False) -> Iterator[dict]:
    def make():
        setup = _block_setup(ctx)
        return stp_block.block_cases(setup, f"{setup.cfg.d_p}/{setup.cfg.d_t}/{setup.cfg.d_s} B{setup.B} T{setup.T} "
                                            f"L{setup.L}")

    yield from _time_cases(ctx, ctx.cached("block", make), provider, warm)


def _time_cases(ctx: Context, cases, provider: str, warm: bool) -> Iterator[dict]:
    policy = harness.QUICK_POLICY if ctx.tiny else TIMING_POLICY
    for case in cases:
        if warm:
            with contextlib.suppress(Exception):
                case.build(provider)[0]()
            continue
        row = runner.run_case(case, provider, ctx.device, policy, ctx.ceilings)
        ctx.timing_rows.append(row)
        status = {"ok": PASS, "failed": FAIL, "not available": NOT_AVAILABLE, "skipped": SKIPPED}[row["status"]]
        yield {"status": status, "timing": row, **({"reason": row["reason"]} if row["reason"] else {})}


def arch_coverage(device_sm: str, archs: Sequence[str]) -> Optional[str]:
    """How a build for CMake CUDA architectures ``archs`` ("80", "90a", "90-real", "80-virtual") runs
    on a device of compute capability ``device_sm`` ("90"): "sass" (machine code for it), "sass
    compatible" (machine code of an earlier minor version of the same major), "ptx" (JIT-compiled at
    load from PTX), or None (it cannot run)."""
    dev = int(device_sm)
    best = None
    for a in archs:
        base, _, kind = a.partition("-")
        suffix = base[-1] if base[-1] in "af" else ""
        num = int(base.rstrip("af"))
        real, virtual = kind in ("", "real"), kind in ("", "virtual")
        if real and num == dev:
            return "sass"
        if real and not suffix and num // 10 == dev // 10 and num < dev:
            best = "sass compatible"
        elif virtual and num <= dev and (not suffix or num == dev) and best is None:
            best = "ptx"
    return best


def environment(ctx: Context) -> Iterator[dict]:
    env = record.environment(ctx.device)
    env["cudnn"] = torch.backends.cudnn.version() if ctx.device.type == "cuda" else None
    env["driver"] = _driver_version() if ctx.device.type == "cuda" else None
    ctx.env = env
    yield {"status": INFO, "environment": env}


def _driver_version() -> Optional[str]:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def build(ctx: Context) -> Iterator[dict]:
    try:
        from aef_kernels import _C
    except ImportError as exc:
        yield {"status": FAIL, "reason": f"aef_kernels._C is not built ({exc}); build it with: {BUILD_COMMAND}"}
        return
    info = {"extension": _C.__file__, "with_cuda": bool(_C.with_cuda), "cuda_archs": list(_C.cuda_archs),
            "nvcc": getattr(_C, "nvcc_version", "")}
    if not _C.with_cuda:
        yield {**info, "status": FAIL, "reason": f"aef_kernels._C was built without CUDA ({_C.cuda_skip_reason}); "
                                                 f"on this machine build it with: {BUILD_COMMAND}"}
        return
    if ctx.device.type != "cuda":
        yield {**info, "status": INFO, "reason": "no CUDA device: the architecture is not checked"}
        return
    props = torch.cuda.get_device_properties(ctx.device)
    sm = f"{props.major}{props.minor}"
    coverage = arch_coverage(sm, info["cuda_archs"])
    info.update(device_sm=sm, coverage=coverage)
    if coverage is None:
        yield {**info, "status": FAIL, "reason": f"built for {', '.join(info['cuda_archs'])}, not for sm_{sm}; "
                                                 f"rebuild with: AEF_CUDA_ARCHS={sm} {BUILD_COMMAND}"}
    else:
        yield {**info, "status": PASS, **({"reason": f"runs on sm_{sm} through {coverage}"} if coverage != "sass" else {})}


def ceilings(ctx: Context) -> Iterator[dict]:
    ctx.ceilings = harness.measure_ceilings(ctx.device, torch.bfloat16, quick=ctx.tiny)
    yield {"status": INFO, "ceilings": ctx.ceilings}


ITEM_FUNCTIONS: dict[str, Callable[..., Iterator[dict]]] = {
    "environment": environment, "build": build, "ceilings": ceilings, "parity": parity, "large": large,
    "determinism": determinism, "compile": compile_block, "timing_ops": timing_ops, "timing_block": timing_block,
}


def item_runner(ctx: Context) -> Callable[[Item], Iterator[dict]]:
    return lambda item: ITEM_FUNCTIONS[item.fn](ctx, **item.kwargs)


# ---------------------------------------------------------------------------------------------------
# Warm-up workers.

_WORKER_CTX: Optional[Context] = None


def _worker_init(device: str, seed: int, tiny: bool) -> None:
    global _WORKER_CTX
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when workers stop
    _WORKER_CTX = Context(torch.device(device), seed, tiny)


def _warm_one(job: tuple[str, str, dict]) -> tuple[str, str, float, Optional[str]]:
    name, fn, kwargs = job
    t0 = time.monotonic()
    try:
        for _ in ITEM_FUNCTIONS[fn](_WORKER_CTX, **kwargs):
            pass
    except Exception as exc:  # the stage itself reports the failure; the warm-up only notes it
        return name, ERROR, time.monotonic() - t0, _exc_line(exc)
    return name, PASS, time.monotonic() - t0, None


def pool_warmer(device: torch.device, seed: int, tiny: bool, workers: int):
    """``run_warm`` for run_stages: a spawned process pool runs the items (each compiles what it
    launches into Triton's and Inductor's on-disk caches, where the main process finds it); at the
    stage's end the pool is terminated, and what it did not finish compiles in the main process."""

    def run_warm(items: Sequence[Item], seconds: float) -> Iterator[tuple[str, str, Optional[dict]]]:
        deadline = time.monotonic() + seconds
        # Each worker's Inductor would otherwise start a compile pool of its own per worker.
        os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
        pool = multiprocessing.get_context("spawn").Pool(max(1, workers), _worker_init, (str(device), seed, tiny))
        try:
            results = pool.imap_unordered(_warm_one, [(i.name, i.fn, i.kwargs) for i in items])
            for _ in items:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                try:
                    name, status, seconds_taken, reason = results.next(timeout=left)
                except multiprocessing.TimeoutError:
                    return
                yield ROW, name, {"status": status, "seconds": round(seconds_taken, 3), **({"reason": reason} if reason else {})}
                yield DONE, name, None
        finally:
            pool.terminate()
            pool.join()

    return run_warm


# ---------------------------------------------------------------------------------------------------
# Summary and command line.


def summarize(log: ResultLog, summaries: Sequence[dict], budget_s: float, stopped: Optional[str]) -> str:
    env = next((r["environment"] for r in log.records if r.get("environment")), {})
    lines = [f"{JOB} on {env.get('device_name', '?')} ({env.get('device', '?')}, sm {env.get('sm', '-')}), "
             f"torch {env.get('torch', '?')}, triton {env.get('triton', '?')}, CUDA {env.get('cuda', '?')}, "
             f"driver {env.get('driver') or '-'}, commit {(env.get('git_commit') or 'unknown')[:12]}"]
    used = sum(s["used_s"] for s in summaries)
    lines.append(f"budget {budget_s:.0f} s, used {used:.0f} s" + (f"; STOPPED: {stopped}" if stopped else ""))
    lines.append("")
    cols = (PASS, FAIL, ERROR, NOT_AVAILABLE, SKIPPED, CUT, INFO)
    lines.append(f"{'stage':<12} {'allowed s':>9} {'used s':>7}  " + "  ".join(f"{c:>5}" if len(c) <= 5 else c for c in cols))
    for s in summaries:
        lines.append(f"{s['stage']:<12} {s['allowance_s']:>9.1f} {s['used_s']:>7.1f}  "
                     + "  ".join(f"{s['counts'].get(c, 0):>{max(5, len(c))}}" for c in cols))
    bad = [r for r in log.records if r["kind"] == "result" and r["status"] in (FAIL, ERROR)]
    if bad:
        lines += ["", "failures:"]
        lines += [f"  {r['stage']} / {r['item']}{' / ' + r['backend'] if r.get('backend') else ''}: "
                  f"{r.get('reason', '')}" for r in bad]
    return "\n".join(lines) + "\n"


def stage_summaries(records: Sequence[dict]) -> list[dict]:
    """Per-stage summaries from the log, including the stage a stop interrupted (its counts so far)."""
    ended = {r["stage"]: r for r in records if r["kind"] == "stage_end"}
    out = []
    for r in records:
        if r["kind"] != "stage_start":
            continue
        if r["stage"] in ended:
            out.append(ended[r["stage"]])
            continue
        counts = Counter(x["status"] for x in records if x["kind"] == "result" and x["stage"] == r["stage"])
        out.append({"stage": r["stage"], "allowance_s": r["allowance_s"], "used_s": round(records[-1]["t_s"] - r["t_s"], 3),
                    "cut": True, "counts": dict(counts)})
    return out


def write_outputs(out: Path, log: ResultLog, summaries, budget_s: float, stopped: Optional[str], ctx: Context) -> str:
    text = summarize(log, summaries, budget_s, stopped)
    if ctx.timing_rows:
        result = record.make_result(JOB, ctx.env or record.environment(ctx.device), ctx.ceilings,
                                    {"sweep": "tiny" if ctx.tiny else "gpu_check", "dtype": "bf16", "seed": ctx.seed},
                                    runner.timing_record(ctx.device, harness.QUICK_POLICY if ctx.tiny else TIMING_POLICY),
                                    ctx.timing_rows)
        table = record.format_table(result)
        record.write(result, table, str(out / "timings.json"))
        text += "\n" + table
    (out / "summary.txt").write_text(text)
    return text


def default_out() -> Path:
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return record.RESULTS_DIR / f"{record.slug(name)}_{_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d}_{JOB}"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S, help="seconds for all stages (default 480)")
    p.add_argument("--out", type=Path, help="results folder (default benchmarks/results/<device>_<date>_gpu_check)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and its estimated fit; run nothing")
    p.add_argument("--stages", default=",".join(STAGE_ORDER), help=f"comma-separated subset of {', '.join(STAGE_ORDER)}")
    p.add_argument("--backends", default=",".join(BACKENDS), help="backends to check (default all)")
    p.add_argument("--workers", type=int, help="warm-up worker processes (default: CPUs - 1, at most 15; "
                   "--dry-run plans for 15, the H200 machine's 16 cores less one)")
    p.add_argument("--op-compile", action="store_true", help="also time torch.compile of each op (minutes)")
    p.add_argument("--device", choices=("cuda", "cpu"), help="cpu only with --tiny (runs the stage code, checks nothing)")
    p.add_argument("--tiny", action="store_true", help="toy shapes everywhere: for running the script's code on CPU")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    stages = runner.select(args.stages, STAGE_ORDER, "--stages")
    backends = runner.select(args.backends, BACKENDS, "--backends")
    workers = args.workers or (15 if args.dry_run else max(1, min(15, (os.cpu_count() or 2) - 1)))
    plan = build_plan(stages, backends, workers=workers, op_compile=args.op_compile)
    table, fits = format_plan(plan, args.budget_s)
    if args.dry_run:
        print(table)
        if not torch.cuda.is_available():
            print("\n(no CUDA device here: plan only)")
        return EXIT_OK if fits else EXIT_FAILED
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda: no CUDA device is available", file=sys.stderr)
        return EXIT_NO_DEVICE
    if device.type == "cpu" and not args.tiny:
        print("error: gpu_check needs a CUDA device (--dry-run prints the plan; --device cpu --tiny runs the "
              "script's code at toy sizes)", file=sys.stderr)
        return EXIT_NO_DEVICE
    out = args.out or default_out()
    ctx = Context(device, args.seed, args.tiny)
    log = ResultLog(out / f"{JOB}.jsonl")
    log.write("plan", budget_s=args.budget_s, stages=[{"stage": s.name, "items": len(s.items),
                                                       "estimate_s": round(s.estimate_s, 1)} for s in plan])
    print(table, file=sys.stderr, flush=True)

    def terminate(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, terminate)
    summaries: list[dict] = []
    stopped = None
    try:
        summaries = run_stages(plan, args.budget_s, log, _echo(item_runner(ctx)),
                               run_warm=pool_warmer(device, args.seed, args.tiny, workers))
    except Terminated:
        stopped = "SIGTERM"
    except KeyboardInterrupt:
        stopped = "interrupted (SIGINT)"
    finally:
        signal.signal(signal.SIGTERM, previous)
    if stopped:
        summaries = stage_summaries(log.records)
    log.write("end", status="stopped" if stopped else "done", reason=stopped)
    log.close()
    text = write_outputs(out, log, summaries, args.budget_s, stopped, ctx)
    print(text)
    print(f"results in {out}")
    if stopped:
        return EXIT_TERMINATED
    failed = any(r["kind"] == "result" and r["status"] in (FAIL, ERROR) for r in log.records)
    return EXIT_FAILED if failed else EXIT_OK


def _echo(run_item):
    """Progress on stderr: the item being run, so that a watcher sees where the time goes."""

    def run(item: Item):
        print(f"  {item.fn}: {item.name}", file=sys.stderr, flush=True)
        return run_item(item)

    return run


if __name__ == "__main__":
    sys.exit(main())
