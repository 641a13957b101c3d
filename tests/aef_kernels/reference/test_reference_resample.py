"""Reference resampling: down = conv with kernel = stride, up = 1x1 conv then bilinear; exchange."""

import pytest
import torch
import torch.nn.functional as F

from aef_kernels import ExchangeParams, reference


def nchw(x):
    return x.permute(0, 3, 1, 2)


def nhwc(x):
    return x.permute(0, 2, 3, 1)


@pytest.mark.parametrize("factor,H,W,cin,cout", [(2, 4, 6, 3, 5), (4, 8, 4, 16, 8), (8, 8, 16, 5, 7)])
def test_resample_down_equals_strided_conv(factor, H, W, cin, cout):
    """resample_down equals F.conv2d with kernel = stride = factor on the NCHW view."""
    x = torch.randn(2, H, W, cin)
    w, b = torch.randn(cout, cin, factor, factor), torch.randn(cout)
    expected = nhwc(F.conv2d(nchw(x), w, b, stride=factor))
    torch.testing.assert_close(reference.resample_down(x, w, b, factor), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("factor,H,W", [(2, 3, 5), (4, 2, 2), (8, 1, 3)])
def test_resample_up_equals_conv1x1_then_bilinear(factor, H, W):
    """resample_up equals a 1x1 conv followed by bilinear upsampling (align_corners=False)."""
    x = torch.randn(2, H, W, 6)
    w, b = torch.randn(4, 6), torch.randn(4)
    y = F.conv2d(nchw(x), w[:, :, None, None], b)
    expected = nhwc(F.interpolate(y, scale_factor=factor, mode="bilinear", align_corners=False))
    out = reference.resample_up(x, w, b, factor)
    assert out.shape == (2, H * factor, W * factor, 4)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def exchange_inputs(dtype=torch.float32, N=2, Hs=1, ds=6, dt=5, dp=3, bias=True):
    def t(*s):
        return torch.randn(*s, dtype=dtype)

    b = (lambda c: t(c)) if bias else (lambda c: None)
    params = ExchangeParams(t(ds, dp, 8, 8), b(ds), t(ds, dt, 2, 2), b(ds), t(dt, dp, 4, 4), b(dt),
                            t(dt, ds), b(dt), t(dp, dt), b(dp), t(dp, ds), b(dp))
    return t(N, Hs, Hs, ds), t(N, 2 * Hs, 2 * Hs, dt), t(N, 8 * Hs, 8 * Hs, dp), params


@pytest.mark.parametrize("bias", [True, False])
def test_pyramid_exchange_is_the_simultaneous_sum(bias):
    """Each path's output is its input plus the two resampled inputs of the others (pre-exchange)."""
    xs, xt, xp, p = exchange_inputs(bias=bias)
    ys, yt, yp = reference.pyramid_exchange(xs, xt, xp, p)
    down, up = reference.resample_down, reference.resample_up
    torch.testing.assert_close(ys, xs + down(xp, p.p_to_s_w, p.p_to_s_b, 8) + down(xt, p.t_to_s_w, p.t_to_s_b, 2))
    torch.testing.assert_close(yt, xt + down(xp, p.p_to_t_w, p.p_to_t_b, 4) + up(xs, p.s_to_t_w, p.s_to_t_b, 2))
    torch.testing.assert_close(yp, xp + up(xt, p.t_to_p_w, p.t_to_p_b, 4) + up(xs, p.s_to_p_w, p.s_to_p_b, 8))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_with_float32_parameters(dtype):
    """Activations in fp16/bf16 with float32 parameters compute in the activation dtype."""
    x = torch.randn(2, 8, 8, 4)
    w, b = torch.randn(6, 4, 4, 4), torch.randn(6)
    y = reference.resample_down(x.to(dtype), w, b, 4)
    assert y.dtype == dtype
    torch.testing.assert_close(y.float(), reference.resample_down(x, w, b, 4), rtol=5e-2, atol=5e-2)
    wu = torch.randn(3, 4)
    yu = reference.resample_up(x.to(dtype), wu, None, 2)
    assert yu.dtype == dtype
    torch.testing.assert_close(yu.float(), reference.resample_up(x, wu, None, 2), rtol=5e-2, atol=5e-2)


def test_gradcheck_float64():
    """resample_down, resample_up and pyramid_exchange have correct gradients (float64 gradcheck)."""
    x = torch.randn(1, 4, 4, 2, dtype=torch.float64, requires_grad=True)
    wd = torch.randn(3, 2, 2, 2, dtype=torch.float64, requires_grad=True)
    wu = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, w, c: reference.resample_down(a, w, c, 2), (x, wd, b))
    assert torch.autograd.gradcheck(lambda a, w, c: reference.resample_up(a, w, c, 2), (x, wu, b))
    xs, xt, xp, p = exchange_inputs(torch.float64, N=1, ds=2, dt=2, dp=2)
    leaves = [xs, xt, xp, *p]
    for t in leaves:
        t.requires_grad_()

    def fn(*ts):
        return reference.pyramid_exchange(ts[0], ts[1], ts[2], ExchangeParams(*ts[3:]))

    assert torch.autograd.gradcheck(fn, tuple(leaves))
