"""The declaration of ``axial_time_attention`` (docs/kernels.md §2.1)."""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch

from .. import checks
from ..reference.attention import axial_time_attention
from ..spec import Cost, OpSpec, Size


class AttentionInputs(NamedTuple):
    q: torch.Tensor  # (B, Tq, H, W, heads, d)
    k: torch.Tensor  # (B, T, H, W, heads, d)
    v: torch.Tensor  # (B, T, H, W, heads, d)
    key_padding_mask: Optional[torch.Tensor]  # bool (B, T) or (B, T, H, W), True = valid
    scale: float


def check(q, k, v, key_padding_mask=None, scale=None) -> AttentionInputs:
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
    return AttentionInputs(q, k, v, key_padding_mask, float(scale))


def cost(i: AttentionInputs, backward: bool = False) -> Cost:
    """S = B*H*W*heads sequences. Forward: read q, k, v and the bool mask, write o; QK^T and PV.

    The backward reads q, k, v, o, dO, the mask and one float32 log-sum-exp per query row, writes
    dq, dk, dv, and does dV = P^T dO, dP = dO V^T, dQ = dS K, dK = dS^T Q: twice the forward's FLOPs.
    """
    B, Tq, H, W, heads, d = i.q.shape
    T = i.k.shape[1]
    elt = i.q.element_size()
    mask = 0 if i.key_padding_mask is None else i.key_padding_mask.numel()
    S = B * H * W * heads
    q_elems, kv_elems = S * Tq * d, S * T * d
    fwd = Cost((2 * q_elems + 2 * kv_elems) * elt + mask, 4.0 * S * Tq * T * d)
    if not backward:
        return fwd
    lse = S * Tq * 4
    bwd = Cost((3 * q_elems + 2 * kv_elems) * elt + (q_elems + 2 * kv_elems) * elt + mask + 2 * lse, 2 * fwd.flops)
    return fwd + bwd


def _make(device, dtype, B, Tq, T, H, W, heads, d, mask: Optional[str], fused: bool = False) -> AttentionInputs:
    def t(*shape):
        return torch.randn(*shape, device=device, dtype=dtype)

    if fused:
        qkv = t(B, T, H, W, 3, heads, d)  # q, k, v as strided slices of one projection
        q, k, v = qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]
    else:
        q, k, v = t(B, Tq, H, W, heads, d), t(B, T, H, W, heads, d), t(B, T, H, W, heads, d)
    shape = {"frames": (B, T), "pixels": (B, T, H, W), None: None}[mask]
    m = None
    if shape is not None:
        m = torch.rand(shape, device=device) > 0.3
        m[0, ...] = False  # a sample with every key masked: its queries return 0
    return AttentionInputs(q, k, v, m, d ** -0.5)


def examples(device, dtype) -> dict[str, AttentionInputs]:
    return {
        "self, pixel mask": _make(device, dtype, 2, 5, 5, 2, 3, 2, 16, "pixels"),
        "fused qkv, frame mask": _make(device, dtype, 2, 4, 4, 2, 2, 1, 32, "frames", fused=True),
        "one query, no mask": _make(device, dtype, 2, 1, 6, 3, 2, 1, 16, None),
    }


def typical(device, dtype) -> AttentionInputs:
    i = _make(device, dtype, 2, 16, 16, 8, 8, 8, 64, "frames")
    return i._replace(key_padding_mask=torch.ones(2, 16, device=device, dtype=torch.bool))


SPEC = OpSpec(
    name="axial_time_attention", module="attention", family="attention", inputs=AttentionInputs, check=check, reference=axial_time_attention,
    activations=("q", "k", "v"), cost=cost, examples=examples, typical=typical,
    sizes={
        "d": Size("head dim d", lambda i: i.q.shape[-1]),
        "frames": Size("frames max(T, Tq)", lambda i: max(i.q.shape[1], i.k.shape[1])),
        "sequences": Size("sequences B*H*W*heads", lambda i: math.prod(i.q.shape[:1] + i.q.shape[2:5])),
    },
    doc="""Attention along time at every pixel and head.

    q: (B, Tq, H, W, heads, d); k, v: (B, T, H, W, heads, d); any strides with a contiguous last
    dim. key_padding_mask: bool (B, T) or (B, T, H, W), True = valid. A query whose keys are all
    masked returns 0 (with zero gradients). Returns o: (B, Tq, H, W, heads, d), contiguous.
    """,
)
