"""Who runs a case: the aef_kernels backends, ``torch.compile`` of the reference, and for attention the
peers (each PyTorch SDPA backend, xformers, flash-attn).

A provider that cannot run raises :class:`NotAvailable` with the reason, which becomes the row's
"not available: <reason>". The Triton interpreter is never timed: its speed says nothing about
the kernels.
"""

from __future__ import annotations

import os
from typing import Callable

import torch

import aef_kernels as K

KERNEL_BACKENDS = ("reference", "triton", "cuda", "auto")
COMPILE = "compile"
MODEL_PROVIDERS = ("reference", COMPILE, "triton", "cuda", "auto")


class NotAvailable(Exception):
    """This provider cannot run this case here; the message says why."""


class Skipped(Exception):
    """This provider could run this case but the run leaves it out (budget); the message says why."""


def interpreter_reason(provider: str, device: torch.device) -> str | None:
    if provider == "triton" and device.type == "cpu":
        if os.environ.get("TRITON_INTERPRET") == "1":
            return "Triton on CPU tensors runs the interpreter, which is not benchmarked"
        return "Triton kernels run on CUDA tensors (on CPU only under the interpreter, not benchmarked)"
    return None


def under_provider(provider: str, fn: Callable, device: torch.device) -> Callable:
    """``fn`` run with every aef_kernels op on ``provider``'s backend; for ``compile``, ``torch.compile``
    of ``fn`` with the reference backend (Dynamo traces through it and Inductor fuses it)."""
    reason = interpreter_reason(provider, device)
    if reason:
        raise NotAvailable(reason)
    if provider == COMPILE:
        compiled = torch.compile(fn, dynamic=False)

        def call(*args):
            with K.use_backend("reference"):
                return compiled(*args)

        return call
    if provider not in KERNEL_BACKENDS:
        raise ValueError(f"provider: expected one of {MODEL_PROVIDERS}, got {provider!r}")

    def call(*args):
        with K.use_backend(provider):
            return fn(*args)

    return call
