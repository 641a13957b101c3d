"""Backend registry and dispatch (docs/kernels.md §4).

Each op (declared once in ``aef_kernels.ops``) has one implementation per backend, registered with
:func:`register` together with the backend's :class:`~aef_kernels.spec.Capability`: the devices,
dtypes and sizes it supports, as data, plus an op-specific check. The reasons it cannot run on given
inputs are derived from that declaration (an empty list means it can), in the spirit of xformers'
``not_supported_reasons``, and worded the same for every backend. The reference of every op is
registered from its spec and runs on any device and float dtype.

Selection, in order of precedence: the ``backend=`` argument of a call, the innermost
:func:`use_backend` context, the ``AEF_KERNELS_BACKEND`` environment variable (read once, at
import), then ``"auto"``. ``auto`` walks :func:`auto_order` (the :data:`AUTO_PRIORITY` table on
CUDA, the reference elsewhere) for the inputs' device type and dtype and takes the first backend
with no reasons; a backend that was asked for by name raises
:class:`BackendUnavailableError` listing every reason instead of falling back. Implementations
receive the op's validated inputs by name (the fields of its inputs record).

Everything consulted here is a plain Python value (module globals, tensor metadata), so Dynamo
traces dispatch into guards and ``torch.compile(fullgraph=True)`` sees no graph break.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from typing import Callable, Iterator, NamedTuple, Optional

import torch

from .checks import FLOAT_DTYPES
from .ops import BY_NAME, SPECS
from .spec import Capability

_log = logging.getLogger("aef_kernels")

OPS = tuple(spec.name for spec in SPECS)
BACKENDS = ("reference", "triton", "cuda")
CHOICES = BACKENDS + ("auto",)

# The order in which ``auto`` tries backends on CUDA tensors, per op and activation dtype (None: the
# other dtypes), with what each entry rests on. No GPU timing exists yet, so every entry rests on the
# compiled code and the cost floors (benchmarks/notes/perf_contract.md), not on a measurement. The
# `cuda` backend is absent on purpose: it is selected only by name until its kernels have been
# verified on a GPU. An op without an entry (no evidence yet) and every other device type run the
# reference.
_TRITON_FIRST = ("triton", "reference")
_REFERENCE_FIRST = ("reference", "triton")
AUTO_PRIORITY: dict[str, dict[Optional[torch.dtype], tuple[str, ...]]] = {
    # One pass per direction reading q, k, v in place, the T x T scores kept on chip, tensor-core dots
    # in every dtype (tf32x3 for float32); the reference first copies q, k, v into SDPA's layout.
    "axial_time_attention": {None: _TRITON_FIRST},
    # 16-bit: tensor-core implicit GEMMs with GroupNorm, GELU and the residual fused, so the 4C
    # intermediate is written once instead of written and read by separate kernels. float32: the
    # Triton convolutions run tf32x3 (three TF32 passes, float32 accuracy) where cuDNN's float32
    # convolutions run one TF32 pass by default: ~3x the matrix work on compute-bound shapes.
    "precision_operator": {torch.float32: _REFERENCE_FIRST, None: _TRITON_FIRST},
    # Memory bound: statistics and the GELU'd output in two passes over x; the reference converts to
    # float32, normalises and applies GELU as separate passes.
    "group_norm_nhwc": {None: _TRITON_FIRST},
    # GEMMs over the space-to-depth view read in place (no im2col copy), bias fused; in float32 on
    # tensor cores (tf32x3) where cuBLAS multiplies with FMA (TF32 off by default).
    "resample_down": {None: _TRITON_FIRST},
    # The 1x1 map at low resolution and the bilinear gather in one pass; the reference writes and
    # re-reads the interpolated map.
    "resample_up": {None: _TRITON_FIRST},
    # Each of the three sums written once by one pass; the reference runs six resamplings and adds.
    "pyramid_exchange": {None: _TRITON_FIRST},
    # Memory bound, one pass per direction in both backends; the Triton pass keeps the norms on chip.
    "vmf_normalize": {None: _TRITON_FIRST},
    # One pass writing the dots and per-program partial sums; the reference materialises the rolled
    # copy of u.
    "batch_uniformity_loss": {None: _TRITON_FIRST},
}
_OTHER_DEVICES = ("reference",)


def auto_order(op: str, device_type: str, dtype: torch.dtype) -> tuple[str, ...]:
    """The backends ``auto`` tries, in order, for ``op`` on tensors of this device type and dtype."""
    table = AUTO_PRIORITY.get(op) if device_type == "cuda" else None
    if table is None:
        return _OTHER_DEVICES
    return table.get(dtype, table[None])


class BackendUnavailableError(RuntimeError):
    """A backend that was asked for by name cannot run the given inputs."""


@dataclass(frozen=True)
class Implementation:
    op: str
    backend: str
    fn: Callable
    capability: Capability


_REGISTRY: dict[str, dict[str, Implementation]] = {op: {} for op in OPS}
# Why a whole backend is unusable here (Triton not importable, extension not built, ...), set once
# by the backend package at import.
_BACKEND_UNAVAILABLE: dict[str, list[str]] = {b: [] for b in BACKENDS}


def register(op: str, backend: str, capability: Capability):
    """Decorator registering ``fn`` as ``backend``'s implementation of ``op``, which can run what
    ``capability`` declares. ``fn`` is called with the op's validated inputs by name."""
    if op not in _REGISTRY:
        raise ValueError(f"unknown op {op!r}; known ops: {', '.join(OPS)}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; known backends: {', '.join(BACKENDS)}")

    def wrap(fn: Callable) -> Callable:
        _REGISTRY[op][backend] = Implementation(op, backend, fn, capability)
        return fn

    return wrap


