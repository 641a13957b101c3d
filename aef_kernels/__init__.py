"""aef_kernels: fused kernels for the Space-Time-Precision encoder of AlphaEarth Foundations.

    import aef_kernels as K
    o = K.axial_time_attention(q, k, v, key_padding_mask)
    with K.use_backend("reference"):
        ...

See docs/kernels.md §2 for the API; ``python -m aef_kernels.info`` shows which backends can run here.
"""

from ._version import __version__
from .dispatch import BackendUnavailableError, use_backend
from . import functional as _functional
from .functional import *  # noqa: F401,F403  (one public function per op spec, and ExchangeParams)

from . import triton as _triton_backend  # noqa: E402,F401
from . import cuda as _cuda_backend  # noqa: E402,F401

__all__ = ["__version__", "BackendUnavailableError", "use_backend", *_functional.__all__]
