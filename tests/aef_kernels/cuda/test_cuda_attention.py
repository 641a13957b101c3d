"""The cuda backend of axial_time_attention: argument checks of its launchers, its torch.library ops
and dispatch reasons (all without a GPU), and parity with the reference on a GPU (`-m gpu`) under
the rule of docs/kernels.md §8.6: the kernel's error against a float64 reference is at most 2x (forward) or
3x (gradients) the error of the reference run in the same precision, plus eps of the dtype."""

from __future__ import annotations

import os

import pytest
import torch

import aef_kernels as K
from aef_kernels import _C, dispatch, reference

pytestmark = pytest.mark.skipif(not _C.with_cuda, reason=f"built without CUDA: {_C.cuda_skip_reason}")

if _C.with_cuda:
    from aef_kernels.cuda import attention
    from aef_kernels.cuda._launch import DTYPE_CODES, KernelLaunchError, check

NO_GPU = not torch.cuda.is_available() and not os.path.exists("/dev/nvidiactl")

# ---- launchers: bad arguments come back as codes before any CUDA call --------------------------------

SIZES = [2, 5, 7, 3, 4, 2, 32]  # B, Tq, T, H, W, heads, d


def _contiguous_strides(frames):
    B, _, _, H, W, NH, d = SIZES
    return [frames * H * W * NH * d, H * W * NH * d, W * NH * d, NH * d, d]


# Fake, never dereferenced pointers: every check runs on the host before a launch.
FWD = dict(q=4096, k=8192, v=12288, mask=16384, o=20480, lse=24576, sizes=SIZES,
           q_strides=_contiguous_strides(5), k_strides=_contiguous_strides(7), v_strides=_contiguous_strides(7),
           mask_strides=[7, 1, 0, 0], scale=0.125, dtype=1, stream=0)
BWD = dict(grad=28672, q=4096, k=8192, v=12288, o=20480, lse=24576, mask=16384, delta=32768, dq=36864, dk=40960,
           dv=45056, sizes=SIZES, q_strides=_contiguous_strides(5), k_strides=_contiguous_strides(7),
           v_strides=_contiguous_strides(7), mask_strides=[7, 1, 0, 0], scale=0.125, dtype=1, stream=0)
LAUNCHERS = {"fwd": (FWD, "launch_axial_attention_fwd"), "bwd": (BWD, "launch_axial_attention_bwd")}


def launch(which, **changes):
    good, name = LAUNCHERS[which]
    return getattr(_C, name)(**{**good, **changes})


def _with(i, value):
    sizes = list(SIZES)
    sizes[i] = value
    return sizes


BAD = [
    *[(dict(**{p: 0}), -1, "null data pointer") for p in ("q", "k", "v", "o", "lse")],
    (dict(sizes=_with(0, 0)), -2, "sizes must be positive"),
    (dict(sizes=_with(1, 0)), -2, "sizes must be positive"),
    (dict(sizes=_with(2, 0)), -2, "sizes must be positive"),
    (dict(sizes=_with(5, -1)), -2, "sizes must be positive"),
    (dict(sizes=_with(6, 0)), -2, "sizes must be positive"),
    (dict(sizes=SIZES[:6]), -2, "sizes must be positive"),
    # 2^31 sequences (B * H * W * heads) overflow the kernels' 32-bit sequence index.
    (dict(sizes=[2**17, 5, 7, 2**7, 2**7, 1, 32]), -9, "sizes exceed the kernel's index range"),
    # More tiles of 16 queries (or keys, for the dk/dv pass) than grid axis 1 holds.
    (dict(sizes=_with(1, 16 * 65535 + 1)), -9, "sizes exceed the kernel's index range"),
    (dict(sizes=_with(2, 16 * 65535 + 1)), -9, "sizes exceed the kernel's index range"),
    (dict(sizes=_with(6, 48)), -6, "unsupported head dim"),
    (dict(sizes=_with(6, 8)), -6, "unsupported head dim"),
    (dict(sizes=_with(6, 256)), -6, "unsupported head dim"),
    (dict(dtype=3), -3, "unknown dtype code"),
    (dict(dtype=-1), -3, "unknown dtype code"),
    (dict(q_strides=[1, 2, 3, 4]), -4, "bad row stride"),
    (dict(mask_strides=[7, 1, 0]), -4, "bad row stride"),
    (dict(k_strides=[-1, 2, 3, 4, 5]), -4, "bad row stride"),
    (dict(mask_strides=[7, -1, 0, 0]), -4, "bad row stride"),
]


