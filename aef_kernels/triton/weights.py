"""Packed weights, computed once and reused while the weight is unchanged.

The convolutions and resamplings read their weights as GEMM operands in a layout of their own
((9*Cin, Cout) rows for a 3x3 convolution, its flip for the data gradient, (F*F*Cin, Cout) for a
down-sampling), so every call used to permute and copy each weight before its kernels ran: one
extra launch and a read and write of the weight per use. Between optimizer steps (and for the whole
of inference) the weight does not change, so the packed copy is kept.

A cached copy is served only for the same tensor object, at the same storage, shape, strides and
dtype, and at the same version counter, which every in-place update bumps (an optimizer step, a
``copy_`` from a checkpoint). The cache holds the weight weakly and drops its entries when it is
freed, so a new tensor at a reused address is never served an old copy. It costs one more copy of
each weight per layout. Inference tensors (no version counter) and tensor subclasses other than
Parameter (torch.compile's fake and functional tensors, which have no storage to compare) are
packed on every call. An update through ``weight.data`` (a view with a version counter of its own)
is not seen: call :func:`clear` after one.
"""

from __future__ import annotations

import weakref
from typing import Callable

import torch

# (id(weight), pack) -> (weak reference to the weight, what it was packed at, the packed tensor)
_CACHE: dict[tuple[int, Callable], tuple[weakref.ref, tuple, torch.Tensor]] = {}


def _state(w: torch.Tensor) -> tuple:
    return w._version, w.data_ptr(), tuple(w.shape), w.stride(), w.dtype, w.device


def packed(w: torch.Tensor, pack: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``pack(w)``, from the cache while ``w`` is unchanged since it was last packed this way."""
    if type(w) not in (torch.Tensor, torch.nn.Parameter) or w.is_inference():
        return pack(w)
    key = (id(w), pack)
    hit = _CACHE.get(key)
    state = _state(w)
    if hit is not None and hit[0]() is w and hit[1] == state:
        return hit[2]
    out = pack(w)
    _CACHE[key] = (weakref.ref(w, lambda _, key=key: _CACHE.pop(key, None)), state, out)
    return out


def cached_count() -> int:
    """Packed weights held now."""
    return len(_CACHE)


def clear() -> None:
    """Drop every packed copy (after updating a weight through ``.data``)."""
    _CACHE.clear()
