"""Triton axial time attention against the reference: forward and gradients.

On CPU this runs under the Triton interpreter in float32, where the score tile is 16 x 16 (so T <= 16
takes the single-tile path and longer sequences the key loop); float16 cases cover the 64 x 64
tiles of the 16-bit dtypes. Outputs are NaN-poisoned so an unwritten element fails.
"""

import pytest
import torch

import aef_kernels as K
from aef_kernels import dispatch
from aef_kernels.reference import attention as ref
from aef_kernels.triton import attention as tri

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Interpreter runs of torch.library.opcheck cannot trace the kernel: under TRITON_INTERPRET=1
# wrap_triton returns the raw kernel, so AOT dispatch sees only the output allocation and its graph
# computes garbage. The remaining checks (schema, autograd registration, fake tensors) run.
OPCHECK_TESTS = ("test_schema", "test_autograd_registration", "test_faketensor") + (
    ("test_aot_dispatch_dynamic",) if DEVICE == "cuda" else ()
)


def make_qkv(gen, B, Tq, T, H, W, nh, d, fused=False, dtype=torch.float32):
    """q (B, Tq, ...), k, v (B, T, ...); ``fused`` takes all three as strided slices of one
    (B, T, H, W, 3, heads, d) tensor, the layout of a fused QKV projection."""
    if fused:
        assert Tq == T
        qkv = torch.randn(B, T, H, W, 3, nh, d, generator=gen).to(DEVICE, dtype).requires_grad_()
        return qkv, tuple(qkv[:, :, :, :, i] for i in range(3))
    leaves = [torch.randn(B, t, H, W, nh, d, generator=gen).to(DEVICE, dtype).requires_grad_() for t in (Tq, T, T)]
    return leaves, tuple(leaves)


def make_mask(gen, kind, B, T, H, W):
    """None, or a random key padding mask of shape (B, T) or (B, T, H, W) with some sequences
    entirely masked (pixel (0, 0) of sample 0 for the per-pixel mask, all of sample B-1 for the per-
    sample mask when B > 1)."""
    if kind is None:
        return None
    shape = (B, T) if kind == "bt" else (B, T, H, W)
    mask = torch.rand(shape, generator=gen) > 0.3
    if kind == "bt":
        if B > 1:
            mask[B - 1] = False
    else:
        mask[0, :, 0, 0] = False
    return mask.to(DEVICE)


def run(q, k, v, mask, leaves, gen, backend):
    o = K.axial_time_attention(q, k, v, key_padding_mask=mask, backend=backend)
    cot = torch.randn(o.shape, generator=gen).to(o)
    return (o, *torch.autograd.grad(o, leaves, cot))


# (B, Tq, T, H, W, heads, d, fused QKV, mask kind): T in {1, 3, 17, 64, 65}, Tq in {1, T}, every
# head dim, both mask shapes with fully masked sequences, fused strided views; T > 16 in float32
# runs the key loop (several key blocks of it), which takes d = 128 in two 64-column programs.
CASES = [
    (2, 1, 1, 2, 3, 2, 16, False, None),
    (2, 3, 3, 2, 2, 2, 32, True, "bt"),
    (1, 1, 3, 3, 2, 1, 16, False, "bthw"),
    (2, 17, 17, 2, 2, 1, 64, True, "bthw"),
    (2, 1, 17, 2, 1, 2, 16, False, "bt"),
    (1, 5, 33, 1, 2, 1, 32, False, "bthw"),
    (1, 64, 64, 1, 1, 2, 16, True, None),
    (2, 65, 65, 1, 1, 1, 16, True, "bthw"),
    (1, 1, 65, 2, 1, 1, 32, False, "bt"),
    (1, 17, 17, 2, 1, 1, 128, False, "bthw"),
    (2, 3, 3, 1, 2, 1, 128, True, None),
]


