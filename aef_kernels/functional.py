"""The public functions of aef_kernels (KERNELS.md §1).

Each function validates its arguments (clear ``ValueError``/``TypeError`` before anything runs),
then hands the validated, normalised argument tuple to the dispatcher, which picks a backend.
Every backend implementation receives exactly that tuple, in this order.

Empty inputs: every dimension of every tensor argument must be at least 1; a zero-size dimension is
a ``ValueError`` naming it (one rule for all ops, checked before any backend runs).

Parameters (weights and biases) may be in any floating dtype: like autocast, every backend computes
in the dtype of the activation and casts parameters to it.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch

from . import checks, dispatch

__all__ = [
    "ExchangeParams",
    "axial_time_attention",
    "precision_operator",
    "group_norm_nhwc",
    "resample_down",
    "resample_up",
    "pyramid_exchange",
    "vmf_normalize",
    "batch_uniformity_loss",
]

GN_ACTIVATIONS = (None, "gelu")


def axial_time_attention(q, k, v, key_padding_mask=None, scale=None, *, backend: Optional[str] = None):
    """Attention along time at every pixel and head.

    q: (B, Tq, H, W, heads, d); k, v: (B, T, H, W, heads, d); any strides with a contiguous last
    dim. key_padding_mask: bool (B, T) or (B, T, H, W), True = valid. A query whose keys are all
    masked returns 0 (with zero gradients). Returns o: (B, Tq, H, W, heads, d), contiguous.
    """
    layout = "(B, T, H, W, heads, d)"
    for name, t in (("q", q), ("k", k), ("v", v)):
        checks.tensor(name, t, 6, layout)
    B, Tq, H, W, heads, d = q.shape
    T = k.shape[1]
    checks.shape("k", k, (B, None, H, W, heads, d), "(B, T, H, W, heads, d) with q's B, H, W, heads, d")
    checks.shape("v", v, tuple(k.shape), "k's shape")
    checks.same_dtype(q=q, k=k, v=v)
    checks.same_device(q=q, k=k, v=v, key_padding_mask=key_padding_mask)
    for name, t, dims in (("q", q, ("B", "Tq", "H", "W", "heads", "d")), ("k", k, ("B", "T", "H", "W", "heads", "d")),
                          ("v", v, ("B", "T", "H", "W", "heads", "d"))):
        checks.last_dim_contiguous(name, t)
        checks.nonempty_last_dim(name, t)
        checks.nonempty(name, t, dims)
    checks.key_padding_mask(key_padding_mask, B, T, H, W, q.device)
    if scale is None:
        scale = 1.0 / math.sqrt(d)
    elif not isinstance(scale, (int, float)) or isinstance(scale, bool) or not math.isfinite(scale):
        raise TypeError(f"scale: expected a finite float or None, got {scale!r}")
    args = (q, k, v, key_padding_mask, float(scale))
    return dispatch.call("axial_time_attention", args, backend)


def _check_frames(name: str, x) -> None:
    checks.tensor(name, x, 4, "(N, H, W, C)")
    checks.last_dim_contiguous(name, x)
    checks.nonempty_last_dim(name, x)
    checks.nonempty(name, x, ("N", "H", "W", "C"))


def _check_vector(name: str, t, size: int, required: bool) -> None:
    if t is None and not required:
        return
    checks.tensor(name, t, 1, "(C,)")
    checks.shape(name, t, (size,), "(C,)")


def _check_num_groups(num_groups, C: int) -> None:
    checks.divides("num_groups", num_groups, "C", C)


def group_norm_nhwc(x, weight=None, bias=None, num_groups: int = 32, eps: float = 1e-5,
                    activation: Optional[str] = None, *, backend: Optional[str] = None):
    """GroupNorm over channels-last frames, optionally followed by GELU (erf form).

    x: (N, H, W, C); weight, bias: (C,) or None. Statistics per (frame, group) in float32.
    """
    _check_frames("x", x)
    C = x.shape[-1]
    _check_vector("weight", weight, C, required=False)
    _check_vector("bias", bias, C, required=False)
    checks.same_device(x=x, weight=weight, bias=bias)
    _check_num_groups(num_groups, C)
    if activation not in GN_ACTIVATIONS:
        raise ValueError(f"activation: expected None or 'gelu', got {activation!r}")
    args = (x, weight, bias, num_groups, float(eps), activation)
    return dispatch.call("group_norm_nhwc", args, backend)


def precision_operator(x, gn_weight, gn_bias, w1, b1, w2, b2, num_groups: int, eps: float = 1e-5,
                       *, backend: Optional[str] = None):
    """x + conv3x3(GELU(conv3x3(GroupNorm(x)))) on channels-last frames.

    x: (N, H, W, C); gn_weight, gn_bias: (C,); w1: (4C, C, 3, 3), b1: (4C,); w2: (C, 4C, 3, 3),
    b2: (C,). Both convolutions have zero padding 1. Returns (N, H, W, C).
    """
    _check_frames("x", x)
    C = x.shape[-1]
    _check_vector("gn_weight", gn_weight, C, required=True)
    _check_vector("gn_bias", gn_bias, C, required=True)
    checks.tensor("w1", w1, 4, "(4C, C, 3, 3)")
    checks.shape("w1", w1, (4 * C, C, 3, 3), "(4C, C, 3, 3)")
    _check_vector("b1", b1, 4 * C, required=True)
    checks.tensor("w2", w2, 4, "(C, 4C, 3, 3)")
    checks.shape("w2", w2, (C, 4 * C, 3, 3), "(C, 4C, 3, 3)")
    _check_vector("b2", b2, C, required=True)
    checks.same_device(x=x, gn_weight=gn_weight, gn_bias=gn_bias, w1=w1, b1=b1, w2=w2, b2=b2)
    _check_num_groups(num_groups, C)
    args = (x, gn_weight, gn_bias, w1, b1, w2, b2, num_groups, float(eps))
    return dispatch.call("precision_operator", args, backend)


def _check_down(x, weight, bias, factor) -> None:
    _check_frames("x", x)
    N, H, W, Cin = x.shape
    checks.divides("factor", factor, "H", H)
    checks.divides("factor", factor, "W", W)
    checks.tensor("weight", weight, 4, "(Cout, Cin, factor, factor)")
    checks.shape("weight", weight, (None, Cin, factor, factor), "(Cout, Cin, factor, factor)")
    _check_vector("bias", bias, weight.shape[0], required=False)
    checks.same_device(x=x, weight=weight, bias=bias)


def _check_up(x, weight, bias, factor) -> None:
    _check_frames("x", x)
    checks.positive_int("factor", factor)
    checks.tensor("weight", weight, 2, "(Cout, Cin)")
    checks.shape("weight", weight, (None, x.shape[-1]), "(Cout, Cin)")
    _check_vector("bias", bias, weight.shape[0], required=False)
    checks.same_device(x=x, weight=weight, bias=bias)


def resample_down(x, weight, bias, factor: int, *, backend: Optional[str] = None):
    """Learned space-to-depth down-sampling: a conv with kernel = stride = factor.

    x: (N, H, W, Cin) with factor dividing H and W; weight: (Cout, Cin, f, f); bias: (Cout,) or
    None. Returns (N, H/f, W/f, Cout).
    """
    _check_down(x, weight, bias, factor)
    return dispatch.call("resample_down", (x, weight, bias, factor), backend)


def resample_up(x, weight, bias, factor: int, *, backend: Optional[str] = None):
    """Learned up-sampling: a 1x1 linear map, then bilinear x factor (align_corners=False).

    x: (N, H, W, Cin); weight: (Cout, Cin); bias: (Cout,) or None. Returns (N, H*f, W*f, Cout).
    """
    _check_up(x, weight, bias, factor)
    return dispatch.call("resample_up", (x, weight, bias, factor), backend)


class ExchangeParams(NamedTuple):
    """Parameters of one pyramid exchange; biases may be None.

    With xs: (N, Hs, Ws, d_s), xt: (N, Ht, Wt, d_t), xp: (N, Hp, Wp, d_p) and the factors
    ts = Ht/Hs, pt = Hp/Ht, ps = Hp/Hs (2, 4 and 8 in the model):
    ``p_to_s_w`` (d_s, d_p, ps, ps), ``t_to_s_w`` (d_s, d_t, ts, ts), ``p_to_t_w`` (d_t, d_p, pt, pt)
    are down-sampling convs; ``s_to_t_w`` (d_t, d_s), ``t_to_p_w`` (d_p, d_t), ``s_to_p_w`` (d_p, d_s)
    are the 1x1 maps of the up-samplings.
    """

    p_to_s_w: torch.Tensor
    p_to_s_b: Optional[torch.Tensor]
    t_to_s_w: torch.Tensor
    t_to_s_b: Optional[torch.Tensor]
    p_to_t_w: torch.Tensor
    p_to_t_b: Optional[torch.Tensor]
    s_to_t_w: torch.Tensor
    s_to_t_b: Optional[torch.Tensor]
    t_to_p_w: torch.Tensor
    t_to_p_b: Optional[torch.Tensor]
    s_to_p_w: torch.Tensor
    s_to_p_b: Optional[torch.Tensor]


def _ratio(name_hi: str, hi: torch.Tensor, name_lo: str, lo: torch.Tensor) -> int:
    (Hh, Wh), (Hl, Wl) = hi.shape[1:3], lo.shape[1:3]
    if Hh % Hl or Wh % Wl or Hh // Hl != Wh // Wl:
        raise ValueError(
            f"{name_hi} (H, W) = ({Hh}, {Wh}) must be the same integer multiple of {name_lo} "
            f"(H, W) = ({Hl}, {Wl}) in both dimensions"
        )
    return Hh // Hl


def pyramid_exchange(xs, xt, xp, params: ExchangeParams, *, backend: Optional[str] = None):
    """One STP-block exchange: every path adds the resampled outputs of the other two.

    ys = xs + down(xp) + down(xt); yt = xt + down(xp) + up(xs); yp = xp + up(xt) + up(xs),
    all from the inputs (the three sums are simultaneous). Returns (ys, yt, yp).
    """
    _check_frames("xs", xs)
    _check_frames("xt", xt)
    _check_frames("xp", xp)
    if not isinstance(params, ExchangeParams):
        if isinstance(params, (tuple, list)) and len(params) == len(ExchangeParams._fields):
            params = ExchangeParams(*params)
        else:
            raise TypeError(f"params: expected an ExchangeParams, got {type(params).__name__}")
    N = xs.shape[0]
    if xt.shape[0] != N or xp.shape[0] != N:
        raise ValueError(f"xs, xt, xp: expected one frame count N, got {xs.shape[0]}, {xt.shape[0]}, {xp.shape[0]}")
    checks.same_dtype(xs=xs, xt=xt, xp=xp)
    checks.same_device(xs=xs, xt=xt, xp=xp, **{k: v for k, v in params._asdict().items()})
    ts = _ratio("xt", xt, "xs", xs)
    pt = _ratio("xp", xp, "xt", xt)
    ds, dt, dp = xs.shape[-1], xt.shape[-1], xp.shape[-1]
    downs = (("p_to_s", ds, dp, ts * pt), ("t_to_s", ds, dt, ts), ("p_to_t", dt, dp, pt))
    ups = (("s_to_t", dt, ds), ("t_to_p", dp, dt), ("s_to_p", dp, ds))
    for name, cout, cin, f in downs:
        w = getattr(params, name + "_w")
        checks.tensor(f"params.{name}_w", w, 4, "(Cout, Cin, f, f)")
        checks.shape(f"params.{name}_w", w, (cout, cin, f, f), "(Cout, Cin, f, f)")
        _check_vector(f"params.{name}_b", getattr(params, name + "_b"), cout, required=False)
    for name, cout, cin in ups:
        w = getattr(params, name + "_w")
        checks.tensor(f"params.{name}_w", w, 2, "(Cout, Cin)")
        checks.shape(f"params.{name}_w", w, (cout, cin), "(Cout, Cin)")
        _check_vector(f"params.{name}_b", getattr(params, name + "_b"), cout, required=False)
    return dispatch.call("pyramid_exchange", (xs, xt, xp, params), backend)


def vmf_normalize(x, eps: float = 1e-12, *, backend: Optional[str] = None):
    """x / max(|x|, eps) along the last dim: the semantics of F.normalize(x, dim=-1)."""
    checks.tensor("x", x)
    if x.dim() == 0:
        raise ValueError("x: expected at least 1 dimension (..., D), got a scalar")
    checks.nonempty_last_dim("x", x)
    checks.nonempty("x", x)
    return dispatch.call("vmf_normalize", (x, float(eps)), backend)


def batch_uniformity_loss(u, *, backend: Optional[str] = None):
    """Mean over (b, ...) of |u[b] . u[b-1]|, pairing sample b with sample b-1 (mod B) on dim 0.

    u: (B, ..., D) unit vectors. Returns a scalar in u's dtype (accumulated in float32).
    """
    checks.tensor("u", u)
    if u.dim() < 2:
        raise ValueError(f"u: expected (B, ..., D) with at least 2 dimensions, got shape {tuple(u.shape)}")
    checks.nonempty_last_dim("u", u)
    checks.nonempty("u", u, ("B",))
    return dispatch.call("batch_uniformity_loss", (u,), backend)
