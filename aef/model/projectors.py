"""Source projectors (docs/model.md §4.1): per-source space-to-depth to L/2, then one time axis."""

from __future__ import annotations

import torch
import torch.nn as nn

import aef_kernels as K

from .config import AEFConfig
from .inputs import Inputs


class SourceProjector(nn.Module):
    """One source: NaN-safe zeroing, a 2x2 stride-2 conv C_i -> d_p, plus a learned source embedding."""

    def __init__(self, channels: int, d_p: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(d_p, channels, 2, 2))
        self.bias = nn.Parameter(torch.zeros(d_p))
        self.embedding = nn.Parameter(torch.zeros(d_p))
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)
        nn.init.normal_(self.embedding, std=0.02)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x: (B, N, L, L, C) with NaN/garbage where invalid; mask: (B, N, L, L) per pixel or
        (B, N, L, L, C) per band, bool -> (B, N, L/2, L/2, d_p). An invalid band enters as 0, the
        band's mean in model space, and leaves the pixel's other bands as they are."""
        B, N, L, _, C = x.shape
        keep = (mask if mask.dim() == x.dim() else mask[..., None]) & torch.isfinite(x)
        # torch.where, never multiplication: NaN * 0 is NaN.
        x = torch.where(keep, x, x.new_zeros(()))
        y = K.resample_down(x.reshape(B * N, L, L, C), self.weight, self.bias, 2)  # (B*N, L/2, L/2, d_p)
        return (y + self.embedding.to(y.dtype)).reshape(B, N, L // 2, L // 2, -1)


def downsample_mask(mask: torch.Tensor, factor: int) -> torch.Tensor:
    """(B, T, H, W) bool -> (B, T, H/f, W/f): a coarse pixel is valid where any fine pixel is."""
    B, T, H, W = mask.shape
    if factor == 1:
        return mask
    return mask.reshape(B, T, H // factor, factor, W // factor, factor).any(dim=5).any(dim=3)


class SourceProjectors(nn.Module):
    """All input sources, concatenated along time in registry order (the order carries no meaning)."""

    def __init__(self, config: AEFConfig):
        super().__init__()
        self.proj = nn.ModuleDict({n: SourceProjector(c, config.d_p) for n, c in config.input_sources.items()})

    def forward(self, inputs: Inputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> x_P0 (B, T, L/2, L/2, d_p), frame times (B, T) float64 epoch ms, mask (B, T, L/2, L/2) bool.

        Times of frames with no valid pixel are set to 0 so that no NaN can enter through them.
        """
        xs, ts, ms = [], [], []
        for name in inputs.names:
            if name not in self.proj:
                raise ValueError(f"source_data[{name!r}]: this model has no projector for it "
                                 f"(input sources: {', '.join(self.proj)})")
            m = inputs.masks[name]
            xs.append(self.proj[name](inputs.data[name], inputs.band_valid[name]))
            t = inputs.timestamps[name].to(torch.float64)
            frame_valid = m.flatten(2).any(dim=2)  # (B, N)
            ts.append(torch.where(frame_valid & torch.isfinite(t), t, t.new_zeros(())))
            ms.append(downsample_mask(m, 2))
        return torch.cat(xs, dim=1), torch.cat(ts, dim=1), torch.cat(ms, dim=1)
