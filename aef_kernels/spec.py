"""What declares an op once (docs/kernels.md §3): :class:`OpSpec`, and what a backend declares it can
run (:class:`Capability`), from which the reasons it cannot are derived, in one wording everywhere.

An op's spec gives its public signature (the ``check`` function, which validates and normalises the
arguments into the op's typed ``Inputs`` record), its reference, the named sizes backends may
limit, its cost floor and example inputs. Everything that lists ops (the dispatcher's table, the
public functions, ``python -m aef_kernels.info``, the benchmark families and the parametrised tests)
is derived from ``aef_kernels.ops.SPECS``.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping, NamedTuple, Optional

import torch

from .checks import listing


@dataclass(frozen=True)
class Cost:
    """The two floors of a call: bytes it must move (each input read once, each output written once)
    and matrix FLOPs it must do (2 per multiply-add); see docs/kernels.md §7."""

    bytes: float
    flops: float

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.bytes + other.bytes, self.flops + other.flops)


@dataclass(frozen=True)
class Size:
    """A named size of an op's inputs that a backend may limit, e.g. the head dim of attention."""

    label: str
    of: Callable[[NamedTuple], int]


@dataclass(frozen=True)
class OpSpec:
    name: str
    # The module that implements it in every backend package (reference/, triton/, cuda/), named
    # like the family of ops it belongs to.
    module: str
    # The benchmark family (benchmarks/ops.py).
    family: str
    inputs: type
    # The public signature: validates the arguments (ValueError/TypeError naming the argument) and
    # returns them as an ``inputs`` record.
    check: Callable[..., NamedTuple]
    reference: Callable
    # The inputs whose dtype the computation runs in (parameters are cast to it, any float dtype).
    activations: tuple[str, ...]
    cost: Callable[[NamedTuple, bool], Cost]
    # Small inputs (name -> record) covering the op's paths: masks, odd sizes, strided views.
    examples: Callable[[torch.device, torch.dtype], dict[str, NamedTuple]]
    # One typical input of the model's kind, for ``aef_kernels.info``.
    typical: Callable[[torch.device, torch.dtype], NamedTuple]
    sizes: Mapping[str, Size] = field(default_factory=dict)
    doc: str = ""

    def record(self, *args) -> NamedTuple:
        """This op's inputs record of ``args``: the record itself, or its fields in order."""
        if len(args) == 1 and isinstance(args[0], self.inputs):
            return args[0]
        return self.inputs(*args)


def backend_modules(package: str, specs) -> tuple[str, ...]:
    """The op modules of backend ``package`` (e.g. "aef_kernels.triton"): those of the specs'
    modules it has, in the specs' order. A backend implements an op by having its module."""
    names = dict.fromkeys(spec.module for spec in specs)
    return tuple(n for n in names if importlib.util.find_spec(f"{package}.{n}") is not None)


def tensors(inputs: NamedTuple) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for every tensor of an inputs record, looking into nested records."""
    for name, value in zip(inputs._fields, inputs):
        if isinstance(value, torch.Tensor):
            yield name, value
        elif isinstance(value, tuple) and hasattr(value, "_fields"):
            yield from ((f"{name}.{n}", t) for n, t in tensors(value))


@dataclass(frozen=True)
class Capability:
    """What one backend's implementation of one op can run, as data.

    ``devices``: device types of every tensor input (None: any). ``dtypes``: dtypes of the op's activations.
    ``one_of``/``at_most``: limits on the op's named sizes (keys of ``OpSpec.sizes``). ``check``:
    what cannot be said as data (shared memory of the device, powers of two), called with the inputs
    by name; it returns reasons in the same wording as the rest.
    """

    devices: Optional[tuple[str, ...]]
    dtypes: tuple[torch.dtype, ...]
    one_of: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    at_most: Mapping[str, int] = field(default_factory=dict)
    check: Optional[Callable[..., list[str]]] = None
    # Appended to the device reason: how to get there (e.g. the Triton interpreter for CPU tensors).
    device_note: str = ""

    def reasons(self, spec: OpSpec, backend: str, inputs: NamedTuple) -> list[str]:
        """Why ``backend`` cannot run ``spec`` on ``inputs``; [] if it can."""
        reasons = []
        elsewhere = {}
        for name, t in tensors(inputs):
            if self.devices is not None and t.device.type not in self.devices:
                elsewhere.setdefault(t.device.type, []).append(name)
        for device, names in elsewhere.items():
            note = f" ({self.device_note})" if self.device_note else ""
            reasons.append(f"{', '.join(names)} on {device}: the {backend} backend runs on {listing(self.devices)}{note}")
        dtypes = {getattr(inputs, n).dtype for n in spec.activations if getattr(inputs, n) is not None}
        for dt in sorted(dtypes - set(self.dtypes), key=str):
            reasons.append(f"dtype {listing([dt])} is not supported by the {backend} backend "
                           f"(supported: {listing(self.dtypes)})")
        for key, allowed in self.one_of.items():
            size = spec.sizes[key]
            value = size.of(inputs)
            if value not in allowed:
                reasons.append(f"{size.label} = {value} is not supported by the {backend} backend "
                               f"(supported: {listing(allowed)})")
        for key, limit in self.at_most.items():
            size = spec.sizes[key]
            value = size.of(inputs)
            if value > limit:
                reasons.append(f"{size.label} = {value} exceeds the {backend} backend's limit of {limit}")
        if self.check is not None and not reasons:
            reasons.extend(self.check(**inputs._asdict()))
        return reasons
