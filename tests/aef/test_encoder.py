"""aef.model.encoder: the STP block and encoder (docs/model.md §4.2-4.4)."""

import pytest
import torch

import aef_kernels as K
from aef.model.config import AEFConfig
from aef.model.encoder import STPBlock, STPEncoder
from aef.model.layers import sincos_2d

CFG = AEFConfig.from_preset("tiny")


@pytest.fixture
def encoder():
    torch.manual_seed(0)
    return STPEncoder(CFG).eval()


def _inputs(B=2, T=4, L=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, L // 2, L // 2, CFG.d_p, generator=g)
    tc = torch.randn(B, T, CFG.timecode_dim, generator=g)
    return x, tc


@pytest.mark.parametrize("L", [16, 48])
def test_block_and_encoder_shapes(encoder, L):
    """STPBlock keeps the three path shapes; STPEncoder maps (B, T, L/2, L/2, d_p) to itself."""
    B, T = 2, 3
    x, tc = _inputs(B, T, L)
    block = STPBlock(CFG)
    xs = torch.randn(B, T, L // 16, L // 16, CFG.d_s)
    xt = torch.randn(B, T, L // 8, L // 8, CFG.d_t)
    ys, yt, yp = block(xs, xt, x, tc, None)
    assert (ys.shape, yt.shape, yp.shape) == (xs.shape, xt.shape, x.shape)
    assert encoder(x, tc).shape == x.shape


def test_frame_order_equivariance(encoder):
    """Permuting frames (with their timecodes and masks) permutes the output the same way."""
    x, tc = _inputs()
    mask = torch.rand(2, 4, 16, 16) > 0.2
    perm = torch.tensor([2, 0, 3, 1])
    a = encoder(x, tc, mask)[:, perm]
    b = encoder(x[:, perm], tc[:, perm], mask[:, perm])
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mask_kind", ["frame", "pixel"])
def test_masked_frames_equal_removed_frames(encoder, mask_kind):
    """Valid frames' outputs with extra masked frames full of huge garbage equal the outputs
    without those frames, and no gradient reaches the masked frames from the valid outputs."""
    x, tc = _inputs(B=1, T=3)
    garbage = 1e4 * torch.randn(1, 2, *x.shape[2:])
    x_all = torch.cat([x, garbage], dim=1).requires_grad_()
    tc_all = torch.cat([tc, 50 * torch.randn(1, 2, tc.shape[-1])], dim=1)
    valid = torch.tensor([[True, True, True, False, False]])
    if mask_kind == "pixel":
        valid = valid[:, :, None, None].expand(1, 5, 16, 16)
    out = encoder(x_all, tc_all, valid)
    ref = encoder(x, tc)
    torch.testing.assert_close(out[:, :3], ref, rtol=1e-4, atol=1e-4)
    out[:, :3].sum().backward()
    assert (x_all.grad[:, 3:] == 0).all() and x_all.grad[:, :3].abs().sum() > 0


def test_samples_are_independent(encoder):
    """Changing one sample of the batch leaves the other's output unchanged."""
    x, tc = _inputs()
    x2 = x.clone()
    x2[1] = torch.randn_like(x2[1])
    torch.testing.assert_close(encoder(x, tc)[0], encoder(x2, tc)[0], rtol=1e-5, atol=1e-5)


def test_position_code_is_fixed_and_distinct():
    """The 2-D position code works for any grid and gives each position a different code."""
    for h in (1, 3, 8):
        code = sincos_2d(h, h, 64)
        assert code.shape == (h, h, 64)
        flat = code.reshape(h * h, 64)
        assert torch.cdist(flat, flat).add(torch.eye(h * h)).min() > 0


def test_the_callers_backend_reaches_the_kernel_calls():
    """The encoder takes its backend from the caller's context: 'cuda' on CPU tensors raises
    BackendUnavailableError instead of silently falling back."""
    enc = STPEncoder(CFG)
    x, tc = _inputs(L=16)
    with K.use_backend("cuda"), pytest.raises(K.BackendUnavailableError):
        enc(x, tc)


def test_compiles_with_fullgraph(encoder):
    """torch.compile(fullgraph=True) of the encoder on CPU traces without graph breaks and matches eager.

    Dynamo (which raises on any graph break under fullgraph) and AOTAutograd's fake-tensor tracing
    are what this checks; the "aot_eager" backend skips Inductor's C++ code generation, which alone
    takes over a minute on a 2-core machine (the default backend passes too; see
    benchmarks/train_step.py --compile).
    """
    torch._dynamo.reset()
    x, tc = _inputs(B=1, T=2, L=16)
    mask = torch.tensor([[True, False]])
    with K.use_backend("reference"):
        compiled = torch.compile(encoder, fullgraph=True, backend="aot_eager")
        # Only the valid frame: outputs at masked frames are unspecified (eager skips them).
        torch.testing.assert_close(compiled(x, tc, mask)[:, :1], encoder(x, tc, mask)[:, :1], rtol=1e-4, atol=1e-4)
