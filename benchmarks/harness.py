"""Timing, statistics, peak memory and device ceilings shared by every benchmark (docs/kernels.md §7).

On a GPU each call is timed with a pair of CUDA events after warm-up; on CPU with the wall clock.
A call cycles through several input sets whose total size exceeds the last cache that would
otherwise hold them (L2 on a GPU, per-core L2 on CPU), so no timing is of data already on chip.
Statistics are the median and the 20th and 80th percentiles of the per-call times.
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


def summarize(times_ms: Sequence[float]) -> Stats:
    return Stats(quantile(times_ms, 0.5), quantile(times_ms, 0.2), quantile(times_ms, 0.8), len(times_ms))


@dataclass(frozen=True)
class TimingPolicy:
    """How long to warm up and to measure each case; the repeat count follows from the first calls."""

    warmup_s: float
    budget_s: float
    min_repeats: int
    max_repeats: int


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


def time_calls(calls: Sequence[Callable[[], object]], device: torch.device, policy: TimingPolicy) -> Stats:
    """Time ``calls`` (one closure per input set, used in rotation) after one untimed call (compilation,
    autotuning, allocator growth) and ``policy.warmup_s`` of further calls, at least one."""
    if not calls:
        raise ValueError("calls: expected at least one closure")
    calls[0]()
    synchronize(device)
    warm, i, t_end = [], 1, time.perf_counter() + policy.warmup_s
    while not warm or time.perf_counter() < t_end:
        warm.append(_timed_call(calls[i % len(calls)], device))
        i += 1
    per_call_s = max(min(warm) / 1e3, 1e-7)
    repeats = int(min(policy.max_repeats, max(policy.min_repeats, policy.budget_s / per_call_s)))
    times = []
    for _ in range(repeats):
        times.append(_timed_call(calls[i % len(calls)], device))
        i += 1
    return summarize(times)


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
