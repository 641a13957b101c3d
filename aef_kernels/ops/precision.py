"""The declarations of ``precision_operator`` and ``group_norm_nhwc`` (docs/kernels.md §2.2)."""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch

from .. import checks
from ..reference.precision import group_norm_nhwc, precision_operator
from ..spec import Cost, OpSpec, Size

GN_ACTIVATIONS = (None, "gelu")


def check_frames(name: str, x) -> None:
    """``x`` is a non-empty channels-last batch of frames (N, H, W, C) with a contiguous C."""
    checks.tensor(name, x, 4, "(N, H, W, C)")
    checks.last_dim_contiguous(name, x)
    checks.nonempty_last_dim(name, x)
    checks.nonempty(name, x, ("N", "H", "W", "C"))


def check_vector(name: str, t, size: int, required: bool) -> None:
    if t is None and not required:
        return
    checks.tensor(name, t, 1, "(C,)")
    checks.shape(name, t, (size,), "(C,)")


def weights_cost(elems: int, elt: int, backward: bool) -> float:
    # Forward reads the weights; the backward reads them again and writes their gradients.
    return elems * elt * (3 if backward else 1)


def _pixels(i) -> int:
    return math.prod(i.x.shape[:3])


class GroupNormInputs(NamedTuple):
    x: torch.Tensor  # (N, H, W, C)
    weight: Optional[torch.Tensor]  # (C,)
    bias: Optional[torch.Tensor]  # (C,)
    num_groups: int
    eps: float
    activation: Optional[str]  # None or "gelu"


def check_group_norm(x, weight=None, bias=None, num_groups: int = 32, eps: float = 1e-5,
                     activation: Optional[str] = None) -> GroupNormInputs:
    check_frames("x", x)
    C = x.shape[-1]
    check_vector("weight", weight, C, required=False)
    check_vector("bias", bias, C, required=False)
    checks.same_device(x=x, weight=weight, bias=bias)
    checks.divides("num_groups", num_groups, "C", C)
    if activation not in GN_ACTIVATIONS:
        raise ValueError(f"activation: expected None or 'gelu', got {activation!r}")
    return GroupNormInputs(x, weight, bias, num_groups, float(eps), activation)


def group_norm_cost(i: GroupNormInputs, backward: bool = False) -> Cost:
    """Read x, write y; the backward reads x and dy and writes dx (statistics are tiny)."""
    elt = i.x.element_size()
    C = i.x.shape[-1]
    return Cost(i.x.numel() * (5 if backward else 2) * elt + weights_cost(2 * C, elt, backward), 0.0)


class PrecisionInputs(NamedTuple):
    x: torch.Tensor  # (N, H, W, C)
    gn_weight: torch.Tensor  # (C,)
    gn_bias: torch.Tensor  # (C,)
    w1: torch.Tensor  # (4C, C, 3, 3)
    b1: torch.Tensor  # (4C,)
    w2: torch.Tensor  # (C, 4C, 3, 3)
    b2: torch.Tensor  # (C,)
    num_groups: int
    eps: float


def check_precision(x, gn_weight, gn_bias, w1, b1, w2, b2, num_groups: int, eps: float = 1e-5) -> PrecisionInputs:
    check_frames("x", x)
    C = x.shape[-1]
    check_vector("gn_weight", gn_weight, C, required=True)
    check_vector("gn_bias", gn_bias, C, required=True)
    checks.tensor("w1", w1, 4, "(4C, C, 3, 3)")
    checks.shape("w1", w1, (4 * C, C, 3, 3), "(4C, C, 3, 3)")
    check_vector("b1", b1, 4 * C, required=True)
    checks.tensor("w2", w2, 4, "(C, 4C, 3, 3)")
    checks.shape("w2", w2, (C, 4 * C, 3, 3), "(C, 4C, 3, 3)")
    check_vector("b2", b2, C, required=True)
    checks.same_device(x=x, gn_weight=gn_weight, gn_bias=gn_bias, w1=w1, b1=b1, w2=w2, b2=b2)
    checks.divides("num_groups", num_groups, "C", C)
    return PrecisionInputs(x, gn_weight, gn_bias, w1, b1, w2, b2, num_groups, float(eps))


