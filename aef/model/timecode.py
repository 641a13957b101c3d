"""Continuous timecodes from epoch milliseconds (docs/model.md §3).

Everything runs in float64 and is cast at the end: epoch-ms in float32 loses about two minutes, and
sinusoids of raw epoch-ms with growing frequencies are noise (trap §5). Periods are in days, spaced
geometrically from ``min_days`` to ``max_days`` plus the annual cycle, so codes a minute apart are
nearly identical and codes years apart differ.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

MS_PER_DAY = 86_400_000.0
DAYS_PER_YEAR = 365.25


def check_epoch_ms(name: str, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor of epoch milliseconds, got {type(t).__name__}")
    if t.dtype not in (torch.int64, torch.float64):
        raise TypeError(
            f"{name}: expected epoch milliseconds as int64 or float64, got {t.dtype} "
            "(float32 epoch-ms loses about two minutes of precision)"
        )


def finite_times(where: str, t: torch.Tensor, frame_valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Float epoch-ms times ``t`` (..., N) with every NaN/Inf refused, naming ``where`` and the frame,
    except on frames that ``frame_valid`` (same shape, bool) marks invalid: those times are never
    used, so they become 0 there. A non-finite time would otherwise reach the timecode as 0
    (1970-01-01) without a word. Integer times are returned as they are."""
    if not t.is_floating_point():
        return t
    bad = ~torch.isfinite(t)
    used = bad if frame_valid is None else bad & frame_valid
    if used.any():
        idx = [int(i) for i in used.nonzero()[0]]
        labels = ["sample", "frame"] if len(idx) == 2 else ["frame"] if len(idx) == 1 else \
            [f"index {k}" for k in range(len(idx))]
        at = ", ".join(f"{n} {i}" for n, i in zip(labels, idx))
        raise ValueError(f"{where}: the timestamp of {at} is {t[tuple(idx)].item()}; every frame with "
                         "valid pixels needs a finite time (mask the frame out to leave its time unused)")
    return torch.where(bad, torch.zeros((), dtype=t.dtype, device=t.device), t) if bad.any() else t


def to_days(t_ms: torch.Tensor) -> torch.Tensor:
    return t_ms.to(torch.float64) / MS_PER_DAY


def periods_days(num_periods: int, min_days: float = 1.0, max_days: float = 10_000.0,
                 device=None) -> torch.Tensor:
    """(num_periods + 1,) float64: geometric periods, then the year."""
    geo = torch.logspace(math.log10(min_days), math.log10(max_days), num_periods, dtype=torch.float64,
                         device=device)
    return torch.cat([geo, geo.new_tensor([DAYS_PER_YEAR])])


def timecode(t_ms: torch.Tensor, num_periods: int = 16, min_days: float = 1.0, max_days: float = 10_000.0,
             dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(...,) epoch ms (int64/float64) -> (..., 2 * (num_periods + 1)) sin/cos features in ``dtype``."""
    check_epoch_ms("t_ms", t_ms)
    days = to_days(t_ms)  # (...,) float64
    periods = periods_days(num_periods, min_days, max_days, device=t_ms.device)
    # Reduce the phase modulo one period in float64 before the sinusoid so the cast loses nothing.
    phase = torch.remainder(days[..., None], periods) * (2.0 * math.pi / periods)  # (..., P)
    return torch.cat([torch.sin(phase), torch.cos(phase)], dim=-1).to(dtype)


def position_in_period(t_ms: torch.Tensor, period: torch.Tensor) -> torch.Tensor:
    """Fraction in [0, 1) of ``t_ms`` (...,) within ``period`` (..., 2) = [start, end), in float64."""
    start, end = period[..., 0].to(torch.float64), period[..., 1].to(torch.float64)
    frac = (t_ms.to(torch.float64) - start) / (end - start).clamp_min(1.0)
    return frac.clamp(0.0, math.nextafter(1.0, 0.0))


def fraction_code(frac: torch.Tensor, num_freqs: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(...,) fraction in [0, 1) -> (..., 1 + 2 * num_freqs): the fraction and its harmonics."""
    k = torch.arange(1, num_freqs + 1, dtype=torch.float64, device=frac.device)
    phase = 2.0 * math.pi * frac.to(torch.float64)[..., None] * k  # (..., F)
    return torch.cat([frac.to(torch.float64)[..., None], torch.sin(phase), torch.cos(phase)], dim=-1).to(dtype)


def period_timecode(period: torch.Tensor, num_periods: int = 16, min_days: float = 1.0,
                    max_days: float = 10_000.0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(..., 2) [start, end) epoch ms -> (..., 3 * code): codes of the start, the end and the duration."""
    check_epoch_ms("period", period)
    start, end = period[..., 0], period[..., 1]
    codes = [timecode(t, num_periods, min_days, max_days, dtype) for t in (start, end, end - start)]
    return torch.cat(codes, dim=-1)
