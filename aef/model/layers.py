"""Building blocks the model's modules share: the MLP, the resampling weights' initialisation and
the fixed 2-D position code."""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


class Mlp(nn.Module):
    """Linear, GELU, linear: (..., dim) -> (..., out or dim)."""

    def __init__(self, dim: int, hidden: int, out: Optional[int] = None):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, out or dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


def resample_weight(cout: int, cin: int, factor: Optional[int] = None, gain: float = 0.5) -> nn.Parameter:
    """A resampling weight (Cout, Cin[, f, f]) with output variance ``gain**2`` times the input's, so
    that the three-way sums of the exchange do not grow the activations block after block."""
    shape = (cout, cin) if factor is None else (cout, cin, factor, factor)
    fan_in = cin * (factor or 1) ** 2
    return nn.Parameter(torch.randn(shape) * (gain / math.sqrt(fan_in)))


def sincos_2d(h: int, w: int, dim: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Fixed 2-D sinusoidal position code (h, w, dim) for any grid size; half the channels per axis."""
    quarter = dim // 4
    omega = 1.0 / (10_000 ** (torch.arange(quarter, dtype=torch.float64, device=device) / quarter))
    ys = torch.arange(h, dtype=torch.float64, device=device)[:, None] * omega  # (h, dim/4)
    xs = torch.arange(w, dtype=torch.float64, device=device)[:, None] * omega  # (w, dim/4)
    code_y = torch.cat([ys.sin(), ys.cos()], dim=-1)[:, None, :].expand(h, w, 2 * quarter)
    code_x = torch.cat([xs.sin(), xs.cos()], dim=-1)[None, :, :].expand(h, w, 2 * quarter)
    code = torch.cat([code_y, code_x], dim=-1)
    return F.pad(code, (0, dim - 4 * quarter)).to(dtype)  # (h, w, dim)
