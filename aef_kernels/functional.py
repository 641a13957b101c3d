"""The public functions of aef_kernels, one per op spec (docs/kernels.md §2).

Each function validates its arguments with its spec's ``check`` (a clear ``ValueError``/``TypeError``
before anything runs), which returns the op's typed inputs record, then hands that record to the
dispatcher, which picks a backend; every backend implementation receives its fields by name.

Empty inputs: every dimension of every tensor argument must be at least 1; a zero-size dimension is
a ``ValueError`` naming it (one rule for all ops, checked before any backend runs).

Parameters (weights and biases) may be in any floating dtype: like autocast, every backend computes
in the dtype of the activation and casts parameters to it.
"""

from __future__ import annotations

import inspect
from typing import Callable, Optional

from . import dispatch
from .ops import SPECS, ExchangeParams
from .spec import OpSpec


def _public(spec: OpSpec) -> Callable:
    check, name = spec.check, spec.name

    def op(*args, backend: Optional[str] = None, **kwargs):
        return dispatch.call(name, check(*args, **kwargs), backend)

    op.__name__ = op.__qualname__ = name
    op.__module__ = __name__
    op.__doc__ = spec.doc
    signature = inspect.signature(check)
    backend = inspect.Parameter("backend", inspect.Parameter.KEYWORD_ONLY, default=None, annotation="Optional[str]")
    op.__signature__ = signature.replace(parameters=[*signature.parameters.values(), backend],
                                         return_annotation=inspect.Signature.empty)
    return op


for _spec in SPECS:
    globals()[_spec.name] = _public(_spec)

__all__ = ["ExchangeParams", *(spec.name for spec in SPECS)]
