"""CUDA backend of the sphere ops (csrc/vmf_normalize.cu, csrc/batch_uniformity.cu).

``vmf_normalize``: forward and backward kernels over rows of length D; the backward re-reads x
(cheaper than saving y and the norms). ``batch_uniformity_loss``: the forward writes the float32 dots
u[b] . u[b-1] (saved for the backward) and per-block partial sums, which a second kernel adds in a
fixed order (no atomics: the loss is bitwise reproducible); the backward of row b reads rows b-1 and
b+1 and the signs of the two dots it enters.
"""

from __future__ import annotations

import math

import torch

from .. import _C, dispatch
from ..autograd import kernel_op
from ._launch import DTYPE_CODES, check, stream_handle
from .capability import capability

# Blocks (hence partial sums) of the uniformity forward at most: a few per SM of an H100 (132 SMs),
# so the one-block final sum stays short.
UNIFORMITY_PARTIALS = 1024


def _rows(t: torch.Tensor, D: int) -> torch.Tensor:
    """t as (rows, D) with unit stride along D: a view when the leading dims collapse, else a copy."""
    t2 = t.reshape(-1, D)
    return t2 if t2.stride(-1) == 1 or D == 1 else t2.contiguous()


def _batch_rows(u: torch.Tensor) -> torch.Tensor:
    """u (B, ..., D) as (B, M, D) with unit stride along D."""
    B, D = u.shape[0], u.shape[-1]
    u3 = u.reshape(B, math.prod(u.shape[1:-1]), D)
    return u3 if u3.stride(-1) == 1 or D == 1 else u3.contiguous()


def _like(x: torch.Tensor) -> torch.Tensor:
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


# ---- vmf_normalize ---------------------------------------------------------------------------------

def _vmf_forward(x: torch.Tensor, eps: float) -> torch.Tensor:
    D = x.shape[-1]
    rows = _rows(x, D)
    y = _like(x)
    if rows.shape[0] == 0:
        return y
    with torch.cuda.device(x.device):
        code = _C.launch_vmf_normalize_fwd(
            rows.data_ptr(), y.data_ptr(), rows.shape[0], D, rows.stride(0), D,
            DTYPE_CODES[x.dtype], eps, stream_handle(x.device),
        )
    check("vmf_normalize_fwd", code)
    return y


def _vmf_backward(grad: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    D = x.shape[-1]
    xs, gs = _rows(x, D), _rows(grad.to(x.dtype), D)
    dx = _like(x)
    if xs.shape[0] == 0:
        return dx
    with torch.cuda.device(x.device):
        code = _C.launch_vmf_normalize_bwd(
            gs.data_ptr(), xs.data_ptr(), dx.data_ptr(), xs.shape[0], D, gs.stride(0), xs.stride(0), D,
            DTYPE_CODES[x.dtype], eps, stream_handle(x.device),
        )
    check("vmf_normalize_bwd", code)
    return dx


vmf_normalize_fwd, vmf_normalize_bwd = kernel_op(
    "vmf_normalize", "cuda", _vmf_forward, _vmf_backward, outputs=("y",), saved=("x", "eps"), grads=("x",),
    fake_forward=lambda x, eps: _like(x), fake_backward=lambda grad, x, eps: _like(x))


# ---- batch_uniformity_loss -------------------------------------------------------------------------

def _uniformity_forward(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss in u's dtype, float32 dots (B, M) of u viewed as (B, M, D)), M the positions per sample."""
    u3 = _batch_rows(u)
    B, M, D = u3.shape
    dots = torch.empty((B, M), dtype=torch.float32, device=u.device)
    if dots.numel() == 0:
        # The mean of no terms, as the reference gives it.
        return torch.full((), math.nan, dtype=u.dtype, device=u.device), dots
    loss = torch.empty((), dtype=u.dtype, device=u.device)
    partials = torch.empty((UNIFORMITY_PARTIALS,), dtype=torch.float32, device=u.device)
    with torch.cuda.device(u.device):
        code = _C.launch_batch_uniformity_fwd(
            u3.data_ptr(), dots.data_ptr(), partials.data_ptr(), loss.data_ptr(), B, M, D, u3.stride(0),
            u3.stride(1), UNIFORMITY_PARTIALS, DTYPE_CODES[u.dtype], stream_handle(u.device),
        )
    check("batch_uniformity_fwd", code)
    return loss, dots


def _uniformity_fake_forward(u):
    M = math.prod(u.shape[1:-1])
    return u.new_empty((), dtype=u.dtype), u.new_empty((u.shape[0], M), dtype=torch.float32)


def _uniformity_backward(grad: torch.Tensor, u: torch.Tensor, dots: torch.Tensor) -> torch.Tensor:
    u3 = _batch_rows(u)
    B, M, D = u3.shape
    du = torch.empty(u.shape, dtype=u.dtype, device=u.device)
    if du.numel() == 0:
        return du
    g = grad.to(u.dtype).contiguous()
    dots = dots.contiguous()
    with torch.cuda.device(u.device):
        code = _C.launch_batch_uniformity_bwd(
            g.data_ptr(), u3.data_ptr(), dots.data_ptr(), du.data_ptr(), B, M, D, u3.stride(0), u3.stride(1),
            DTYPE_CODES[u.dtype], stream_handle(u.device),
        )
    check("batch_uniformity_bwd", code)
    return du


batch_uniformity_loss_fwd, batch_uniformity_loss_bwd = kernel_op(
    "batch_uniformity_loss", "cuda", _uniformity_forward, _uniformity_backward, outputs=("loss", "dots"),
    saved=("u", "dots"), grads=("u",), fake_forward=_uniformity_fake_forward,
    fake_backward=lambda grad, u, dots: _like(u))


# ---- dispatch --------------------------------------------------------------------------------------

def _contiguous_rows(name: str, t: torch.Tensor) -> list[str]:
    # The GPU parity tests cover rows with a unit stride only.
    if t.shape[-1] > 1 and t.stride(-1) != 1:
        return [f"{name}: the last dimension must be contiguous (stride 1), got strides {tuple(t.stride())}"]
    return []


@dispatch.register("vmf_normalize", "cuda", capability(check=lambda x, eps: _contiguous_rows("x", x)))
def vmf_normalize(x, eps):
    return vmf_normalize_fwd(x, eps)


@dispatch.register("batch_uniformity_loss", "cuda", capability(check=lambda u: _contiguous_rows("u", u)))
def batch_uniformity_loss(u):
    return batch_uniformity_loss_fwd(u)[0]
