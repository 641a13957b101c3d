"""Heads on the summary (docs/model.md §4.6-4.9): x2 upsampling, the vMF mean head, vMF sampling,
implicit decoders and the text adapter."""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

import aef_kernels as K

from .layers import Mlp


class DepthToSpaceUpsample(nn.Module):
    """Learned x2 upsampling: a linear map to 4 d, then depth-to-space.

    The f*f sub-pixel maps start equal (ICNR initialisation): at initialisation the layer is a
    linear map followed by nearest-neighbour upsampling, so it starts free of the checkerboard that
    independently initialised sub-pixels print on the embedding field, and training separates them.
    """

    def __init__(self, dim: int, factor: int = 2):
        super().__init__()
        self.factor = factor
        self.proj = nn.Linear(dim, factor * factor * dim)
        with torch.no_grad():
            # Output features are ordered (sub-pixel row, sub-pixel col, channel).
            self.proj.weight.copy_(self.proj.weight[:dim].repeat(factor * factor, 1))
            self.proj.bias.copy_(self.proj.bias[:dim].repeat(factor * factor))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., H, W, d) -> (..., f H, f W, d)."""
        *lead, H, W, d = x.shape
        f = self.factor
        y = self.proj(x).view(*lead, H, W, f, f, d)
        return y.transpose(-3, -4).reshape(*lead, H * f, W * f, d)


class VMFMeanHead(nn.Module):
    """LayerNorm, Linear(d -> embed_dim), L2 normalisation: the vMF mean direction mu, |mu| = 1."""

    def __init__(self, dim: int, embed_dim: int = 64, eps: float = 1e-5):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.proj = nn.Linear(dim, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return K.vmf_normalize(self.proj(self.norm(x)))


def sample_vmf(mu: torch.Tensor, kappa: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Exact samples z ~ vMF(mu, kappa) (Wood 1994), one per row of mu (..., m), differentiable in mu.

    The cosine w = z . mu is drawn by Wood's rejection sampler (independent of mu), the tangent
    direction uniformly; a Householder reflection maps e_1 to mu, so gradients flow through mu.
    """
    shape, m = mu.shape, mu.shape[-1]
    mu2 = mu.reshape(-1, m)
    n, dev = mu2.shape[0], mu.device
    w = _wood_cosines(n, m, float(kappa), dev, generator)  # (n,) float64
    v = torch.randn(n, m - 1, dtype=torch.float64, device=dev, generator=generator)
    v = F.normalize(v, dim=-1)
    e1_frame = torch.cat([w[:, None], torch.sqrt((1 - w * w).clamp_min(0))[:, None] * v], dim=-1)
    e1_frame = e1_frame.to(mu.dtype)  # (n, m): samples around e_1
    # Householder reflection H = I - 2 u u^T with u = (e_1 - mu) / |e_1 - mu| maps e_1 to mu.
    e1 = torch.zeros_like(mu2)
    e1[:, 0] = 1
    u = F.normalize(e1 - mu2, dim=-1)
    z = e1_frame - 2 * (e1_frame * u).sum(-1, keepdim=True) * u
    return z.reshape(shape)


def _wood_cosines(n: int, m: int, kappa: float, device, generator) -> torch.Tensor:
    b = (m - 1) / (2 * kappa + math.sqrt(4 * kappa * kappa + (m - 1) ** 2))
    x0 = (1 - b) / (1 + b)
    c = kappa * x0 + (m - 1) * math.log(1 - x0 * x0)
    a = (m - 1) / 2
    out = torch.empty(n, dtype=torch.float64, device=device)
    todo = torch.arange(n, device=device)
    while todo.numel():
        k = todo.numel()
        # Beta(a, a) from two gammas via the ratio of chi-square-like draws: Beta = G1 / (G1 + G2).
        g = torch._standard_gamma(torch.full((2, k), a, dtype=torch.float64, device=device), generator=generator)
        z = g[0] / (g[0] + g[1])
        w = (1 - (1 + b) * z) / (1 - (1 - b) * z)
        u = torch.rand(k, dtype=torch.float64, device=device, generator=generator)
        ok = kappa * w + (m - 1) * torch.log(1 - x0 * w) - c >= torch.log(u)
        out[todo[ok]] = w[ok]
        todo = todo[~ok]
    return out


class ImplicitDecoder(nn.Module):
    """Per-pixel MLP on [z, code of the target time within its period, source metadata] -> C values."""

    def __init__(self, embed_dim: int, time_dim: int, metadata_size: int, channels: int, hidden: int = 512):
        super().__init__()
        self.metadata_size = metadata_size
        self.fc1 = nn.Linear(embed_dim + time_dim + metadata_size, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, channels)

    def forward(self, z: torch.Tensor, time_code: torch.Tensor, metadata: Optional[torch.Tensor] = None):
        """z: (B, H, W, e); time_code: (B, f); metadata: (B, m) or None (zeros) -> (B, H, W, C)."""
        B, H, W, _ = z.shape
        if metadata is None:
            metadata = z.new_zeros(B, self.metadata_size)
        cond = torch.cat([time_code.to(z.dtype), metadata.to(z.dtype)], dim=-1)  # (B, f + m)
        # The conditioning is constant over pixels: project it once per sample rather than per pixel.
        w_z, w_c = self.fc1.weight.split([z.shape[-1], cond.shape[-1]], dim=1)
        h = F.linear(z, w_z) + F.linear(cond, w_c, self.fc1.bias)[:, None, None, :]
        h = self.fc2(F.gelu(h))
        return self.fc3(F.gelu(h))


class TextAdapter(nn.Module):
    """A frozen text encoder's vector (B, D_text) and the period code (B, 3 tc) -> (B, e), unit norm."""

    def __init__(self, text_dim: int, period_dim: int, hidden: int, embed_dim: int = 64):
        super().__init__()
        self.mlp = Mlp(text_dim + period_dim, hidden, embed_dim)

    def forward(self, text: torch.Tensor, period_code: torch.Tensor) -> torch.Tensor:
        return K.vmf_normalize(self.mlp(torch.cat([text, period_code.to(text.dtype)], dim=-1)))
