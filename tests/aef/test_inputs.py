"""aef.model.inputs: calling conventions and clear errors for bad input."""

import pytest
import torch

from aef.model.inputs import prepare_inputs, prepare_periods

from model_fixtures import YEAR


def _batch(B=2, N=2, L=16, C=5, name="sentinel2"):
    return {name: torch.randn(B, N, L, L, C)}, {name: torch.full((B, N), YEAR[0], dtype=torch.int64)}


def test_period_conventions_agree():
    """A (B, 2) tensor, a list of (start, end) tuples and one tuple for all give the same (B, 1, 2)."""
    t, single = prepare_periods(torch.tensor([YEAR, YEAR]), 2)
    lst, single2 = prepare_periods([YEAR, YEAR], 2)
    one, _ = prepare_periods(YEAR, 2)
    assert single and single2 and t.shape == (2, 1, 2) and t.dtype == torch.float64
    assert torch.equal(t, lst) and torch.equal(t, one)
    q, single3 = prepare_periods(torch.tensor([[YEAR, YEAR]] * 2), 2)
    assert not single3 and q.shape == (2, 2, 2)


@pytest.mark.parametrize("periods,error,match", [
    (torch.tensor([[YEAR[1], YEAR[0]]] * 2), ValueError, "start < end"),
    (torch.tensor([[YEAR[0], YEAR[0]]] * 2), ValueError, "start < end"),
    (torch.tensor([YEAR] * 3), ValueError, "B = 2"),
    (torch.tensor([YEAR] * 2, dtype=torch.float32), TypeError, "float32"),
    ("2023", TypeError, "valid_periods"),
])
def test_bad_periods(periods, error, match):
    """Periods with end <= start, the wrong batch size, float32 or a wrong type are refused."""
    with pytest.raises(error, match=match):
        prepare_periods(periods, 2)


def test_frame_masks_expand_to_pixels():
    """A (B, N) frame mask becomes a (B, N, L, L) pixel mask; no mask means all valid."""
    data, times = _batch()
    out = prepare_inputs(data, times, {"sentinel2": torch.tensor([[True, False], [True, True]])})
    m = out.masks["sentinel2"]
    assert m.shape == (2, 2, 16, 16) and m[0, 0].all() and not m[0, 1].any()
    assert prepare_inputs(data, times).masks["sentinel2"].all()


def _wrong_bands():
    return _batch(C=4)


def _wrong_side():
    return _batch(L=24)


def _float32_times():
    d, t = _batch()
    return d, {"sentinel2": t["sentinel2"].float()}


def _unknown_source():
    d, t = _batch()
    return {**d, "modis": d["sentinel2"]}, {**t, "modis": t["sentinel2"]}


def _batch_mismatch():
    d, t = _batch()
    d2, t2 = _batch(B=3, C=7, name="landsat")
    return {**d, **d2}, {**t, **t2}


def _time_shape():
    d, t = _batch()
    return d, {"sentinel2": t["sentinel2"][:, :1]}


@pytest.mark.parametrize("build,error,match", [
    (_wrong_bands, ValueError, r"\(B, N, L, L, 5\)"),
    (_wrong_side, ValueError, "multiple of 16"),
    (_float32_times, TypeError, "float32"),
    (_unknown_source, ValueError, "unknown source 'modis'"),
    (_batch_mismatch, ValueError, "B = 2"),
    (_time_shape, ValueError, r"timestamps\['sentinel2'\]"),
])
def test_bad_inputs_raise_clear_errors(build, error, match):
    """Wrong band count, L not a multiple of 16, float32 times, unknown source, mismatched batch
    sizes and wrong timestamp shapes each raise an error naming the argument."""
    data, times = build()
    with pytest.raises(error, match=match):
        prepare_inputs(data, times)
