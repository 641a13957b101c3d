"""The two floors of every op (docs/kernels.md §7): the bytes it must move and the matrix FLOPs it must do.

A floor is a lower bound, not a model of any implementation: bytes count each input read once and
each output written once (intermediates that a fused kernel can keep on chip are not counted), and
FLOPs count only matrix products (2 per multiply-add), because elementwise arithmetic never bounds
these ops at the model's shapes. Forward+backward floors add the gradient pass: it reads what the
weight and input gradients need and writes those gradients, and does two matrix products (input
gradient, weight gradient) for each forward one. Recomputation is an implementation choice and
is not part of the floor.

Each op's formula is part of its spec (``aef_kernels.ops``, ``OpSpec.cost``); :func:`cost` evaluates it.
``roofline_fraction`` turns a measured time into the fraction of the floor it reaches: 1.0 means
the op ran at the device's measured bandwidth or matrix rate, whichever binds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from aef_kernels.ops import BY_NAME
from aef_kernels.spec import Cost

__all__ = ["Ceilings", "Cost", "bound", "cost", "floor_seconds", "meta", "roofline_fraction"]


@dataclass(frozen=True)
class Ceilings:
    """What the device sustains, measured at start-up: bytes per second and matrix FLOPs per second."""

    bandwidth: float
    matmul_rate: float


def floor_seconds(cost: Cost, ceilings: Ceilings) -> float:
    return max(cost.bytes / ceilings.bandwidth, cost.flops / ceilings.matmul_rate)


def bound(cost: Cost, ceilings: Ceilings) -> str:
    """Which floor is higher: "memory" or "compute"."""
    return "compute" if cost.flops / ceilings.matmul_rate > cost.bytes / ceilings.bandwidth else "memory"


def roofline_fraction(cost: Cost, ceilings: Ceilings, seconds: float) -> float:
    if seconds <= 0:
        raise ValueError(f"seconds: expected a positive time, got {seconds}")
    return floor_seconds(cost, ceilings) / seconds


def meta(*shape: int, dtype: torch.dtype) -> torch.Tensor:
    """A shape-only tensor: the cost floors read shapes and element sizes, never data."""
    return torch.empty(shape, dtype=dtype, device="meta")


def cost(op: str, *args, backward: bool = False) -> Cost:
    """The floor of one call of ``op`` on these arguments (its spec's inputs, in order), forward or
    forward+backward: the formula lives with the op's declaration in ``aef_kernels.ops``."""
    spec = BY_NAME[op]
    return spec.cost(spec.record(*args), backward)
