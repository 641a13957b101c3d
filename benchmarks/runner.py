"""What every benchmark script shares: the command line, running one case for one provider into a
row, and finishing a run (table, JSON, plot, ``--check``)."""

from __future__ import annotations

import argparse
import gc
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

import aef_kernels as K

from . import check, harness, plot, record
from .floors import Cost, bound, roofline_fraction
from .providers import COMPILE, NotAvailable, Skipped

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
FWD, FWD_BWD = "fwd", "fwd+bwd"
EXIT_FAILED = 3


def add_common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available, else cpu")
    p.add_argument("--dtype", choices=tuple(DTYPES), help="default: bf16 on cuda, fp32 on cpu")
    p.add_argument("--quick", action="store_true", help="small sizes and few repeats (CI smoke run)")
    p.add_argument("--providers", help="comma-separated subset of providers to run")
    p.add_argument("--out", help="a .json path or a directory (default: benchmarks/results/)")
    p.add_argument("--plot", action="store_true", help="also write a PNG bar chart (needs matplotlib)")
    p.add_argument("--check", metavar="BASELINE.json", help="compare with a stored result; exit 1 on regression")
    p.add_argument("--margin", type=float, default=check.DEFAULT_MARGIN,
                   help=f"noise margin of --check as a fraction (default {check.DEFAULT_MARGIN})")
    p.add_argument("--seed", type=int, default=0)


def resolve_device(name: Optional[str]) -> torch.device:
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available to this torch "
                         f"({torch.__version__}); use --device cpu")
    return torch.device(name, torch.cuda.current_device()) if name == "cuda" else torch.device("cpu")


def resolve_dtype(name: Optional[str], device: torch.device) -> torch.dtype:
    return DTYPES[name or ("bf16" if device.type == "cuda" else "fp32")]


def select(arg: Optional[str], known: Sequence[str], option: str) -> tuple[str, ...]:
    """The comma-separated subset ``arg`` of ``known`` (all of them when ``arg`` is empty)."""
    if not arg:
        return tuple(known)
    chosen = tuple(s.strip() for s in arg.split(",") if s.strip())
    unknown = [s for s in chosen if s not in known]
    if unknown:
        raise SystemExit(f"{option}: unknown {', '.join(unknown)}; choose from {', '.join(known)}")
    return chosen


def policy_for(device: torch.device, quick: bool) -> harness.TimingPolicy:
    if quick:
        return harness.QUICK_POLICY
    return harness.GPU_POLICY if device.type == "cuda" else harness.CPU_POLICY


def timing_record(device: torch.device, policy: harness.TimingPolicy) -> dict:
    return {
        "method": "cuda-events" if device.type == "cuda" else "wall-clock",
        "memory_method": ("CUDA caching-allocator peak during one call, above what was allocated before it"
                          if device.type == "cuda" else "not measured on CPU (torch keeps no CPU allocator statistics)"),
        "warmup_s": policy.warmup_s,
        "budget_s": policy.budget_s,
        "min_repeats": policy.min_repeats,
        "max_repeats": policy.max_repeats,
        "rotation": "input sets cycled so that their total exceeds twice the device's L2",
        "rounds": policy.rounds,
        "order": ("each provider warmed up on its own before any timing; providers timed together "
                  "(runner.run_providers) run in rounds whose order rotates by one; p20-p80 over all rounds' calls"),
        "cache_bytes": harness.cache_bytes(device.type, device.index or 0),
    }


class Inputs:
    """Random inputs on one device and dtype (drawn on CPU from a seeded generator, so every device
    gets the same values), in enough sets to rotate through more than twice the device's L2."""

    def __init__(self, device: torch.device, dtype: torch.dtype, seed: int):
        self.device, self.dtype = device, dtype
        self.gen = torch.Generator().manual_seed(seed)

    def randn(self, *shape, grad: bool = False) -> torch.Tensor:
        x = torch.randn(shape, generator=self.gen, dtype=torch.float32)
        return x.to(self.device, self.dtype).requires_grad_(grad)

    def mask(self, *shape, valid: float) -> torch.Tensor:
        """A random bool mask, True (valid) with probability ``valid``."""
        return (torch.rand(*shape, generator=self.gen) < valid).to(self.device)

    def sets(self, make: Callable[[], tuple], grad_shapes: Optional[Sequence[tuple]] = None) -> tuple[list, list]:
        """Input sets from ``make()`` and, with ``grad_shapes``, one tuple of output gradients per set."""
        first = make()
        elt = torch.tensor([], dtype=self.dtype).element_size()
        per_set = harness.tensor_bytes(first) + sum(elt * torch.Size(s).numel() for s in grad_shapes or ())
        n = harness.rotation_count(per_set, harness.cache_bytes(self.device.type, self.device.index or 0))
        inputs = [first] + [make() for _ in range(n - 1)]
        grads = [tuple(self.randn(*s) for s in grad_shapes) for _ in range(n)] if grad_shapes else []
        return inputs, grads


@dataclass
class Case:
    """One thing to time: ``build(provider)`` returns one closure per input set (a full call each: the
    forward, or forward and backward) or raises NotAvailable."""

    section: str
    shape: str
    mode: str
    build: Callable[[str], Sequence[Callable[[], object]]]
    cost: Optional[Cost] = None


def _release(device: torch.device) -> None:
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()


