"""aef.pipelines.quantize: the paper's int8 code for embeddings (docs/model.md §9.1)."""

import numpy as np
import pytest
import torch

from aef.pipelines import quantize as Q


def _unit_vectors(n: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, 64)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_roundtrip_error_within_documented_bound(kind):
    """|dequantize(quantize(x)) - x| <= max_error(x) for every x in [-1, 1], densely sampled
    (including the saturating ends and the rounding midpoints), for numpy and torch alike."""
    x = np.concatenate([np.linspace(-1, 1, 200_001, dtype=np.float32),
                        np.sign(np.linspace(-1, 1, 511)) * ((np.arange(511) % 256 + 0.5) / 127.5) ** 2]).astype(np.float32)
    x = np.clip(x, -1, 1)
    if kind == "torch":
        back, bound = Q.dequantize(Q.quantize(torch.from_numpy(x))).numpy(), Q.max_error(torch.from_numpy(x)).numpy()
    else:
        back, bound = Q.dequantize(Q.quantize(x)), Q.max_error(x)
    assert (np.abs(back - x) <= bound + 1e-7).all()
    assert np.abs(back - x).max() < 0.0079


def test_codes_follow_the_formula():
    """Codes are clip(round(sign(x) sqrt|x| 127.5), -127, 127): spot values, symmetry and the int8 range."""
    x = np.array([0.0, 1e-6, 0.25, 1.0, -0.25, -1.0, 4.0], dtype=np.float32)
    np.testing.assert_array_equal(Q.quantize(x), [0, 0, 64, 127, -64, -127, 127])
    v = _unit_vectors(1000).ravel()
    np.testing.assert_array_equal(Q.quantize(-v), -Q.quantize(v))
    assert Q.quantize(v).dtype == np.int8


def test_numpy_and_torch_agree():
    """Both array kinds give identical codes and identical dequantised values."""
    v = _unit_vectors(500, seed=1)
    q = Q.quantize(v)
    np.testing.assert_array_equal(q, Q.quantize(torch.from_numpy(v)).numpy())
    np.testing.assert_array_equal(Q.dequantize(q), Q.dequantize(torch.from_numpy(q)).numpy())


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_nan_is_nodata_and_back(kind):
    """NaN (no-data) encodes as -128, which no value produces, and decodes back to NaN."""
    x = np.array([np.nan, 0.5, np.nan], dtype=np.float32)
    xin = torch.from_numpy(x) if kind == "torch" else x
    q = Q.quantize(xin)
    q_np = q.numpy() if kind == "torch" else q
    np.testing.assert_array_equal(q_np, [Q.NODATA, 90, Q.NODATA])
    back = Q.dequantize(q)
    back = back.numpy() if kind == "torch" else back
    assert np.isnan(back[[0, 2]]).all() and np.isfinite(back[1])


def test_unit_vectors_stay_unit_within_quantisation_error():
    """A dequantised unit vector has norm 1 within the bound implied by the per-value bound."""
    v = _unit_vectors(5000, seed=2)
    back = Q.dequantize(Q.quantize(v))
    err_bound = np.sqrt((Q.max_error(v) ** 2).sum(axis=1))
    assert (np.abs(np.linalg.norm(back, axis=1) - 1) <= err_bound).all()
    assert err_bound.max() < 0.025


@pytest.mark.parametrize("bad", [np.arange(3), torch.arange(3)])
def test_quantize_rejects_integers(bad):
    """Integer input is a caller's mistake (already quantised?) and raises TypeError."""
    with pytest.raises(TypeError, match="floating-point"):
        Q.quantize(bad)


@pytest.mark.parametrize("bad", [np.zeros(3, np.float32), torch.zeros(3, dtype=torch.int16)])
def test_dequantize_rejects_non_int8(bad):
    """Only int8 codes dequantise; anything else raises TypeError naming int8."""
    with pytest.raises(TypeError, match="int8"):
        Q.dequantize(bad)
