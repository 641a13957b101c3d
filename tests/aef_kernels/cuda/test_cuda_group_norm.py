"""The cuda backend of group_norm_nhwc and precision_operator: torch.library ops, dispatch reasons and
the workspace query (without a GPU), and parity of the GroupNorm kernels (forward, backward, fused
GELU) and of the composed operator with the reference on a GPU (`-m gpu`)."""

from __future__ import annotations

import pytest
import torch

import aef_kernels as K
from aef_kernels import _C, dispatch
from aef_kernels.ops import BY_NAME

pytestmark = pytest.mark.skipif(not _C.with_cuda, reason=f"built without CUDA: {_C.cuda_skip_reason}")

EPS = 1e-5
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def test_fake_impls_give_outputs_statistics_and_gradients():
    x = torch.empty(2, 5, 7, 48, device="meta", dtype=torch.bfloat16)
    w = torch.empty(48, device="meta")
    y, mean, rstd = torch.ops.aef_kernels.cuda_group_norm_nhwc_fwd(x, w, w, 6, EPS, True)
    assert y.shape == x.shape and y.dtype == x.dtype and y.is_contiguous()
    assert mean.shape == rstd.shape == (2, 6) and mean.dtype == rstd.dtype == torch.float32
    dx, dw, db = torch.ops.aef_kernels.cuda_group_norm_nhwc_bwd(y, x, w, w, mean, rstd, True)
    assert dx.shape == x.shape and dx.dtype == x.dtype
    assert dw.shape == db.shape == (48,) and dw.dtype == db.dtype == torch.float32


@pytest.mark.parametrize("op", ["group_norm_nhwc", "precision_operator"])
def test_cuda_backend_is_registered_and_explains_cpu_inputs(op):
    assert "cuda" in dispatch.registered_backends(op)
    inputs = BY_NAME[op].typical(torch.device("cpu"), torch.float32)
    (reason,) = dispatch.not_supported_reasons(op, "cuda", inputs)
    assert reason.endswith("on cpu: the cuda backend runs on cuda") and reason.startswith("x, ")


def test_reasons_name_an_unsupported_dtype():
    x = torch.randn(2, 4, 4, 8, dtype=torch.float64)
    assert any("float64" in r for r in dispatch.not_supported_reasons("group_norm_nhwc", "cuda", x, None, None, 4,
                                                                      EPS, None))


@pytest.mark.parametrize("op", ["group_norm_nhwc", "precision_operator"])
def test_auto_never_selects_the_unverified_cuda_backend(op):
    assert all("cuda" not in dispatch.auto_order(op, device, dtype)
               for device in ("cuda", "cpu") for dtype in (torch.float32, torch.float16, torch.bfloat16))


def test_workspace_size_reports_bad_sizes_and_bounds_valid_ones():
    assert _C.group_norm_workspace_size(0, 16, 64, 32) == -2
    assert _C.group_norm_workspace_size(2, 16, 64, 0) == -2
    assert _C.group_norm_workspace_size(2, 16, 64, 3) == -7
    assert _C.group_norm_workspace_size(2, 2**40, 2**20, 1) == -2  # N * HW * C would overflow offsets
    for N, HW, C, G in [(1, 1, 1, 1), (2, 4096, 64, 32), (3, 35, 2056, 8), (70_000, 4, 32, 16)]:
        size = _C.group_norm_workspace_size(N, HW, C, G)
        # Two floats per (frame, group), plus two per (frame, chunk, channel): never more than the input.
        assert 2 * N * G < size <= 2 * N * G + 2 * N * HW * C


# ---- GPU -------------------------------------------------------------------------------------------

def _run(fn, tensors, grad):
    """fn's output and the gradients of every tensor, from the output gradient ``grad``."""
    leaves = [t.detach().requires_grad_() if t is not None else None for t in tensors]
    out = fn(*leaves)
    out.backward(grad.to(out.dtype))
    return [out.detach()] + [t.grad for t in leaves if t is not None]


