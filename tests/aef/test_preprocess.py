"""aef.model.preprocess: the per-source transforms of the registry, their inverse, statistics in the model,
and per-band validity through the model."""

import math

import numpy as np
import pytest
import torch

from aef.model import preprocess as P
from aef.model import sources
from aef.models import AEF

from model_fixtures import YEAR


def _stats(name, mean, std, transform=None):
    src = sources.get(name)
    return P.Statistics({name: P.SourceStatistics(transform or src.transform, src.bands, (100,) * src.channels,
                                                  tuple(mean), tuple(std))})


def test_registry_names_a_known_transform_for_every_source():
    """Every registry row names one of the transforms; optical and SAR inputs are normalised."""
    for src in sources.REGISTRY.values():
        assert src.transform in P.TRANSFORMS
        P.band_kinds(src)
    assert sources.get("landsat").transform == "optical" and sources.get("sentinel1").transform == "sar"
    assert P.band_kinds(sources.get("sentinel1")) == ("db",) * 4 + ("angle",)


@pytest.mark.parametrize("name", ["sentinel2", "landsat"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_optical_is_log_then_clipped_zscore(name, dtype):
    """Optical bands become (log(x + 1) - mean) / std, clipped to +-6 sigma; negatives are invalid."""
    src = sources.get(name)
    C = src.channels
    mean, std = np.linspace(5, 8, C), np.linspace(0.2, 0.9, C)
    st = _stats(name, mean, std)
    x = torch.tensor([[0.0] * C, [1000.0] * C, [1e30] * C, [-3.0] * C, [float("nan")] * C], dtype=dtype)
    y, v = P.apply(x, torch.ones_like(x, dtype=torch.bool), src, st)
    assert y.dtype == dtype
    expect = np.clip((np.log1p(np.array([0.0, 1000.0]))[:, None] - mean) / std, -P.CLIP_SIGMA, P.CLIP_SIGMA)
    np.testing.assert_allclose(y[:2].double().numpy(), expect, rtol=1e-5)
    assert (y[2] == P.CLIP_SIGMA).all()
    assert v[:3].all() and not v[3:].any() and torch.isnan(y[3:]).all()


def test_sar_is_db_with_range_and_angles_in_radians():
    """SAR bands are z-scored dB with values outside [-30, +10] dB invalid; the angle becomes radians
    and is not normalised; linear inputs convert to dB."""
    src = sources.get("sentinel1")
    mean, std = [-12.0, -18.0, -15.0, -20.0, 0.0], [3.0, 4.0, 5.0, 6.0, 1.0]
    st = _stats("sentinel1", mean, std)
    x = torch.tensor([[-12.0, -30.5, 10.0, 11.0, 30.0]])
    y, v = P.apply(x, torch.ones_like(x, dtype=torch.bool), src, st)
    assert v.tolist() == [[True, False, True, False, True]]
    assert y[0, 0] == 0 and y[0, 2] == pytest.approx((10 + 15) / 5)
    assert y[0, 4] == pytest.approx(math.radians(30.0))
    np.testing.assert_allclose(P.linear_to_db(np.array([1.0, 0.1, 0.0, -1.0])), [0.0, -10.0, np.nan, np.nan])


@pytest.mark.parametrize("name,values,mean,std", [
    ("landsat", [[7000.0, 8000.0, 9000.0, 10.0, 0.0, 500.0, 20000.0]], 4.0, 3.0),
    ("sentinel1", [[-12.0, -20.0, -7.5, -29.0, 38.5]], -15.0, 5.0),
])
def test_invert_undoes_apply(name, values, mean, std):
    """invert(apply(x)) == x within float32 rounding for values inside the clip range."""
    src = sources.get(name)
    st = _stats(name, [mean] * src.channels, [std] * src.channels)
    x = torch.tensor(values)
    y, v = P.apply(x, torch.ones_like(x, dtype=torch.bool), src, st)
    assert v.all()
    np.testing.assert_allclose(P.invert(y, src, st).numpy(), x.numpy(), rtol=1e-4, atol=1e-3)


def test_statistics_round_trip_and_malformed_input():
    """to_dict/from_dict round-trip; a missing field or a non-positive std is refused naming the source."""
    st = _stats("landsat", [1.0] * 7, [2.0] * 7)
    back = P.Statistics.from_dict(st.to_dict())
    assert back.sources == st.sources
    bad = st.to_dict()
    bad["sources"]["landsat"]["std"][2] = 0.0
    with pytest.raises(ValueError, match="sources.landsat.*std positive"):
        P.Statistics.from_dict(bad)
    del bad["sources"]["landsat"]["mean"]
    with pytest.raises(ValueError, match="sources.landsat"):
        P.Statistics.from_dict(bad)
    with pytest.raises(ValueError, match="format"):
        P.Statistics.from_dict({"sources": {}})


def _landsat_batch(seed=0, B=1, N=2, L=16):
    g = torch.Generator().manual_seed(seed)
    x = 6000 + 3000 * torch.rand(B, N, L, L, 7, generator=g)
    t = torch.tensor([[YEAR[0] + 86_400_000 * (10 + 40 * i) for i in range(N)]] * B)
    return {"landsat": x}, {"landsat": t}


def test_model_applies_its_statistics_to_raw_inputs():
    """A model with statistics embeds raw values exactly as the same weights without statistics embed
    the preprocessed values: the transform happens once, inside the model, from its config."""
    st = _stats("landsat", [8.9] * 7, [0.3] * 7)
    torch.manual_seed(0)
    with_stats = AEF("tiny", statistics=st.to_dict()).eval()
    plain = AEF("tiny").eval()
    plain.load_state_dict(with_stats.state_dict())
    data, times = _landsat_batch()
    src = sources.get("landsat")
    pre, _ = P.apply(data["landsat"], torch.ones_like(data["landsat"], dtype=torch.bool), src, st)
    with torch.no_grad():
        a = with_stats.embed(data, times, YEAR)
        b = plain.embed({"landsat": pre}, times, YEAR)
    torch.testing.assert_close(a, b)


def test_statistics_that_miss_a_source_name_it():
    """Embedding a source the model's statistics do not cover raises an error naming that source."""
    model = AEF("tiny", statistics=_stats("sentinel2", [8.0] * 5, [1.0] * 5).to_dict()).eval()
    data, times = _landsat_batch()
    with pytest.raises(ValueError, match="do not cover source 'landsat'"):
        model.embed(data, times, YEAR)


def test_config_with_statistics_survives_save_and_load(tmp_path):
    """The statistics are part of the saved config, so from_pretrained applies the same transform."""
    st = _stats("landsat", [8.5] * 7, [0.5] * 7)
    torch.manual_seed(0)
    model = AEF("tiny", statistics=st.to_dict()).eval()
    model.save_pretrained(tmp_path)
    loaded = AEF.from_pretrained(tmp_path).eval()
    assert loaded.config.statistics == st.to_dict()
    data, times = _landsat_batch()
    with torch.no_grad():
        torch.testing.assert_close(model.embed(data, times, YEAR), loaded.embed(data, times, YEAR))


@pytest.mark.parametrize("present", [(0, 1, 2), (1, 3, 5, 6), (4,)])
def test_missing_bands_do_not_void_the_pixel(present):
    """A pixel with only some bands (NaN elsewhere) stays valid and is embedded; the result equals
    giving garbage in the missing bands with a per-band mask that marks them invalid; changing a
    present band changes the embedding."""
    torch.manual_seed(0)
    model = AEF("tiny", statistics=_stats("landsat", [8.9] * 7, [0.3] * 7).to_dict()).eval()
    data, times = _landsat_batch()
    x = data["landsat"].clone()
    missing = [c for c in range(7) if c not in present]
    x[..., missing] = float("nan")
    band_mask = torch.zeros(x.shape, dtype=torch.bool)
    band_mask[..., list(present)] = True
    garbage = torch.where(band_mask, data["landsat"], torch.full_like(x, -5e4))
    with torch.no_grad():
        enc = model.encode({"landsat": x}, times)
        assert enc.pixel_valid().all()
        a = model.embed({"landsat": x}, times, YEAR)
        b = model.embed({"landsat": garbage}, times, YEAR, {"landsat": band_mask})
        changed = x.clone()
        changed[..., present[0]] *= 0.5
        c = model.embed({"landsat": changed}, times, YEAR)
    assert torch.isfinite(a).all()
    torch.testing.assert_close(a, b)
    assert (a - c).abs().max() > 1e-4


def test_a_pixel_without_any_band_is_invalid():
    """Where every band of every frame is missing, the pixel has no valid observation."""
    torch.manual_seed(0)
    model = AEF("tiny", statistics=_stats("landsat", [8.9] * 7, [0.3] * 7).to_dict()).eval()
    data, times = _landsat_batch()
    x = data["landsat"].clone()
    x[:, :, :2, :2] = float("nan")
    x[:, :, 4:6, 4:6, :] = 0.0
    with torch.no_grad():
        valid = model.encode({"landsat": x}, times).pixel_valid()
    assert not valid[:, :2, :2].any() and valid[:, 4:6, 4:6].all()


def test_decode_physical_inverts_the_transform():
    """decode(physical=True) is the inverse transform of the model-space decode."""
    st = _stats("landsat", [8.0] * 7, [0.5] * 7)
    torch.manual_seed(0)
    model = AEF("tiny", statistics=st.to_dict()).eval()
    z = torch.nn.functional.normalize(torch.randn(1, 4, 4, 64), dim=-1)
    t, period = torch.tensor([YEAR[0] + 1000]), torch.tensor([YEAR])
    with torch.no_grad():
        y = model.decode("landsat", z, t, period)
        raw = model.decode("landsat", z, t, period, physical=True)
    torch.testing.assert_close(raw, P.invert(y, sources.get("landsat"), st))
    torch.testing.assert_close(raw, torch.expm1(y * 0.5 + 8.0))
