"""One way for every backend to turn a forward/backward pair of functions into a differentiable
``torch.library`` op (docs/kernels.md §5).

:func:`kernel_op` defines two ops named ``aef_kernels::<backend>_<op>_fwd`` and ``..._bwd`` from
annotated Python functions and registers the pair's autograd. The Triton backend's ops are
``triton_op`` (their launches go through ``wrap_triton``, so tracing and fake tensors need no fake
implementation); the CUDA backend's are ``custom_op`` with the fake implementations given.

The pair follows one convention, so no backend writes its own ``setup_context``/``backward``:

- the forward returns its outputs, the first ``differentiable`` of which get gradients; the rest
  are auxiliary (statistics, saved activations) and are marked non-differentiable;
- ``saved`` names, in order, the forward inputs and outputs the backward takes after the output
  gradients (``backward(*grads, *saved)``); tensors are saved for backward, other values kept as
  they are;
- the backward returns one gradient per name of ``grads`` (forward inputs), in the dtype of that
  input; an input that was ``None`` (an absent bias) gets none back, whatever was computed.
"""

from __future__ import annotations

import inspect
from typing import Callable, Optional, Sequence

import torch

BACKEND_OP_KINDS = ("triton", "cuda")


def _define(qualname: str, fn: Callable, backend: str, fake: Optional[Callable]):
    if backend == "triton":
        if fake is not None:
            raise ValueError(f"{qualname}: Triton ops trace their launches; they take no fake implementation")
        return torch.library.triton_op(qualname, fn, mutates_args=())
    if backend == "cuda":
        if fake is None:
            raise ValueError(f"{qualname}: a CUDA op needs a fake implementation (shapes without running)")
        op = torch.library.custom_op(qualname, fn, mutates_args=(), device_types="cuda")
        op.register_fake(fake)
        return op
    raise ValueError(f"unknown op kind {backend!r}; expected one of {', '.join(BACKEND_OP_KINDS)}")


def kernel_op(op: str, backend: str, forward: Callable, backward: Callable, *, outputs: Sequence[str],
              saved: Sequence[str], grads: Sequence[str], differentiable: int = 1,
              fake_forward: Optional[Callable] = None, fake_backward: Optional[Callable] = None):
    """Define ``<backend>_<op>_fwd`` and ``<backend>_<op>_bwd`` and their autograd; returns both ops.

    ``outputs`` names the forward's outputs (the names ``saved`` may use); ``grads`` names the
    forward inputs the backward returns gradients for, in its return order.
    """
    names_in = tuple(inspect.signature(forward).parameters)
    names = set(names_in) | set(outputs)
    unknown = [n for n in tuple(saved) + tuple(grads) if n not in names]
    if unknown or not set(grads) <= set(names_in) or not 1 <= differentiable <= len(outputs):
        raise ValueError(f"{op}: bad autograd declaration (unknown names {unknown}, grads {tuple(grads)}, "
                         f"{differentiable} differentiable of outputs {tuple(outputs)})")
    fwd = _define(f"aef_kernels::{backend}_{op}_fwd", forward, backend, fake_forward)
    bwd = _define(f"aef_kernels::{backend}_{op}_bwd", backward, backend, fake_backward)
    grad_slot = {name: i for i, name in enumerate(grads)}

    def setup_context(ctx, inputs, output):
        output = output if isinstance(output, tuple) else (output,)
        values = dict(zip(names_in, inputs))
        values.update(zip(outputs, output))
        if len(output) > differentiable:
            ctx.mark_non_differentiable(*output[differentiable:])
        kept = [values[n] for n in saved]
        ctx.tensor_slots = [i for i, v in enumerate(kept) if v is None or isinstance(v, torch.Tensor)]
        ctx.constants = {i: v for i, v in enumerate(kept) if i not in ctx.tensor_slots}
        ctx.save_for_backward(*(kept[i] for i in ctx.tensor_slots))
        ctx.present = [values[n] is not None for n in names_in]

    def backward_fn(ctx, *grad_outputs):
        kept = dict(ctx.constants)
        kept.update(zip(ctx.tensor_slots, ctx.saved_tensors))
        result = bwd(*(g.contiguous() for g in grad_outputs[:differentiable]), *(kept[i] for i in range(len(kept))))
        result = result if isinstance(result, tuple) else (result,)
        return tuple(result[grad_slot[n]] if n in grad_slot and present else None
                     for n, present in zip(names_in, ctx.present))

    fwd.register_autograd(backward_fn, setup_context=setup_context)
    return fwd, bwd
