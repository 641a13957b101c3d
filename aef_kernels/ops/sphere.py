"""The declarations of ``vmf_normalize`` and ``batch_uniformity_loss`` (docs/kernels.md §2.4)."""

from __future__ import annotations

from typing import NamedTuple

import torch

from .. import checks
from ..reference.sphere import batch_uniformity_loss, vmf_normalize
from ..spec import Cost, OpSpec, Size


class VmfInputs(NamedTuple):
    x: torch.Tensor  # (..., D)
    eps: float


class UniformityInputs(NamedTuple):
    u: torch.Tensor  # (B, ..., D) unit vectors


def check_vmf(x, eps: float = 1e-12) -> VmfInputs:
    checks.tensor("x", x)
    if x.dim() == 0:
        raise ValueError("x: expected at least 1 dimension (..., D), got a scalar")
    checks.nonempty_last_dim("x", x)
    checks.nonempty("x", x)
    return VmfInputs(x, float(eps))


def check_uniformity(u) -> UniformityInputs:
    checks.tensor("u", u)
    if u.dim() < 2:
        raise ValueError(f"u: expected (B, ..., D) with at least 2 dimensions, got shape {tuple(u.shape)}")
    checks.nonempty_last_dim("u", u)
    checks.nonempty("u", u, ("B",))
    return UniformityInputs(u)


def vmf_cost(i: VmfInputs, backward: bool = False) -> Cost:
    """Read x, write u; the backward reads u and du and writes dx."""
    return Cost(i.x.numel() * i.x.element_size() * (5 if backward else 2), 0.0)


def uniformity_cost(i: UniformityInputs, backward: bool = False) -> Cost:
    """Read u once (each row meets its batch neighbour on chip); the backward reads u, writes du."""
    return Cost(i.u.numel() * i.u.element_size() * (3 if backward else 1), 0.0)


def _t(device, dtype, *shape):
    return torch.randn(*shape, device=device, dtype=dtype)


def _unit(device, dtype, *shape):
    return torch.nn.functional.normalize(_t(device, torch.float32, *shape), dim=-1).to(dtype)


def _width(name: str):
    return {"width": Size("last dim D", lambda i: getattr(i, name).shape[-1])}


VMF = OpSpec(
    name="vmf_normalize", module="sphere", family="sphere", inputs=VmfInputs, check=check_vmf, reference=vmf_normalize,
    activations=("x",), cost=vmf_cost,
    examples=lambda device, dtype: {"rows of 64": VmfInputs(_t(device, dtype, 2, 3, 5, 64), 1e-12),
                                    "odd width, strided": VmfInputs(_t(device, dtype, 4, 20)[:, 3:], 1e-12)},
    typical=lambda device, dtype: VmfInputs(_t(device, dtype, 4, 32, 32, 64), 1e-12),
    sizes=_width("x"),
    doc="x / max(|x|, eps) along the last dim: the semantics of F.normalize(x, dim=-1).",
)

UNIFORMITY = OpSpec(
    name="batch_uniformity_loss", module="sphere", family="sphere", inputs=UniformityInputs, check=check_uniformity,
    reference=batch_uniformity_loss, activations=("u",), cost=uniformity_cost,
    examples=lambda device, dtype: {"tiles of 64": UniformityInputs(_unit(device, dtype, 3, 2, 4, 64)),
                                    "vectors": UniformityInputs(_unit(device, dtype, 5, 17))},
    typical=lambda device, dtype: UniformityInputs(_unit(device, dtype, 4, 32, 32, 64)),
    sizes=_width("u"),
    doc="""Mean over (b, ...) of |u[b] . u[b-1]|, pairing sample b with sample b-1 (mod B) on dim 0.

    u: (B, ..., D) unit vectors. Returns a scalar in u's dtype (accumulated in float32).
    """,
)
