"""The two floors of every op (KERNELS.md §7): the bytes it must move and the matrix FLOPs it must do.

A floor is a lower bound, not a model of any implementation: bytes count each input read once and
each output written once (intermediates that a fused kernel can keep on chip are not counted), and
FLOPs count only matrix products (2 per multiply-add), because elementwise arithmetic never bounds
these ops at the model's shapes. Forward+backward floors add the gradient pass: it reads what the
weight and input gradients need and writes those gradients, and does two matrix products (input
gradient, weight gradient) for each forward one. Recomputation is an implementation choice and
is not part of the floor.

``roofline_fraction`` turns a measured time into the fraction of the floor it reaches: 1.0 means
the op ran at the device's measured bandwidth or matrix rate, whichever binds.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Cost:
    bytes: float
    flops: float

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.bytes + other.bytes, self.flops + other.flops)


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


def axial_time_attention(B: int, Tq: int, T: int, H: int, W: int, heads: int, d: int, elt: int,
                         mask_elems: int = 0, backward: bool = False) -> Cost:
    """S = B*H*W*heads sequences. Forward: read q, k, v and the bool mask, write o; QK^T and PV.

    The backward reads q, k, v, o, dO, the mask and one float32 log-sum-exp per query row, writes
    dq, dk, dv, and does dV = P^T dO, dP = dO V^T, dQ = dS K, dK = dS^T Q: twice the forward's FLOPs.
    """
    S = B * H * W * heads
    q_elems, kv_elems = S * Tq * d, S * T * d
    fwd = Cost((2 * q_elems + 2 * kv_elems) * elt + mask_elems, 4.0 * S * Tq * T * d)
    if not backward:
        return fwd
    lse = S * Tq * 4
    bwd = Cost((3 * q_elems + 2 * kv_elems) * elt + (q_elems + 2 * kv_elems) * elt + mask_elems + 2 * lse,
               2 * fwd.flops)
    return fwd + bwd


def _weights(elems: int, elt: int, backward: bool) -> float:
    # Forward reads the weights; the backward reads them again and writes their gradients.
    return elems * elt * (3 if backward else 1)


def precision_operator(N: int, H: int, W: int, C: int, elt: int, backward: bool = False) -> Cost:
    """x + conv3x3(GELU(conv3x3(GroupNorm(x)))), C -> 4C -> C: read x, write y (the 4C intermediate
    can stay on chip); two 3x3 convs of 2 * 9 * 4C * C FLOPs per pixel each."""
    px = N * H * W
    weights = 2 * 9 * 4 * C * C + 4 * C + 3 * C
    flops = 2.0 * 2 * 9 * 4 * C * C * px
    act = 2 * px * C  # x in, y out
    if backward:
        act += 3 * px * C  # x and dy in, dx out
        flops *= 3
    return Cost(act * elt + _weights(weights, elt, backward), flops)


def group_norm_nhwc(N: int, H: int, W: int, C: int, elt: int, backward: bool = False) -> Cost:
    """Read x, write y; the backward reads x and dy and writes dx (statistics are tiny)."""
    act = N * H * W * C * (5 if backward else 2)
    return Cost(act * elt + _weights(2 * C, elt, backward), 0.0)


def resample_down(N: int, H: int, W: int, Cin: int, Cout: int, f: int, elt: int, backward: bool = False) -> Cost:
    """Conv with kernel = stride = f: a GEMM over N*H*W*Cin inputs, one output pixel per f x f window."""
    x, y = N * H * W * Cin, N * (H // f) * (W // f) * Cout
    flops = 2.0 * N * H * W * Cin * Cout
    act = x + y
    if backward:
        act += x + y + x  # x and dy in, dx out
        flops *= 3
    return Cost(act * elt + _weights(Cout * Cin * f * f + Cout, elt, backward), flops)


def resample_up(N: int, H: int, W: int, Cin: int, Cout: int, f: int, elt: int, backward: bool = False) -> Cost:
    """1x1 map at the low resolution, then bilinear x f: read x (N, H, W, Cin), write (N, Hf, Wf, Cout)."""
    x, y = N * H * W * Cin, N * H * f * W * f * Cout
    flops = 2.0 * N * H * W * Cin * Cout
    act = x + y
    if backward:
        act += x + y + x
        flops *= 3
    return Cost(act * elt + _weights(Cout * Cin + Cout, elt, backward), flops)


def pyramid_exchange(N: int, Hs: int, ds: int, dt: int, dp: int, ts: int, pt: int, elt: int,
                     backward: bool = False) -> Cost:
    """Square frames: xs (N, Hs, Hs, ds), xt at Hs*ts, xp at Hs*ts*pt. Read the three inputs once and
    write the three sums once; the six resamplings' GEMMs."""
    Ht, Hp = Hs * ts, Hs * ts * pt
    ps = ts * pt
    xs, xt, xp = N * Hs * Hs * ds, N * Ht * Ht * dt, N * Hp * Hp * dp
    flops = 2.0 * N * (Hp * Hp * dp * ds + Ht * Ht * dt * ds + Hp * Hp * dp * dt
                       + Hs * Hs * ds * dt + Ht * Ht * dt * dp + Hs * Hs * ds * dp)
    weights = (ds * dp * ps * ps + ds * dt * ts * ts + dt * dp * pt * pt
               + dt * ds + dp * dt + dp * ds + 2 * ds + 2 * dt + 2 * dp)
    act = 2 * (xs + xt + xp)
    if backward:
        act += 3 * (xs + xt + xp)  # inputs and output gradients in, input gradients out
        flops *= 3
    return Cost(act * elt + _weights(weights, elt, backward), flops)


def vmf_normalize(rows: int, D: int, elt: int, backward: bool = False) -> Cost:
    """Read x, write u; the backward reads u and du and writes dx."""
    return Cost(rows * D * elt * (5 if backward else 2), 0.0)


def batch_uniformity_loss(rows: int, D: int, elt: int, backward: bool = False) -> Cost:
    """Read u once (each row meets its batch neighbour on chip); the backward reads u, writes du."""
    return Cost(rows * D * elt * (3 if backward else 1), 0.0)
