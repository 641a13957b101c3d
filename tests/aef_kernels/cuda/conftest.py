"""The CUDA backend's tests: the emulator's pass counts, per kernel family, at the end of the run."""

from emulator import FULL, PASSED


def pytest_terminal_summary(terminalreporter):
    if not PASSED:
        return
    counts = ", ".join(f"{family} {n}" for family, n in sorted(PASSED.items()))
    terminalreporter.write_line(
        f"emulator ({'full' if FULL else 'quick'} set; AEF_EMULATOR_FULL=1 for the full one): cases passed: {counts}")
