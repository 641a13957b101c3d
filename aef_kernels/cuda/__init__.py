"""CUDA backend: the compiled extension ``aef_kernels._C`` (CUDA C++, no libtorch), called with raw
pointers, sizes, strides and the current stream. Each op module defines its ``cuda_<op>_fwd``/``_bwd``
ops through :func:`aef_kernels.autograd.kernel_op` and registers itself with the dispatcher on import."""

from __future__ import annotations

import importlib
import os

from .. import dispatch
from ..ops import SPECS
from ..spec import backend_modules
from ..installation import shadowed_builds

try:
    from .. import _C
except ImportError:
    _C = None
    _here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    _hidden = shadowed_builds()
    dispatch.mark_backend_unavailable(
        "cuda",
        f"the extension aef_kernels._C is not built in {_here}, the copy of aef_kernels imported here "
        + (f"(it shadows the installed build {_hidden[0]}: run from outside the source checkout, or "
           "python setup.py build_ext --inplace)" if _hidden else
           "(pip install ., or python setup.py build_ext --inplace for a source checkout)"),
    )
else:
    if not _C.with_cuda:
        dispatch.mark_backend_unavailable("cuda", f"aef_kernels._C was built without CUDA ({_C.cuda_skip_reason})")

OP_MODULES: tuple[str, ...] = backend_modules(__name__, SPECS)

if _C is not None and _C.with_cuda:
    for _name in OP_MODULES:
        importlib.import_module(f"{__name__}.{_name}")
