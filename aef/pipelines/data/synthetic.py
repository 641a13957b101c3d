"""Synthetic samples with the statistics that matter for testing: smooth fields with a seasonal
cycle, clouds (NaN + masked pixels) on optical sources, missing radar polarisations, sparse lidar,
categorical land cover and frames at irregular times."""

from __future__ import annotations

import math
from typing import Mapping, Optional

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ...model import sources as _sources
from ...model.timecode import MS_PER_DAY

YEAR_MS = int(365.25 * MS_PER_DAY)
# 8 input frames in total, and every target-only source.
DEFAULT_FRAMES = {"sentinel2": 4, "landsat": 2, "sentinel1": 2, "palsar2": 1, "glo30": 1, "gedi": 1, "era5": 2,
                  "grace": 1, "nlcd": 1}
DEFAULT_START_MS = 1_672_531_200_000  # 2023-01-01T00:00:00Z
OPTICAL = ("sentinel2", "landsat")


def _smooth(g: torch.Generator, n: int, side: int, channels: int, cells: int = 4) -> torch.Tensor:
    """(n, side, side, channels) smooth random field: coarse noise, bilinearly upsampled."""
    coarse = torch.randn(n, channels, cells, cells, generator=g)
    return F.interpolate(coarse, size=(side, side), mode="bilinear", align_corners=False).permute(0, 2, 3, 1)


def synthetic_sample(side: int = 32, frames: Optional[Mapping[str, int]] = None, seed: int = 0,
                     start_ms: int = DEFAULT_START_MS, text_dim: Optional[int] = None) -> dict:
    """One sample (see ``aef.pipelines.data``) with ``frames[name]`` frames per source over one year."""
    frames = dict(DEFAULT_FRAMES if frames is None else frames)
    g = torch.Generator().manual_seed(seed)
    ground = _smooth(g, 1, side, 8)[0]  # (L, L, 8) the "landscape" every source observes
    amplitude = 0.5 + 0.25 * _smooth(g, 1, side, 1)[0]  # (L, L, 1) per-pixel seasonal cycle
    phase = math.pi * _smooth(g, 1, side, 1)[0]
    sample = {"source_data": {}, "timestamps": {}, "masks": {}, "metadata": {}}
    for name, n in frames.items():
        src = _sources.get(name)
        C = src.channels
        if src.static:
            times = torch.full((n,), start_ms, dtype=torch.int64)
        else:
            times = start_ms + (torch.rand(n, generator=g, dtype=torch.float64) * YEAR_MS).long()
        angle = (2 * math.pi * (times - start_ms).double() / YEAR_MS).float()[:, None, None, None]  # (n, 1, 1, 1)
        season = amplitude[None] * torch.sin(angle + phase[None])  # (n, L, L, 1)
        mix = torch.randn(8, C, generator=g) / math.sqrt(8)
        x = (ground @ mix)[None] + season + 0.1 * _smooth(g, n, side, C)
        mask = torch.ones(n, side, side, dtype=torch.bool)
        if name in OPTICAL:
            mask = _smooth(g, n, side, 1)[..., 0] < 0.8  # clouds
        elif name == "gedi":
            mask = torch.rand(n, side, side, generator=g) < 0.05  # sparse footprints
        if name == "sentinel1":
            x[..., 2:4] = float("nan")  # HH/HV absent: only VV, VH and the angle
        if src.loss == "ce":
            x = F.one_hot(x.argmax(dim=-1), C).float()
        x = torch.where(mask[..., None], x, torch.full_like(x, float("nan")))
        sample["source_data"][name], sample["timestamps"][name], sample["masks"][name] = x, times, mask
        if src.metadata_size:
            sample["metadata"][name] = torch.rand(n, src.metadata_size, generator=g)
    if text_dim:
        sample["text"] = {"vector": torch.randn(text_dim, generator=g),
                          "pixel": torch.randint(0, side, (2,), generator=g)}
    return sample


class SyntheticDataset(Dataset):
    """``length`` reproducible synthetic samples (sample i uses seed ``seed + i``)."""

    def __init__(self, length: int, side: int = 32, frames: Optional[Mapping[str, int]] = None, seed: int = 0,
                 text_dim: Optional[int] = None):
        self.length, self.side, self.frames, self.seed, self.text_dim = length, side, frames, seed, text_dim

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.length:
            raise IndexError(i)
        return synthetic_sample(self.side, self.frames, self.seed + i, text_dim=self.text_dim)
