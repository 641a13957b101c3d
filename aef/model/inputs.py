"""Normalising and validating the model's calling conventions (docs/model.md §1.2-§1.3).

Every public entry point of :class:`aef.models.AEF` goes through :func:`prepare_inputs`, which turns
the accepted conventions into one form and raises a ``ValueError``/``TypeError`` naming the argument
before any computation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Sequence, Union

import torch

from . import sources as _sources
from .timecode import check_epoch_ms, finite_times

PeriodsLike = Union[torch.Tensor, Sequence[Sequence[float]], Sequence[float]]


@dataclass
class Inputs:
    """One batch in canonical form. Sources appear in ``names`` order (the registry's order)."""

    names: tuple[str, ...]
    data: dict[str, torch.Tensor]  # name -> (B, N_i, L, L, C_i), may hold NaN where invalid
    timestamps: dict[str, torch.Tensor]  # name -> (B, N_i) int64/float64 epoch ms
    masks: dict[str, torch.Tensor]  # name -> (B, N_i, L, L) bool, True = valid
    batch_size: int
    side: int
    # name -> (B, N_i, L, L, C_i) bool: per-band validity; a pixel is valid where any band is.
    band_valid: dict[str, torch.Tensor]


def prepare_periods(valid_periods: PeriodsLike, batch_size: int, device=None) -> tuple[torch.Tensor, bool]:
    """Periods as (B, Q, 2) float64 epoch ms, and whether the caller gave one period per sample.

    Accepts a tensor (B, 2) or (B, Q, 2) (int64/float64), a list of B ``(start, end)`` tuples, or one
    ``(start, end)`` tuple for the whole batch.
    """
    if isinstance(valid_periods, torch.Tensor):
        check_epoch_ms("valid_periods", valid_periods)
        p = valid_periods.to(device=device, dtype=torch.float64)
    elif isinstance(valid_periods, (list, tuple)):
        try:
            p = torch.tensor(valid_periods, dtype=torch.float64, device=device)
        except (TypeError, ValueError) as e:
            raise TypeError(f"valid_periods: expected (start, end) pairs of epoch ms, got {valid_periods!r}") from e
        if p.shape == (2,):
            p = p.expand(batch_size, 2)
    else:
        raise TypeError(f"valid_periods: expected a tensor or a list of (start, end) tuples, got "
                        f"{type(valid_periods).__name__}")
    single = p.dim() == 2
    if single:
        p = p[:, None]
    if p.dim() != 3 or p.shape[0] != batch_size or p.shape[2] != 2 or p.shape[1] < 1:
        raise ValueError(f"valid_periods: expected shape (B, 2) or (B, Q, 2) with B = {batch_size}, "
                         f"got {tuple(valid_periods.shape) if isinstance(valid_periods, torch.Tensor) else tuple(p.shape)}")
    if not torch.isfinite(p).all() or not (p[..., 1] > p[..., 0]).all():
        raise ValueError("valid_periods: every period must be finite with start < end")
    return p, single


def prepare_inputs(source_data: Mapping[str, torch.Tensor], timestamps: Mapping[str, torch.Tensor],
                   masks: Optional[Mapping[str, torch.Tensor]] = None,
                   specs: Optional[Mapping[str, _sources.Source]] = None,
                   known: Sequence[str] = (), dtype: torch.dtype = torch.float32) -> Inputs:
    """Validate the per-source dicts of the sources in ``specs`` (name -> Source, default: the
    registry's input sources) and expand every mask to pixel masks (B, N_i, L, L).

    A mask may be per frame (B, N_i), per pixel (B, N_i, L, L) or per band (B, N_i, L, L, C_i).
    Validity is kept per band: a band is valid where its mask is True and its value finite, and a
    pixel is valid where any of its bands is, so a missing band never voids the others.

    Other names of ``known`` (e.g. the model's decoded sources) are accepted and ignored; any other
    name is an error.

    Data of any float dtype are cast to ``dtype`` (the model's compute dtype). Empty inputs (B = 0,
    or a source with N = 0 frames: leave such a source out) are a ValueError naming the dimension,
    the rule of the ``aef_kernels`` ops. Float timestamps must be finite on every frame with valid
    pixels; on a frame masked out everywhere the time is unused and may be NaN.
    """
    if specs is None:
        specs = {n: _sources.get(n) for n in _sources.INPUT_SOURCES}
    if not isinstance(source_data, Mapping) or not isinstance(timestamps, Mapping):
        raise TypeError("source_data and timestamps: expected dicts keyed by source name")
    masks = masks or {}
    for arg, d in (("source_data", source_data), ("timestamps", timestamps), ("masks", masks)):
        for name in d:
            if name not in specs and name not in known:
                raise ValueError(f"{arg}: unknown source {name!r}; this model takes "
                                 f"{', '.join(specs)} as input" + (f" and decodes {', '.join(known)}" if known else ""))
    names = tuple(n for n in specs if n in source_data)
    if not names:
        raise ValueError(f"source_data: expected at least one input source ({', '.join(specs)}), "
                         f"got {', '.join(source_data) or 'none'}")
    B = side = None
    data, times, pmasks, bands = {}, {}, {}, {}
    for name in names:
        x = source_data[name]
        src = specs[name]
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"source_data[{name!r}]: expected a float tensor (B, N, H, W, C)")
        if x.dim() != 5 or x.shape[-1] != src.channels or x.shape[2] != x.shape[3]:
            raise ValueError(f"source_data[{name!r}]: expected shape (B, N, L, L, {src.channels}), "
                             f"got {tuple(x.shape)}")
        if B is None:
            B, side = x.shape[0], x.shape[2]
            if side % 16 or side == 0:
                raise ValueError(f"source_data[{name!r}]: the patch side L = {side} must be a positive "
                                 "multiple of 16")
        if x.shape[0] != B or x.shape[2] != side:
            raise ValueError(f"source_data[{name!r}]: expected B = {B} and L = {side} like the other sources, "
                             f"got shape {tuple(x.shape)}")
        N = x.shape[1]
        if B == 0 or N == 0:
            raise ValueError(f"source_data[{name!r}]: {'B' if B == 0 else 'N'} = 0 in shape {tuple(x.shape)}; "
                             "expected at least one sample and one frame (leave out a source without frames)")
        x = x.to(dtype)
        if name not in timestamps:
            raise ValueError(f"timestamps: missing {name!r}")
        t = timestamps[name]
        check_epoch_ms(f"timestamps[{name!r}]", t)
        if tuple(t.shape) != (B, N):
            raise ValueError(f"timestamps[{name!r}]: expected shape (B, N) = ({B}, {N}), got {tuple(t.shape)}")
        m = masks.get(name)
        if m is None:
            m = torch.ones(B, N, side, side, dtype=torch.bool, device=x.device)
        else:
            if not isinstance(m, torch.Tensor) or m.dtype != torch.bool:
                raise TypeError(f"masks[{name!r}]: expected a bool tensor (True = valid)")
            if tuple(m.shape) == (B, N):
                m = m[:, :, None, None].expand(B, N, side, side)
            elif tuple(m.shape) not in ((B, N, side, side), (B, N, side, side, src.channels)):
                raise ValueError(f"masks[{name!r}]: expected shape (B, N) = ({B}, {N}), (B, N, L, L) = "
                                 f"({B}, {N}, {side}, {side}) or (B, N, L, L, C) = ({B}, {N}, {side}, {side}, "
                                 f"{src.channels}), got {tuple(m.shape)}")
        m = m.to(x.device)
        band = (m if m.dim() == 5 else m[..., None]) & torch.isfinite(x)
        data[name], times[name], bands[name] = x, t.to(x.device), band
        pmasks[name] = band.any(dim=-1)
    for name in names:
        frame_valid = pmasks[name].flatten(2).any(dim=-1)
        times[name] = finite_times(f"timestamps[{name!r}]", times[name], frame_valid)
    return Inputs(names, data, times, pmasks, B, side, bands)
