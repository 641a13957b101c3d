"""Make the repository's `benchmarks` package importable from the benchmark tests.

The repository root is appended, not prepended, to sys.path: the tests must import the installed
aef_kernels (with its compiled extension), and `benchmarks` must not resolve to this test folder,
which has the same name (a regular package anywhere on the path beats a namespace folder)."""

import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[2]))
