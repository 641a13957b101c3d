"""torch.compile(fullgraph=True) of every public function on CPU: dispatch and validation are
plain Python over tensor metadata, so Dynamo traces through them into the reference ops without a
graph break, and the compiled function computes what the eager one does."""

import pytest
import torch

import aef_kernels as K
from aef_kernels.ops import BY_NAME, SPECS, ExchangeParams


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_public_function_compiles_fullgraph(spec):
    """Each public function compiles with fullgraph=True (no graph break) and matches eager, on the
    first example of its spec."""
    torch._dynamo.reset()
    fn = getattr(K, spec.name)
    args = tuple(next(iter(spec.examples(torch.device("cpu"), torch.float32).values())))
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(*args), fn(*args), rtol=1e-5, atol=1e-5)


def test_inductor_compiles_a_composition_with_backend_context():
    """Inductor compiles a function mixing several ops inside use_backend("reference"), with grads."""
    torch._dynamo.reset()
    x = torch.randn(2, 4, 4, 8, requires_grad=True)
    w = torch.randn(16, 8, 2, 2)

    def f(x):
        with K.use_backend("reference"):
            y = K.group_norm_nhwc(x, None, None, 4, activation="gelu")
            u = K.vmf_normalize(K.resample_down(y, w, None, 2))
            return K.batch_uniformity_loss(u)

    compiled = torch.compile(f, fullgraph=True)
    loss = compiled(x)
    (g,) = torch.autograd.grad(loss, x)
    x2 = x.detach().clone().requires_grad_()
    (g_eager,) = torch.autograd.grad(f(x2), x2)
    torch.testing.assert_close(loss, f(x))
    torch.testing.assert_close(g, g_eager, rtol=1e-4, atol=1e-5)


def test_exchange_params_as_plain_tuple_compiles():
    """A plain tuple of twelve tensors is accepted in place of ExchangeParams, also under compile."""
    torch._dynamo.reset()
    xs, xt, xp, params = BY_NAME["pyramid_exchange"].typical(torch.device("cpu"), torch.float32)
    compiled = torch.compile(K.pyramid_exchange, fullgraph=True, backend="aot_eager")
    out = compiled(xs, xt, xp, tuple(params))
    expected = K.pyramid_exchange(xs, xt, xp, ExchangeParams(*params))
    for a, b in zip(out, expected):
        torch.testing.assert_close(a, b)
