"""Input poisoning: NaN and Inf put into the inputs of every op, on every backend.

The promise checked here (docs/kernels.md §2.6):

- a non-finite value at a *masked* position (a key/value frame whose mask is False, or any frame of
  a sequence whose keys are all masked: its q and upstream gradient included) never reaches any
  output or gradient: results equal the reference's on clean data;
- a non-finite value in one attention sequence (pixel and head), one precision-operator frame, one
  resampled sample or one normalised row never changes another's output or input gradient
  (parameter gradients are sums over the batch and carry it, as they should);
- ``batch_uniformity_loss`` is one scalar over the batch, so a non-finite sample makes the loss
  non-finite (it is never hidden); its input gradient changes only in that sample and its two
  partners b-1 and b+1.

Each neighbour is compared with the reference run on the clean inputs (the poisoned elements put
back to their finite values). The CUDA backend needs a device; its cases are marked ``gpu``.
"""

from __future__ import annotations

import pytest
import torch

import aef_kernels as K

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = ["reference", "triton", pytest.param("cuda", marks=pytest.mark.gpu)]
POISONS = [float("nan"), float("inf")]
ATOL, RTOL = 2e-5, 2e-4


def _leaves(*tensors):
    return [t.detach().clone().to(DEVICE).requires_grad_() for t in tensors]


def _run(fn, inputs, cot):
    """(output, gradients of every input) for the upstream gradient ``cot``."""
    leaves = _leaves(*inputs)
    out = fn(*leaves)
    grads = torch.autograd.grad(out, leaves, cot.to(DEVICE))
    return [out.detach().cpu()] + [g.cpu() for g in grads]


def _assert_same(got, want, index, what):
    """got[i][index] equals want[i][index] for every result i (output, then input gradients)."""
    names = ["output"] + [f"grad of input {i}" for i in range(len(got) - 1)]
    for name, g, w in zip(names, got, want):
        g, w = g[index], w[index]
        assert torch.isfinite(g).all(), f"{what}: {name} has {int((~torch.isfinite(g)).sum())} non-finite elements"
        torch.testing.assert_close(g, w, rtol=RTOL, atol=ATOL, msg=lambda m: f"{what}: {name}: {m}")


# --- axial time attention ------------------------------------------------------------------------

def _attention_inputs(Tq, T, nh, d, seed=0):
    """q, k, v of one sample with W = 4 pixels: pixel 0 has every key masked, pixel 1 one masked key
    frame (frame 1), pixels 2 and 3 every key valid. The upstream gradient comes with them."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(1, Tq, 1, 4, nh, d, generator=gen)
    k, v = (torch.randn(1, T, 1, 4, nh, d, generator=gen) for _ in range(2))
    mask = torch.ones(1, T, 1, 4, dtype=torch.bool)
    mask[0, :, 0, 0] = False
    mask[0, 1, 0, 1] = False
    cot = torch.randn(1, Tq, 1, 4, nh, d, generator=gen)
    return q, k, v, mask, cot


def _attention(backend, mask):
    return lambda q, k, v: K.axial_time_attention(q, k, v, key_padding_mask=mask.to(DEVICE), backend=backend)


# (Tq, T, heads, d): the float32 tile is 16 x 16, so T = 5 packs two pixels (or one pixel's two
# heads) into one single-tile program, Tq = 1 is the summarizer's query, T = 40 takes the key loop.
ATTENTION_SHAPES = [(5, 5, 1, 16), (1, 5, 2, 16), (3, 7, 1, 32), (40, 40, 1, 16)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", ATTENTION_SHAPES, ids=lambda s: "Tq{}-T{}-h{}-d{}".format(*s))
@pytest.mark.parametrize("poison", POISONS, ids=["nan", "inf"])
@pytest.mark.parametrize("where", ["masked_frame", "dead_pixel"])
def test_attention_masked_positions_never_reach_a_result(backend, shape, poison, where):
    """NaN/Inf in a masked key/value frame, or anywhere in a pixel whose keys are all masked (its q,
    k, v and its upstream gradient), leaves every output and gradient equal to the clean reference's,
    the masked pixel's own zeros included."""
    Tq, T, nh, d = shape
    q, k, v, mask, cot = _attention_inputs(Tq, T, nh, d)
    want = _run(_attention("reference", mask), (q, k, v), cot)
    q, k, v, cot = (t.clone() for t in (q, k, v, cot))
    if where == "masked_frame":
        k[0, 1, 0, 1] = poison
        v[0, 1, 0, 1] = poison
    else:
        for t in (q, k, v, cot):
            t[0, :, 0, 0] = poison
    got = _run(_attention(backend, mask), (q, k, v), cot)
    _assert_same(got, want, (slice(None),) * 4, f"{backend}, poison {poison} in the {where}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", ATTENTION_SHAPES, ids=lambda s: "Tq{}-T{}-h{}-d{}".format(*s))
