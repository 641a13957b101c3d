"""The cuda backend of vmf_normalize: its torch.library ops and dispatch reasons (without a GPU), and
parity of the forward and backward kernels with the reference on a GPU (`-m gpu`)."""

from __future__ import annotations

import pytest
import torch

import aef_kernels as K
from aef_kernels import _C, dispatch, reference

pytestmark = pytest.mark.skipif(not _C.with_cuda, reason=f"built without CUDA: {_C.cuda_skip_reason}")

EPS = 1e-12
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def test_fake_impl_gives_a_contiguous_output_of_x_shape_and_dtype():
    x = torch.empty(5, 3, 64, device="meta", dtype=torch.bfloat16).transpose(0, 1)
    y = torch.ops.aef_kernels.cuda_vmf_normalize_fwd(x, EPS)
    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
    assert y.is_contiguous()


def test_fake_backward_gives_a_contiguous_gradient_of_x_shape_and_dtype():
    x = torch.empty(5, 3, 64, device="meta", dtype=torch.float16).transpose(0, 1)
    g = torch.empty(1, 1, 1, device="meta", dtype=torch.float16).expand(x.shape)
    dx = torch.ops.aef_kernels.cuda_vmf_normalize_bwd(g, x, EPS)
    assert dx.shape == x.shape and dx.dtype == x.dtype and dx.device == x.device
    assert dx.is_contiguous()


def test_cuda_backend_is_registered_and_explains_cpu_inputs():
    assert "cuda" in dispatch.registered_backends("vmf_normalize")
    reasons = dispatch.not_supported_reasons("vmf_normalize", "cuda", torch.randn(4, 8), EPS)
    assert reasons == ["x on cpu: the cuda backend runs on cuda"]
    with pytest.raises(K.BackendUnavailableError, match="runs on cuda"):
        K.vmf_normalize(torch.randn(4, 8), backend="cuda")


def test_reasons_name_unsupported_dtype_and_strided_last_dim():
    x = torch.randn(8, 6, dtype=torch.float64).t()
    assert any("float64" in r for r in dispatch.not_supported_reasons("vmf_normalize", "cuda", x, EPS))
    check = dispatch._REGISTRY["vmf_normalize"]["cuda"].capability.check
    assert any("last dimension must be contiguous" in r for r in check(x=x.float(), eps=EPS))


def test_auto_never_selects_the_unverified_cuda_backend():
    assert all("cuda" not in dispatch.auto_order("vmf_normalize", device, dtype)
               for device in ("cuda", "cpu") for dtype in (torch.float32, torch.float16, torch.bfloat16))


# ---- GPU -------------------------------------------------------------------------------------------