@pytest.mark.parametrize("pointer", ["grad", "o"])
def test_backward_rejects_misaligned_output_gradient_or_output(pointer):
    assert launch("bwd", **{pointer: BWD[pointer] + 2}) == -10  # float16 pairs need 4-byte alignment
    with pytest.raises(KernelLaunchError, match="not aligned"):
        check("axial_attention_bwd", launch("bwd", **{pointer: BWD[pointer] + 2}))


@pytest.mark.parametrize("which", ["fwd", "bwd"])
@pytest.mark.parametrize("changes, code, message", BAD)
def test_bad_arguments_return_a_code_and_raise_naming_the_kernel(which, changes, code, message):
    assert launch(which, **changes) == code
    kernel = f"axial_attention_{which}"
    with pytest.raises(KernelLaunchError, match=rf"{kernel}: bad arguments: {message}.*\(code {code}\)"):
        check(kernel, launch(which, **changes))


@pytest.mark.parametrize("pointer", ["grad", "delta", "dq", "dk", "dv"])
def test_backward_needs_every_gradient_pointer(pointer):
    assert launch("bwd", **{pointer: 0}) == -1


@pytest.mark.parametrize("which", ["fwd", "bwd"])
def test_mask_pointer_is_optional(which):
    # A bad dtype reported (not a null pointer) shows the null mask passed the pointer checks.
    assert launch(which, mask=0, dtype=7) == -3


@pytest.mark.parametrize("which", ["fwd", "bwd"])
def test_every_dtype_code_and_head_dim_passes_the_checks(which):
    # A bad stride is checked last, so getting its code back shows everything before it passed.
    for dtype in DTYPE_CODES.values():
        for d in attention.HEAD_DIMS:
            assert launch(which, dtype=dtype, sizes=_with(6, d), v_strides=[0, 0, 0, 0, -2]) == -4


@pytest.mark.parametrize("bad", [dict(q=-1), dict(sizes=[1.5] * 7), dict(dtype="f16"), dict(q_strides=None)])
def test_wrong_python_types_raise_type_error(bad):
    with pytest.raises(TypeError):
        launch("fwd", **bad)


@pytest.mark.skipif(not NO_GPU, reason="needs a machine without a GPU (the pointers are fake)")
@pytest.mark.parametrize("which", ["fwd", "bwd"])
def test_valid_call_without_a_gpu_returns_a_cuda_error_not_a_crash(which):
    code = launch(which)
    assert code > 0, "a launch with no GPU must fail with a cudaError_t"
    with pytest.raises(KernelLaunchError, match=rf"axial_attention_{which}: CUDA error"):
        check(f"axial_attention_{which}", code)


# ---- torch.library ops, argument marshalling and dispatch (no GPU) --------------------------------------

def test_fake_impls_give_contiguous_outputs_of_the_right_shapes():
    fused = torch.empty(2, 5, 3, 4, 3, 2, 32, device="meta", dtype=torch.bfloat16)
    q, k, v = fused.unbind(4)
    q = q[:, :3]  # Tq = 3 != T = 5
    o, lse = torch.ops.aef_kernels.cuda_axial_time_attention_fwd(q, k, v, None, 0.125)
    assert o.shape == q.shape and o.dtype == q.dtype and o.is_contiguous()
    assert lse.shape == q.shape[:-1] and lse.dtype == torch.float32 and lse.is_contiguous()
    grads = torch.ops.aef_kernels.cuda_axial_time_attention_bwd(o, q, k, v, o, lse, None, 0.125)
    for g, x in zip(grads, (q, k, v)):
        assert g.shape == x.shape and g.dtype == x.dtype and g.is_contiguous()


def test_strided_views_are_passed_in_place():
    fused = torch.empty(2, 5, 3, 4, 3, 2, 32)
    k = fused[:, :, :, :, 1]
    assert attention._strides(k) == [5 * 3 * 4 * 3 * 64, 3 * 4 * 3 * 64, 4 * 3 * 64, 3 * 64, 32]
    assert attention._sizes(fused[:, :2, :, :, 0], k) == [2, 2, 5, 3, 4, 2, 32]


def test_mask_arguments():
    assert attention._mask_args(None) == (0, [0, 0, 0, 0])
    bt = torch.ones(4, 6, dtype=torch.bool)[:, ::2]
    assert attention._mask_args(bt) == (bt.data_ptr(), [6, 2, 0, 0])
    bthw = torch.ones(2, 3, 5, 4, dtype=torch.bool).transpose(2, 3)
    assert attention._mask_args(bthw) == (bthw.data_ptr(), [60, 20, 1, 4])


