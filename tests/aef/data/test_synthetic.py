"""aef.pipelines.data.synthetic: plausible, deterministic multi-source samples."""

import torch

from aef.pipelines.data import SyntheticDataset, synthetic_sample
from aef.pipelines.data.synthetic import DEFAULT_START_MS, YEAR_MS
from aef.model.sources import REGISTRY


def test_deterministic_from_the_seed():
    """The same seed gives the same sample; another seed a different one."""
    a, b, c = synthetic_sample(16, seed=3), synthetic_sample(16, seed=3), synthetic_sample(16, seed=4)
    torch.testing.assert_close(a["source_data"]["sentinel2"], b["source_data"]["sentinel2"], equal_nan=True)
    assert not torch.equal(a["timestamps"]["sentinel2"], c["timestamps"]["sentinel2"])


def test_every_source_with_consistent_masks_and_times():
    """Every registered source is present by default; masked pixels hold NaN, valid optical pixels
    are finite; clouds mask part of the optical frames; times are int64 within one year."""
    s = synthetic_sample(32, seed=0, text_dim=16)
    assert set(s["source_data"]) == set(REGISTRY)
    for name, x in s["source_data"].items():
        m, t = s["masks"][name], s["timestamps"][name]
        assert x.shape[:3] == m.shape and x.shape[-1] == REGISTRY[name].channels
        assert torch.isnan(x[~m]).all()
        assert t.dtype == torch.int64 and ((t >= DEFAULT_START_MS) & (t < DEFAULT_START_MS + YEAR_MS)).all()
    s2 = s["masks"]["sentinel2"]
    assert 0 < s2.float().mean() < 1 and torch.isfinite(s["source_data"]["sentinel2"][s2]).all()
    assert torch.isnan(s["source_data"]["sentinel1"][..., 2:4]).all()  # absent polarisations
    assert s["text"]["vector"].shape == (16,)


def test_seasonal_cycle_varies_per_pixel():
    """A pixel's value follows a seasonal cycle whose amplitude differs between pixels."""
    s = synthetic_sample(16, {"sentinel1": 12}, seed=0)
    x = s["source_data"]["sentinel1"][..., 0]  # (N, L, L), no clouds on radar
    spread = x.std(dim=0)  # temporal variation per pixel
    assert spread.min() > 0.05 and spread.max() > 1.2 * spread.min()


def test_dataset_indexing():
    """SyntheticDataset has the given length and sample i equals synthetic_sample(seed + i)."""
    ds = SyntheticDataset(3, side=16, frames={"sentinel2": 2}, seed=10)
    assert len(ds) == 3
    torch.testing.assert_close(ds[2]["source_data"]["sentinel2"],
                               synthetic_sample(16, {"sentinel2": 2}, seed=12)["source_data"]["sentinel2"], equal_nan=True)
