"""Fixtures shared by the backend tests (Triton and CUDA)."""

import pytest
import torch


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
def within_reference_error():
    """KERNELS.md §5: a kernel's error against a float64 reference is at most ``factor`` times the
    error of the reference run in the same low precision (2 for outputs, 3 for gradients), plus a
    floor of one machine epsilon of ``dtype`` at ``scale`` (so that a reference that happens to be
    exact does not demand an exact kernel). ``scale`` defaults to the result's largest magnitude;
    where the result is a small difference of large terms, pass the terms' magnitude."""

    def check(what, out, low, exact, factor, dtype, scale=None):
        assert not torch.isnan(out).any(), f"{what}: NaN in the kernel's result (an element left unwritten?)"
        err = (out.double() - exact).abs().max().item()
        ref = (low.double() - exact).abs().max().item()
        floor = torch.finfo(dtype).eps * (exact.abs().max().item() if scale is None else scale)
        assert err <= factor * ref + floor, (
            f"{what}: kernel error {err:.3g} > {factor} x reference error {ref:.3g} + {floor:.3g}")

    return check
