"""Suite-wide setup.

Without a GPU the Triton kernels run on CPU tensors through the Triton interpreter, which must be
switched on before any kernel module is imported; hence this happens here, before the tests import
aef_kernels. Tests marked ``gpu`` skip cleanly where no CUDA device is present.
"""

import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device; skipped without one")


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="no CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