@pytest.mark.parametrize("poison", POISONS, ids=["nan", "inf"])
@pytest.mark.parametrize("operand", ["q", "k", "v", "dout"])
def test_attention_poisoned_sequence_leaves_neighbours_alone(backend, shape, poison, operand):
    """NaN/Inf at a valid frame of pixel 2 (in q, k, v or the upstream gradient) leaves the outputs
    and gradients of pixels 0, 1 and 3 equal to the clean reference's."""
    Tq, T, nh, d = shape
    q, k, v, mask, cot = _attention_inputs(Tq, T, nh, d)
    want = _run(_attention("reference", mask), (q, k, v), cot)
    q, k, v, cot = (t.clone() for t in (q, k, v, cot))
    target = {"q": q, "k": k, "v": v, "dout": cot}[operand]
    target[0, target.shape[1] - 1, 0, 2, 0, 3] = poison
    got = _run(_attention(backend, mask), (q, k, v), cot)
    for w in (0, 1, 3):
        _assert_same(got, want, (slice(None), slice(None), slice(None), w),
                     f"{backend}, poison {poison} in pixel 2's {operand}, pixel {w}")


# --- the frame-wise ops ---------------------------------------------------------------------------

def _precision_case(gen, dtype=torch.float32):
    N, H, W, C = 3, 5, 6, 8
    x = torch.randn(N, H, W, C, generator=gen)
    params = [torch.randn(C, generator=gen) * 0.5 + 1, torch.randn(C, generator=gen) * 0.1,
              torch.randn(4 * C, C, 3, 3, generator=gen) * 0.1, torch.randn(4 * C, generator=gen) * 0.1,
              torch.randn(C, 4 * C, 3, 3, generator=gen) * 0.05, torch.randn(C, generator=gen) * 0.1]
    params = [p.to(DEVICE) for p in params]
    return x, lambda backend: (lambda x: K.precision_operator(x, *params, num_groups=4, backend=backend))


def _group_norm_case(gen):
    x = torch.randn(3, 4, 5, 8, generator=gen)
    w, b = (torch.randn(8, generator=gen).to(DEVICE) for _ in range(2))
    return x, lambda backend: (lambda x: K.group_norm_nhwc(x, w, b, num_groups=2, activation="gelu",
                                                          backend=backend))


def _down_case(gen):
    x = torch.randn(3, 8, 8, 6, generator=gen)
    w, b = torch.randn(10, 6, 2, 2, generator=gen).to(DEVICE), torch.randn(10, generator=gen).to(DEVICE)
    return x, lambda backend: (lambda x: K.resample_down(x, w, b, 2, backend=backend))


def _up_case(gen):
    x = torch.randn(3, 4, 4, 6, generator=gen)
    w, b = torch.randn(10, 6, generator=gen).to(DEVICE), torch.randn(10, generator=gen).to(DEVICE)
    return x, lambda backend: (lambda x: K.resample_up(x, w, b, 2, backend=backend))


def _vmf_case(gen):
    x = torch.randn(3, 7, 40, generator=gen)
    return x, lambda backend: (lambda x: K.vmf_normalize(x, backend=backend))