@pytest.mark.parametrize("B,Tq,T,H,W,nh,d,fused,mask_kind", CASES)
def test_matches_reference(poisoned, gen, check_close, B, Tq, T, H, W, nh, d, fused, mask_kind):
    """o, dq, dk and dv of the Triton backend equal the reference's (float32), every element is
    written, and fully masked queries give 0 and zero gradients."""
    leaves, (q, k, v) = make_qkv(gen, B, Tq, T, H, W, nh, d, fused)
    mask = make_mask(gen, mask_kind, B, T, H, W)
    seed = int(torch.randint(0, 2**31, (1,), generator=gen))
    got = run(q, k, v, mask, leaves, torch.Generator().manual_seed(seed), "triton")
    want = run(q, k, v, mask, leaves, torch.Generator().manual_seed(seed), "reference")
    for name, a, b in zip(("o", "dqkv") if fused else ("o", "dq", "dk", "dv"), got, want):
        check_close(a, b, name)
    if mask_kind == "bthw":
        assert (got[0][0, :, 0, 0] == 0).all()


def check_float16_against_reference(gen, check_close, T, W, d, mask_kind, seed, poison=None):
    """float16 forward and gradients of one sample (T frames, 1 x W pixels, one head) match the
    reference computed in float32 from the same inputs, within float16 rounding; with ``poison``,
    the masked key frames of k and v hold it in the float16 run only (they must never be read)."""
    leaves, (q, k, v) = make_qkv(gen, 1, T, T, 1, W, 1, d, dtype=torch.float16)
    mask = make_mask(gen, mask_kind, 1, T, 1, W)
    ref_leaves = [x.detach().float().requires_grad_() for x in leaves]
    if poison is not None:
        with torch.no_grad():
            for t in (k, v):
                t[~mask] = poison
    got = run(q, k, v, mask, leaves, torch.Generator().manual_seed(seed), "triton")
    want = run(*ref_leaves, mask, ref_leaves, torch.Generator().manual_seed(seed), "reference")
    for name, a, b in zip(("o", "dq", "dk", "dv"), got, want):
        check_close(a.float(), b, name, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("poison", [None, float("nan"), float("inf")])
@pytest.mark.parametrize("family", [80, 90])
@pytest.mark.parametrize("d", [32, 64, 128])
def test_float16_key_loop_backward_per_target(poisoned, gen, check_close, monkeypatch, family, d, poison):
    """T = 65 runs the 16-bit key loop in both directions; its backward blocks differ per target
    (sm_90: 32 x 64 and 64 x 32 blocks per pass, sm_80: 32 x 32; at d = 128 the dq pass in two
    64-column programs), and both give the reference's gradients within float16 rounding, also with
    NaN/Inf in the masked key frames."""
    monkeypatch.setattr(tri, "target_family", lambda t: family)
    check_float16_against_reference(gen, check_close, 65, 1, d, "bt", seed=2, poison=poison)


def test_float16_single_tile(poisoned, gen, check_close):
    """T = 64 fills the 64 x 64 single tile of the 16-bit dtypes: float16 forward and gradients
    match the reference computed in float32 from the same inputs, within float16 rounding."""
    check_float16_against_reference(gen, check_close, 64, 2, 16, "bthw", seed=1)


@pytest.mark.parametrize("family", [80, 90])
@pytest.mark.parametrize("d", [64, 128])
def test_float16_single_tile_per_target(poisoned, gen, check_close, monkeypatch, family, d):
    """T = 12 packs 2-4 sequences into the 16-bit single tiles, whose size (backward: 32 or 64 rows)
    and head-dim chunks (d = 64 and 128 take two to four) differ per target: forward and gradients
    match the float32 reference within float16 rounding."""
    monkeypatch.setattr(tri, "target_family", lambda t: family)
    check_float16_against_reference(gen, check_close, 12, 4, d, "bthw", seed=4)


@pytest.mark.parametrize("poison", [float("nan"), float("inf")])
@pytest.mark.parametrize("operand", ["q", "k", "v", "dout"])
def test_float16_single_tile_poisoned_sequence(poisoned, gen, check_close, poison, operand):
    """A NaN/Inf at a valid frame of one sequence (pixel 2 of 8, T = 8: the 16-bit single tiles pack
    all eight) is redone per sequence: the other sequences' outputs and gradients stay finite and
    match the float32 reference within float16 rounding."""
    leaves = make_qkv(gen, 1, 8, 8, 1, 8, 1, 32, dtype=torch.float16)[0]
    ref_leaves = [x.detach().float().requires_grad_() for x in leaves]
    cot = torch.randn(leaves[0].shape, generator=gen)

    def outputs(inputs, backend, cot):
        o = K.axial_time_attention(*inputs, key_padding_mask=None, backend=backend)
        return (o, *torch.autograd.grad(o, inputs, cot.to(o)))

    want = outputs(ref_leaves, "reference", cot)
    spot = (0, 7, 0, 2, 0, 5)
    if operand == "dout":
        cot = cot.clone()
        cot[spot] = poison
    else:
        with torch.no_grad():
            leaves[("q", "k", "v").index(operand)][spot] = poison
    got = outputs(leaves, "triton", cot)
    for name, a, b in zip(("o", "dq", "dk", "dv"), got, want):
        for w in (0, 1, 3, 4, 5, 6, 7):
            assert torch.isfinite(a[:, :, :, w]).all(), f"{operand} poisoned: {name} of pixel {w} is not finite"
            check_close(a[:, :, :, w].float(), b[:, :, :, w], f"{name} pixel {w}", rtol=2e-2, atol=2e-2)


def test_more_sequences_than_grid_axis_limit(poisoned, gen, check_close, monkeypatch):
    """With B*H*W*heads = 70,000 > 65,535 sequences every sequence is computed and written where it
    belongs (sequence indices past 2^16, their split into (b, h, w, head)).

    Under the interpreter the tiles are enlarged so that a few hundred programs cover all sequences
    (each interpreted program costs milliseconds); the grid itself past 65,535 programs is exercised
    by the GPU test below.
    """
    if DEVICE == "cpu":
        monkeypatch.setitem(tri.TILES, "fp32", 512)
        monkeypatch.setattr(tri, "DELTA_ROWS", 8192)
    leaves, (q, k, v) = make_qkv(gen, 2, 1, 1, 125, 70, 4, 16)
    got = run(q, k, v, None, leaves, torch.Generator().manual_seed(1), "triton")
    want = run(q, k, v, None, leaves, torch.Generator().manual_seed(1), "reference")
    for name, a, b in zip(("o", "dq", "dk", "dv"), got, want):
        check_close(a, b, name)


def test_custom_scale_and_empty_batch(gen, check_close):
    """An explicit scale reaches the kernels, and a batch with no sequences is refused naming B (the
    ops' rule for empty inputs) before the backend runs."""
    leaves, (q, k, v) = make_qkv(gen, 1, 3, 3, 1, 2, 2, 16)
    got = K.axial_time_attention(q, k, v, scale=0.3, backend="triton")
    check_close(got, ref.axial_time_attention(q, k, v, None, 0.3), "o")
    empty = torch.zeros(0, 3, 1, 2, 2, 16, device=DEVICE)
    with pytest.raises(ValueError, match="B = 0"):
        K.axial_time_attention(empty, empty, empty, backend="triton")


def test_unsupported_inputs_have_reasons():
    """Head dims outside 16/32/64/128 and float64 are refused with a reason naming them."""
    q = torch.zeros(1, 2, 1, 1, 1, 48, device=DEVICE)
    with pytest.raises(dispatch.BackendUnavailableError, match="head dim d = 48"):
        K.axial_time_attention(q, q, q, backend="triton")
    q = torch.zeros(1, 2, 1, 1, 1, 16, device=DEVICE, dtype=torch.float64)
    with pytest.raises(dispatch.BackendUnavailableError, match="float64"):
        K.axial_time_attention(q, q, q, backend="triton")


@pytest.mark.parametrize("mask_kind", [None, "bthw"])
def test_opcheck(gen, mask_kind):
    """The forward and backward ops pass torch.library.opcheck (see OPCHECK_TESTS for what runs)."""
    leaves, (q, k, v) = make_qkv(gen, 2, 3, 3, 1, 2, 1, 16, fused=True)
    mask = make_mask(gen, mask_kind, 2, 3, 1, 2)
    torch.library.opcheck(tri.axial_time_attention_fwd, (q, k, v, mask, 0.25), test_utils=OPCHECK_TESTS)
    o, lse = tri.axial_time_attention_fwd(q, k, v, mask, 0.25)
    grad = torch.randn(o.shape, generator=gen).to(o)
    args = (grad, q.detach(), k.detach(), v.detach(), o.detach(), lse, mask, 0.25)
    torch.library.opcheck(tri.axial_time_attention_bwd, args,
                          test_utils=tuple(t for t in OPCHECK_TESTS if t != "test_autograd_registration"))


gpu = pytest.mark.gpu


def _low_precision_error(q, k, v, mask, dtype):
    """Errors of the Triton kernel and of the reference run in ``dtype``, both against float64."""
    gen = torch.Generator().manual_seed(2)
    leaves64 = [x.detach().double().requires_grad_() for x in (q, k, v)]
    want = run(*leaves64, mask, leaves64, gen, "reference")
    errors = {}
    for backend in ("triton", "reference"):
        leaves = [x.detach().to(dtype).requires_grad_() for x in (q, k, v)]
        got = run(*leaves, mask, leaves, torch.Generator().manual_seed(2), backend)
        errors[backend] = [(a.double() - b).abs().max().item() for a, b in zip(got, want)]
    return errors


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("T,Tq,d", [(8, 8, 64), (64, 64, 128), (103, 103, 64), (103, 1, 32), (512, 512, 64)])
def test_gpu_low_precision(gen, dtype, T, Tq, d):
    """Flash-attention's rule: the kernel's error against float64 is at most 2x (forward) or 3x
    (gradients) the error of the reference computed in the same dtype (plus float32 rounding)."""
    q = torch.randn(2, Tq, 4, 4, 2, d, generator=gen).cuda()
    k, v = (torch.randn(2, T, 4, 4, 2, d, generator=gen).cuda() for _ in range(2))
    mask = make_mask(gen, "bthw", 2, T, 4, 4)
    errors = _low_precision_error(q, k, v, mask, dtype)
    for i, (mine, theirs) in enumerate(zip(errors["triton"], errors["reference"])):
        assert mine <= (2 if i == 0 else 3) * theirs + 1e-5, (i, errors)


@gpu
def test_gpu_grid_past_65535_programs(gen):
    """T = 64 in bfloat16 gives one sequence per program: 70,000 programs on grid axis 0, forward and
    backward, all matching the reference."""
    leaves, (q, k, v) = make_qkv(gen, 1, 64, 64, 125, 70, 8, 16, fused=True, dtype=torch.bfloat16)
    got = run(q, k, v, None, leaves, torch.Generator().manual_seed(1), "triton")
    want = run(q, k, v, None, leaves, torch.Generator().manual_seed(1), "reference")
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2)