def test_cuda_backend_is_registered_and_explains_cpu_inputs():
    assert "cuda" in dispatch.registered_backends("axial_time_attention")
    q = torch.randn(1, 3, 2, 2, 1, 16)
    reasons = dispatch.not_supported_reasons("axial_time_attention", "cuda", q, q, q, None, 0.25)
    assert reasons == ["q, k, v on cpu: the cuda backend runs on cuda"]
    with pytest.raises(K.BackendUnavailableError, match="runs on cuda"):
        K.axial_time_attention(q, q, q, backend="cuda")


def test_reasons_name_dtype_head_dim_and_frame_limit():
    q = torch.empty(1, 2, 1, 1, 1, 48, dtype=torch.float64, device="meta")
    k = torch.empty(1, attention.MAX_FRAMES + 1, 1, 1, 1, 48, dtype=torch.float64, device="meta")
    reasons = dispatch.not_supported_reasons("axial_time_attention", "cuda", q, k, k, None, 0.1)
    assert any("float64" in r for r in reasons)
    assert any("head dim d = 48" in r for r in reasons)
    assert any(f"frames max(T, Tq) = {attention.MAX_FRAMES + 1} exceeds" in r for r in reasons)
    ok = torch.empty(1, 2, 1, 1, 1, 64, dtype=torch.bfloat16, device="meta")
    assert dispatch.not_supported_reasons("axial_time_attention", "cuda", ok, ok, ok, None, 0.1) == [
        "q, k, v on meta: the cuda backend runs on cuda"]


def test_auto_never_selects_the_unverified_cuda_backend():
    assert all("cuda" not in dispatch.auto_order("axial_time_attention", device, dtype)
               for device in ("cuda", "cpu") for dtype in (torch.float32, torch.float16, torch.bfloat16))


# ---- GPU parity ------------------------------------------------------------------------------------------

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _max_error(t: torch.Tensor, exact: torch.Tensor) -> float:
    return (t.double() - exact).abs().max().item()


def _views(leaves, layout):
    """(q, k, v) of the leaves: ``fused`` slices one QKV tensor (B, T, H, W, 3, heads, d);
    ``misaligned`` drops the first element of rows of d + 1, so no row starts on a 4-byte boundary."""
    if layout == "fused":
        return tuple(leaves[0][:, :, :, :, i] for i in range(3))
    if layout == "misaligned":
        return tuple(x[..., 1:] for x in leaves)
    return tuple(leaves)


