"""torch.compile(fullgraph=True) of every public function on CPU: dispatch and validation are
plain Python over tensor metadata, so Dynamo traces through them into the reference ops without a
graph break, and the compiled function computes what the eager one does."""

import pytest
import torch

import aef_kernels as K
from aef_kernels import dispatch
from aef_kernels.functional import ExchangeParams
from aef_kernels.info import example_args

PUBLIC = {
    "axial_time_attention": K.axial_time_attention,
    "precision_operator": K.precision_operator,
    "group_norm_nhwc": K.group_norm_nhwc,
    "resample_down": K.resample_down,
    "resample_up": K.resample_up,
    "pyramid_exchange": K.pyramid_exchange,
    "vmf_normalize": K.vmf_normalize,
    "batch_uniformity_loss": K.batch_uniformity_loss,
}


def small_args(op):
    """example_args shrunk along the batch axis so that compile + run stays quick."""
    args = example_args(op, torch.device("cpu"), torch.float32)
    batched = {"pyramid_exchange": 3, "axial_time_attention": 4}.get(op, 1)
    return tuple(a[:1] for a in args[:batched]) + args[batched:]


@pytest.mark.parametrize("op", dispatch.OPS)
def test_public_function_compiles_fullgraph(op):
    """Each public function compiles with fullgraph=True (no graph break) and matches eager."""
    torch._dynamo.reset()
    fn = PUBLIC[op]
    args = small_args(op)
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
    xs, xt, xp, params = small_args("pyramid_exchange")
    compiled = torch.compile(K.pyramid_exchange, fullgraph=True, backend="aot_eager")
    out = compiled(xs, xt, xp, tuple(params))
    expected = K.pyramid_exchange(xs, xt, xp, ExchangeParams(*params))
    for a, b in zip(out, expected):
        torch.testing.assert_close(a, b)
