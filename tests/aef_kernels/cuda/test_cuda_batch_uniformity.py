"""The cuda backend of batch_uniformity_loss: its torch.library ops and dispatch reasons (without a
GPU), and parity of the forward and backward kernels with the reference on a GPU (`-m gpu`)."""

from __future__ import annotations

import math

import pytest
import torch

import aef_kernels as K
from aef_kernels import _C, dispatch, reference

pytestmark = pytest.mark.skipif(not _C.with_cuda, reason=f"built without CUDA: {_C.cuda_skip_reason}")

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def test_fake_impls_give_the_loss_the_dots_and_a_contiguous_gradient():
    u = torch.empty(6, 4, 5, 64, device="meta", dtype=torch.bfloat16).transpose(1, 2)
    loss, dots = torch.ops.aef_kernels.cuda_batch_uniformity_loss_fwd(u)
    assert loss.shape == () and loss.dtype == torch.bfloat16 and loss.device == u.device
    assert dots.shape == (6, 20) and dots.dtype == torch.float32
    g = torch.empty((), device="meta", dtype=torch.bfloat16)
    du = torch.ops.aef_kernels.cuda_batch_uniformity_loss_bwd(g, u, dots)
    assert du.shape == u.shape and du.dtype == u.dtype and du.is_contiguous()


def test_cuda_backend_is_registered_and_explains_cpu_inputs():
    assert "cuda" in dispatch.registered_backends("batch_uniformity_loss")
    reasons = dispatch.not_supported_reasons("batch_uniformity_loss", "cuda", torch.randn(4, 3, 8))
    assert reasons == ["u on cpu: the cuda backend runs on cuda"]
    with pytest.raises(K.BackendUnavailableError, match="runs on cuda"):
        K.batch_uniformity_loss(torch.randn(4, 3, 8), backend="cuda")


def test_reasons_name_unsupported_dtype_and_strided_last_dim():
    u = torch.randn(4, 8, 6, dtype=torch.float64).transpose(1, 2)
    assert any("float64" in r for r in dispatch.not_supported_reasons("batch_uniformity_loss", "cuda", u))
    check = dispatch._REGISTRY["batch_uniformity_loss"]["cuda"].capability.check
    assert any("last dimension must be contiguous" in r for r in check(u=u.float()))


def test_auto_never_selects_the_unverified_cuda_backend():
    assert all("cuda" not in dispatch.auto_order("batch_uniformity_loss", device, dtype)
               for device in ("cuda", "cpu") for dtype in (torch.float32, torch.float16, torch.bfloat16))


# ---- GPU -------------------------------------------------------------------------------------------

# (B, ..., D): one sample (u[0] pairs with itself), two (each pair counted twice), an odd batch,
# several position dims, D off the 16-byte grid, D = 1, long rows.
SHAPES = [(1, 5, 64), (2, 7, 64), (9, 4, 4, 64), (5, 3, 100), (3, 2, 1000), (6, 40, 1), (4, 3, 4096), (33, 8)]

# Views read in place: every other sample (batch stride 2x), a slice of D (row stride > D,
# unaligned when the slice starts at 1), samples and positions transposed in memory (batch stride
# smaller than the position stride; with two position dims the leading dims do not collapse: a copy).
LAYOUTS = {
    "contiguous": lambda t: t,
    "batch_stride": lambda t: torch.cat([t, t], dim=0)[::2],
    "misaligned": lambda t: torch.cat([t[..., :1], t], dim=-1)[..., 1:],
    "transposed": lambda t: t.transpose(0, 1).contiguous().transpose(0, 1) if t.dim() > 2 else t,
}


def _unit(shape, dtype):
    return reference.vmf_normalize(torch.randn(shape, device="cuda"), 1e-12).to(dtype)


def _loss_and_grad(fn, u, g):
    u = u.detach().requires_grad_()
    loss = fn(u)
    loss.backward(g.to(loss.dtype))
    return loss.detach(), u.grad


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_loss_and_gradient_match_reference(dtype, shape, layout, poisoned, within_reference_error):
    u = LAYOUTS[layout](_unit(shape, dtype))
    g = torch.tensor(0.75, device="cuda")
    loss, du = _loss_and_grad(lambda t: K.batch_uniformity_loss(t, backend="cuda"), u, g)
    exact_loss, exact_du = _loss_and_grad(reference.batch_uniformity_loss, u.double(), g.double())
    low_loss, low_du = _loss_and_grad(reference.batch_uniformity_loss, u, g)
    assert loss.shape == () and loss.dtype == dtype
    assert du.shape == u.shape and du.dtype == dtype
    within_reference_error("loss", loss, low_loss, exact_loss, 2, dtype)
    within_reference_error("du", du, low_du, exact_du, 3, dtype)


@pytest.mark.gpu
def test_loss_and_gradient_are_bitwise_reproducible():
    u = _unit((16, 64, 64, 64), torch.bfloat16)
    g = torch.tensor(1.0, device="cuda")
    runs = [_loss_and_grad(lambda t: K.batch_uniformity_loss(t, backend="cuda"), u, g) for _ in range(3)]
    for loss, du in runs[1:]:
        assert torch.equal(loss, runs[0][0]) and torch.equal(du, runs[0][1])


@pytest.mark.gpu
def test_more_rows_than_partial_sums_and_grid_rows():
    # 4 x 600,000 rows: far more blocks' worth of rows than UNIFORMITY_PARTIALS, so every block
    # grid-strides over many rows.
    u = _unit((4, 600_000, 8), torch.float16)
    g = torch.tensor(1.0, device="cuda")
    loss, du = _loss_and_grad(lambda t: K.batch_uniformity_loss(t, backend="cuda"), u, g)
    ref_loss, ref_du = _loss_and_grad(reference.batch_uniformity_loss, u.float(), g)
    torch.testing.assert_close(loss.float(), ref_loss, rtol=2e-3, atol=0)
    torch.testing.assert_close(du, ref_du.half())


@pytest.mark.gpu
def test_no_positions_gives_nan_like_the_reference():
    u = torch.randn(3, 0, 8, device="cuda", requires_grad=True)
    loss = K.batch_uniformity_loss(u, backend="cuda")
    assert math.isnan(loss.item()) and math.isnan(reference.batch_uniformity_loss(u.detach()).item())
    loss.backward()
    assert u.grad.shape == u.shape


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_opcheck(dtype):
    u = _unit((5, 3, 64), dtype).requires_grad_()
    torch.library.opcheck(torch.ops.aef_kernels.cuda_batch_uniformity_loss_fwd, (u,))
    loss, dots = torch.ops.aef_kernels.cuda_batch_uniformity_loss_fwd(u.detach())
    torch.library.opcheck(torch.ops.aef_kernels.cuda_batch_uniformity_loss_bwd,
                          (torch.ones_like(loss), u.detach(), dots))
