"""Inputs that used to escape as tracebacks or be computed silently wrong: empty dimensions (one rule
for every op and the model: a ValueError naming the dimension), float64/float16 data (cast to the
model's dtype), and non-finite timestamps (refused naming source and frame, ignored on masked frames)."""

import math

import pytest
import torch

import aef_kernels as K
from aef.models import AEF
from model_fixtures import YEAR

GEN = torch.Generator().manual_seed(0)


def _r(*shape):
    return torch.randn(*shape, generator=GEN)


def _attention(B=1, Tq=2, T=3, H=2, W=2, heads=1, d=8):
    return lambda: K.axial_time_attention(_r(B, Tq, H, W, heads, d), _r(B, T, H, W, heads, d),
                                          _r(B, T, H, W, heads, d))


def _precision(N=1, H=4, W=4, C=4):
    return lambda: K.precision_operator(_r(N, H, W, C), _r(C), _r(C), _r(4 * C, C, 3, 3), _r(4 * C),
                                        _r(C, 4 * C, 3, 3), _r(C), num_groups=2)


def _group_norm(N=1, H=4, W=4, C=4):
    return lambda: K.group_norm_nhwc(_r(N, H, W, C), num_groups=2)


def _down(N=1, H=4, W=4, C=4):
    return lambda: K.resample_down(_r(N, H, W, C), _r(6, C, 2, 2), None, 2)


def _up(N=1, H=2, W=2, C=4):
    return lambda: K.resample_up(_r(N, H, W, C), _r(6, C), None, 2)


def _exchange(N=1, Hs=1):
    ds, dt, dp = 8, 6, 4
    params = K.ExchangeParams(_r(ds, dp, 8, 8), None, _r(ds, dt, 2, 2), None, _r(dt, dp, 4, 4), None,
                              _r(dt, ds), None, _r(dp, dt), None, _r(dp, ds), None)
    return lambda: K.pyramid_exchange(_r(N, Hs, Hs, ds), _r(N, 2 * Hs, 2 * Hs, dt), _r(N, 8 * Hs, 8 * Hs, dp),
                                      params)


def _vmf(B=2, P=3):
    return lambda: K.vmf_normalize(_r(B, P, 8))


def _uniformity(B=2, P=3):
    return lambda: K.batch_uniformity_loss(_r(B, P, 8))


EMPTY = [
    ("attention", _attention(B=0), "B"),
    ("attention", _attention(H=0), "H"),
    ("attention", _attention(W=0), "W"),
    ("attention", _attention(Tq=0), "Tq"),
    ("attention", _attention(heads=0), "heads"),
    ("precision", _precision(N=0), "N"),
    ("precision", _precision(H=0), "H"),
    ("group_norm", _group_norm(N=0), "N"),
    ("group_norm", _group_norm(W=0), "W"),
    ("resample_down", _down(N=0), "N"),
    ("resample_down", _down(H=0), "H"),
    ("resample_up", _up(N=0), "N"),
    ("resample_up", _up(W=0), "W"),
    ("exchange", _exchange(N=0), "N"),
    ("exchange", _exchange(Hs=0), "H"),
    ("vmf", _vmf(B=0), "dimension 0"),
    ("vmf", _vmf(P=0), "dimension 1"),
    ("uniformity", _uniformity(B=0), "B"),
    ("uniformity", _uniformity(P=0), "dimension 1"),
]


@pytest.mark.parametrize("op,call,dim", EMPTY, ids=[f"{o}-{d}=0" for o, _, d in EMPTY])
def test_every_op_refuses_an_empty_dimension_naming_it(op, call, dim):
    """A zero-size dimension of any op's input is a ValueError that names the dimension, raised
    before any backend runs (never a ZeroDivisionError, an empty torch.cat or a silent empty result)."""
    with pytest.raises(ValueError, match=rf"\b{dim} = 0\b"):
        call()


@pytest.mark.parametrize("op,call", [("attention", _attention()), ("precision", _precision()),
                                     ("group_norm", _group_norm()), ("resample_down", _down()),
                                     ("resample_up", _up()), ("exchange", _exchange()), ("vmf", _vmf()),
                                     ("uniformity", _uniformity())])
