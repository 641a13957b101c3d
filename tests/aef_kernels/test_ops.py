"""Every op spec (aef_kernels.ops) is coherent, and every backend that can run a spec's examples here
matches the reference on them, forward and backward: the tests an op gets from its declaration."""

from __future__ import annotations

import inspect

import pytest
import torch

import aef_kernels as K
from aef_kernels import dispatch
from aef_kernels.ops import SPECS
from aef_kernels.spec import tensors

CPU = torch.device("cpu")
BY_ID = {f"{spec.name}[{name}]": (spec, name) for spec in SPECS for name in spec.examples(CPU, torch.float32)}


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_spec_is_coherent(spec):
    """The inputs record has the public signature's fields in order; the public function has that
    signature plus backend=; every example passes the checks unchanged; the cost floor is finite and
    grows with the backward; the named sizes read the examples."""
    assert tuple(inspect.signature(spec.check).parameters) == spec.inputs._fields
    public = inspect.signature(getattr(K, spec.name))
    assert tuple(public.parameters) == spec.inputs._fields + ("backend",)
    assert set(spec.activations) <= set(spec.inputs._fields)
    for example in spec.examples(CPU, torch.float32).values():
        checked = spec.check(*example)
        assert all(a is b or a == b for a, b in zip(checked, example))
        fwd, both = spec.cost(example, False), spec.cost(example, True)
        assert 0 < fwd.bytes < both.bytes and 0 <= fwd.flops <= both.flops
        assert all(isinstance(size.of(example), int) for size in spec.sizes.values())


def _differentiable(inputs):
    return [t for _, t in tensors(inputs) if t.is_floating_point()]


def _run(spec, inputs, backend):
    leaves = {id(t): t.detach().clone().requires_grad_() for t in _differentiable(inputs)}

    def swap(value):
        if isinstance(value, torch.Tensor):
            return leaves.get(id(value), value)
        if isinstance(value, tuple) and hasattr(value, "_fields"):
            return type(value)(*(swap(v) for v in value))
        return value

    args = type(inputs)(*(swap(v) for v in inputs))
    out = getattr(K, spec.name)(*args, backend=backend)
    outs = out if isinstance(out, tuple) else (out,)
    weights = [torch.linspace(-1, 1, o.numel()).reshape(o.shape).to(o.dtype) for o in outs]
    sum(((o * w).sum() for o, w in zip(outs, weights))).backward()
    return outs, [t.grad for t in leaves.values()]


@pytest.mark.parametrize("case", sorted(BY_ID))
@pytest.mark.parametrize("backend", [b for b in dispatch.BACKENDS if b != "reference"])
def test_backend_matches_the_reference_on_the_specs_examples(case, backend):
    """Forward outputs and every input gradient of a backend equal the reference's (float32)."""
    spec, name = BY_ID[case]
    torch.manual_seed(0)
    inputs = spec.examples(CPU, torch.float32)[name]
    reasons = dispatch.not_supported_reasons(spec.name, backend, inputs)
    if reasons:
        pytest.skip(f"{backend} cannot run {case} here: {'; '.join(reasons)}")
    got, got_grads = _run(spec, inputs, backend)
    want, want_grads = _run(spec, inputs, "reference")
    for g, w in zip(got + tuple(got_grads), want + tuple(want_grads)):
        if w is None:
            assert g is None
            continue
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)