def _failure_row(key: dict, exc: BaseException) -> dict:
    if isinstance(exc, (NotAvailable, K.BackendUnavailableError)):
        return record.make_row(**key, status="not available", reason=" ".join(str(exc).split()))
    if isinstance(exc, Skipped):
        return record.make_row(**key, status="skipped", reason=str(exc))
    # A provider that said it could run and then broke: a bug to report.
    detail = traceback.format_exception_only(type(exc), exc)[-1].strip()
    return record.make_row(**key, status="failed", reason=detail)


def _ok_row(key: dict, case: Case, stats: harness.Stats, peak: Optional[int], ceilings: Optional[dict]) -> dict:
    figures = dict(median_ms=stats.median_ms, p20_ms=stats.p20_ms, p80_ms=stats.p80_ms,
                   repeats=stats.repeats, peak_mem_bytes=peak)
    if case.cost is not None:
        seconds = stats.median_ms / 1e3
        figures.update(bytes=float(case.cost.bytes), flops=float(case.cost.flops),
                       gbps=case.cost.bytes / seconds / 1e9,
                       tflops=case.cost.flops / seconds / 1e12 if case.cost.flops else None)
        if ceilings is not None:
            c = harness.ceilings_of(ceilings)
            figures.update(roofline_fraction=roofline_fraction(case.cost, c, seconds), bound=bound(case.cost, c))
    return record.make_row(**key, status="ok", **figures)


def run_providers(case: Case, providers: Sequence[str], device: torch.device, policy: harness.TimingPolicy,
                  ceilings: Optional[dict], log=sys.stderr) -> list[dict]:
    """One row per provider of ``case``, in the order given: every provider that builds is warmed
    up on its own and then timed interleaved with the others in rotating order
    (:func:`harness.time_interleaved`); peak memory is measured after all timing."""
    t0 = time.perf_counter()
    keys = {p: dict(section=case.section, shape=case.shape, mode=case.mode, provider=p) for p in providers}
    rows: dict[str, dict] = {}
    calls: dict[str, Sequence[Callable[[], object]]] = {}
    try:
        for p in providers:
            try:
                calls[p] = case.build(p)
            except Exception as exc:
                rows[p] = _failure_row(keys[p], exc)
        for p, stats in harness.time_interleaved(calls, device, policy).items():
            if isinstance(stats, Exception):
                rows[p] = _failure_row(keys[p], stats)
                continue
            try:
                peak = harness.peak_memory(calls[p][0], device)
            except Exception as exc:
                rows[p] = _failure_row(keys[p], exc)
                continue
            rows[p] = _ok_row(keys[p], case, stats, peak, ceilings)
            rounds = stats.round_medians_ms
            spread = f", rounds {min(rounds):.3f}-{max(rounds):.3f} ms" if len(rounds) > 1 else ""
            print(f"  {case.section} {case.shape} {case.mode} {p}: {stats.median_ms:.3f} ms{spread}",
                  file=log, flush=True)
    finally:
        calls.clear()
        if COMPILE in providers:
            torch._dynamo.reset()  # each case compiles afresh; Dynamo's per-function cache is never the limit
        _release(device)
    for p in providers:
        if rows[p]["status"] != "ok":
            print(f"  {case.section} {case.shape} {case.mode} {p}: {rows[p]['status']}", file=log, flush=True)
    print(f"  {case.section} {case.shape} {case.mode}: {len(providers)} provider(s) "
          f"[{time.perf_counter() - t0:.1f} s]", file=log, flush=True)
    return [rows[p] for p in providers]


def run_case(case: Case, provider: str, device: torch.device, policy: harness.TimingPolicy,
             ceilings: Optional[dict], log=sys.stderr) -> dict:
    """The row of one provider timed alone (warm-up, then its rounds); comparing providers of one
    case is :func:`run_providers`' job."""
    return run_providers(case, [provider], device, policy, ceilings, log)[0]


def finish(result: dict, args: argparse.Namespace) -> int:
    """Print the table, write JSON + table (and the plot), run ``--check``; return the exit code."""
    table = record.format_table(result)
    print(table)
    json_path, txt_path = record.write(result, table, args.out)
    print(f"wrote {json_path} and {txt_path}")
    code = 0
    if args.plot:
        try:
            print(f"wrote {plot.plot(result, json_path.with_suffix('.png'))}")
        except plot.PlotUnavailable as exc:
            print(f"error: {exc}", file=sys.stderr)
            code = 2
    failed = [r for r in result["rows"] if r["status"] == "failed"]
    if failed:
        print(f"error: {len(failed)} case(s) failed; see the rows marked 'failed'", file=sys.stderr)
        code = code or EXIT_FAILED
    if args.check:
        outcome = check.compare(result, record.load(args.check), args.margin)
        print(outcome.report(args.margin))
        code = outcome.exit_code or code
    return code


def fwd_calls(fn: Callable, input_sets: Sequence[tuple]) -> list[Callable[[], object]]:
    def make(args):
        def call():
            with torch.no_grad():
                return fn(*args)

        return call

    return [make(a) for a in input_sets]


def fwd_bwd_calls(fn: Callable, input_sets: Sequence[tuple], grad_sets: Sequence[tuple],
                  params: Sequence[torch.Tensor]) -> list[Callable[[], object]]:
    """Forward, then the gradients of every input that requires one and of ``params``, with the given
    output gradients. ``torch.autograd.grad`` returns them instead of accumulating into ``.grad``, so
    no zeroing happens inside the timed call."""

    def make(args, grads):
        wrt = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad] + list(params)

        def call():
            outs = fn(*args)
            outs = outs if isinstance(outs, (tuple, list)) else (outs,)
            return torch.autograd.grad(outs, wrt, grads)

        return call

    return [make(a, g) for a, g in zip(input_sets, grad_sets)]