@gpu
def test_gpu_backward_is_deterministic(gen):
    """Two backward passes on the same inputs give bitwise equal gradients (no atomics)."""
    for T in (16, 103):
        leaves, (q, k, v) = make_qkv(gen, 2, T, T, 8, 8, 4, 64, fused=True, dtype=torch.bfloat16)
        first = run(q, k, v, None, leaves, torch.Generator().manual_seed(3), "triton")
        second = run(q, k, v, None, leaves, torch.Generator().manual_seed(3), "triton")
        assert all(torch.equal(a, b) for a, b in zip(first, second))


@gpu
def test_gpu_compile_fullgraph(gen):
    """torch.compile(fullgraph=True) traces the Triton op (forward and backward) without graph
    breaks and computes what eager computes."""
    leaves, (q, k, v) = make_qkv(gen, 1, 8, 8, 4, 4, 2, 64, fused=True, dtype=torch.bfloat16)

    def f(q, k, v):
        return K.axial_time_attention(q, k, v, backend="triton").float().square().sum()

    eager = torch.autograd.grad(f(q, k, v), leaves)
    compiled = torch.autograd.grad(torch.compile(f, fullgraph=True)(q, k, v), leaves)
    torch.testing.assert_close(compiled, eager)


@gpu
def test_gpu_auto_picks_triton(gen):
    """auto dispatch runs the Triton kernels for CUDA tensors they support."""
    _, (q, k, v) = make_qkv(gen, 1, 8, 8, 2, 2, 2, 64, dtype=torch.bfloat16)
    assert dispatch.select("axial_time_attention", (q, k, v, None, 0.125)).backend == "triton"
