"""Reference axial time attention: semantics, masking, strided views, chunking, gradients."""

import pytest
import torch

from aef_kernels import reference
from aef_kernels.reference import attention as ref_attention


def explicit_attention(q, k, v, mask, scale):
    """softmax(q k^T * scale) v per (b, h, w, head), written out with einsum in float64.

    Fully masked queries give 0."""
    q, k, v = (t.double() for t in (q, k, v))
    s = torch.einsum("bqhwnd,bkhwnd->bhwnqk", q, k) * scale  # (B, H, W, heads, Tq, T)
    if mask is not None:
        m = mask[:, None, None, :] if mask.dim() == 2 else mask.permute(0, 2, 3, 1)  # (B, H|1, W|1, T)
        m = m[:, :, :, None, None, :]
        s = s.masked_fill(~m, float("-inf"))
        p = torch.softmax(s, dim=-1).nan_to_num(0.0)
    else:
        p = torch.softmax(s, dim=-1)
    return torch.einsum("bhwnqk,bkhwnd->bqhwnd", p, v)


def qkv(B, Tq, T, H, W, nh, d, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Tq, H, W, nh, d, generator=g).to(dtype)
    k = torch.randn(B, T, H, W, nh, d, generator=g).to(dtype)
    v = torch.randn(B, T, H, W, nh, d, generator=g).to(dtype)
    return q, k, v


def pixel_mask(B, T, H, W, seed=1):
    """Random (B, T, H, W) validity with pixel (0, 0) of sample 0 fully masked."""
    g = torch.Generator().manual_seed(seed)
    m = torch.rand(B, T, H, W, generator=g) > 0.4
    m[0, :, 0, 0] = False
    return m


@pytest.mark.parametrize("Tq,T", [(5, 5), (1, 7), (3, 9), (6, 2)])
@pytest.mark.parametrize("mask_kind", [None, "frame", "pixel"])
def test_matches_explicit_softmax_attention(Tq, T, mask_kind):
    """o equals softmax(QK^T * scale)V per pixel and head, with key masking, for Tq != T too."""
    B, H, W, nh, d = 2, 3, 4, 2, 8
    q, k, v = qkv(B, Tq, T, H, W, nh, d)
    mask = None
    if mask_kind == "frame":
        mask = torch.rand(B, T) > 0.3
        mask[:, 0] = True
    elif mask_kind == "pixel":
        mask = pixel_mask(B, T, H, W)
    o = reference.axial_time_attention(q, k, v, mask, 0.3)
    assert o.shape == (B, Tq, H, W, nh, d) and o.is_contiguous()
    torch.testing.assert_close(o.double(), explicit_attention(q, k, v, mask, 0.3), rtol=1e-5, atol=1e-5)


def test_fully_masked_query_gives_zero_output_and_zero_gradients():
    """A pixel whose keys are all masked returns exactly 0 and passes no gradient to q, k or v."""
    q, k, v = (t.requires_grad_() for t in qkv(2, 4, 4, 2, 2, 1, 4))
    mask = pixel_mask(2, 4, 2, 2)
    o = reference.axial_time_attention(q, k, v, mask, 0.5)
    assert torch.equal(o[0, :, 0, 0], torch.zeros_like(o[0, :, 0, 0]))
    gq, gk, gv = torch.autograd.grad(o.sum(), (q, k, v))
    for g in (gq, gk, gv):
        assert torch.isfinite(g).all()
        assert torch.equal(g[0, :, 0, 0], torch.zeros_like(g[0, :, 0, 0]))


def test_strided_qkv_views_equal_contiguous_inputs():
    """q, k, v sliced from one fused (B, T, H, W, 3, heads, d) tensor give the contiguous result."""
    qkv_fused = torch.randn(2, 6, 3, 5, 3, 2, 16)
    q, k, v = qkv_fused.unbind(dim=4)
    assert not q.is_contiguous()
    o = reference.axial_time_attention(q, k, v, None, 0.25)
    o_ref = reference.axial_time_attention(q.contiguous(), k.contiguous(), v.contiguous(), None, 0.25)
    torch.testing.assert_close(o, o_ref)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_close_to_float64(dtype):
    """fp16/bf16 inputs give results within the dtype's tolerance of the float64 computation."""
    q, k, v = qkv(1, 5, 5, 2, 3, 2, 16, dtype=dtype)
    mask = pixel_mask(1, 5, 2, 3)
    o = reference.axial_time_attention(q, k, v, mask, 0.25)
    assert o.dtype == dtype
    tol = 2e-2 if dtype == torch.bfloat16 else 3e-3
    torch.testing.assert_close(o.double(), explicit_attention(q, k, v, mask, 0.25), rtol=tol, atol=tol)


def test_more_than_65535_sequences():
    """B*H*W*heads = 2 * 128 * 130 * 2 = 66,560 sequences run and match the explicit computation."""
    q, k, v = qkv(2, 2, 3, 128, 130, 2, 2)
    mask = pixel_mask(2, 3, 128, 130)
    o = reference.axial_time_attention(q, k, v, mask, 1.0)
    torch.testing.assert_close(o.double(), explicit_attention(q, k, v, mask, 1.0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("limit", [1, 5, 7, 64])
def test_chunk_boundaries_do_not_change_results(monkeypatch, limit):
    """Splitting the sequences into chunks of any size (here forced small) gives the unsplit result."""
    q, k, v = qkv(3, 4, 5, 3, 2, 2, 4)
    mask = pixel_mask(3, 5, 3, 2)
    expected = reference.axial_time_attention(q, k, v, mask, 0.5)
    monkeypatch.setattr(ref_attention, "MAX_SEQUENCES_PER_CALL", limit)
    torch.testing.assert_close(reference.axial_time_attention(q, k, v, mask, 0.5), expected)


@pytest.mark.parametrize("mask_kind", [None, "pixel"])
def test_gradcheck_float64(mask_kind):
    """The reference is differentiable with correct gradients (float64 gradcheck)."""
    q, k, v = (t.requires_grad_() for t in qkv(1, 3, 4, 2, 2, 1, 3, dtype=torch.float64))
    mask = pixel_mask(1, 4, 2, 2) if mask_kind else None
    assert torch.autograd.gradcheck(lambda a, b, c: reference.axial_time_attention(a, b, c, mask, 0.7), (q, k, v))
