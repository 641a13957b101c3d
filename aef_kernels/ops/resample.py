"""The declarations of ``resample_down``, ``resample_up`` and ``pyramid_exchange`` (docs/kernels.md
§2.3)."""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch

from .. import checks
from ..reference.resample import pyramid_exchange, resample_down, resample_up
from ..spec import Cost, OpSpec, Size
from .precision import check_frames, check_vector, weights_cost


class ResampleInputs(NamedTuple):
    x: torch.Tensor  # (N, H, W, Cin)
    weight: torch.Tensor  # down: (Cout, Cin, f, f); up: (Cout, Cin)
    bias: Optional[torch.Tensor]  # (Cout,)
    factor: int


def check_down(x, weight, bias, factor: int) -> ResampleInputs:
    check_frames("x", x)
    N, H, W, Cin = x.shape
    checks.divides("factor", factor, "H", H)
    checks.divides("factor", factor, "W", W)
    checks.tensor("weight", weight, 4, "(Cout, Cin, factor, factor)")
    checks.shape("weight", weight, (None, Cin, factor, factor), "(Cout, Cin, factor, factor)")
    check_vector("bias", bias, weight.shape[0], required=False)
    checks.same_device(x=x, weight=weight, bias=bias)
    return ResampleInputs(x, weight, bias, factor)


def check_up(x, weight, bias, factor: int) -> ResampleInputs:
    check_frames("x", x)
    checks.positive_int("factor", factor)
    checks.tensor("weight", weight, 2, "(Cout, Cin)")
    checks.shape("weight", weight, (None, x.shape[-1]), "(Cout, Cin)")
    check_vector("bias", bias, weight.shape[0], required=False)
    checks.same_device(x=x, weight=weight, bias=bias)
    return ResampleInputs(x, weight, bias, factor)