FRAME_CASES = {"precision_operator": _precision_case, "group_norm_nhwc": _group_norm_case,
               "resample_down": _down_case, "resample_up": _up_case, "vmf_normalize": _vmf_case}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", sorted(FRAME_CASES))
@pytest.mark.parametrize("poison", POISONS, ids=["nan", "inf"])
@pytest.mark.parametrize("in_grad", [False, True], ids=["in_x", "in_dout"])
def test_poisoned_frame_leaves_other_frames_alone(backend, op, poison, in_grad):
    """NaN/Inf in one element of frame (or sample, or row block) 1, in the input or in the upstream
    gradient, leaves frames 0 and 2 of the output and of the input gradient equal to the clean
    reference's."""
    gen = torch.Generator().manual_seed(1)
    x, make = FRAME_CASES[op](gen)
    with torch.no_grad():
        out_shape = make("reference")(x.to(DEVICE)).shape
    cot = torch.randn(out_shape, generator=gen)
    want = _run(make("reference"), (x,), cot)
    x, cot = x.clone(), cot.clone()
    target = cot if in_grad else x
    target[1, 1, 2] = poison
    got = _run(make(backend), (x,), cot)
    for n in (0, 2):
        _assert_same(got, want, n, f"{op} on {backend}, poison {poison} in frame 1, frame {n}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("poison", POISONS, ids=["nan", "inf"])
def test_pyramid_exchange_poisoned_sample_leaves_others_alone(backend, poison):
    """NaN/Inf in sample 1 of one path's input leaves samples 0 and 2 of all three outputs and of all
    three input gradients equal to the clean reference's."""
    gen = torch.Generator().manual_seed(2)
    ds, dt, dp = 8, 6, 4
    xs, xt, xp = (torch.randn(3, s, s, c, generator=gen) for s, c in ((2, ds), (4, dt), (16, dp)))
    shapes = [(ds, dp, 8, 8), (ds,), (ds, dt, 2, 2), (ds,), (dt, dp, 4, 4), (dt,), (dt, ds), (dt,), (dp, dt),
              (dp,), (dp, ds), (dp,)]
    params = K.ExchangeParams(*(torch.randn(s, generator=gen).to(DEVICE) * 0.2 for s in shapes))
    cots = [torch.randn(x.shape, generator=gen) for x in (xs, xt, xp)]

    def run(backend, inputs):
        leaves = _leaves(*inputs)
        outs = K.pyramid_exchange(*leaves, params, backend=backend)
        grads = torch.autograd.grad(outs, leaves, [c.to(DEVICE) for c in cots])
        return [t.detach().cpu() for t in (*outs, *grads)]

    want = run("reference", (xs, xt, xp))
    xp = xp.clone()
    xp[1, 3, 5, 1] = poison
    got = run(backend, (xs, xt, xp))
    for n in (0, 2):
        _assert_same(got, want, n, f"pyramid_exchange on {backend}, poison {poison} in sample 1, sample {n}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("poison", POISONS, ids=["nan", "inf"])
def test_batch_uniformity_poison_is_loud_and_local(backend, poison):
    """A NaN/Inf in sample 2 of 6 makes the loss non-finite, and changes du only in samples 1, 2 and
    3 (the sample and its partners): samples 0, 4 and 5 keep the clean reference's gradient."""
    gen = torch.Generator().manual_seed(3)
    u = torch.nn.functional.normalize(torch.randn(6, 5, 16, generator=gen), dim=-1)
    cot = torch.tensor(1.0)
    fn = lambda backend: (lambda u: K.batch_uniformity_loss(u, backend=backend))  # noqa: E731
    want = _run(fn("reference"), (u,), cot)
    u = u.clone()
    u[2, 3, 7] = poison
    loss, du = _run(fn(backend), (u,), cot)
    assert not torch.isfinite(loss), f"{backend}: a non-finite sample gave the finite loss {loss.item()}"
    for n in (0, 4, 5):
        assert torch.isfinite(du[n]).all(), f"{backend}: du of sample {n} is not finite"
        torch.testing.assert_close(du[n], want[1][n], rtol=RTOL, atol=ATOL)