def _inputs(B, Tq, T, H, W, nh, d, dtype, layout="separate", seed=0):
    """The leaves to differentiate and their (q, k, v) views."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen).to("cuda", dtype).requires_grad_()

    if layout == "fused":
        assert Tq == T
        leaves = [randn(B, T, H, W, 3, nh, d)]
    else:
        leaves = [randn(B, t, H, W, nh, d + (layout == "misaligned")) for t in (Tq, T, T)]
    return leaves, _views(leaves, layout)


def _mask(kind, B, T, H, W, seed=1):
    """None, or a random key mask with fully masked sequences: all of sample B - 1 for (B, T), pixel
    (0, 0) of sample 0 for (B, T, H, W)."""
    if kind is None:
        return None
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand((B, T) if kind == "bt" else (B, T, H, W), generator=gen) > 0.3
    if kind == "bt":
        mask[B - 1] = False
    else:
        mask[0, :, 0, 0] = False
    return mask.cuda()


def _outputs_and_grads(fn, leaves, layout, mask, cot, cast=None):
    leaves = [x.detach().to(cast or x.dtype).requires_grad_() for x in leaves]
    o = fn(*_views(leaves, layout), mask)
    return o, torch.autograd.grad(o, leaves, cot.to(o.dtype))


def _check_parity(B, Tq, T, H, W, nh, d, dtype, mask_kind, layout="separate"):
    leaves, _ = _inputs(B, Tq, T, H, W, nh, d, dtype, layout)
    mask = _mask(mask_kind, B, T, H, W)
    cot = torch.randn(B, Tq, H, W, nh, d, device="cuda")

    def cuda(q, k, v, m):
        return K.axial_time_attention(q, k, v, key_padding_mask=m, backend="cuda")

    def ref(q, k, v, m):
        return K.axial_time_attention(q, k, v, key_padding_mask=m, backend="reference")

    o, grads = _outputs_and_grads(cuda, leaves, layout, mask, cot)
    exact_o, exact_grads = _outputs_and_grads(ref, leaves, layout, mask, cot, cast=torch.float64)
    low_o, low_grads = _outputs_and_grads(ref, leaves, layout, mask, cot)
    assert o.dtype == dtype and o.shape == (B, Tq, H, W, nh, d) and o.is_contiguous()
    floor = torch.finfo(dtype).eps
    err, ref_err = _max_error(o, exact_o), _max_error(low_o, exact_o)
    assert err <= 2 * ref_err + floor, ("o", err, ref_err)
    for name, g, exact, low in zip("qkv" if len(grads) == 3 else ["qkv"], grads, exact_grads, low_grads):
        assert torch.isfinite(g).all(), name
        err, ref_err = _max_error(g, exact), _max_error(low, exact)
        assert err <= 3 * ref_err + floor, (f"d{name}", err, ref_err)
    return o, grads, mask


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("T", [1, 17, 64, 65, 200, 512])
@pytest.mark.parametrize("d", [16, 32, 64, 128])
def test_self_attention_matches_reference(dtype, T, d):
    _check_parity(2, T, T, 2, 3, 2, d, dtype, "bthw" if T > 1 else None)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("Tq, T", [(1, 17), (3, 65), (70, 20), (17, 200)])
@pytest.mark.parametrize("mask_kind", [None, "bt", "bthw"])
def test_cross_attention_and_masks_match_reference(dtype, Tq, T, mask_kind):
    _check_parity(3, Tq, T, 2, 2, 2, 32, dtype, mask_kind)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["fused", "misaligned"])
@pytest.mark.parametrize("T, d", [(12, 64), (65, 32), (33, 128)])
def test_strided_views_match_reference(dtype, layout, T, d):
    _check_parity(2, T, T, 3, 2, 2, d, dtype, "bt", layout)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("T", [9, 100])
def test_fully_masked_queries_give_exact_zeros(dtype, T):
    o, (dq, dk, dv), mask = _check_parity(2, T, T, 2, 2, 1, 32, dtype, "bthw")
    dead = ~mask.any(dim=1)  # (B, H, W): pixels without a valid key
    assert dead.any()
    assert (o.permute(0, 2, 3, 1, 4, 5)[dead] == 0).all()
    assert (dq.permute(0, 2, 3, 1, 4, 5)[dead] == 0).all()
    padding = ~mask  # (B, T, H, W): keys nobody attends to get no gradient
    assert (dk[padding] == 0).all() and (dv[padding] == 0).all()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=str)
def test_more_than_65535_sequences(dtype):
    # 70,070 sequences (B * H * W * heads), past the 65,535 limit of grid axes 1 and 2.
    _check_parity(1, 5, 5, 70, 1001, 1, 16, dtype, "bthw")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("T", [17, 130])
def test_backward_is_bitwise_deterministic(dtype, T):
    leaves, (q, k, v) = _inputs(3, T, T, 4, 4, 2, 64, dtype)
    mask = _mask("bthw", 3, T, 4, 4)
    o = K.axial_time_attention(q, k, v, key_padding_mask=mask, backend="cuda")
    cot = torch.randn_like(o)
    first = torch.autograd.grad(o, leaves, cot, retain_graph=True)
    second = torch.autograd.grad(o, leaves, cot)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.gpu
def test_custom_scale_and_empty_inputs():
    leaves, (q, k, v) = _inputs(2, 7, 7, 2, 2, 2, 32, torch.float32)
    o = K.axial_time_attention(q, k, v, scale=0.3, backend="cuda")
    exact = reference.axial_time_attention(q.double(), k.double(), v.double(), None, 0.3)
    assert _max_error(o, exact) < 1e-5
    empty_q = torch.randn(2, 0, 2, 2, 2, 32, device="cuda", requires_grad=True)
    kk = torch.randn(2, 4, 2, 2, 2, 32, device="cuda", requires_grad=True)
    with pytest.raises(ValueError, match="Tq = 0|T = 0"):
        K.axial_time_attention(empty_q, kk, kk, backend="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mask_kind", [None, "bthw"])
def test_opcheck(dtype, mask_kind):
    _, (q, k, v) = _inputs(2, 5, 5, 2, 3, 2, 32, dtype, "fused")
    mask = _mask(mask_kind, 2, 5, 2, 3)
    torch.library.opcheck(torch.ops.aef_kernels.cuda_axial_time_attention_fwd, (q, k, v, mask, 0.125))
