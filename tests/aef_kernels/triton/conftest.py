"""Fixtures shared by the Triton backend tests."""

import pytest
import torch

pytest.importorskip("triton")


@pytest.fixture
def gen():
    """A seeded generator: every test draws the same inputs on every run."""
    return torch.Generator().manual_seed(0)


@pytest.fixture
def check_close():
    """assert_close that first rules out NaN, naming the tensor being compared."""

    def check(actual, expected, what, rtol=1e-4, atol=1e-5):
        assert not torch.isnan(actual).any(), f"{what}: NaN in the kernel's result (an element left unwritten?)"
        torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")

    return check