def precision_cost(i: PrecisionInputs, backward: bool = False) -> Cost:
    """x + conv3x3(GELU(conv3x3(GroupNorm(x)))), C -> 4C -> C: read x, write y (the 4C intermediate
    can stay on chip); two 3x3 convs of 2 * 9 * 4C * C FLOPs per pixel each."""
    elt = i.x.element_size()
    C = i.x.shape[-1]
    px = _pixels(i)
    weights = 2 * 9 * 4 * C * C + 4 * C + 3 * C
    flops = 2.0 * 2 * 9 * 4 * C * C * px
    act = 2 * px * C  # x in, y out
    if backward:
        act += 3 * px * C  # x and dy in, dx out
        flops *= 3
    return Cost(act * elt + weights_cost(weights, elt, backward), flops)


def _t(device, dtype):
    def t(*shape):
        return torch.randn(*shape, device=device, dtype=dtype)
    return t


def _precision(device, dtype, N, H, W, C, G) -> PrecisionInputs:
    t = _t(device, dtype)
    return PrecisionInputs(t(N, H, W, C), 1 + 0.1 * t(C), 0.1 * t(C), 0.1 * t(4 * C, C, 3, 3), 0.1 * t(4 * C),
                           0.1 * t(C, 4 * C, 3, 3), 0.1 * t(C), G, 1e-5)


def precision_examples(device, dtype) -> dict[str, PrecisionInputs]:
    return {"3x4 frames, 16 channels": _precision(device, dtype, 2, 3, 4, 16, 8),
            "one pixel": _precision(device, dtype, 1, 1, 1, 8, 4)}


def group_norm_examples(device, dtype, shape=(2, 3, 5, 16), groups=4) -> dict[str, GroupNormInputs]:
    t = _t(device, dtype)
    C = shape[-1]
    return {"affine, gelu": GroupNormInputs(t(*shape), 1 + 0.1 * t(C), 0.1 * t(C), groups, 1e-5, "gelu"),
            "no affine": GroupNormInputs(t(1, 4, 4, 8), None, None, 8, 1e-5, None)}


GROUP_NORM = OpSpec(
    name="group_norm_nhwc", module="precision", family="group_norm", inputs=GroupNormInputs, check=check_group_norm,
    reference=group_norm_nhwc, activations=("x",), cost=group_norm_cost, examples=group_norm_examples,
    typical=lambda device, dtype: group_norm_examples(device, dtype, (4, 16, 16, 64), 32)["affine, gelu"],
    sizes={"pixels": Size("pixels N*H*W", _pixels)},
    doc="""GroupNorm over channels-last frames, optionally followed by GELU (erf form).

    x: (N, H, W, C); weight, bias: (C,) or None. Statistics per (frame, group) in float32.
    """,
)

PRECISION = OpSpec(
    name="precision_operator", module="precision", family="precision", inputs=PrecisionInputs, check=check_precision,
    reference=precision_operator, activations=("x",), cost=precision_cost, examples=precision_examples,
    typical=lambda device, dtype: _precision(device, dtype, 4, 16, 16, 64, 32),
    sizes={"pixels": Size("pixels N*H*W", _pixels)},
    doc="""x + conv3x3(GELU(conv3x3(GroupNorm(x)))) on channels-last frames.

    x: (N, H, W, C); gn_weight, gn_bias: (C,); w1: (4C, C, 3, 3), b1: (4C,); w2: (C, 4C, 3, 3),
    b2: (C,). Both convolutions have zero padding 1. Returns (N, H, W, C).
    """,
)
