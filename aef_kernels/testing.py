"""The accuracy rule and the memory poisoning that the test suite and ``benchmarks/gpu_check.py`` share,
so that a GPU check judges the kernels exactly as the tests do.

The rule (docs/kernels.md §8.6): a kernel's error against a float64 reference is at most ``factor`` times
the error of the reference run in the same low precision (2 for outputs, 3 for gradients), plus a
floor of one machine epsilon of ``dtype`` at ``scale`` (so that a reference that happens to be exact
does not demand an exact kernel). ``scale`` defaults to the result's largest magnitude; where the
result is a small difference of large terms, pass the terms' magnitude.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Optional

import torch

OUTPUT_FACTOR = 2
GRADIENT_FACTOR = 3


@dataclass(frozen=True)
class ErrorCheck:
    """One application of the rule: the figures, and whether they pass."""

    error: float
    reference_error: float
    floor: float
    factor: float
    has_nan: bool

    @property
    def limit(self) -> float:
        return self.factor * self.reference_error + self.floor

    @property
    def ok(self) -> bool:
        return not self.has_nan and self.error <= self.limit

    def message(self, what: str) -> str:
        if self.has_nan:
            return f"{what}: NaN in the kernel's result (an element left unwritten?)"
        return (f"{what}: kernel error {self.error:.3g} > {self.factor} x reference error "
                f"{self.reference_error:.3g} + {self.floor:.3g}")


def reference_error(out: torch.Tensor, low: torch.Tensor, exact: torch.Tensor, factor: float,
                    dtype: torch.dtype, scale: Optional[float] = None) -> ErrorCheck:
    """The rule's figures for ``out`` (the kernel), ``low`` (the reference in ``dtype``) and ``exact``
    (the float64 reference), all of one shape."""
    has_nan = bool(torch.isnan(out).any())
    err = (out.double() - exact).abs().max().item()
    ref = (low.double() - exact).abs().max().item()
    floor = torch.finfo(dtype).eps * (exact.abs().max().item() if scale is None else scale)
    return ErrorCheck(err, ref, floor, factor, has_nan)


def check_within_reference_error(what: str, out: torch.Tensor, low: torch.Tensor, exact: torch.Tensor,
                                 factor: float, dtype: torch.dtype, scale: Optional[float] = None) -> None:
    """Raise AssertionError naming ``what`` unless ``out`` satisfies the rule."""
    result = reference_error(out, low, exact, factor, dtype, scale)
    assert result.ok, result.message(what)


@contextlib.contextmanager
def poisoned_memory() -> Iterator[None]:
    """Uninitialised memory (``torch.empty`` and friends) is NaN-filled inside the block.

    The launchers allocate their outputs with ``torch.empty``; an element a kernel forgets to write
    stays NaN and fails the comparison with the reference, instead of passing by luck with whatever
    the allocator left there. PyTorch does the filling in deterministic mode.
    """
    mode, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        assert torch.empty(4).isnan().all(), "the NaN poison is not in force"
        yield
    finally:
        torch.utils.deterministic.fill_uninitialized_memory = fill
        torch.use_deterministic_algorithms(mode, warn_only=warn_only)
