"""Triton backend: fused kernels for CUDA tensors, and for CPU tensors under the Triton interpreter
(``TRITON_INTERPRET=1``, set before this package is imported), which is how CPU-only CI tests them.

Each op module holds its kernels and launchers, defines its ``triton_<op>_fwd``/``_bwd`` ops through
:func:`aef_kernels.autograd.kernel_op`, and registers itself with the dispatcher on import."""

from __future__ import annotations

import importlib

from .. import dispatch
from ..ops import SPECS
from ..spec import backend_modules

try:
    import triton  # noqa: F401
except Exception as exc:  # ImportError, or a broken install raising anything else
    dispatch.mark_backend_unavailable("triton", f"triton is not importable ({type(exc).__name__}: {exc})")
    AVAILABLE = False
else:
    AVAILABLE = True

OP_MODULES: tuple[str, ...] = backend_modules(__name__, SPECS)

if AVAILABLE:
    for _name in OP_MODULES:
        importlib.import_module(f"{__name__}.{_name}")