def test_the_same_ops_run_with_every_dimension_nonempty(op, call):
    """The rule refuses only empty dimensions: the same calls with sizes >= 1 return finite results."""
    out = call()
    for t in out if isinstance(out, tuple) else (out,):
        assert torch.isfinite(t).all()


def _batch(B=1, N=2, L=16, dtype=torch.float32, times=None):
    data = {"sentinel2": torch.randn(B, N, L, L, 5, generator=GEN).to(dtype)}
    t = times if times is not None else torch.tensor([[YEAR[0] + (i + 1) * 86_400_000 * 30 for i in range(N)]] * B,
                                                     dtype=torch.int64)
    return data, {"sentinel2": t}, torch.tensor([YEAR] * B, dtype=torch.int64)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return AEF("tiny").eval()


@pytest.mark.parametrize("B,N,dim", [(0, 2, "B"), (1, 0, "N"), (2, 0, "N")])
def test_model_refuses_an_empty_batch_or_zero_frames_naming_the_dimension(model, B, N, dim):
    """model.embed with no samples or a source with no frames is a ValueError naming the source and
    the dimension (the ops' rule, applied where the model's inputs are checked)."""
    data, times, periods = _batch(B=max(B, 1), N=max(N, 1))
    data = {"sentinel2": data["sentinel2"][:B, :N]}
    times = {"sentinel2": times["sentinel2"][:B, :N]}
    with pytest.raises(ValueError, match=rf"sentinel2.*\b{dim} = 0\b"):
        model.embed(data, times, periods[:B])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_model_embeds_other_float_dtypes_as_its_own(model, dtype):
    """float64/float16/bfloat16 data are cast to the model's dtype: the embedding equals the one of
    the same values given as float32."""
    data, times, periods = _batch(B=2, dtype=dtype)
    with torch.no_grad():
        got = model.embed(data, times, periods)
        want = model.embed({"sentinel2": data["sentinel2"].float()}, times, periods)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nonfinite_timestamp_of_a_valid_frame_is_refused_naming_source_and_frame(model, bad):
    """A NaN/Inf timestamp on a frame with valid pixels is a ValueError naming the source, sample and
    frame (it used to be embedded as if taken at 1970-01-01)."""
    data, times, periods = _batch(B=2, N=3)
    t = times["sentinel2"].to(torch.float64)
    t[1, 2] = bad
    with pytest.raises(ValueError, match=r"timestamps\['sentinel2'\].*sample 1, frame 2"):
        model.embed(data, {"sentinel2": t}, periods)


def test_nonfinite_timestamp_of_a_fully_masked_frame_is_ignored(model):
    """Where the mask marks a frame invalid everywhere, its timestamp is never used: NaN there gives
    the embedding of any finite time there."""
    data, times, periods = _batch(B=1, N=3)
    masks = {"sentinel2": torch.tensor([[True, False, True]])}
    t = times["sentinel2"].to(torch.float64)
    nan_t, other_t = t.clone(), t.clone()
    nan_t[0, 1], other_t[0, 1] = math.nan, 1.0e12
    with torch.no_grad():
        got = model.embed(data, {"sentinel2": nan_t}, periods, masks)
        want = model.embed(data, {"sentinel2": other_t}, periods, masks)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_saved_samples_with_nonfinite_timestamps_are_refused(tmp_path):
    """aef.pipelines.data: load_sample and collate refuse a NaN timestamp on a frame with data, naming it
    (collate used to cast it into a garbage int64 time)."""
    from aef.pipelines.data import collate, load_sample, save_sample, synthetic_sample

    s = synthetic_sample(16, {"sentinel2": 2}, seed=0)
    s["timestamps"]["sentinel2"] = s["timestamps"]["sentinel2"].to(torch.float64)
    s["timestamps"]["sentinel2"][1] = math.nan
    with pytest.raises(ValueError, match=r"sentinel2.*frame 1"):
        collate([s])
    save_sample(tmp_path / "s.npz", s)
    with pytest.raises(ValueError, match=r"s\.npz.*sentinel2.*frame 1"):
        load_sample(tmp_path / "s.npz")
