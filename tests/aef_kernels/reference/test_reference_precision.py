"""Reference precision operator and channels-last GroupNorm against plain torch compositions."""

import pytest
import torch
import torch.nn.functional as F

from aef_kernels import reference


def params(C, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)

    def t(*s, scale=1.0):
        return (torch.randn(*s, generator=g) * scale).to(dtype)

    return (1 + t(C, scale=0.1), t(C, scale=0.1), t(4 * C, C, 3, 3, scale=0.1), t(4 * C, scale=0.1),
            t(C, 4 * C, 3, 3, scale=0.1), t(C, scale=0.1))


def composed(x, gw, gb, w1, b1, w2, b2, G, eps):
    """The operator written with torch ops on a contiguous NCHW copy."""
    xc = x.permute(0, 3, 1, 2).contiguous()
    h = F.group_norm(xc, G, gw, gb, eps)
    h = F.conv2d(F.gelu(F.conv2d(h, w1, b1, padding=1)), w2, b2, padding=1)
    return (xc + h).permute(0, 2, 3, 1)


@pytest.mark.parametrize("N,H,W,C,G", [(2, 5, 7, 16, 8), (1, 1, 1, 8, 4), (3, 3, 5, 24, 12)])
def test_precision_operator_equals_torch_composition(N, H, W, C, G):
    """precision_operator(x) = x + conv3x3(GELU(conv3x3(GroupNorm(x)))), zero padding, NHWC."""
    x = torch.randn(N, H, W, C)
    p = params(C)
    out = reference.precision_operator(x, *p, G, 1e-5)
    assert out.shape == x.shape and out.is_contiguous()
    torch.testing.assert_close(out, composed(x, *p, G, 1e-5), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("activation", [None, "gelu"])
@pytest.mark.parametrize("affine", [True, False])
def test_group_norm_nhwc_equals_group_norm(activation, affine):
    """group_norm_nhwc equals F.group_norm on the NCHW view, optionally followed by GELU."""
    x = torch.randn(2, 3, 4, 12) * 3 + 1
    w, b = (torch.randn(12), torch.randn(12)) if affine else (None, None)
    y = F.group_norm(x.permute(0, 3, 1, 2), 4, w, b, 1e-5)
    if activation:
        y = F.gelu(y)
    out = reference.group_norm_nhwc(x, w, b, 4, 1e-5, activation)
    torch.testing.assert_close(out, y.permute(0, 2, 3, 1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_close_to_float32(dtype):
    """fp16/bf16 inputs (with float32 parameters) give the float32 result within dtype tolerance."""
    x = torch.randn(2, 4, 4, 16)
    p = params(16)
    out = reference.precision_operator(x.to(dtype), *p, 8, 1e-5)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), reference.precision_operator(x, *p, 8, 1e-5), rtol=5e-2, atol=5e-2)


def test_group_norm_statistics_are_stable_for_large_offsets():
    """A large common offset (mean >> std) does not destroy the normalised values in bf16 input."""
    base = torch.randn(1, 4, 4, 8)
    x = (base + 1000.0).to(torch.bfloat16)
    out = reference.group_norm_nhwc(x, None, None, 2, 1e-5, None).float()
    expected = F.group_norm(x.float().permute(0, 3, 1, 2), 2, eps=1e-5).permute(0, 2, 3, 1)
    torch.testing.assert_close(out, expected, rtol=2e-2, atol=2e-2)


def test_gradcheck_float64():
    """precision_operator and group_norm_nhwc have correct gradients for x and every parameter."""
    x = torch.randn(1, 3, 2, 4, dtype=torch.float64, requires_grad=True)
    p = tuple(t.requires_grad_() for t in params(4, torch.float64))
    assert torch.autograd.gradcheck(lambda *a: reference.precision_operator(*a, 2, 1e-5), (x, *p))
    assert torch.autograd.gradcheck(lambda a, w, b: reference.group_norm_nhwc(a, w, b, 2, 1e-5, "gelu"), (x, p[0], p[1]))
