"""Triton sphere ops (vmf_normalize, batch_uniformity_loss) against the reference: forward and
gradients, float32 under the interpreter on CPU. Outputs are NaN-poisoned so an unwritten element
fails."""

import pytest
import torch

import aef_kernels as K
from aef_kernels import dispatch
from aef_kernels.triton import sphere as tri

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# See test_attention.OPCHECK_TESTS: AOT dispatch cannot trace interpreted kernels.
OPCHECK_TESTS = ("test_schema", "test_autograd_registration", "test_faketensor") + (
    ("test_aot_dispatch_dynamic",) if DEVICE == "cuda" else ()
)


def value_and_grad(fn, x, gen, backend):
    x = x.detach().requires_grad_()
    y = fn(x, backend=backend)
    cot = torch.randn(y.shape, generator=gen).to(y)
    return y, torch.autograd.grad(y, x, cot)[0]


def both_backends(fn, x):
    return [value_and_grad(fn, x, torch.Generator().manual_seed(5), b) for b in ("triton", "reference")]


def with_zero_rows(x):
    """x with its first row (along the last dim) all zeros: the eps branch of the norm, the zero dot
    (and zero |.|' subgradient) of the uniformity loss."""
    x = x.clone()
    x.view(-1, x.shape[-1])[0] = 0
    return x


# Row widths below, at and across the 32-wide minimum block, a non-power of two, several rows per
# program and a row count that leaves the last program partly empty.
VMF_SHAPES = [(5, 7), (3, 4, 64), (70, 33), (2, 1, 300)]


@pytest.mark.parametrize("shape", VMF_SHAPES)
def test_vmf_normalize_matches_reference(poisoned, gen, check_close, shape):
    """vmf_normalize and its gradient equal the reference (F.normalize), zero rows included."""
    x = with_zero_rows(torch.randn(shape, generator=gen)).to(DEVICE)
    (y, dx), (y_ref, dx_ref) = both_backends(K.vmf_normalize, x)
    check_close(y, y_ref, "y")
    # Zero rows have gradient g / eps (1e12): compare relative to that scale.
    check_close(dx, dx_ref, "dx", rtol=1e-4, atol=1e-5 * dx_ref.abs().max().item())


def test_vmf_normalize_strided_input(poisoned, gen, check_close):
    """A view whose last dim is not contiguous gives the reference's values and gradients."""
    x = torch.randn(16, 6, generator=gen).to(DEVICE).t()  # (6, 16), strides (1, 6)
    (y, dx), (y_ref, dx_ref) = both_backends(K.vmf_normalize, x)
    check_close(y, y_ref, "y")
    check_close(dx, dx_ref, "dx")


def unit(gen, *shape):
    return torch.nn.functional.normalize(torch.randn(shape, generator=gen), dim=-1).to(DEVICE)


# B = 1 pairs each sample with itself, B = 2 with the other one in both directions; middle dims
# flatten into positions; widths not a power of two.
UNIFORMITY_SHAPES = [(1, 16), (2, 5, 3, 64), (3, 7, 20), (2, 1, 1, 33)]


@pytest.mark.parametrize("shape", UNIFORMITY_SHAPES)
def test_batch_uniformity_loss_matches_reference(poisoned, gen, check_close, shape):
    """The loss and its gradient equal the reference, including zero vectors."""
    u = with_zero_rows(unit(gen, *shape))
    (loss, du), (loss_ref, du_ref) = both_backends(K.batch_uniformity_loss, u)
    check_close(loss, loss_ref, "loss")
    check_close(du, du_ref, "du")


def test_batch_uniformity_loss_many_partials(poisoned, gen, check_close, monkeypatch):
    """With more per-program partial sums than the final kernel adds per step, its loop over them
    still counts every partial exactly once."""
    monkeypatch.setattr(tri, "PARTIAL_BLOCK", 4)
    u = unit(gen, 3, 100, 32)  # 300 rows in blocks of 32: 10 partials, three steps of 4
    (loss, du), (loss_ref, du_ref) = both_backends(K.batch_uniformity_loss, u)
    check_close(loss, loss_ref, "loss")
    check_close(du, du_ref, "du")


def test_unsupported_inputs_have_reasons():
    """Rows wider than MAX_D and float64 are refused with a reason naming them."""
    with pytest.raises(dispatch.BackendUnavailableError, match="exceeds"):
        K.vmf_normalize(torch.zeros(2, tri.MAX_D + 1, device=DEVICE), backend="triton")
    with pytest.raises(dispatch.BackendUnavailableError, match="float64"):
        K.batch_uniformity_loss(torch.zeros(2, 8, device=DEVICE, dtype=torch.float64), backend="triton")


def test_opcheck(gen):
    """The four sphere ops pass torch.library.opcheck (see OPCHECK_TESTS for what runs)."""
    x = with_zero_rows(torch.randn(3, 5, 40, generator=gen)).to(DEVICE).requires_grad_()
    torch.library.opcheck(tri.vmf_normalize_fwd, (x, 1e-12), test_utils=OPCHECK_TESTS)
    backward_tests = tuple(t for t in OPCHECK_TESTS if t != "test_autograd_registration")
    torch.library.opcheck(tri.vmf_normalize_bwd, (torch.randn(x.shape, generator=gen).to(x), x.detach(), 1e-12),
                          test_utils=backward_tests)
    u = unit(gen, 2, 5, 40).requires_grad_()
    torch.library.opcheck(tri.batch_uniformity_loss_fwd, (u,), test_utils=OPCHECK_TESTS)
    _, dots = tri.batch_uniformity_loss_fwd(u)
    torch.library.opcheck(tri.batch_uniformity_loss_bwd, (torch.tensor(0.7, device=DEVICE), u.detach(), dots),
                          test_utils=backward_tests)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_gpu_matches_reference_and_is_deterministic(gen, dtype):
    """On a GPU, in every kernel dtype: values and gradients within the dtype's rounding of the
    float32 reference, and the loss and its gradient bitwise equal across two runs."""
    x = with_zero_rows(torch.randn(4096, 64, generator=gen)).cuda().to(dtype)
    y_ref, dx_ref = value_and_grad(K.vmf_normalize, x.float(), torch.Generator().manual_seed(5), "reference")
    y, dx = value_and_grad(K.vmf_normalize, x, torch.Generator().manual_seed(5), "triton")
    torch.testing.assert_close(y.float(), y_ref, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(dx.float(), dx_ref, rtol=2e-2, atol=2e-2 * dx_ref.abs().max().item())
    u = unit(gen, 8, 512, 64).cuda().to(dtype)
    first = value_and_grad(K.batch_uniformity_loss, u, torch.Generator().manual_seed(5), "triton")
    second = value_and_grad(K.batch_uniformity_loss, u, torch.Generator().manual_seed(5), "triton")
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    ref = value_and_grad(K.batch_uniformity_loss, u.float(), torch.Generator().manual_seed(5), "reference")
    torch.testing.assert_close(first[0].float(), ref[0], rtol=1e-2, atol=1e-3)
