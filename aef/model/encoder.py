"""The Space-Time-Precision encoder (docs/model.md §4.2-4.4).

Three paths over the same frames at three resolutions: precision P at L/2 (width d_p), time T at
L/8 (d_t) and space S at L/16 (d_s). Every kernel-covered op goes through ``aef_kernels`` on the
backend the caller selected (``AEF`` enters its ``backend`` around every entry point); space
attention and MLPs are plain PyTorch. All operators are per frame except the time operator, whose
key mask keeps masked frames from influencing valid ones; no operator uses a frame's index, so the
output is equivariant to the order of frames.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

import aef_kernels as K

from .config import AEFConfig
from .layers import Mlp, resample_weight, sincos_2d
from .projectors import downsample_mask

# Factors between the paths: P (L/2) -> T (L/8) -> S (L/16).
P_TO_T = 4
T_TO_S = 2
P_TO_S = P_TO_T * T_TO_S


class SpaceOperator(nn.Module):
    """Pre-LN multi-head self-attention over the tokens of each frame, then an MLP; residual around each."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 4, eps: float = 1e-5):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, mlp_ratio * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, h, w, C) frames -> (N, h, w, C)."""
        N, h, w, C = x.shape
        t = x.reshape(N, h * w, C)
        qkv = self.qkv(self.norm1(t)).reshape(N, h * w, 3, self.heads, C // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (N, heads, h*w, hd)
        o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(N, h * w, C)
        t = t + self.proj(o)
        t = t + self.mlp(self.norm2(t))
        return t.reshape(N, h, w, C)


class TimeOperator(nn.Module):
    """Adds a projection of the frame timecode, then pre-LN axial attention along time at every pixel
    (the key mask hides invalid frames/pixels) and an MLP; residual around each."""

    def __init__(self, dim: int, heads: int, timecode_dim: int, mlp_ratio: int = 4, eps: float = 1e-5):
        super().__init__()
        self.heads = heads
        self.time_proj = nn.Linear(timecode_dim, dim)
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, mlp_ratio * dim)

    def forward(self, x: torch.Tensor, timecode: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        """x: (B, T, H, W, C); timecode: (B, T, tc); mask: (B, T, H, W) or (B, T) bool -> (B, T, H, W, C)."""
        B, T, H, W, C = x.shape
        x = x + self.time_proj(timecode.to(x.dtype))[:, :, None, None, :]
        qkv = self.qkv(self.norm1(x)).view(B, T, H, W, 3, self.heads, C // self.heads)
        # Strided slices of the fused projection; the kernel reads them in place.
        o = K.axial_time_attention(qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :],
                                   key_padding_mask=mask)  # (B, T, H, W, heads, hd)
        x = x + self.proj(o.reshape(B, T, H, W, C))
        return x + self.mlp(self.norm2(x))


class PrecisionOperator(nn.Module):
    """x + conv3x3(GELU(conv3x3(GroupNorm(x)))) per frame, C -> 4C -> C."""

    def __init__(self, dim: int, num_groups: int, eps: float = 1e-5):
        super().__init__()
        self.num_groups, self.eps = num_groups, eps
        self.gn_weight = nn.Parameter(torch.ones(dim))
        self.gn_bias = nn.Parameter(torch.zeros(dim))
        conv1, conv2 = nn.Conv2d(dim, 4 * dim, 3), nn.Conv2d(4 * dim, dim, 3)
        self.w1, self.b1 = conv1.weight, conv1.bias
        self.w2, self.b2 = conv2.weight, conv2.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, H, W, C) -> (N, H, W, C)."""
        return K.precision_operator(x, self.gn_weight, self.gn_bias, self.w1, self.b1, self.w2, self.b2,
                                    self.num_groups, self.eps)


class PyramidExchange(nn.Module):
    """S += down8(P) + down2(T); T += down4(P) + up2(S); P += up4(T) + up8(S), per frame."""

    def __init__(self, d_s: int, d_t: int, d_p: int):
        super().__init__()
        self.p_to_s_w, self.p_to_s_b = resample_weight(d_s, d_p, P_TO_S), nn.Parameter(torch.zeros(d_s))
        self.t_to_s_w, self.t_to_s_b = resample_weight(d_s, d_t, T_TO_S), nn.Parameter(torch.zeros(d_s))
        self.p_to_t_w, self.p_to_t_b = resample_weight(d_t, d_p, P_TO_T), nn.Parameter(torch.zeros(d_t))
        self.s_to_t_w, self.s_to_t_b = resample_weight(d_t, d_s), nn.Parameter(torch.zeros(d_t))
        self.t_to_p_w, self.t_to_p_b = resample_weight(d_p, d_t), nn.Parameter(torch.zeros(d_p))
        self.s_to_p_w, self.s_to_p_b = resample_weight(d_p, d_s), nn.Parameter(torch.zeros(d_p))

    def params(self) -> K.ExchangeParams:
        return K.ExchangeParams(*(getattr(self, f) for f in K.ExchangeParams._fields))

    def forward(self, xs, xt, xp):
        """xs: (N, L/16, L/16, d_s), xt: (N, L/8, L/8, d_t), xp: (N, L/2, L/2, d_p) -> the same shapes."""
        return K.pyramid_exchange(xs, xt, xp, self.params())


class STPBlock(nn.Module):
    """One Space-Time-Precision block: the three operators on their own paths, then the exchange.

    ``STPBlock(config)``; ``forward(xs, xt, xp, timecode, mask_t)`` with
    xs (B, T, L/16, L/16, d_s), xt (B, T, L/8, L/8, d_t), xp (B, T, L/2, L/2, d_p), timecode (B, T, tc)
    float and mask_t (B, T, L/8, L/8) or (B, T) bool (True = valid) or None; returns (xs, xt, xp).
    """

    def __init__(self, config: AEFConfig):
        super().__init__()
        c = config
        self.space = SpaceOperator(c.d_s, c.num_heads(c.d_s), c.mlp_ratio, c.norm_eps)
        self.time = TimeOperator(c.d_t, c.num_heads(c.d_t), c.timecode_dim, c.mlp_ratio, c.norm_eps)
        self.precision = PrecisionOperator(c.d_p, c.precision_groups, c.norm_eps)
        self.exchange = PyramidExchange(c.d_s, c.d_t, c.d_p)

    def forward(self, xs, xt, xp, timecode, mask_t):
        B, T = xt.shape[:2]
        xs, xt, xp = self.forward_frames(xs.flatten(0, 1), xt, xp.flatten(0, 1), timecode, mask_t, None)
        return xs.unflatten(0, (B, T)), xt, xp.unflatten(0, (B, T))

    def forward_frames(self, xs, xt, xp, timecode, mask_t, frames: Optional[torch.Tensor]):
        """The block on a subset of frames for the per-frame operators.

        ``frames``: (N,) indices into the B*T flattened frames, or None for all of them; xs
        (N, L/16, L/16, d_s) and xp (N, L/2, L/2, d_p) hold only those frames, xt (B, T, L/8, L/8, d_t)
        holds every frame (time attention needs the (B, T) layout; frames outside ``frames`` must be
        masked keys). Returns (xs, xt, xp) in the same layouts; xt keeps its time-operator output at
        frames outside ``frames``.
        """
        xs = self.space(xs)
        xt = self.time(xt, timecode, mask_t)  # (B, T, L/8, L/8, d_t)
        B, T = xt.shape[:2]
        xt_all = xt.flatten(0, 1)
        xt_f = xt_all if frames is None else xt_all.index_select(0, frames)
        xs, xt_f, xp = self.exchange(xs, xt_f, self.precision(xp))
        xt_all = xt_f if frames is None else xt_all.index_copy(0, frames, xt_f)
        return xs, xt_all.unflatten(0, (B, T)), xp


class STPEncoder(nn.Module):
    """Path initialisation, ``blocks`` STP blocks and the final fuse.

    ``STPEncoder(config)``; ``forward(x_p0, timecode, mask)`` with x_p0
    (B, T, L/2, L/2, d_p), timecode (B, T, tc) float (see ``aef.model.timecode.timecode``) and mask
    (B, T, L/2, L/2) or (B, T) bool (True = valid) or None; returns F (B, T, L/2, L/2, d_p).
    Masked frames never reach valid frames; their outputs are unspecified.
    """

    def __init__(self, config: AEFConfig):
        super().__init__()
        c = config
        self.config = c
        self.init_t_w, self.init_t_b = resample_weight(c.d_t, c.d_p, P_TO_T, 1.0), nn.Parameter(torch.zeros(c.d_t))
        self.init_s_w, self.init_s_b = resample_weight(c.d_s, c.d_p, P_TO_S, 1.0), nn.Parameter(torch.zeros(c.d_s))
        self.blocks = nn.ModuleList(STPBlock(c) for _ in range(c.blocks))
        self.fuse_t_w, self.fuse_t_b = resample_weight(c.d_p, c.d_t), nn.Parameter(torch.zeros(c.d_p))
        self.fuse_s_w, self.fuse_s_b = resample_weight(c.d_p, c.d_s), nn.Parameter(torch.zeros(c.d_p))
        self.norm = nn.LayerNorm(c.d_p, eps=c.norm_eps)

    def forward(self, x_p0: torch.Tensor, timecode: torch.Tensor, mask: Optional[torch.Tensor] = None):
        B, T, Hp, Wp, _ = x_p0.shape
        if Hp % P_TO_S or Wp % P_TO_S:
            raise ValueError(f"x_p0: expected (B, T, L/2, L/2, d_p) with L/2 a multiple of {P_TO_S}, "
                             f"got {tuple(x_p0.shape)}")
        mask_t = downsample_mask(mask, P_TO_T) if mask is not None and mask.dim() == 4 else mask
        frames = self._valid_frames(mask, B * T)
        xp = x_p0.flatten(0, 1)  # (B*T, L/2, L/2, d_p)
        xt = K.resample_down(xp, self.init_t_w, self.init_t_b, P_TO_T)  # (B*T, L/8, L/8, d_t)
        if frames is not None:
            xp = xp.index_select(0, frames)  # (N, L/2, L/2, d_p)
        xs = K.resample_down(xp, self.init_s_w, self.init_s_b, P_TO_S)  # (N, L/16, L/16, d_s)
        xs = xs + sincos_2d(xs.shape[1], xs.shape[2], xs.shape[3], xs.device, xs.dtype)
        xt = xt.unflatten(0, (B, T))
        for block in self.blocks:
            xs, xt, xp = block.forward_frames(xs, xt, xp, timecode, mask_t, frames)
        xt = xt.flatten(0, 1)
        if frames is not None:
            xt = xt.index_select(0, frames)
        fused = self.norm(xp + K.resample_up(xt, self.fuse_t_w, self.fuse_t_b, P_TO_T)
                          + K.resample_up(xs, self.fuse_s_w, self.fuse_s_b, P_TO_S))
        if frames is not None:
            fused = fused.new_zeros(B * T, *fused.shape[1:]).index_copy(0, frames, fused)
        return fused.unflatten(0, (B, T))  # (B, T, L/2, L/2, d_p)

    def _valid_frames(self, mask: Optional[torch.Tensor], n: int) -> Optional[torch.Tensor]:
        """Indices of the frames with a valid pixel, or None to compute every frame.

        Masked frames never influence valid ones, so in eager mode the per-frame operators (space,
        precision, exchange: most of the FLOPs) skip them; a training batch masks many frames
        (target frames, student drops). Under torch.compile every frame is computed, keeping shapes
        static. Outputs at masked frames are unspecified (zero when skipped).
        """
        if mask is None or torch.compiler.is_compiling():
            return None
        frames = (mask.flatten(2).any(2) if mask.dim() == 4 else mask).flatten().nonzero().squeeze(1)
        return None if frames.numel() in (0, n) else frames
