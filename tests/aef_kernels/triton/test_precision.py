"""Triton precision operator and group_norm_nhwc against the reference (float32, interpreter on CPU).

Every test runs with the ``poisoned`` fixture (conftest): buffers the kernels allocate start as NaN,
so an element a kernel forgets to write fails the comparison.
"""

import pytest
import torch
import triton

import aef_kernels as K
from aef_kernels import dispatch
from aef_kernels.reference import precision as ref
from aef_kernels.triton import gemm
from aef_kernels.triton import precision as tri

pytestmark = pytest.mark.usefixtures("poisoned")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = dict(rtol=1e-4, atol=1e-4)


def make_inputs(N, H, W, C, dtype=torch.float32, param_dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)

    def t(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=g) * scale + shift).to(device=DEVICE)

    x = t(N, H, W, C, scale=2.0, shift=0.5).to(dtype).requires_grad_()
    params = [t(C, scale=0.2, shift=1.0), t(C, scale=0.2), t(4 * C, C, 3, 3, scale=0.15), t(4 * C, scale=0.2),
              t(C, 4 * C, 3, 3, scale=0.1), t(C, scale=0.2)]
    return x, [p.to(param_dtype).requires_grad_() for p in params]


def grads(outputs, inputs, seed=1):
    """Gradients of inputs for fixed random cotangents of one output or a tuple of outputs."""
    gen = torch.Generator().manual_seed(seed)
    outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
    cotangents = [torch.randn(o.shape, generator=gen).to(o) for o in outputs]
    return torch.autograd.grad(outputs, inputs, cotangents)


# (N, H, W, C, groups): odd and non-square sizes down to 1x1, channel counts that are not powers of
# two; 2x7x7 spans several 32-pixel blocks, so the weight gradient reduces more than one partial;
# 8x8 frames fill whole 64-row blocks, the one-frame-per-block path of the normalising loads.
SHAPES = [(1, 1, 1, 16, 8), (2, 3, 5, 24, 12), (2, 7, 7, 16, 8), (1, 2, 3, 96, 32), (2, 8, 8, 16, 8)]


@pytest.mark.parametrize("N,H,W,C,G", SHAPES)
def test_precision_operator_matches_reference(N, H, W, C, G):
    """Forward and the gradients of x and all six parameters equal the reference's."""
    x, params = make_inputs(N, H, W, C)
    inputs = [x] + params
    y = K.precision_operator(x, *params, G, backend="triton")
    y_ref = ref.precision_operator(x, *params, G, 1e-5)
    torch.testing.assert_close(y, y_ref, **TOL)
    for got, want in zip(grads(y, inputs), grads(y_ref, inputs)):
        torch.testing.assert_close(got, want, **TOL)


def test_weight_gradient_split_with_tail(monkeypatch):
    """Weight gradients reduced over several pixel ranges, the last running past the final frame,
    equal the reference's (5 frames of 4x8 = five 32-pixel blocks, split in two ranges of three)."""
    monkeypatch.setattr(gemm, "WGRAD_PROGRAMS", 18)
    x, params = make_inputs(5, 4, 8, 16)
    inputs = [x] + params
    y = K.precision_operator(x, *params, 8, backend="triton")
    y_ref = ref.precision_operator(x, *params, 8, 1e-5)
    for got, want in zip(grads(y, inputs), grads(y_ref, inputs)):
        torch.testing.assert_close(got, want, **TOL)


