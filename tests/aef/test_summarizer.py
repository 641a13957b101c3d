"""aef.model.summarizer: attention pooling along time, one query per period (docs/model.md §4.5)."""

import pytest
import torch

from aef.model.config import AEFConfig
from aef.model.summarizer import Summarizer

CFG = AEFConfig.from_preset("tiny")
B, T, H, D = 2, 4, 8, CFG.d_p


@pytest.fixture
def summarizer():
    torch.manual_seed(0)
    return Summarizer(CFG).eval()


@pytest.fixture
def inputs():
    g = torch.Generator().manual_seed(1)
    fused = torch.randn(B, T, H, H, D, generator=g)
    frame_tc = torch.randn(B, T, CFG.timecode_dim, generator=g)
    period_tc = torch.randn(B, 3, 3 * CFG.timecode_dim, generator=g)
    mask = torch.rand(B, T, H, H, generator=g) > 0.3
    return fused, frame_tc, period_tc, mask


def test_shape_and_queries_are_independent(summarizer, inputs):
    """(B, Q, H, W, d) out; each period's summary equals the summary computed for it alone."""
    fused, ftc, ptc, mask = inputs
    out = summarizer(fused, ftc, ptc, mask)
    assert out.shape == (B, 3, H, H, D)
    torch.testing.assert_close(out[:, 1:2], summarizer(fused, ftc, ptc[:, 1:2], mask), rtol=1e-5, atol=1e-6)


def test_pixel_without_valid_frame_is_exactly_zero(summarizer, inputs):
    """A pixel whose frames are all masked gets a zero summary, never NaN."""
    fused, ftc, ptc, mask = inputs
    mask = mask.clone()
    mask[0, :, 2, 3] = False
    out = summarizer(fused, ftc, ptc, mask)
    assert torch.isfinite(out).all()
    assert (out[0, :, 2, 3] == 0).all() and out[0, :, 2, 4].abs().sum() > 0


def test_pools_time_not_neighbouring_pixels(summarizer, inputs):
    """Changing the frames at one pixel changes the summary at that pixel only (the trap of
    pooling with view(B*H*W, T, C) mixes pixels)."""
    fused, ftc, ptc, mask = inputs
    f2 = fused.clone()
    f2[:, :, 5, 5] += 10
    diff = (summarizer(fused, ftc, ptc, mask) - summarizer(f2, ftc, ptc, mask)).abs().sum(dim=(0, 1, 4))
    changed = (diff > 0).nonzero().tolist()
    assert changed == [[5, 5]] or (changed == [] and not mask[:, :, 5, 5].any())


def test_order_invariance(summarizer, inputs):
    """Permuting frames (with timecodes and masks) leaves every summary unchanged."""
    fused, ftc, ptc, mask = inputs
    perm = torch.tensor([3, 1, 0, 2])
    torch.testing.assert_close(summarizer(fused, ftc, ptc, mask),
                               summarizer(fused[:, perm], ftc[:, perm], ptc, mask[:, perm]), rtol=1e-5, atol=1e-6)
