"""CUDA backend of ``vmf_normalize``: the forward is the ``vmf_normalize_fwd`` kernel; the backward
is PyTorch arithmetic (correct, not yet a kernel)."""

from __future__ import annotations

import torch

from .. import _C, checks, dispatch
from ._launch import DTYPE_CODES, check, stream_handle


@torch.library.custom_op("aef_kernels::cuda_vmf_normalize", mutates_args=(), device_types="cuda")
def cuda_vmf_normalize(x: torch.Tensor, eps: float) -> torch.Tensor:
    D = x.shape[-1]
    # A view whenever x's leading dims collapse to one row stride; otherwise one copy of x.
    rows = x.reshape(-1, D)
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if rows.shape[0] == 0:
        return y
    with torch.cuda.device(x.device):
        code = _C.launch_vmf_normalize_fwd(
            rows.data_ptr(), y.data_ptr(), rows.shape[0], D, rows.stride(0), D,
            DTYPE_CODES[x.dtype], eps, stream_handle(x.device),
        )
    check("vmf_normalize_fwd", code)
    return y


@cuda_vmf_normalize.register_fake
def _(x, eps):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


def _setup_context(ctx, inputs, output):
    x, eps = inputs
    ctx.save_for_backward(x)
    ctx.eps = eps


def _backward(ctx, grad):
    (x,) = ctx.saved_tensors
    acc = torch.promote_types(x.dtype, torch.float32)  # float32 math for half inputs
    xf, gf = x.to(acc), grad.to(acc)
    norm = torch.linalg.vector_norm(xf, dim=-1, keepdim=True)
    denom = norm.clamp_min(ctx.eps)
    y = xf / denom
    # Where the norm is clamped to eps the divisor is a constant: no projection term.
    proj = torch.where(norm >= ctx.eps, (gf * y).sum(-1, keepdim=True), torch.zeros_like(norm))
    return ((gf - y * proj) / denom).to(x.dtype), None


cuda_vmf_normalize.register_autograd(_backward, setup_context=_setup_context)


def _reasons(x, eps):
    reasons = []
    if x.device.type != "cuda":
        reasons.append(f"x is on {x.device.type}; the cuda backend needs a CUDA tensor")
    reasons.extend(checks.kernel_dtype_reasons(x))
    if x.shape[-1] > 1 and x.stride(-1) != 1:
        reasons.append(f"x: the last dimension must be contiguous (stride 1), got strides {tuple(x.stride())}")
    return reasons


@dispatch.register("vmf_normalize", "cuda", reasons=_reasons)
def vmf_normalize(x, eps):
    return torch.ops.aef_kernels.cuda_vmf_normalize(x, eps)
