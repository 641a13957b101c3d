"""Reference sphere ops: vMF-mean normalisation and the batch-uniformity loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def vmf_normalize(x, eps):
    return F.normalize(x, dim=-1, eps=eps)


def batch_uniformity_loss(u):
    uf = u.to(torch.promote_types(u.dtype, torch.float32))
    # Pair sample b with sample b-1 (mod B) at the same position: roll the batch axis, never pixels.
    dots = (uf * uf.roll(1, dims=0)).sum(dim=-1)  # (B, ...)
    return dots.abs().mean().to(u.dtype)
