"""CUDA backend of ``group_norm_nhwc`` and ``precision_operator`` (csrc/group_norm.cu).

``group_norm_nhwc`` is one custom op with its own backward op: Welford statistics per (frame, group)
in float32 and the normalisation with GELU fused into its apply pass (docs/kernels.md §6.2).

``precision_operator`` is that GroupNorm op around PyTorch's cuDNN convolutions on channels_last
views, x + conv2(GELU(conv1(GN(x)))): the convolutions, their biases, the GELU between them and the
residual are PyTorch's, and autograd composes the GroupNorm op's backward kernels with theirs. It is
the honest baseline for the fully fused Triton operator: the same math, with the 4C intermediate
written and read by separate kernels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import _C, dispatch
from ..autograd import kernel_op
from ._launch import DTYPE_CODES, check, stream_handle
from .capability import capability


def _workspace(x: torch.Tensor, num_groups: int) -> tuple[torch.Tensor, int]:
    N, H, W, C = x.shape
    size = _C.group_norm_workspace_size(N, H * W, C, num_groups)
    if size < 0:  # a status code: bad sizes
        check("group_norm_workspace_size", size)
    return torch.empty((size,), dtype=torch.float32, device=x.device), size


def _forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, num_groups: int, eps: float,
             gelu: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, mean, rstd) of x (N, H, W, C); weight and bias are float32 (C,), mean and rstd float32 (N, G)."""
    x = x.contiguous()  # the kernels read contiguous (N, H*W, C)
    N, H, W, C = x.shape
    y = torch.empty_like(x)
    if x.numel() == 0:
        # No element to take statistics over: nothing to normalise, statistics undefined.
        nan = torch.full((N, num_groups), float("nan"), dtype=torch.float32, device=x.device)
        return y, nan, nan.clone()
    mean = torch.empty((N, num_groups), dtype=torch.float32, device=x.device)
    rstd = torch.empty_like(mean)
    workspace, size = _workspace(x, num_groups)
    weight, bias = weight.contiguous(), bias.contiguous()
    with torch.cuda.device(x.device):
        code = _C.launch_group_norm_fwd(
            x.data_ptr(), weight.data_ptr(), bias.data_ptr(), y.data_ptr(), mean.data_ptr(), rstd.data_ptr(),
            workspace.data_ptr(), size, N, H * W, C, num_groups, DTYPE_CODES[x.dtype], eps, int(gelu),
            stream_handle(x.device),
        )
    check("group_norm_fwd", code)
    return y, mean, rstd


def _fake_forward(x, weight, bias, num_groups, eps, gelu):
    stats = x.new_empty((x.shape[0], num_groups), dtype=torch.float32)
    return torch.empty(x.shape, dtype=x.dtype, device=x.device), stats, torch.empty_like(stats)


def _backward(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor,
              rstd: torch.Tensor, gelu: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx in x's dtype, dweight, dbias float32 (C,)); GELU's input is recomputed from x."""
    x = x.contiguous()
    dy = dy.to(x.dtype).contiguous()
    N, H, W, C = x.shape
    G = mean.shape[1]
    dx = torch.empty_like(x)
    if x.numel() == 0:
        zero = torch.zeros((C,), dtype=torch.float32, device=x.device)
        return dx, zero, zero.clone()
    dweight = torch.empty((C,), dtype=torch.float32, device=x.device)
    dbias = torch.empty_like(dweight)
    workspace, size = _workspace(x, G)
    weight, bias, mean, rstd = weight.contiguous(), bias.contiguous(), mean.contiguous(), rstd.contiguous()
    with torch.cuda.device(x.device):
        code = _C.launch_group_norm_bwd(
            dy.data_ptr(), x.data_ptr(), weight.data_ptr(), bias.data_ptr(), mean.data_ptr(), rstd.data_ptr(),
            dx.data_ptr(), dweight.data_ptr(), dbias.data_ptr(), workspace.data_ptr(), size, N, H * W, C, G,
            DTYPE_CODES[x.dtype], int(gelu), stream_handle(x.device),
        )
    check("group_norm_bwd", code)
    return dx, dweight, dbias


def _fake_backward(dy, x, weight, bias, mean, rstd, gelu):
    param = weight.new_empty((x.shape[-1],), dtype=torch.float32)
    return torch.empty(x.shape, dtype=x.dtype, device=x.device), param, torch.empty_like(param)


group_norm_nhwc_fwd, group_norm_nhwc_bwd = kernel_op(
    "group_norm_nhwc", "cuda", _forward, _backward, outputs=("y", "mean", "rstd"),
    saved=("x", "weight", "bias", "mean", "rstd", "gelu"), grads=("x", "weight", "bias"),
    fake_forward=_fake_forward, fake_backward=_fake_backward)


def _affine(x: torch.Tensor, weight, bias) -> tuple[torch.Tensor, torch.Tensor]:
    """GroupNorm's affine parameters in float32 (the reference runs GroupNorm in float32); identity
    for a missing one."""
    C = x.shape[-1]
    f32 = torch.float32
    w = weight.to(f32) if weight is not None else x.new_ones((C,), dtype=f32)
    b = bias.to(f32) if bias is not None else x.new_zeros((C,), dtype=f32)
    return w, b


def _group_norm(x, weight, bias, num_groups, eps, gelu):
    w, b = _affine(x, weight, bias)
    return group_norm_nhwc_fwd(x, w, b, num_groups, eps, gelu)[0]


# ---- dispatch --------------------------------------------------------------------------------------

@dispatch.register("group_norm_nhwc", "cuda", capability())
def group_norm_nhwc(x, weight, bias, num_groups, eps, activation):
    return _group_norm(x, weight, bias, num_groups, eps, activation == "gelu")


@dispatch.register("precision_operator", "cuda", capability())
def precision_operator(x, gn_weight, gn_bias, w1, b1, w2, b2, num_groups, eps):
    dt = x.dtype
    # (N, C, H, W) views of channels-last memory: cuDNN runs channels_last and keeps that layout.
    h = _group_norm(x, gn_weight, gn_bias, num_groups, eps, False).permute(0, 3, 1, 2)
    h = F.gelu(F.conv2d(h, w1.to(dt), b1.to(dt), padding=1))
    h = F.conv2d(h, w2.to(dt), b2.to(dt), padding=1)
    return (x.permute(0, 3, 1, 2) + h).permute(0, 2, 3, 1).contiguous()
