"""Triton resample_down, resample_up and pyramid_exchange against the reference (float32, interpreter).

Every test runs with the ``poisoned`` fixture (conftest), so an element a kernel leaves unwritten is
NaN and fails the comparison.
"""

import pytest
import torch

import aef_kernels as K
from aef_kernels import dispatch
from aef_kernels.reference import resample as ref
from aef_kernels.triton import resample as tri
from test_precision import OPCHECK_TESTS, assert_flash_rule, grads, low_precision_errors

pytestmark = pytest.mark.usefixtures("poisoned")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = dict(rtol=1e-4, atol=1e-4)


def rand(gen, *shape, scale=1.0):
    return (torch.randn(*shape, generator=gen) * scale).to(DEVICE).requires_grad_()


def assert_parity(fn_tri, fn_ref, inputs, args):
    out, out_ref = fn_tri(*args), fn_ref(*args)
    for a, b in zip(out if isinstance(out, tuple) else (out,), out_ref if isinstance(out_ref, tuple) else (out_ref,)):
        torch.testing.assert_close(a, b, **TOL)
    for a, b in zip(grads(out, inputs), grads(out_ref, inputs)):
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("factor,HL,WL,cin,cout", [(2, 1, 1, 16, 24), (2, 3, 5, 24, 20), (4, 2, 1, 12, 16),
                                                 (8, 1, 2, 16, 20)])
def test_resample_down_matches_reference(factor, HL, WL, cin, cout, bias):
    """Forward and the gradients of x, weight and bias equal the reference's; (HL, WL) is the output grid."""
    g = torch.Generator().manual_seed(0)
    x = rand(g, 2, HL * factor, WL * factor, cin)
    w = rand(g, cout, cin, factor, factor, scale=0.2)
    b = rand(g, cout) if bias else None
    inputs = [x, w] + ([b] if bias else [])
    assert_parity(lambda *a: K.resample_down(*a, backend="triton"), ref.resample_down, inputs, (x, w, b, factor))


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("factor,H,W,cin,cout", [(2, 1, 1, 16, 24), (2, 3, 5, 24, 20), (4, 2, 3, 12, 16),
                                               (8, 1, 2, 16, 20), (1, 2, 2, 16, 16)])
def test_resample_up_matches_reference(factor, H, W, cin, cout, bias):
    """Forward and the gradients of x, weight and bias equal the reference's, edges (clamped taps)
    included: the backward's gather is the exact adjoint of the bilinear interpolation."""
    g = torch.Generator().manual_seed(0)
    x = rand(g, 2, H, W, cin)
    w = rand(g, cout, cin, scale=0.2)
    b = rand(g, cout) if bias else None
    inputs = [x, w] + ([b] if bias else [])
    assert_parity(lambda *a: K.resample_up(*a, backend="triton"), ref.resample_up, inputs, (x, w, b, factor))


def exchange_inputs(Hs, Ws, ts, pt, widths, biases, seed=0):
    g = torch.Generator().manual_seed(seed)
    ds, dt, dp = widths
    ps = ts * pt
    xs = rand(g, 2, Hs, Ws, ds)
    xt = rand(g, 2, Hs * ts, Ws * ts, dt)
    xp = rand(g, 2, Hs * ps, Ws * ps, dp)
    shapes = [(ds, dp, ps, ps), (ds, dt, ts, ts), (dt, dp, pt, pt), (dt, ds), (dp, dt), (dp, ds)]
    params = []
    for shape, has_bias in zip(shapes, biases):
        params += [rand(g, *shape, scale=0.1), rand(g, shape[0]) if has_bias else None]
    return xs, xt, xp, K.ExchangeParams(*params)


ALL_BIASES = (True,) * 6
SOME_BIASES = (True, False, True, False, True, False)


# (Hs, Ws, ts, pt, biases): the model's ratios (2, 4) and smaller pairs; a 1x1 coarsest grid;
# non-square grids; with every bias and with half of them None.
@pytest.mark.parametrize("Hs,Ws,ts,pt,biases", [(1, 1, 2, 4, ALL_BIASES), (1, 2, 2, 2, SOME_BIASES),
                                                (2, 1, 4, 2, ALL_BIASES), (1, 1, 2, 4, SOME_BIASES)])
def test_pyramid_exchange_matches_reference(Hs, Ws, ts, pt, biases):
    """All three sums and the gradients of the three inputs and every weight and bias equal the
    reference's, with channel widths that are not powers of two."""
    xs, xt, xp, params = exchange_inputs(Hs, Ws, ts, pt, (24, 20, 16), biases)
    inputs = [xs, xt, xp] + [p for p in params if p is not None]
    assert_parity(lambda *a: K.pyramid_exchange(*a, backend="triton"), ref.pyramid_exchange, inputs,
                  (xs, xt, xp, params))


