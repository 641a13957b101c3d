"""The cuda backend of vmf_normalize: its torch.library op, dispatch reasons and autograd formula
(without a GPU), and parity with the reference on a GPU (`-m gpu`)."""

from __future__ import annotations

import types

import pytest
import torch

import aef_kernels as K
from aef_kernels import _C, dispatch, reference

pytestmark = pytest.mark.skipif(not _C.with_cuda, reason=f"built without CUDA: {_C.cuda_skip_reason}")

if _C.with_cuda:
    from aef_kernels.cuda import sphere

EPS = 1e-12
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def test_fake_impl_gives_a_contiguous_output_of_x_shape_and_dtype():
    x = torch.empty(5, 3, 64, device="meta", dtype=torch.bfloat16).transpose(0, 1)
    y = torch.ops.aef_kernels.cuda_vmf_normalize(x, EPS)
    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
    assert y.is_contiguous()


def test_cuda_backend_is_registered_and_explains_cpu_inputs():
    assert "cuda" in dispatch.registered_backends("vmf_normalize")
    reasons = dispatch.not_supported_reasons("vmf_normalize", "cuda", torch.randn(4, 8), EPS)
    assert reasons == ["x is on cpu; the cuda backend needs a CUDA tensor"]
    with pytest.raises(K.BackendUnavailableError, match="needs a CUDA tensor"):
        K.vmf_normalize(torch.randn(4, 8), backend="cuda")


def test_reasons_name_unsupported_dtype_and_strided_last_dim():
    x = torch.randn(8, 6, dtype=torch.float64).t()
    reasons = sphere._reasons(x, EPS)
    assert any("float64" in r for r in reasons)
    assert any("last dimension must be contiguous" in r for r in reasons)


def test_auto_never_selects_the_unverified_cuda_backend():
    assert all("cuda" not in order for order in dispatch.AUTO_PRIORITY["vmf_normalize"].values())


@pytest.mark.parametrize("scale", [1.0, 1e-14])  # the second puts every row's norm under eps
def test_backward_formula_matches_autograd_of_the_reference(scale):
    x = (torch.randn(6, 5, dtype=torch.float64) * scale).requires_grad_()
    g = torch.randn(6, 5, dtype=torch.float64)
    x.grad = None
    reference.vmf_normalize(x, EPS).backward(g)
    ctx = types.SimpleNamespace(saved_tensors=(x.detach(),), eps=EPS)
    gx, geps = sphere._backward(ctx, g)
    assert geps is None
    torch.testing.assert_close(gx, x.grad, rtol=1e-10, atol=0)


# ---- GPU -------------------------------------------------------------------------------------------

def _max_error(t: torch.Tensor, exact: torch.Tensor) -> float:
    return (t.double() - exact).abs().max().item()


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
def test_forward_matches_reference(dtype, D, layout):
    base = torch.randn(37, 3, D, device="cuda").to(dtype)
    base[0, 0] = 0  # a zero row: output 0, never NaN
    x = LAYOUTS[layout](base)
    y = K.vmf_normalize(x, EPS, backend="cuda")
    assert y.shape == x.shape and y.dtype == dtype
    assert not torch.isnan(y).any()
    exact = reference.vmf_normalize(x.double(), EPS)
    err, ref_err = _max_error(y, exact), _max_error(reference.vmf_normalize(x, EPS), exact)
    assert err <= 2 * ref_err + torch.finfo(dtype).eps, (err, ref_err)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gradient_matches_reference(dtype):
    x = torch.randn(50, 7, 64, device="cuda").to(dtype)
    g = torch.randn_like(x)

    def grad(fn, t):
        t = t.detach().requires_grad_()
        fn(t).backward(g.to(t.dtype))
        return t.grad

    out = grad(lambda t: K.vmf_normalize(t, EPS, backend="cuda"), x)
    exact = grad(lambda t: reference.vmf_normalize(t, EPS), x.double())
    low = grad(lambda t: reference.vmf_normalize(t, EPS), x)
    err, ref_err = _max_error(out, exact), _max_error(low, exact)
    assert err <= 3 * ref_err + torch.finfo(dtype).eps, (err, ref_err)


@pytest.mark.gpu
def test_many_rows_and_empty_input():
    x = torch.randn(70_001 * 33, 8, device="cuda", dtype=torch.float16)
    torch.testing.assert_close(K.vmf_normalize(x, EPS, backend="cuda"), reference.vmf_normalize(x, EPS))
    empty = torch.randn(0, 16, device="cuda")
    assert K.vmf_normalize(empty, EPS, backend="cuda").shape == (0, 16)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_opcheck(dtype):
    x = torch.randn(4, 9, 64, device="cuda", dtype=dtype, requires_grad=True)
    torch.library.opcheck(torch.ops.aef_kernels.cuda_vmf_normalize, (x, EPS))
