"""aef.model.heads: upsampling, vMF head and sampling, decoders, text adapter (docs/model.md §4.6-4.9)."""

import pytest
import torch
import torch.nn.functional as F

from aef.model.heads import DepthToSpaceUpsample, ImplicitDecoder, TextAdapter, VMFMeanHead, sample_vmf


def _mean_cosine(m: int, kappa: float, terms: int = 4000) -> float:
    """A_m(kappa) = I_{m/2}(kappa) / I_{m/2-1}(kappa), by Gauss's continued fraction."""
    r = 0.0
    for j in range(terms, -1, -1):
        r = 1.0 / (2 * (m / 2 + j) / kappa + r)
    return r


def _unit(n, d=64, seed=0):
    return torch.nn.functional.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


@pytest.mark.parametrize("kappa", [8000.0, 100.0])
def test_vmf_samples_have_the_expected_concentration(kappa):
    """Samples are unit vectors whose mean cosine to mu matches the vMF expectation A_m(kappa)
    (0.996 at kappa = 8000, m = 64); they are not mu itself."""
    mu = _unit(20000)
    z = sample_vmf(mu, kappa, torch.Generator().manual_seed(0))
    cos = (z * mu).sum(-1)
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(20000), rtol=0, atol=1e-5)
    expected = _mean_cosine(64, kappa)
    # Standard error of the mean over 20000 samples is far below 5% of (1 - A).
    assert abs(cos.mean().item() - expected) < 0.05 * (1 - expected)
    assert (cos < 1 - 1e-6).all()
    # The tangent directions are isotropic: their mean vanishes.
    tangent = z - cos[:, None] * mu
    assert tangent.mean(0).norm() < 0.05 * tangent.norm(dim=-1).mean()


def test_vmf_sample_is_differentiable_in_mu():
    """Gradients flow from the sample to mu (reparameterised through the Householder rotation),
    including the degenerate mu = e_1."""
    mu = torch.cat([_unit(7), torch.eye(64)[:1]]).requires_grad_()
    z = sample_vmf(mu, 8000.0, torch.Generator().manual_seed(0))
    (z * torch.randn_like(z)).sum().backward()
    assert torch.isfinite(mu.grad).all() and mu.grad.abs().sum() > 0


def test_depth_to_space_keeps_pixels_local():
    """Output pixel (2i + a, 2j + b) depends only on input pixel (i, j)."""
    up = DepthToSpaceUpsample(8)
    x = torch.randn(1, 3, 3, 8, requires_grad=True)
    y = up(x)
    assert y.shape == (1, 6, 6, 8)
    y[0, 3, 4].sum().backward()
    nz = (x.grad.abs().sum(-1) > 0).nonzero().tolist()
    assert nz == [[0, 1, 2]]


def test_depth_to_space_starts_without_checkerboard():
    """At initialisation every 2x2 output block repeats its input pixel's value (nearest-neighbour
    upsampling of one linear map), so the embedding field shows no sub-pixel checkerboard; the
    sub-pixel maps are separate parameters that training can still pull apart."""
    up = DepthToSpaceUpsample(8)
    x = torch.randn(2, 3, 4, 8)
    y = up(x)  # (2, 6, 8, 8)
    blocks = y.view(2, 3, 2, 4, 2, 8)
    torch.testing.assert_close(blocks, blocks[:, :, :1, :, :1].expand_as(blocks))
    torch.testing.assert_close(y[:, ::2, ::2], F.linear(x, up.proj.weight[:8], up.proj.bias[:8]))


def test_vmf_head_and_text_adapter_give_unit_vectors():
    """The vMF mean head and the text adapter output unit vectors of width 64."""
    mu = VMFMeanHead(16)(torch.randn(2, 5, 5, 16))
    t = TextAdapter(32, 12, 64)(torch.randn(3, 32), torch.randn(3, 12))
    for v, shape in ((mu, (2, 5, 5, 64)), (t, (3, 64))):
        assert v.shape == shape
        torch.testing.assert_close(v.norm(dim=-1), torch.ones(shape[:-1]))


def test_decoder_conditioning():
    """The decoder maps (B, H, W, 64) to (B, H, W, C); missing metadata means zeros; the time code
    changes the output."""
    dec = ImplicitDecoder(64, 9, 2, 5, hidden=32)
    z, code = _unit(2 * 16).reshape(2, 4, 4, 64), torch.rand(2, 9)
    out = dec(z, code)
    assert out.shape == (2, 4, 4, 5)
    torch.testing.assert_close(out, dec(z, code, torch.zeros(2, 2)))
    assert not torch.allclose(out, dec(z, code + 1))
