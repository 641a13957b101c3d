"""The summarizer (docs/model.md §4.5): attention pooling along time, one query per summary period."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

import aef_kernels as K

from .config import AEFConfig
from .layers import Mlp


class Summarizer(nn.Module):
    """Pools the fused frames F into one vector per (period, pixel) with axial attention (Tq = Q).

    Keys and values are F plus a projection of the frame timecodes; the query is an MLP of the
    period's (start, end, duration) timecodes. A pixel with no valid frame gets exactly zero.
    """

    def __init__(self, config: AEFConfig):
        super().__init__()
        d, tc = config.d_p, config.timecode_dim
        self.heads = config.num_heads(d)
        self.query = Mlp(3 * tc, config.mlp_ratio * d, d)
        self.key_time = nn.Linear(tc, d)
        self.q_proj = nn.Linear(d, d)
        self.kv_proj = nn.Linear(d, 2 * d)
        self.out = nn.Linear(d, d)

    def forward(self, fused: torch.Tensor, frame_tc: torch.Tensor, period_tc: torch.Tensor,
                mask: Optional[torch.Tensor]) -> torch.Tensor:
        """fused: (B, T, H, W, d); frame_tc: (B, T, tc); period_tc: (B, Q, 3 tc); mask: (B, T, H, W) bool
        or None -> (B, Q, H, W, d)."""
        B, T, H, W, d = fused.shape
        Q, nh = period_tc.shape[1], self.heads
        kv = self.kv_proj(fused + self.key_time(frame_tc.to(fused.dtype))[:, :, None, None, :])
        kv = kv.view(B, T, H, W, 2, nh, d // nh)
        q = self.q_proj(self.query(period_tc.to(fused.dtype))).view(B, Q, 1, 1, nh, d // nh)
        q = q.expand(B, Q, H, W, nh, d // nh).contiguous()  # (B, Q, H, W, heads, hd)
        o = K.axial_time_attention(q, kv[..., 0, :, :], kv[..., 1, :, :], key_padding_mask=mask)  # (B, Q, H, W, heads, hd)
        o = self.out(o.reshape(B, Q, H, W, d))
        if mask is None:
            return o
        # The output bias would turn a pixel without any valid frame into a constant; keep it zero.
        any_valid = mask.any(dim=1)[:, None, :, :, None]  # (B, 1, H, W, 1)
        return torch.where(any_valid, o, o.new_zeros(()))
