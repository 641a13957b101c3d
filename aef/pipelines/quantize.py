"""The int8 storage format of AEF embeddings (docs/model.md §9.1).

Each of the 64 dimensions of a unit embedding is stored as one signed byte::

    q = clip(round(sign(x) * sqrt(|x|) * 127.5), -127, 127)
    x' = sign(q) * (q / 127.5) ** 2

The square root spends the byte's resolution where unit-vector components live: most of the 64
components are small, so they get finer steps than a linear code would give them. The value -128 is
never produced by the formula and marks no-data (a NaN input); it dequantises back to NaN.

The functions accept numpy arrays or torch tensors and return the same kind.

    >>> import numpy as np
    >>> q = quantize(np.array([0.0, 0.25, -1.0, np.nan], dtype=np.float32))
    >>> q.tolist()
    [0, 64, -127, -128]
    >>> [round(float(v), 4) for v in dequantize(q)]
    [0.0, 0.252, -0.9922, nan]
"""

from __future__ import annotations

import numpy as np
import torch

SCALE = 127.5
QMAX = 127
NODATA = -128


def quantize(x):
    """Float embeddings -> int8 codes of the same shape; NaN becomes ``NODATA`` (-128).

    Values are expected in [-1, 1] (components of unit vectors); larger magnitudes saturate at ±127.
    """
    if isinstance(x, torch.Tensor):
        if not x.is_floating_point():
            raise TypeError(f"quantize expects a floating-point tensor, got {x.dtype}")
        xf = x.float()
        q = torch.clamp(torch.round(torch.sign(xf) * torch.sqrt(xf.abs()) * SCALE), -QMAX, QMAX)
        return torch.where(torch.isnan(xf), torch.full_like(q, NODATA), q).to(torch.int8)
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"quantize expects a floating-point array, got {x.dtype}")
    xf = x.astype(np.float32, copy=False)
    with np.errstate(invalid="ignore"):
        q = np.clip(np.round(np.sign(xf) * np.sqrt(np.abs(xf)) * SCALE), -QMAX, QMAX)
    return np.where(np.isnan(xf), NODATA, q).astype(np.int8)


def dequantize(q):
    """int8 codes -> float32 values; ``NODATA`` (-128) becomes NaN."""
    if isinstance(q, torch.Tensor):
        if q.dtype != torch.int8:
            raise TypeError(f"dequantize expects an int8 tensor, got {q.dtype}")
        qf = q.float()
        x = torch.sign(qf) * (qf / SCALE) ** 2
        return torch.where(q == NODATA, torch.full_like(x, float("nan")), x)
    q = np.asarray(q)
    if q.dtype != np.int8:
        raise TypeError(f"dequantize expects an int8 array, got {q.dtype}")
    qf = q.astype(np.float32)
    x = np.sign(qf) * (qf / np.float32(SCALE)) ** 2
    return np.where(q == NODATA, np.float32(np.nan), x).astype(np.float32)


def max_error(x):
    """Upper bound of |dequantize(quantize(x)) - x| for each value x in [-1, 1].

    Rounding moves s = sqrt(|x|) * 127.5 by at most 1/2, so the squared code moves by at most
    (2s + 1/2) / 2 / 127.5**2 = sqrt(|x|) / 127.5 + 1 / (4 * 127.5**2). Saturation at 127 (|x| above
    (127/127.5)**2) costs at most 1 - (127/127.5)**2, which is inside the same bound.
    """
    if isinstance(x, torch.Tensor):
        return torch.sqrt(x.float().abs()) / SCALE + 1.0 / (4 * SCALE**2)
    return np.sqrt(np.abs(np.asarray(x, dtype=np.float32))) / np.float32(SCALE) + np.float32(1.0 / (4 * SCALE**2))
