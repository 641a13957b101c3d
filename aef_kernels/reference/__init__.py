"""The pure-PyTorch reference of every op: the single source of truth for tests, fallbacks and
benchmarks. Plain PyTorch, no custom-op wrapper, so Dynamo traces through it and Inductor fuses it.

Functions take the validated argument tuple of the public API (see ``aef_kernels.functional``)."""

from .attention import axial_time_attention
from .precision import group_norm_nhwc, precision_operator
from .resample import pyramid_exchange, resample_down, resample_up
from .sphere import batch_uniformity_loss, vmf_normalize

__all__ = [
    "axial_time_attention",
    "precision_operator",
    "group_norm_nhwc",
    "resample_down",
    "resample_up",
    "pyramid_exchange",
    "vmf_normalize",
    "batch_uniformity_loss",
]
