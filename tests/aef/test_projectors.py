"""aef.model.projectors: NaN-safe source projection and concatenation along time."""

import pytest
import torch

from aef.model.config import AEFConfig
from aef.model.inputs import prepare_inputs
from aef.model.projectors import SourceProjectors, downsample_mask

from model_fixtures import YEAR


@pytest.fixture
def projectors():
    torch.manual_seed(0)
    return SourceProjectors(AEFConfig.from_preset("tiny"))


@pytest.mark.parametrize("poison", [float("nan"), float("inf"), -float("inf"), 1e30])
def test_invalid_values_are_zeroed_not_multiplied(projectors, poison):
    """Invalid pixels and non-finite values give exactly the output of zeros there (torch.where,
    never multiplication), and the output is finite."""
    L = 16
    x = torch.randn(1, 2, L, L, 5)
    mask = torch.rand(1, 2, L, L) > 0.3
    times = {"sentinel2": torch.tensor([[YEAR[0], YEAR[0] + 1]])}
    clean = torch.where(mask[..., None], x, 0.0)
    poisoned = torch.where(mask[..., None], x, poison)
    a = projectors(prepare_inputs({"sentinel2": clean}, times, {"sentinel2": mask}))[0]
    b = projectors(prepare_inputs({"sentinel2": poisoned}, times, {"sentinel2": mask}))[0]
    assert torch.isfinite(b).all()
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_concatenates_sources_along_time(projectors):
    """T = sum of N_i, at L/2; times of frames without a valid pixel are zeroed (no NaN)."""
    L = 16
    data = {"sentinel2": torch.randn(2, 3, L, L, 5), "landsat": torch.randn(2, 1, L, L, 7)}
    times = {"sentinel2": torch.tensor([[1.0, 2.0, float("nan")]] * 2, dtype=torch.float64) + YEAR[0],
             "landsat": torch.full((2, 1), YEAR[0], dtype=torch.int64)}
    masks = {"sentinel2": torch.tensor([[True, True, False]] * 2)}
    x, t, m = projectors(prepare_inputs(data, times, masks))
    assert x.shape == (2, 4, L // 2, L // 2, 16) and t.shape == (2, 4) and m.shape == (2, 4, L // 2, L // 2)
    assert t.dtype == torch.float64 and torch.isfinite(t).all() and (t[:, 2] == 0).all()
    assert not m[:, 2].any() and m[:, [0, 1, 3]].all()


def test_downsample_mask_is_any():
    """A coarse pixel is valid where any of its fine pixels is."""
    m = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    m[0, 0, 3, 0] = True
    d = downsample_mask(m, 2)
    assert d.tolist() == [[[[False, False], [True, False]]]]
