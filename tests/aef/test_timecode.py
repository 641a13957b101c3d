"""aef.model.timecode: continuous float64 timecodes (docs/model.md §3)."""

import pytest
import torch

from aef.model import timecode as TC

T0 = 1_700_000_000_000  # 2023-11-14
MINUTE, DAY = 60_000, 86_400_000


def _cos(a, b):
    return torch.nn.functional.cosine_similarity(a, b, dim=-1)


def test_float32_timestamps_are_rejected():
    """float32 epoch-ms is refused with a TypeError naming the precision problem."""
    with pytest.raises(TypeError, match="float32"):
        TC.timecode(torch.tensor([T0], dtype=torch.float32))


@pytest.mark.parametrize("dtype", [torch.int64, torch.float64])
def test_nearby_times_have_nearly_equal_codes(dtype):
    """Codes one minute apart are nearly identical; codes 100 days apart are clearly different."""
    t = torch.tensor([T0, T0 + MINUTE, T0 + 100 * DAY], dtype=dtype)
    c = TC.timecode(t)
    assert _cos(c[0], c[1]) > 0.999
    assert _cos(c[0], c[2]) < 0.9


def test_int64_and_float64_agree_and_shape():
    """int64 and float64 inputs give the same code, of width 2 * (periods + 1)."""
    t = torch.tensor([[T0, T0 + 12345]])
    a, b = TC.timecode(t, num_periods=8), TC.timecode(t.double(), num_periods=8)
    assert a.shape == (1, 2, 18) and a.dtype == torch.float32
    torch.testing.assert_close(a, b)


def test_annual_component_repeats_every_year():
    """The annual sinusoid (last period) is the same one year later."""
    year = int(365.25 * DAY)
    c = TC.timecode(torch.tensor([T0, T0 + year]), num_periods=4)
    P = 5
    torch.testing.assert_close(c[0, [P - 1, 2 * P - 1]], c[1, [P - 1, 2 * P - 1]], atol=1e-5, rtol=0)


def test_position_in_period_and_period_code():
    """Positions are in [0, 1) at the ends of the period; a period code has 3 timecodes."""
    period = torch.tensor([[T0, T0 + 10 * DAY]] * 3, dtype=torch.float64)
    f = TC.position_in_period(torch.tensor([T0, T0 + 5 * DAY, T0 + 10 * DAY]), period)
    assert f[0] == 0 and abs(f[1] - 0.5) < 1e-12 and f[2] < 1
    assert TC.period_timecode(period.long(), num_periods=4).shape == (3, 30)
    assert TC.fraction_code(f, 3).shape == (3, 7)
