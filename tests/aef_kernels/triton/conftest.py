"""Fixtures shared by the Triton backend tests."""

import pytest
import torch

pytest.importorskip("triton")


@pytest.fixture
def poisoned():
    """Uninitialised memory (``torch.empty`` and friends) is NaN-filled for the duration of a test.

    The launchers allocate their outputs with ``torch.empty``; an element a kernel forgets to write
    stays NaN and fails the comparison with the reference, instead of passing by luck with whatever
    the allocator left there. PyTorch does the filling in deterministic mode.
    """
    mode, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    assert torch.empty(4).isnan().all(), "the NaN poison is not in force"
    yield
    torch.utils.deterministic.fill_uninitialized_memory = fill
    torch.use_deterministic_algorithms(mode, warn_only=warn_only)


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
