"""Attention peers, called from the model's layout (B, T, H, W, heads, d) as a user would call them,
so each does the same job as ``K.axial_time_attention``, layout changes included.

``sdpa-*`` runs the reference op with PyTorch's SDPA restricted to one backend (the reference is the
single definition of the op, key mask and all); xformers and flash-attn take (batch, seq, heads, d)
and are timed without a key mask only.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Callable, Optional

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

import aef_kernels as K

from .providers import NotAvailable

SDPA_BACKENDS = {
    "sdpa-math": SDPBackend.MATH,
    "sdpa-flash": SDPBackend.FLASH_ATTENTION,
    "sdpa-efficient": SDPBackend.EFFICIENT_ATTENTION,
    "sdpa-cudnn": SDPBackend.CUDNN_ATTENTION,
}
LIBRARIES = ("xformers", "flash-attn")
PEERS = tuple(SDPA_BACKENDS) + LIBRARIES


def _import(module: str, package: str):
    try:
        return importlib.import_module(module)
    except Exception as exc:  # not installed, or installed against another torch/CUDA
        raise NotAvailable(f"{package} is not importable ({type(exc).__name__}: {exc})") from exc


def _sequences(x: torch.Tensor) -> torch.Tensor:
    B, T, H, W, nh, d = x.shape
    return x.permute(0, 2, 3, 1, 4, 5).reshape(B * H * W, T, nh, d)


def _from_sequences(o: torch.Tensor, shape) -> torch.Tensor:
    B, Tq, H, W, nh, d = shape
    return o.reshape(B, H, W, Tq, nh, d).permute(0, 3, 1, 2, 4, 5).contiguous()


def _sdpa(backend: SDPBackend) -> Callable:
    def call(q, k, v, mask):
        with sdpa_kernel([backend]), K.use_backend("reference"):
            return K.axial_time_attention(q, k, v, key_padding_mask=mask)

    return call


def _library(name: str) -> Callable:
    if name == "xformers":
        fn = _import("xformers.ops", "xformers").memory_efficient_attention
    else:
        fn = _import("flash_attn", "flash-attn").flash_attn_func

    def call(q, k, v, mask):
        return _from_sequences(fn(_sequences(q), _sequences(k), _sequences(v)), q.shape)

    return call


def peer(name: str, mask: Optional[torch.Tensor]) -> Callable:
    """The peer's attention function ``(q, k, v, mask) -> o``, or NotAvailable."""
    if name in SDPA_BACKENDS:
        return _sdpa(SDPA_BACKENDS[name])
    if name not in LIBRARIES:
        raise ValueError(f"peer: expected one of {PEERS}, got {name!r}")
    if mask is not None:
        raise NotAvailable(f"{name} is timed without a key mask only (run with --no-mask)")
    return _library(name)


def trial(fn: Callable, *args) -> None:
    """Call ``fn`` once; SDPA's "no available kernel" (with the warnings that say why) and any other
    refusal of a peer become NotAvailable."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            fn(*args)
        except (RuntimeError, NotImplementedError, ValueError, TypeError) as exc:
            why = [str(w.message).splitlines()[0] for w in caught]
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise NotAvailable("; ".join([first] + why)) from exc
