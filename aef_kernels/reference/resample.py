"""Reference pyramid resampling: GEMMs on channels-last frames, and the exchange built from them."""

from __future__ import annotations

import torch.nn.functional as F


def _cast(t, dtype):
    return None if t is None else t.to(dtype)


def resample_down(x, weight, bias, factor):
    N, H, W, C = x.shape
    f = factor
    # Space-to-depth: (N, H/f, W/f, f*f*C) with (row, col, channel) of the window in that order,
    # matching weight.permute(0, 2, 3, 1) = (Cout, f, f, Cin).
    xs = x.reshape(N, H // f, f, W // f, f, C).permute(0, 1, 3, 2, 4, 5).reshape(N, H // f, W // f, f * f * C)
    wm = weight.permute(0, 2, 3, 1).reshape(weight.shape[0], f * f * C)
    return F.linear(xs, wm.to(x.dtype), _cast(bias, x.dtype))  # (N, H/f, W/f, Cout)


def resample_up(x, weight, bias, factor):
    # The 1x1 map commutes with bilinear interpolation (its weights sum to 1), so it runs first, at
    # the low resolution.
    y = F.linear(x, weight.to(x.dtype), _cast(bias, x.dtype))  # (N, H, W, Cout)
    y = F.interpolate(y.permute(0, 3, 1, 2), scale_factor=factor, mode="bilinear", align_corners=False)
    return y.permute(0, 2, 3, 1).contiguous()  # (N, H*f, W*f, Cout)


def pyramid_exchange(xs, xt, xp, params):
    ts = xt.shape[1] // xs.shape[1]
    pt = xp.shape[1] // xt.shape[1]
    p = params
    ys = xs + resample_down(xp, p.p_to_s_w, p.p_to_s_b, ts * pt) + resample_down(xt, p.t_to_s_w, p.t_to_s_b, ts)
    yt = xt + resample_down(xp, p.p_to_t_w, p.p_to_t_b, pt) + resample_up(xs, p.s_to_t_w, p.s_to_t_b, ts)
    yp = xp + resample_up(xt, p.t_to_p_w, p.t_to_p_b, pt) + resample_up(xs, p.s_to_p_w, p.s_to_p_b, ts * pt)
    return ys, yt, yp
