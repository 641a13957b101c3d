"""Reference sphere ops: normalisation semantics and the batch-uniformity loss."""

import pytest
import torch
import torch.nn.functional as F

from aef_kernels import reference


@pytest.mark.parametrize("shape", [(7, 64), (2, 3, 5, 64), (4, 1)])
def test_vmf_normalize_equals_f_normalize_with_zero_vectors(shape):
    """vmf_normalize equals F.normalize(x, dim=-1), zero vectors (-> 0, not NaN) included."""
    x = torch.randn(*shape)
    x.view(-1, shape[-1])[0] = 0
    y = reference.vmf_normalize(x, 1e-12)
    torch.testing.assert_close(y, F.normalize(x, dim=-1))
    assert torch.equal(y.view(-1, shape[-1])[0], torch.zeros(shape[-1]))


def explicit_uniformity(u):
    """mean over b and positions of |u[b] . u[(b-1) mod B]|, written as a loop over the batch."""
    B = u.shape[0]
    dots = [(u[b].double() * u[(b - 1) % B].double()).sum(-1).abs() for b in range(B)]
    return torch.stack(dots).mean()


@pytest.mark.parametrize("B", [1, 2, 5])
def test_batch_uniformity_pairs_samples_along_the_batch(B):
    """The loss pairs pixel (h, w) of sample b with the same pixel of sample b-1 (mod B)."""
    u = F.normalize(torch.randn(B, 4, 3, 16), dim=-1)
    loss = reference.batch_uniformity_loss(u)
    torch.testing.assert_close(loss.double(), explicit_uniformity(u))


def test_batch_uniformity_is_not_a_pixel_roll():
    """Identical samples give loss 1 even when neighbouring pixels are orthogonal (the trap of rolling
    along flattened pixels would give 0)."""
    basis = torch.eye(4)  # 4 orthogonal pixels
    u = torch.stack([basis, basis])  # (B=2, 4 pixels, D=4)
    assert reference.batch_uniformity_loss(u).item() == pytest.approx(1.0)


def test_batch_uniformity_of_zero_vectors_is_zero():
    """Zero vectors contribute 0, never NaN."""
    u = torch.zeros(3, 5, 8)
    assert reference.batch_uniformity_loss(u).item() == 0.0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_dtypes(dtype):
    """fp16/bf16 inputs keep their dtype and stay close to the float32 result."""
    x = torch.randn(6, 3, 64)
    y = reference.vmf_normalize(x.to(dtype), 1e-12)
    assert y.dtype == dtype
    torch.testing.assert_close(y.float(), F.normalize(x, dim=-1), rtol=1e-2, atol=1e-2)
    loss = reference.batch_uniformity_loss(y)
    assert loss.dtype == dtype
    torch.testing.assert_close(loss.float(), reference.batch_uniformity_loss(y.float()), rtol=1e-2, atol=1e-2)


def test_gradcheck_float64():
    """Both sphere ops have correct gradients (float64 gradcheck), composed as in training."""
    x = torch.randn(3, 2, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: reference.vmf_normalize(t, 1e-12), (x,))
    assert torch.autograd.gradcheck(lambda t: reference.batch_uniformity_loss(reference.vmf_normalize(t, 1e-12)), (x,))
