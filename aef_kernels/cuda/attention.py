"""CUDA backend of ``axial_time_attention`` (csrc/axial_attention.cu, csrc/axial_attention_bwd.cu).

q, k and v are read in place from their (B, T, H, W, heads, d) strides, the key mask from its own
strides; o, dq, dk and dv come back contiguous. The forward op also returns the float32
log-sum-exp *in base 2* of the scaled scores, lse2 = log2(sum_j 2^(scale * log2(e) * q.k_j)), with
+inf for a query whose keys are all masked: only the backward op reads it, and base 2 saves it a
change of base (and the rounding that comes with one). The backward is deterministic (no atomics).
"""

from __future__ import annotations

from typing import Optional

import torch

from .. import _C, dispatch
from ..autograd import kernel_op
from ._launch import DTYPE_CODES, check, stream_handle
from .capability import capability

HEAD_DIMS = tuple(_C.attention_head_dims)  # csrc/common.h, kAttentionHeadDims
# The longest T and Tq the GPU parity tests cover; the kernels loop over any length.
MAX_FRAMES = 512
# Sequence indices are 32-bit in the kernels (csrc/axial_attention.cuh).
MAX_SEQUENCES = 2**31 - 1


def _sizes(q: torch.Tensor, k: torch.Tensor) -> list[int]:
    B, Tq, H, W, heads, d = q.shape
    return [B, Tq, k.shape[1], H, W, heads, d]


def _strides(x: torch.Tensor) -> list[int]:
    """Element strides over (B, T, H, W, heads); the head dim is contiguous."""
    return list(x.stride()[:5])


def _mask_args(mask: Optional[torch.Tensor]) -> tuple[int, list[int]]:
    """The mask's pointer (0 for none) and its (b, t, h, w) strides; a (B, T) mask has no h, w stride."""
    if mask is None:
        return 0, [0, 0, 0, 0]
    if mask.dim() == 2:
        return mask.data_ptr(), [mask.stride(0), mask.stride(1), 0, 0]
    return mask.data_ptr(), list(mask.stride())


def _outputs(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    o = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)
    return o, lse


def _forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: Optional[torch.Tensor],
             scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """o (B, Tq, H, W, heads, d) and the base-2 lse (B, Tq, H, W, heads), both contiguous."""
    o, lse = _outputs(q)
    if o.numel() == 0:
        return o, lse
    mask_ptr, mask_strides = _mask_args(key_padding_mask)
    with torch.cuda.device(q.device):
        code = _C.launch_axial_attention_fwd(
            q.data_ptr(), k.data_ptr(), v.data_ptr(), mask_ptr, o.data_ptr(), lse.data_ptr(), _sizes(q, k),
            _strides(q), _strides(k), _strides(v), mask_strides, scale, DTYPE_CODES[q.dtype],
            stream_handle(q.device),
        )
    check("axial_attention_fwd", code)
    return o, lse


def _fake_forward(q, k, v, key_padding_mask, scale):
    return _outputs(q)


def _backward(grad: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
              lse: torch.Tensor, key_padding_mask: Optional[torch.Tensor], scale: float
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dq, dk, dv (contiguous) from the output gradient and the forward's o and base-2 lse."""
    dq, dk, dv = _fake_backward(grad, q, k, v, o, lse, key_padding_mask, scale)
    if dq.numel() == 0:
        # No queries (Tq = 0) means no gradient for any key; no sequences means empty tensors.
        return dq, dk.zero_(), dv.zero_()
    do = grad
    if do.data_ptr() % 16:
        # The kernels read dO in two-element vectors, and stage q, k, v and dO in 16-byte loads only
        # when all four are 16-byte aligned: one copy of dO costs less than staging every operand
        # element by element.
        do = do.clone()
    delta = torch.empty_like(lse)
    mask_ptr, mask_strides = _mask_args(key_padding_mask)
    with torch.cuda.device(q.device):
        code = _C.launch_axial_attention_bwd(
            do.data_ptr(), q.data_ptr(), k.data_ptr(), v.data_ptr(), o.data_ptr(), lse.data_ptr(), mask_ptr,
            delta.data_ptr(), dq.data_ptr(), dk.data_ptr(), dv.data_ptr(), _sizes(q, k), _strides(q), _strides(k),
            _strides(v), mask_strides, scale, DTYPE_CODES[q.dtype], stream_handle(q.device),
        )
    check("axial_attention_bwd", code)
    return dq, dk, dv


def _fake_backward(grad, q, k, v, o, lse, key_padding_mask, scale):
    return tuple(torch.empty(x.shape, dtype=x.dtype, device=x.device) for x in (q, k, v))


axial_time_attention_fwd, axial_time_attention_bwd = kernel_op(
    "axial_time_attention", "cuda", _forward, _backward, outputs=("o", "lse"),
    saved=("q", "k", "v", "o", "lse", "key_padding_mask", "scale"), grads=("q", "k", "v"),
    fake_forward=_fake_forward, fake_backward=_fake_backward)


# The longest T and Tq the GPU parity tests cover (the kernels loop over any length); sequence
# indices are 32-bit in the kernels (csrc/axial_attention.cuh).
@dispatch.register("axial_time_attention", "cuda", capability(
    one_of={"d": HEAD_DIMS}, at_most={"frames": MAX_FRAMES, "sequences": MAX_SEQUENCES}))
def axial_time_attention(q, k, v, key_padding_mask, scale):
    return axial_time_attention_fwd(q, k, v, key_padding_mask, scale)[0]
