"""CUDA backend: the compiled extension ``aef_kernels._C`` (CUDA C++, no libtorch), called with raw
pointers, sizes, strides and the current stream. Each op module registers a
``torch.library.custom_op`` and registers itself with the dispatcher on import."""

from __future__ import annotations

import importlib
import os

from .. import dispatch

try:
    from .. import _C
except ImportError:
    _C = None
    _here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    dispatch.mark_backend_unavailable(
        "cuda",
        f"the extension aef_kernels._C is not built in {_here} (pip install ., or python setup.py "
        "build_ext --inplace for a source checkout)",
    )
else:
    if not _C.with_cuda:
        dispatch.mark_backend_unavailable("cuda", f"aef_kernels._C was built without CUDA ({_C.cuda_skip_reason})")

OP_MODULES: tuple[str, ...] = ("sphere", "precision", "attention")

if _C is not None and _C.with_cuda:
    for _name in OP_MODULES:
        importlib.import_module(f"{__name__}.{_name}")
