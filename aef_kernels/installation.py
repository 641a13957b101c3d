"""Where the imported aef_kernels comes from, and the built extensions it may hide."""

from __future__ import annotations

import importlib.machinery
import os
import sys
from pathlib import Path


def shadowed_builds(path: list[str] | None = None) -> list[Path]:
    """Built extensions ``aef_kernels/_C`` of other copies of the package on ``path`` (default
    sys.path) than the one imported: an installed package hidden by the source tree that comes first
    on sys.path (the current directory, for ``python -m`` run inside the checkout)."""
    here = Path(__file__).resolve().parent
    found = []
    for entry in sys.path if path is None else path:
        spec = importlib.machinery.PathFinder.find_spec(__package__, [entry or os.getcwd()])
        if spec is None or not spec.submodule_search_locations:
            continue
        for location in spec.submodule_search_locations:
            package = Path(location).resolve()
            if package == here:
                continue
            found += [package / f"_C{suffix}" for suffix in importlib.machinery.EXTENSION_SUFFIXES
                      if (package / f"_C{suffix}").is_file()]
    return list(dict.fromkeys(found))
