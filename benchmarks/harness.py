"""Timing, statistics, peak memory and device ceilings shared by every benchmark (docs/kernels.md §7).

On a GPU each call is timed with a pair of CUDA events after warm-up; on CPU with the wall clock.
A call cycles through several input sets whose total size exceeds the last cache that would
otherwise hold them (L2 on a GPU, per-core L2 on CPU), so no timing is of data already on chip.
Statistics are the median and the 20th and 80th percentiles of the per-call times.

Providers of one case are compared fairly (:func:`time_interleaved`): each is warmed up on its own
first (its first call compiles, autotunes or picks a cuDNN algorithm outside any timing), then they
are timed in rounds, each round running every provider's share of the repeats, in an order that
rotates by one from round to round. So no provider is always first after the warm-up (when clocks,
caches and the allocator are in whatever state the last warm-up left), and drift over the run (other
work on the machine, clocks) falls on every provider alike. The per-round medians are kept, so the
spread between rounds is reported beside the spread of single calls.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Optional, Sequence

import torch

from .floors import Ceilings


@dataclass(frozen=True)
class Stats:
    median_ms: float
    p20_ms: float
    p80_ms: float
    repeats: int
    # The median of each round's calls, in round order (one round when timed alone).
    round_medians_ms: tuple = ()


def quantile(values: Sequence[float], q: float) -> float:
    """The q-quantile with linear interpolation between order statistics (numpy's default)."""
    if not values:
        raise ValueError("values: expected at least one sample")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q: expected a value in [0, 1], got {q}")
    s = sorted(values)
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def summarize(times_ms: Sequence[float], rounds: Sequence[Sequence[float]] = ()) -> Stats:
    """Quantiles of every call in ``times_ms``; ``rounds`` (the same calls split by round) adds the
    per-round medians."""
    return Stats(quantile(times_ms, 0.5), quantile(times_ms, 0.2), quantile(times_ms, 0.8), len(times_ms),
                 tuple(quantile(r, 0.5) for r in rounds if r))


@dataclass(frozen=True)
class TimingPolicy:
    """How long to warm up and to measure each case; the repeat count follows from the first calls,
    and the repeats are split over ``rounds`` rounds (fewer when there are fewer repeats)."""

    warmup_s: float
    budget_s: float
    min_repeats: int
    max_repeats: int
    rounds: int = 5


GPU_POLICY = TimingPolicy(warmup_s=0.1, budget_s=1.0, min_repeats=20, max_repeats=1000)
CPU_POLICY = TimingPolicy(warmup_s=0.0, budget_s=1.0, min_repeats=3, max_repeats=30)
QUICK_POLICY = TimingPolicy(warmup_s=0.0, budget_s=0.2, min_repeats=3, max_repeats=10)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_call(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def warm_up(calls: Sequence[Callable[[], object]], device: torch.device, policy: TimingPolicy) -> tuple[int, int]:
    """One untimed call (compilation, autotuning, cuDNN's algorithm choice, allocator growth), then
    ``policy.warmup_s`` of further calls, at least one. Returns how many repeats the budget allows at
    the fastest warm call's speed, and the index of the input set to use next."""
    if not calls:
        raise ValueError("calls: expected at least one closure")
    calls[0]()
    synchronize(device)
    warm, i, t_end = [], 1, time.perf_counter() + policy.warmup_s
    while not warm or time.perf_counter() < t_end:
        warm.append(_timed_call(calls[i % len(calls)], device))
        i += 1
    per_call_s = max(min(warm) / 1e3, 1e-7)
    return int(min(policy.max_repeats, max(policy.min_repeats, policy.budget_s / per_call_s))), i


def split_repeats(repeats: int, rounds: int) -> list[int]:
    """``repeats`` calls over at most ``rounds`` rounds, as evenly as possible, none empty."""
    n = max(1, min(rounds, repeats))
    return [repeats // n + (r < repeats % n) for r in range(n)]


def time_interleaved(providers: dict[str, Sequence[Callable[[], object]]], device: torch.device,
                     policy: TimingPolicy) -> dict[str, "Stats | Exception"]:
    """Time several providers of one case fairly: each warmed up on its own (:func:`warm_up`), then
    ``policy.rounds`` rounds, round ``r`` running the providers in the order rotated by ``r`` and
    each provider's share of its repeats in one block (calls cycle through its input sets).

    A provider that raises is dropped from the remaining rounds; its entry is the exception."""
    names = list(providers)
    out: dict[str, Stats | Exception] = {}
    plans, next_set = {}, {}
    for name in names:
        try:
            repeats, next_set[name] = warm_up(providers[name], device, policy)
        except Exception as exc:  # reported as the provider's failure; the others still run
            out[name] = exc
            continue
        plans[name] = split_repeats(repeats, policy.rounds)
    times: dict[str, list[list[float]]] = {name: [] for name in plans}
    for r in range(max((len(p) for p in plans.values()), default=0)):
        for name in names[r % len(names):] + names[:r % len(names)]:
            if name in out or r >= len(plans[name]):
                continue
            calls, block = providers[name], []
            try:
                for _ in range(plans[name][r]):
                    block.append(_timed_call(calls[next_set[name] % len(calls)], device))
                    next_set[name] += 1
            except Exception as exc:
                out[name] = exc
                continue
            times[name].append(block)
    for name, rounds in times.items():
        if name not in out:
            out[name] = summarize([t for block in rounds for t in block], rounds)
    return {name: out[name] for name in names}


def time_calls(calls: Sequence[Callable[[], object]], device: torch.device, policy: TimingPolicy) -> Stats:
    """Time one provider's ``calls`` (one closure per input set, used in rotation) after its warm-up."""
    result = time_interleaved({"": calls}, device, policy)[""]
    if isinstance(result, Exception):
        raise result
    return result


@lru_cache(maxsize=None)
def cache_bytes(device_type: str, index: int = 0) -> int:
    """The L2 size of the device (a GPU's L2, or one CPU core's L2), read once."""
    if device_type == "cuda":
        return int(torch.cuda.get_device_properties(index).L2_cache_size)
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for entry in sorted(os.listdir(base)):
            with open(f"{base}/{entry}/level") as f:
                if f.read().strip() != "2":
                    continue
            with open(f"{base}/{entry}/size") as f:
                return _parse_size(f.read().strip())
    except OSError:
        pass
    return 2 << 20  # a typical per-core L2 where sysfs does not say


def _parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    if text and text[-1].upper() in units:
        return int(text[:-1]) * units[text[-1].upper()]
    return int(text)


def rotation_count(set_bytes: int, cache: int, max_sets: int = 64) -> int:
    """Input sets needed so that cycling through them touches more than twice the cache, at least 2."""
    if set_bytes <= 0:
        return max_sets
    return int(min(max_sets, max(2, math.ceil(2 * cache / set_bytes) + 1)))


def tensor_bytes(*objs) -> int:
    """Bytes of every tensor in ``objs`` (nested tuples, lists and dicts are walked)."""
    total = 0
    for o in objs:
        if isinstance(o, torch.Tensor):
            total += o.numel() * o.element_size()
        elif isinstance(o, (tuple, list)):
            total += tensor_bytes(*o)
        elif isinstance(o, dict):
            total += tensor_bytes(*o.values())
    return total


def peak_memory(fn: Callable[[], object], device: torch.device) -> Optional[int]:
    """Peak memory one call of ``fn`` allocates beyond what was allocated before it (the CUDA caching
    allocator's statistics). None on CPU: torch keeps no CPU allocator statistics, and the growth of
    the resident set mostly measures the C allocator's reuse of freed pages, not the call."""
    if device.type != "cuda":
        return None
    synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def _time_copy(nbytes: int, device: torch.device, policy: TimingPolicy) -> Stats:
    src = torch.randn(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    return time_calls([lambda: dst.copy_(src)], device, policy)


def measure_ceilings(device: torch.device, dtype: torch.dtype, quick: bool = False) -> dict:
    """Bandwidth of a large device-to-device copy and the matrix rate of a square matmul in ``dtype``,
    measured now on ``device``, so roofline fractions use what this device actually sustains."""
    policy = QUICK_POLICY if quick else (GPU_POLICY if device.type == "cuda" else CPU_POLICY)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        copy_bytes = int(min(1 << 30, free // 8))
        n = 8192
    else:
        copy_bytes = (64 if quick else 256) << 20
        n = 512 if quick else 1024
    copy = _time_copy(copy_bytes, device, policy)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    mm = time_calls([lambda: a @ b], device, policy)
    bandwidth = 2 * copy_bytes / (copy.median_ms / 1e3)
    rate = 2.0 * n ** 3 / (mm.median_ms / 1e3)
    return {
        "bandwidth_GBps": bandwidth / 1e9,
        "matmul_TFLOPs": rate / 1e12,
        "matmul_dtype": str(dtype).removeprefix("torch."),
        "matmul_n": n,
        "copy_bytes": copy_bytes,
        "cache_bytes": cache_bytes(device.type, device.index or 0),
        "tf32": bool(device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32),
    }


def ceilings_of(record: dict) -> Ceilings:
    return Ceilings(record["bandwidth_GBps"] * 1e9, record["matmul_TFLOPs"] * 1e12)