def _gn_case(shape, G, dtype, affine):
    N, H, W, C = shape
    x = torch.randn(shape, device="cuda").to(dtype)
    # Parameters stay float32, as a model keeps them.
    w = 1 + 0.5 * torch.randn(C, device="cuda") if affine else None
    b = 0.5 * torch.randn(C, device="cuda") if affine else None
    return x, w, b, torch.randn(shape, device="cuda")


def _check_group_norm(x, w, b, G, act, g, within_reference_error, eps=EPS):
    dtype = x.dtype

    def gn(backend):
        return lambda x_, w_, b_: K.group_norm_nhwc(x_, w_, b_, G, eps, act, backend=backend)

    def double(t):
        return None if t is None else t.double()

    out = _run(gn("cuda"), (x, w, b), g)
    exact = _run(gn("reference"), (x.double(), double(w), double(b)), g)
    low = _run(gn("reference"), (x, w, b), g)
    assert out[0].shape == x.shape and out[0].dtype == dtype
    within_reference_error("y", out[0], low[0], exact[0], 2, dtype)
    # dx = rstd (gamma d - mean(gamma d) - xhat mean(gamma d xhat)) cancels, to exactly 0 in a group
    # of one element (where rstd = 1 / sqrt(eps)): errors scale with rstd gamma dy.
    N, H, W, C = x.shape
    xg = x.double().reshape(N, H * W, G, C // G)
    rstd = (xg.var(dim=(1, 3), unbiased=False) + eps).rsqrt().repeat_interleave(C // G, dim=1)[:, None, None, :]
    terms = (rstd * (double(w).abs() if w is not None else 1) * g.double().abs()).max().item()
    within_reference_error("dx", out[1], low[1], exact[1], 3, dtype, scale=terms)
    # Parameter gradients are float32 sums over the batch, whatever x's dtype.
    for name, o, lo, ex in zip(["dweight", "dbias"], out[2:], low[2:], exact[2:]):
        within_reference_error(name, o, lo, ex, 3, o.dtype)


# (N, H, W, C), G: groups of 2 channels (the model), 8 channels over odd H x W, one pixel of one
# channel per group (zero variance), groups of 3 straddling 16-byte packs, C = 100 (16-bit rows off
# the 16-byte grid: the scalar path), 16 chunks per frame, a ragged last chunk, C = 2056 (more channel
# packs than threads in a block).
GN_CASES = [
    ((2, 8, 8, 64), 32),
    ((3, 5, 7, 48), 6),
    ((2, 1, 1, 32), 32),
    ((2, 16, 16, 96), 32),
    ((2, 4, 4, 100), 10),
    ((4, 64, 64, 64), 32),
    ((2, 130, 70, 16), 4),
    ((1, 9, 9, 2056), 8),
]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape, G", GN_CASES, ids=str)
@pytest.mark.parametrize("act", [None, "gelu"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "no_affine"])
def test_group_norm_matches_reference(dtype, shape, G, act, affine, poisoned, within_reference_error):
    x, w, b, g = _gn_case(shape, G, dtype, affine)
    _check_group_norm(x, w, b, G, act, g, within_reference_error)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_group_norm_statistics_are_stable_under_a_large_mean(dtype, poisoned, within_reference_error):
    # E[x^2] - E[x]^2 would cancel catastrophically here; Welford must not.
    x, w, b, g = _gn_case((2, 32, 32, 64), 32, torch.float32, True)
    x = (x + 300).to(dtype)
    _check_group_norm(x, w, b, 32, "gelu", g, within_reference_error)


@pytest.mark.gpu
def test_group_norm_of_every_other_frame_of_many(within_reference_error):
    # 70,000 frames: more (frame, group) pairs than a grid's axis 1 or 2 could hold; a strided batch.
    x = torch.randn(140_000, 2, 2, 8, device="cuda")[::2]
    w, b = torch.randn(8, device="cuda"), torch.randn(8, device="cuda")
    _check_group_norm(x, w, b, 4, "gelu", torch.randn(x.shape, device="cuda"), within_reference_error)


@pytest.mark.gpu
def test_group_norm_is_bitwise_reproducible():
    x, w, b, g = _gn_case((8, 64, 64, 96), 32, torch.bfloat16, True)
    runs = [_run(lambda *t: K.group_norm_nhwc(*t, 32, EPS, "gelu", backend="cuda"), (x, w, b), g) for _ in range(3)]
    for run in runs[1:]:
        assert all(torch.equal(a, r) for a, r in zip(runs[0], run))


@pytest.mark.gpu
def test_group_norm_without_pixels_returns_an_empty_output():
    x = torch.randn(2, 0, 4, 8, device="cuda", requires_grad=True)
    y = K.group_norm_nhwc(x, None, None, 4, EPS, "gelu", backend="cuda")
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad.shape == x.shape


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("gelu", [False, True])
def test_group_norm_opcheck(dtype, gelu):
    x = torch.randn(2, 5, 7, 48, device="cuda", dtype=dtype, requires_grad=True)
    w = torch.randn(48, device="cuda", requires_grad=True)
    b = torch.randn(48, device="cuda", requires_grad=True)
    torch.library.opcheck(torch.ops.aef_kernels.cuda_group_norm_nhwc_fwd, (x, w, b, 6, EPS, gelu))
    y, mean, rstd = torch.ops.aef_kernels.cuda_group_norm_nhwc_fwd(x.detach(), w.detach(), b.detach(), 6, EPS, gelu)
    torch.library.opcheck(torch.ops.aef_kernels.cuda_group_norm_nhwc_bwd,
                          (torch.randn_like(y), x.detach(), w.detach(), b.detach(), mean, rstd, gelu))


@pytest.mark.gpu
def test_group_norm_compiles_without_graph_breaks():
    x, w, b, _ = _gn_case((2, 8, 8, 64), 32, torch.bfloat16, True)
    fn = torch.compile(lambda x_: K.group_norm_nhwc(x_, w, b, 32, EPS, "gelu", backend="cuda"), fullgraph=True)
    torch.testing.assert_close(fn(x), K.group_norm_nhwc(x, w, b, 32, EPS, "gelu", backend="cuda"), rtol=0, atol=0)


# (N, H, W, C), G: the model's groups of 2 channels, and 8-channel groups over an odd frame.
PRECISION_CASES = [((2, 8, 8, 32), 16), ((3, 5, 7, 16), 2)]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape, G", PRECISION_CASES, ids=str)
def test_precision_operator_matches_reference(dtype, shape, G, poisoned, within_reference_error):
    N, H, W, C = shape
    x = torch.randn(shape, device="cuda").to(dtype)
    params = [1 + 0.1 * torch.randn(C, device="cuda"), 0.1 * torch.randn(C, device="cuda"),
              0.1 * torch.randn(4 * C, C, 3, 3, device="cuda"), 0.1 * torch.randn(4 * C, device="cuda"),
              0.1 * torch.randn(C, 4 * C, 3, 3, device="cuda"), 0.1 * torch.randn(C, device="cuda")]
    g = torch.randn(shape, device="cuda")

    def op(backend):
        return lambda *t: K.precision_operator(*t, G, EPS, backend=backend)

    out = _run(op("cuda"), [x, *params], g)
    exact = _run(op("reference"), [x.double(), *(p.double() for p in params)], g)
    low = _run(op("reference"), [x, *params], g)
    names = ["y", "dx", "dgn_weight", "dgn_bias", "dw1", "db1", "dw2", "db2"]
    assert out[0].shape == x.shape and out[0].dtype == dtype
    for name, o, lo, ex in zip(names, out, low, exact):
        within_reference_error(name, o, lo, ex, 2 if name == "y" else 3, dtype)