def test_resample_backward_is_deterministic():
    """Two backward passes of the exchange give bitwise-identical gradients (no float atomics)."""
    xs, xt, xp, params = exchange_inputs(1, 2, 2, 2, (16, 16, 16), ALL_BIASES)
    inputs = [xs, xt, xp] + list(params)
    first = grads(K.pyramid_exchange(xs, xt, xp, params, backend="triton"), inputs)
    second = grads(K.pyramid_exchange(xs, xt, xp, params, backend="triton"), inputs)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_up_factor_not_power_of_two_is_refused():
    """The Triton up-sampling names why it cannot take factor 3 (auto then falls back)."""
    x = torch.randn(1, 2, 2, 16, device=DEVICE)
    w = torch.randn(16, 16, device=DEVICE)
    assert dispatch.not_supported_reasons("resample_up", "triton", x, w, None, 3)
    assert dispatch.not_supported_reasons("resample_up", "triton", x, w, None, 4) == []
    with pytest.raises(K.BackendUnavailableError, match="power of two"):
        K.resample_up(x, w, None, 3, backend="triton")


def _opcheck_cases():
    g = torch.Generator().manual_seed(0)
    x = rand(g, 1, 4, 4, 16)
    wd, wu, b = rand(g, 16, 16, 2, 2), rand(g, 16, 16), rand(g, 16)
    y = rand(g, 1, 2, 2, 16)
    xs, xt, xp, params = exchange_inputs(1, 1, 2, 2, (16, 16, 16), SOME_BIASES)
    d = [t.detach() for t in (xs, xt, xp)]
    ws = [w.detach() for w in params[0::2]]
    return {"down_fwd": (tri.resample_down_fwd, (x, wd, b, 2)),
            "down_bwd": (tri.resample_down_bwd, (y.detach(), x.detach(), wd.detach(), 2)),
            "up_fwd": (tri.resample_up_fwd, (y, wu, None, 2)),
            "up_bwd": (tri.resample_up_bwd, (x.detach(), y.detach(), wu.detach(), 2)),
            "exchange_fwd": (tri.pyramid_exchange_fwd, (xs, xt, xp, *params)),
            "exchange_bwd": (tri.pyramid_exchange_bwd, (*d, *d, *ws))}


@pytest.mark.parametrize("case", ["down_fwd", "down_bwd", "up_fwd", "up_bwd", "exchange_fwd", "exchange_bwd"])
def test_opcheck(case):
    """torch.library.opcheck: schema and autograd registration hold (fake-tensor checks need a GPU,
    see test_precision.OPCHECK_TESTS)."""
    op, args = _opcheck_cases()[case]
    torch.library.opcheck(op, args, test_utils=OPCHECK_TESTS)


gpu = pytest.mark.gpu
SMALL_PRESET = (512, 256, 64)  # (d_s, d_t, d_p)


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("factor", [2, 4, 8])
def test_gpu_resample_low_precision(dtype, factor):
    """resample_down and resample_up outputs and gradients obey the flash-attention rule."""
    g = torch.Generator().manual_seed(0)
    x = rand(g, 3, 4 * factor, 2 * factor, 64)
    wd, b = rand(g, 256, 64, factor, factor, scale=0.05), rand(g, 256)
    errors = low_precision_errors(lambda t, bk: K.resample_down(*t, factor, backend=bk), [x, wd, b], {0}, dtype)
    assert_flash_rule(errors, 1)
    x = rand(g, 3, 4, 2, 256)
    wu = rand(g, 64, 256, scale=0.05)
    errors = low_precision_errors(lambda t, bk: K.resample_up(*t, factor, backend=bk), [x, wu, b[:64]], {0},
                                  dtype)
    assert_flash_rule(errors, 1)


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_gpu_pyramid_exchange_low_precision(dtype):
    """All three sums and all gradients obey the flash-attention rule at the small preset's widths
    and the model's ratios (S at 2x2, T at 4x4, P at 16x16)."""
    xs, xt, xp, params = exchange_inputs(2, 2, 2, 4, SMALL_PRESET, ALL_BIASES)
    tensors = [xs, xt, xp] + list(params)
    errors = low_precision_errors(
        lambda t, bk: K.pyramid_exchange(t[0], t[1], t[2], K.ExchangeParams(*t[3:]), backend=bk),
        tensors, {0, 1, 2}, dtype)
    assert_flash_rule(errors, 3)


@gpu
def test_gpu_exchange_compile_fullgraph():
    """torch.compile(fullgraph=True) traces the Triton exchange (forward and backward) without graph
    breaks and computes what eager computes."""
    xs, xt, xp, params = exchange_inputs(2, 2, 2, 4, SMALL_PRESET, ALL_BIASES)
    inputs = [xs, xt, xp] + list(params)

    def f(xs, xt, xp, *p):
        ys, yt, yp = K.pyramid_exchange(xs, xt, xp, K.ExchangeParams(*p), backend="triton")
        return ys.square().sum() + yt.square().sum() + yp.square().sum()

    eager = torch.autograd.grad(f(*inputs), inputs)
    compiled = torch.autograd.grad(torch.compile(f, fullgraph=True)(*inputs), inputs)
    torch.testing.assert_close(compiled, eager)


@gpu
def test_gpu_auto_picks_triton():
    """auto dispatch runs the Triton kernels for CUDA tensors."""
    xs, xt, xp, params = exchange_inputs(1, 1, 2, 4, SMALL_PRESET, ALL_BIASES)
    assert dispatch.select("pyramid_exchange", (xs, xt, xp, params)).backend == "triton"
    assert dispatch.select("resample_up", (xs, params.s_to_t_w, None, 2)).backend == "triton"