def test_unchanged_weights_are_packed_once_across_calls(monkeypatch):
    """Forward calls with unchanged weights pack w1 and w2 once (aef_kernels/triton/weights.py); an
    optimizer step packs them again, and the output follows the updated weights."""
    layouts = []

    def counting(w, real=tri._pack_fwd):
        layouts.append(tuple(w.shape))
        return real(w)

    monkeypatch.setattr(tri, "_pack_fwd", counting)
    x, params = make_inputs(1, 3, 4, 16)
    with torch.no_grad():
        first = K.precision_operator(x, *params, 8, backend="triton")
        torch.testing.assert_close(K.precision_operator(x, *params, 8, backend="triton"), first, rtol=0, atol=0)
        assert len(layouts) == 2
        for p in params:
            p.grad = torch.ones_like(p)
    torch.optim.SGD(params, lr=0.01).step()
    with torch.no_grad():
        y = K.precision_operator(x, *params, 8, backend="triton")
        torch.testing.assert_close(y, ref.precision_operator(x, *params, 8, 1e-5), **TOL)
    assert len(layouts) == 4


def test_precision_operator_without_grad_matches_reference():
    """The inference path (no pre-activation stored) gives the same output."""
    x, params = make_inputs(2, 3, 4, 16)
    with torch.no_grad():
        y = K.precision_operator(x, *params, 8, backend="triton")
        y_ref = ref.precision_operator(x, *params, 8, 1e-5)
    torch.testing.assert_close(y, y_ref, **TOL)


def test_precision_operator_params_in_other_dtype():
    """float64 parameters are cast to x's dtype and their gradients come back in float64."""
    x, params = make_inputs(1, 3, 3, 16, param_dtype=torch.float64)
    y = K.precision_operator(x, *params, 8, backend="triton")
    y_ref = ref.precision_operator(x, *params, 8, 1e-5)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, y_ref, **TOL)
    got, want = grads(y, [x] + params), grads(y_ref, [x] + params)
    assert [g.dtype for g in got] == [torch.float32] + [torch.float64] * 6
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **TOL)


def test_precision_operator_strided_input():
    """x whose frames are not contiguous (only the last dim is) is handled like its contiguous copy."""
    x, params = make_inputs(4, 3, 3, 16)
    xs = x[::2]
    y = K.precision_operator(xs, *params, 8, backend="triton")
    torch.testing.assert_close(y, ref.precision_operator(xs, *params, 8, 1e-5), **TOL)


def test_precision_backward_is_deterministic():
    """Two backward passes give bitwise-identical gradients (partial sums, no float atomics)."""
    x, params = make_inputs(2, 7, 7, 16)
    first = grads(K.precision_operator(x, *params, 8, backend="triton"), [x] + params)
    second = grads(K.precision_operator(x, *params, 8, backend="triton"), [x] + params)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("activation", [None, "gelu"])
@pytest.mark.parametrize("N,H,W,C,G", [(1, 1, 1, 16, 4), (2, 3, 5, 24, 12), (1, 6, 40, 12, 4), (1, 40, 40, 16, 8),
                                      (2, 3, 11, 160, 32), (1, 5, 7, 96, 32)])
def test_group_norm_nhwc_matches_reference(N, H, W, C, G, activation, affine):
    """group_norm_nhwc forward and gradients (x, weight, bias) equal the reference's; 6x40 spans
    several pixel tiles of a chunk, 40x40 several chunks of a frame (the last one short), C = 160
    two channel tiles with a group across their boundary, C = 96 three channels a group."""
    x, params = make_inputs(N, H, W, C)
    weight, bias = (params[0], params[1]) if affine else (None, None)
    inputs = [x] + ([weight, bias] if affine else [])
    y = K.group_norm_nhwc(x, weight, bias, G, activation=activation, backend="triton")
    y_ref = ref.group_norm_nhwc(x, weight, bias, G, 1e-5, activation)
    torch.testing.assert_close(y, y_ref, **TOL)
    for got, want in zip(grads(y, inputs), grads(y_ref, inputs)):
        torch.testing.assert_close(got, want, **TOL)


def test_group_norm_shapes_cover_chunks_and_channel_tiles():
    """The shapes above reach the split the kernels are launched with at the model's sizes: a frame
    in several pixel chunks, and channels in several tiles."""
    assert tri._gn_config(1, 40 * 40, 16)["S"] > 1
    assert triton.cdiv(160, tri._gn_config(2, 3 * 11, 160)["BLOCK_C"]) > 1


