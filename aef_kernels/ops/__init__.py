"""Every op of aef_kernels, declared once (docs/kernels.md §3). ``SPECS`` is the op list: the public
functions, the dispatcher's table, ``aef_kernels.info``, the benchmark families and the parametrised
tests are all derived from it. Adding an op means adding its spec here and its implementations."""

from __future__ import annotations

from ..spec import OpSpec
from .attention import SPEC as ATTENTION
from .precision import GROUP_NORM, PRECISION
from .resample import DOWN, EXCHANGE, UP, ExchangeParams
from .sphere import UNIFORMITY, VMF

SPECS: tuple[OpSpec, ...] = (ATTENTION, PRECISION, GROUP_NORM, DOWN, UP, EXCHANGE, VMF, UNIFORMITY)
BY_NAME: dict[str, OpSpec] = {spec.name: spec for spec in SPECS}

__all__ = ["BY_NAME", "SPECS", "ExchangeParams"]
