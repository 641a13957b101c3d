"""Fixtures shared by the Triton backend tests, and the static tables they leave for the end of the run."""

import os

import pytest
import torch

pytest.importorskip("triton")

from aef_kernels.triton import aot  # noqa: E402

# Text blocks (the performance contract's tables) written at the end of the run, where CI shows them.
SUMMARY: list[str] = []


@pytest.fixture(scope="session")
def aot_results(tmp_path_factory):
    """Every configuration the launchers launch, compiled for sm_80 and sm_90 once per session
    (test_aot and test_perf_contract read the same compile); the table goes to stdout and to
    ``aot_report.txt`` in the pytest temporary directory. ``AEF_AOT_SWEEP=1`` adds the shapes
    outside the model's."""
    results = aot.run_isolated(aot.TARGETS, sweep=os.environ.get("AEF_AOT_SWEEP") == "1")
    report = tmp_path_factory.mktemp("aot") / "aot_report.txt"
    report.write_text("\n".join(r.row() for r in results) + "\n")
    print(f"\nAOT report ({len(results)} compilations): {report}")
    for r in results:
        print(r.row())
    return results


@pytest.fixture(scope="session")
def terminal_summary():
    """Text blocks a test leaves for the end of the run (shown without -s, where CI prints)."""
    return SUMMARY


def pytest_terminal_summary(terminalreporter):
    for block in SUMMARY:
        terminalreporter.write_line(block)


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