REFERENCE_CAPABILITY = Capability(devices=None, dtypes=FLOAT_DTYPES)
for _spec in SPECS:
    register(_spec.name, "reference", REFERENCE_CAPABILITY)(_spec.reference)


def mark_backend_unavailable(backend: str, reason: str) -> None:
    """Record why ``backend`` cannot run at all on this installation."""
    _BACKEND_UNAVAILABLE[backend].append(reason)


def backend_unavailable_reasons(backend: str) -> list[str]:
    return list(_BACKEND_UNAVAILABLE[backend])


def _check_choice(name: str | None, source: str) -> None:
    if name is not None and name not in CHOICES:
        raise ValueError(f"{source}: unknown backend {name!r}; choose one of {', '.join(CHOICES)}")


_ENV_BACKEND = os.environ.get("AEF_KERNELS_BACKEND") or None
_check_choice(_ENV_BACKEND, "AEF_KERNELS_BACKEND")
_STACK: list[str] = []


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run every op inside the ``with`` block on backend ``name`` (or ``"auto"``)."""
    _check_choice(name, "use_backend")
    _STACK.append(name)
    try:
        yield
    finally:
        _STACK.pop()


def requested_backend(backend: str | None = None) -> str:
    """The backend a call with ``backend=`` would ask for, after the context and environment."""
    if backend is not None:
        _check_choice(backend, "backend")
        return backend
    if _STACK:
        return _STACK[-1]
    return _ENV_BACKEND or "auto"


def not_supported_reasons(op: str, backend: str, *args) -> list[str]:
    """Why ``backend`` cannot run ``op`` on these validated inputs (an inputs record, or its fields
    in order); [] if it can."""
    inputs = BY_NAME[op].record(*args)
    reasons = list(_BACKEND_UNAVAILABLE[backend])
    impl = _REGISTRY[op].get(backend)
    if impl is None:
        reasons.append(f"no {backend} implementation of {op}")
    elif not reasons:
        reasons.extend(impl.capability.reasons(BY_NAME[op], backend, inputs))
    return reasons


def _device_and_dtype(op: str, inputs: NamedTuple) -> tuple[str, torch.dtype]:
    """The device type of the inputs and the dtype of the op's first activation."""
    t = getattr(inputs, BY_NAME[op].activations[0])
    return t.device.type, t.dtype


def select(op: str, inputs, backend: str | None = None) -> Implementation:
    """The implementation that runs ``op`` on ``inputs`` (its record, or a tuple of its fields) for
    the requested backend."""
    inputs = BY_NAME[op].record(*inputs)
    name = requested_backend(backend)
    if name != "auto":
        reasons = not_supported_reasons(op, name, inputs)
        if reasons:
            raise BackendUnavailableError(
                f"{op}: backend {name!r} cannot run these inputs:\n  - " + "\n  - ".join(reasons)
            )
        return _REGISTRY[op][name]
    tried = []
    for candidate in auto_order(op, *_device_and_dtype(op, inputs)):
        reasons = not_supported_reasons(op, candidate, inputs)
        if not reasons:
            return _REGISTRY[op][candidate]
        tried.append((candidate, reasons))
        if not torch.compiler.is_compiling():
            _log.debug("%s: auto skips %s: %s", op, candidate, "; ".join(reasons))
    detail = "; ".join(f"{b}: {', '.join(r)}" for b, r in tried)
    raise BackendUnavailableError(f"{op}: no backend can run these inputs ({detail})")


def call(op: str, inputs: NamedTuple, backend: str | None = None):
    """Run ``op`` on its validated inputs record with the selected backend."""
    impl = select(op, inputs, backend)
    return impl.fn(**dict(zip(inputs._fields, inputs)))


def registered_backends(op: str) -> list[str]:
    return [b for b in BACKENDS if b in _REGISTRY[op]]