def test_group_norm_statistics_are_stable():
    """A large common offset does not destroy the variance (no E[x^2] - E[x]^2 cancellation)."""
    g = torch.Generator().manual_seed(0)
    x = (100.0 + 0.1 * torch.randn(1, 9, 11, 8, generator=g)).to(DEVICE)
    y = K.group_norm_nhwc(x, None, None, 2, backend="triton")
    want = ref.group_norm_nhwc(x.double(), None, None, 2, 1e-5, None).float()
    torch.testing.assert_close(y, want, rtol=1e-3, atol=1e-3)


def test_triton_backend_accepts_these_inputs():
    """The dispatcher reports no reason against the Triton backend for supported inputs."""
    x, params = make_inputs(1, 2, 2, 16)
    assert dispatch.not_supported_reasons("precision_operator", "triton", x, *params, 8, 1e-5) == []
    assert dispatch.not_supported_reasons("group_norm_nhwc", "triton", x, None, None, 8, 1e-5, None) == []
    x64 = x.detach().double()
    assert dispatch.not_supported_reasons("group_norm_nhwc", "triton", x64, None, None, 8, 1e-5, None)


def _opcheck_cases():
    x, params = make_inputs(1, 2, 3, 16)
    x = x.detach().requires_grad_()
    p = [t.detach().requires_grad_() for t in params]
    fwd = (x, *p, 8, 1e-5, True)
    y, h, z1, mean, rstd = tri.precision_operator_fwd(*(t.detach() if isinstance(t, torch.Tensor) else t for t in fwd))
    bwd = (torch.randn_like(y), x.detach(), p[0].detach(), p[1].detach(), p[2].detach(), p[4].detach(), h, z1,
           mean, rstd)
    gn = (x, p[0], p[1], 8, 1e-5, True)
    gn_out = tri.group_norm_nhwc_fwd(*(t.detach() if isinstance(t, torch.Tensor) else t for t in gn))
    gn_bwd = (torch.randn_like(x), x.detach(), p[0].detach(), p[1].detach(), gn_out[1], gn_out[2], True)
    return {"precision_fwd": (tri.precision_operator_fwd, fwd), "precision_bwd": (tri.precision_operator_bwd, bwd),
            "group_norm_fwd": (tri.group_norm_nhwc_fwd, gn), "group_norm_bwd": (tri.group_norm_nhwc_bwd, gn_bwd)}


# test_faketensor and test_aot_dispatch_dynamic need a GPU: they run the triton_op body on fake
# tensors, and the Triton interpreter dereferences the storage of every tensor argument ("Attempted to
# set the storage of a tensor on device meta to a storage on ... cpu"); docs/kernels.md §5.
OPCHECK_TESTS = ("test_schema", "test_autograd_registration") + (
    ("test_faketensor", "test_aot_dispatch_dynamic") if torch.cuda.is_available() else ())


@pytest.mark.parametrize("case", ["precision_fwd", "precision_bwd", "group_norm_fwd", "group_norm_bwd"])
def test_opcheck(case):
    """torch.library.opcheck: schema, autograd registration and fake-tensor propagation hold."""
    op, args = _opcheck_cases()[case]
    torch.library.opcheck(op, args, test_utils=OPCHECK_TESTS)


gpu = pytest.mark.gpu


def low_precision_errors(op, tensors, lowp, dtype):
    """Max |error| against the float64 reference of every output and every gradient, for the Triton
    kernels and for the reference, both run with ``tensors[i]`` in ``dtype`` for i in ``lowp`` (the
    others, parameters, stay float32 as a model keeps them). ``op(leaves, backend)`` runs the op."""

    def run(backend, cast):
        leaves = [cast(i, t).detach().requires_grad_() for i, t in enumerate(tensors)]
        out = op(leaves, backend)
        out = out if isinstance(out, tuple) else (out,)
        return list(out) + list(grads(out, leaves))

    want = run("reference", lambda i, t: t.double())
    return {backend: [(a.double() - b).abs().max().item()
                      for a, b in zip(run(backend, lambda i, t: t.to(dtype) if i in lowp else t), want)]
            for backend in ("triton", "reference")}


