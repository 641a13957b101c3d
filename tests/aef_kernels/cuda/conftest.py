"""The CUDA backend's tests: the emulator fixture, and its pass counts per kernel family at the end of the run."""

import pytest

import emulator
from emulator import FULL, MUTANTS, PASSED


@pytest.fixture(scope="module")
def emu():
    """The emulated kernels, built once per source hash (see emulator.load)."""
    return emulator.load()


def pytest_terminal_summary(terminalreporter):
    if PASSED:
        counts = ", ".join(f"{family} {n}" for family, n in sorted(PASSED.items()))
        terminalreporter.write_line(f"emulator ({'full' if FULL else 'quick'} set; AEF_EMULATOR_FULL=1 for the full "
                                    f"one): cases passed: {counts}")
    if MUTANTS["built"]:
        terminalreporter.write_line(f"emulator mutation check: {MUTANTS['failed']} of {MUTANTS['built']} broken "
                                    "kernel variants failed their emulated tests")