# Views the kernel must read in place: a row stride other than D (vectorised when D // 2 allows),
# a data pointer off the 16-byte grid (scalar path), rows broadcast with stride 0 (one copy).
LAYOUTS = {
    "contiguous": lambda t: t,
    "row_stride": lambda t: t[..., : max(1, t.shape[-1] // 2)],
    "misaligned": lambda t: t[..., 1:] if t.shape[-1] > 1 else t,
    "broadcast_rows": lambda t: t[:1].expand(t.shape),
}


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("D", [1, 3, 8, 64, 100, 256, 384, 1000, 2048, 5000])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_forward_matches_reference(dtype, D, layout, poisoned, within_reference_error):
    base = torch.randn(37, 3, D, device="cuda").to(dtype)
    base[0, 0] = 0  # a zero row: output 0, never NaN
    x = LAYOUTS[layout](base)
    y = K.vmf_normalize(x, EPS, backend="cuda")
    assert y.shape == x.shape and y.dtype == dtype
    # The reference's own zero rows are NaN in float16 (eps = 1e-12 underflows to 0 there), so they
    # are checked apart.
    zero = (x == 0).all(dim=-1)
    assert zero.any() and (y[zero] == 0).all()
    exact = reference.vmf_normalize(x.double(), EPS)[~zero]
    within_reference_error("y", y[~zero], reference.vmf_normalize(x, EPS)[~zero], exact, 2, dtype)


# Incoming gradients the backward must read in place or copy correctly: as autograd hands them over
# after a sum (every stride 0), strided like a slice, and off the 16-byte grid.
GRAD_LAYOUTS = {
    "contiguous": lambda g: g,
    "expanded": lambda g: g[:1, :1, :1].expand(g.shape),
    "row_stride": lambda g: torch.cat([g, g], dim=-1)[..., : g.shape[-1]],
    "misaligned": lambda g: torch.cat([g[..., :1], g], dim=-1)[..., 1:],
}


def _grads(fn, x, g):
    x = x.detach().requires_grad_()
    fn(x).backward(g.to(x.dtype))
    return x.grad


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("D", [1, 3, 8, 64, 100, 256, 1000, 1024, 5000])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("grad_layout", list(GRAD_LAYOUTS))
def test_gradient_matches_reference(dtype, D, layout, grad_layout, poisoned, within_reference_error):
    x = LAYOUTS[layout](torch.randn(37, 3, D, device="cuda").to(dtype))
    g = GRAD_LAYOUTS[grad_layout](torch.randn(x.shape, device="cuda").to(dtype))
    out = _grads(lambda t: K.vmf_normalize(t, EPS, backend="cuda"), x, g)
    exact = _grads(lambda t: reference.vmf_normalize(t, EPS), x.double(), g.double())
    low = _grads(lambda t: reference.vmf_normalize(t, EPS), x, g)
    assert out.shape == x.shape and out.dtype == dtype
    # dx = g / |x| - x (g . x) / |x|^3 cancels (to exactly 0 when D = 1): errors scale with its terms.
    terms = (g.double().abs() / x.double().norm(dim=-1, keepdim=True)).max().item()
    within_reference_error("dx", out, low, exact, 3, dtype, scale=terms)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gradient_below_eps_is_the_scaled_incoming_gradient(dtype):
    # Rows whose norm is under eps are divided by the constant eps: dx = g / eps, no radial term.
    eps = 1e-3
    x = torch.full((70, 64), 1e-6, device="cuda", dtype=dtype)
    g = torch.randn_like(x)
    out = _grads(lambda t: K.vmf_normalize(t, eps, backend="cuda"), x, g)
    torch.testing.assert_close(out, (g.float() / eps).to(dtype))


@pytest.mark.gpu
def test_backward_is_bitwise_reproducible():
    x = torch.randn(1000, 3, 256, device="cuda", dtype=torch.bfloat16)
    g = torch.randn_like(x)
    runs = [_grads(lambda t: K.vmf_normalize(t, EPS, backend="cuda"), x, g) for _ in range(3)]
    assert all(torch.equal(runs[0], r) for r in runs[1:])


@pytest.mark.gpu
def test_many_rows_and_empty_input():
    x = torch.randn(70_001 * 33, 8, device="cuda", dtype=torch.float16)
    torch.testing.assert_close(K.vmf_normalize(x, EPS, backend="cuda"), reference.vmf_normalize(x, EPS))
    g = torch.randn_like(x)
    torch.testing.assert_close(_grads(lambda t: K.vmf_normalize(t, EPS, backend="cuda"), x, g),
                               _grads(lambda t: reference.vmf_normalize(t, EPS), x.float(), g.float()).half())
    empty = torch.randn(0, 16, device="cuda", requires_grad=True)
    y = K.vmf_normalize(empty, EPS, backend="cuda")
    assert y.shape == (0, 16)
    y.sum().backward()
    assert empty.grad.shape == (0, 16)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_opcheck(dtype):
    x = torch.randn(4, 9, 64, device="cuda", dtype=dtype, requires_grad=True)
    torch.library.opcheck(torch.ops.aef_kernels.cuda_vmf_normalize_fwd, (x, EPS))
    g = torch.randn(4, 9, 64, device="cuda", dtype=dtype)
    torch.library.opcheck(torch.ops.aef_kernels.cuda_vmf_normalize_bwd, (g, x.detach(), EPS))