def assert_flash_rule(errors, n_outputs):
    """Flash-attention's tolerance rule: the kernel's error is at most 2x (outputs) or 3x (gradients)
    the reference's own error in the same dtype, plus float32 rounding."""
    for i, (mine, theirs) in enumerate(zip(errors["triton"], errors["reference"])):
        assert mine <= (2 if i < n_outputs else 3) * theirs + 1e-5, (i, errors)


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("N,H,W,C", [(2, 9, 13, 16), (2, 8, 8, 96), (1, 32, 32, 128), (1, 5, 3, 256)])
def test_gpu_precision_operator_low_precision(dtype, N, H, W, C):
    """Output and all gradients obey the flash-attention rule in every kernel dtype and preset width."""
    G = tri._groups(C)
    x, params = make_inputs(N, H, W, C)
    errors = low_precision_errors(lambda t, b: K.precision_operator(*t, G, backend=b), [x] + params, {0}, dtype)
    assert_flash_rule(errors, 1)


@gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("activation", [None, "gelu"])
def test_gpu_group_norm_low_precision(dtype, activation):
    """group_norm_nhwc output and gradients obey the flash-attention rule."""
    x, params = make_inputs(2, 17, 9, 128)
    errors = low_precision_errors(
        lambda t, b: K.group_norm_nhwc(*t, 32, activation=activation, backend=b), [x] + params[:2], {0}, dtype)
    assert_flash_rule(errors, 1)


@gpu
def test_gpu_offsets_beyond_int32():
    """With 4096 frames the 4C intermediate has 2^32 elements: the last frames (offsets past 2^31)
    get the same output and input gradient as the reference computes for them alone."""
    N, H, W, C = 4096, 64, 64, 64
    _, params = make_inputs(1, 1, 1, C)
    x = torch.randn(N, H, W, C, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    y = K.precision_operator(x, *params, 32, backend="triton")
    dy = torch.randn(2, H, W, C, device="cuda", dtype=torch.bfloat16)
    (dx,) = torch.autograd.grad(y[-2:], x, dy)
    tail = x[-2:].detach().requires_grad_()
    y_ref = ref.precision_operator(tail, *params, 32, 1e-5)
    (dx_ref,) = torch.autograd.grad(y_ref, tail, dy)
    torch.testing.assert_close(y[-2:], y_ref, rtol=5e-2, atol=5e-2)
    torch.testing.assert_close(dx[-2:], dx_ref, rtol=5e-2, atol=5e-2)
    assert dx[:-2].abs().max() == 0


@gpu
def test_gpu_compile_fullgraph():
    """torch.compile(fullgraph=True) traces both Triton ops (forward and backward) without graph
    breaks and computes what eager computes."""
    x, params = make_inputs(2, 8, 8, 64, dtype=torch.bfloat16)
    inputs = [x] + params

    def f(x, *p):
        y = K.precision_operator(x, *p, 32, backend="triton")
        return K.group_norm_nhwc(y, p[0], p[1], 32, activation="gelu", backend="triton").float().square().sum()

    eager = torch.autograd.grad(f(*inputs), inputs)
    compiled = torch.autograd.grad(torch.compile(f, fullgraph=True)(*inputs), inputs)
    torch.testing.assert_close(compiled, eager)


@gpu
def test_gpu_auto_picks_triton():
    """auto dispatch runs the Triton kernels for CUDA tensors."""
    x, params = make_inputs(1, 4, 4, 64, dtype=torch.bfloat16)
    assert dispatch.select("precision_operator", (x, *params, 32, 1e-5)).backend == "triton"
    assert dispatch.select("group_norm_nhwc", (x, None, None, 32, 1e-5, None)).backend == "triton"
