"""Fixtures shared by the backend tests (Triton and CUDA)."""

import pytest
import torch

from aef_kernels import testing


@pytest.fixture(autouse=True)
def full_precision_float32(monkeypatch):
    """Every kernel test compares with a reference that computes float32 in float32: TF32 in cuDNN
    convolutions (on by default) and in matmuls is switched off, or the reference's own error on a
    GPU would hide a precision loss of the kernel under test."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)


@pytest.fixture
def poisoned():
    """Uninitialised memory (``torch.empty`` and friends) is NaN-filled for the duration of a test.

    The launchers allocate their outputs with ``torch.empty``; an element a kernel forgets to write
    stays NaN and fails the comparison with the reference, instead of passing by luck with whatever
    the allocator left there. PyTorch does the filling in deterministic mode.
    """
    with testing.poisoned_memory():
        yield


@pytest.fixture
def within_reference_error():
    """docs/kernels.md §8.6, as aef_kernels.testing states it (shared with benchmarks/gpu_check.py):
    ``check(what, out, low, exact, factor, dtype, scale=None)`` fails unless the kernel's error
    against float64 is at most ``factor`` times the low-precision reference's, plus one epsilon."""
    return testing.check_within_reference_error