def down_cost(i: ResampleInputs, backward: bool = False) -> Cost:
    """Conv with kernel = stride = f: a GEMM over N*H*W*Cin inputs, one output pixel per f x f window."""
    N, H, W, Cin = i.x.shape
    Cout, f, elt = i.weight.shape[0], i.factor, i.x.element_size()
    x, y = N * H * W * Cin, N * (H // f) * (W // f) * Cout
    flops = 2.0 * N * H * W * Cin * Cout
    act = x + y
    if backward:
        act += x + y + x  # x and dy in, dx out
        flops *= 3
    return Cost(act * elt + weights_cost(Cout * Cin * f * f + Cout, elt, backward), flops)


def up_cost(i: ResampleInputs, backward: bool = False) -> Cost:
    """1x1 map at the low resolution, then bilinear x f: read x (N, H, W, Cin), write (N, Hf, Wf, Cout)."""
    N, H, W, Cin = i.x.shape
    Cout, f, elt = i.weight.shape[0], i.factor, i.x.element_size()
    x, y = N * H * W * Cin, N * H * f * W * f * Cout
    flops = 2.0 * N * H * W * Cin * Cout
    act = x + y
    if backward:
        act += x + y + x
        flops *= 3
    return Cost(act * elt + weights_cost(Cout * Cin + Cout, elt, backward), flops)


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


class ExchangeInputs(NamedTuple):
    xs: torch.Tensor  # (N, Hs, Ws, d_s)
    xt: torch.Tensor  # (N, Ht, Wt, d_t)
    xp: torch.Tensor  # (N, Hp, Wp, d_p)
    params: ExchangeParams


def ratio(name_hi: str, hi: torch.Tensor, name_lo: str, lo: torch.Tensor) -> int:
    (Hh, Wh), (Hl, Wl) = hi.shape[1:3], lo.shape[1:3]
    if Hh % Hl or Wh % Wl or Hh // Hl != Wh // Wl:
        raise ValueError(
            f"{name_hi} (H, W) = ({Hh}, {Wh}) must be the same integer multiple of {name_lo} "
            f"(H, W) = ({Hl}, {Wl}) in both dimensions"
        )
    return Hh // Hl


def check_exchange(xs, xt, xp, params: ExchangeParams) -> ExchangeInputs:
    check_frames("xs", xs)
    check_frames("xt", xt)
    check_frames("xp", xp)
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
    ts = ratio("xt", xt, "xs", xs)
    pt = ratio("xp", xp, "xt", xt)
    ds, dt, dp = xs.shape[-1], xt.shape[-1], xp.shape[-1]
    downs = (("p_to_s", ds, dp, ts * pt), ("t_to_s", ds, dt, ts), ("p_to_t", dt, dp, pt))
    ups = (("s_to_t", dt, ds), ("t_to_p", dp, dt), ("s_to_p", dp, ds))
    for name, cout, cin, f in downs:
        w = getattr(params, name + "_w")
        checks.tensor(f"params.{name}_w", w, 4, "(Cout, Cin, f, f)")
        checks.shape(f"params.{name}_w", w, (cout, cin, f, f), "(Cout, Cin, f, f)")
        check_vector(f"params.{name}_b", getattr(params, name + "_b"), cout, required=False)
    for name, cout, cin in ups:
        w = getattr(params, name + "_w")
        checks.tensor(f"params.{name}_w", w, 2, "(Cout, Cin)")
        checks.shape(f"params.{name}_w", w, (cout, cin), "(Cout, Cin)")
        check_vector(f"params.{name}_b", getattr(params, name + "_b"), cout, required=False)
    return ExchangeInputs(xs, xt, xp, params)


def exchange_cost(i: ExchangeInputs, backward: bool = False) -> Cost:
    """Read the three inputs once and write the three sums once; the six resamplings' GEMMs."""
    elt = i.xs.element_size()
    (N, Hs, Ws, ds), (_, Ht, Wt, dt), (_, Hp, Wp, dp) = i.xs.shape, i.xt.shape, i.xp.shape
    ts, pt = Ht // Hs, Hp // Ht
    ps = ts * pt
    xs, xt, xp = N * Hs * Ws * ds, N * Ht * Wt * dt, N * Hp * Wp * dp
    flops = 2.0 * N * (Hp * Wp * dp * ds + Ht * Wt * dt * ds + Hp * Wp * dp * dt
                       + Hs * Ws * ds * dt + Ht * Wt * dt * dp + Hs * Ws * ds * dp)
    weights = (ds * dp * ps * ps + ds * dt * ts * ts + dt * dp * pt * pt
               + dt * ds + dp * dt + dp * ds + 2 * ds + 2 * dt + 2 * dp)
    act = 2 * (xs + xt + xp)
    if backward:
        act += 3 * (xs + xt + xp)  # inputs and output gradients in, input gradients out
        flops *= 3
    return Cost(act * elt + weights_cost(weights, elt, backward), flops)


def _t(device, dtype):
    def t(*shape):
        return 0.3 * torch.randn(*shape, device=device, dtype=dtype)
    return t


def _down(device, dtype, N, H, Cin, Cout, f, bias=True) -> ResampleInputs:
    t = _t(device, dtype)
    return ResampleInputs(t(N, H, H, Cin), t(Cout, Cin, f, f), t(Cout) if bias else None, f)


def _up(device, dtype, N, H, Cin, Cout, f, bias=True) -> ResampleInputs:
    t = _t(device, dtype)
    return ResampleInputs(t(N, H, H, Cin), t(Cout, Cin), t(Cout) if bias else None, f)


def exchange_params(device, dtype, ds: int, dt: int, dp: int, ts: int = 2, pt: int = 4) -> ExchangeParams:
    """Random parameters of an exchange between widths ds, dt, dp at ratios ts, pt."""
    t = _t(device, dtype)
    ps = ts * pt
    return ExchangeParams(t(ds, dp, ps, ps), t(ds), t(ds, dt, ts, ts), t(ds), t(dt, dp, pt, pt), t(dt),
                          t(dt, ds), t(dt), t(dp, dt), t(dp), t(dp, ds), t(dp))


def _exchange(device, dtype, N, Hs, ds, dt, dp) -> ExchangeInputs:
    t = _t(device, dtype)
    return ExchangeInputs(t(N, Hs, Hs, ds), t(N, 2 * Hs, 2 * Hs, dt), t(N, 8 * Hs, 8 * Hs, dp),
                          exchange_params(device, dtype, ds, dt, dp))


DOWN = OpSpec(
    name="resample_down", module="resample", family="resample", inputs=ResampleInputs, check=check_down,
    reference=resample_down, activations=("x",), cost=down_cost,
    examples=lambda device, dtype: {"f2": _down(device, dtype, 2, 4, 6, 5, 2),
                                    "f4, no bias": _down(device, dtype, 1, 8, 3, 4, 4, bias=False)},
    typical=lambda device, dtype: _down(device, dtype, 4, 16, 64, 128, 4),
    sizes={"factor": Size("factor", lambda i: i.factor)},
    doc="""Learned space-to-depth down-sampling: a conv with kernel = stride = factor.

    x: (N, H, W, Cin) with factor dividing H and W; weight: (Cout, Cin, f, f); bias: (Cout,) or
    None. Returns (N, H/f, W/f, Cout).
    """,
)

UP = OpSpec(
    name="resample_up", module="resample", family="resample", inputs=ResampleInputs, check=check_up,
    reference=resample_up, activations=("x",), cost=up_cost,
    examples=lambda device, dtype: {"f2": _up(device, dtype, 2, 3, 6, 5, 2),
                                    "f4, no bias": _up(device, dtype, 1, 2, 3, 4, 4, bias=False)},
    typical=lambda device, dtype: _up(device, dtype, 4, 4, 128, 64, 4),
    sizes={"factor": Size("factor", lambda i: i.factor)},
    doc="""Learned up-sampling: a 1x1 linear map, then bilinear x factor (align_corners=False).

    x: (N, H, W, Cin); weight: (Cout, Cin); bias: (Cout,) or None. Returns (N, H*f, W*f, Cout).
    """,
)

EXCHANGE = OpSpec(
    name="pyramid_exchange", module="resample", family="exchange", inputs=ExchangeInputs, check=check_exchange,
    reference=pyramid_exchange, activations=("xs", "xt", "xp"), cost=exchange_cost,
    examples=lambda device, dtype: {"1x1 / 2x2 / 8x8": _exchange(device, dtype, 2, 1, 6, 5, 4)},
    typical=lambda device, dtype: _exchange(device, dtype, 4, 2, 128, 96, 64),
    sizes={"pixels": Size("pixels N*Hp*Wp", lambda i: math.prod(i.xp.shape[:3]))},
    doc="""One STP-block exchange: every path adds the resampled outputs of the other two.

    ys = xs + down(xp) + down(xt); yt = xt + down(xp) + up(xs); yp = xp + up(xt) + up(xs),
    all from the inputs (the three sums are simultaneous). Returns (ys, yt, yp).
    """,
)
