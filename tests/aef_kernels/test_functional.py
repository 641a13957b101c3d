"""Input validation of the public functions: each bad input raises a clear error naming the argument,
before any backend runs."""

import pytest
import torch

import aef_kernels as K
from aef_kernels import ExchangeParams


def attn(B=2, Tq=3, T=4, H=2, W=3, nh=2, d=8, dtype=torch.float32):
    return (torch.randn(B, Tq, H, W, nh, d, dtype=dtype), torch.randn(B, T, H, W, nh, d, dtype=dtype),
            torch.randn(B, T, H, W, nh, d, dtype=dtype))


def prec(C=8):
    return (torch.randn(2, 4, 4, C), torch.ones(C), torch.zeros(C), torch.randn(4 * C, C, 3, 3),
            torch.zeros(4 * C), torch.randn(C, 4 * C, 3, 3), torch.zeros(C))


def exchange(ds=4, dt=3, dp=2):
    t = torch.randn
    params = ExchangeParams(t(ds, dp, 8, 8), t(ds), t(ds, dt, 2, 2), t(ds), t(dt, dp, 4, 4), t(dt),
                            t(dt, ds), t(dt), t(dp, dt), t(dp), t(dp, ds), t(dp))
    return t(2, 1, 1, ds), t(2, 2, 2, dt), t(2, 8, 8, dp), params


def raises(exc, *words):
    """pytest.raises that also checks the message names every word given."""
    return pytest.raises(exc, match="(?s)" + "".join(f"(?=.*{w})" for w in words))


# -- wrong rank -----------------------------------------------------------------------------------

def test_attention_wrong_rank():
    q, k, v = attn()
    with raises(ValueError, "q", "6-d"):
        K.axial_time_attention(q[0], k, v)


@pytest.mark.parametrize("fn", ["precision_operator", "group_norm_nhwc", "resample_down", "resample_up"])
def test_frame_ops_wrong_rank(fn):
    x = torch.randn(4, 4, 8)
    args = {
        "precision_operator": lambda: K.precision_operator(x, *prec()[1:], 4),
        "group_norm_nhwc": lambda: K.group_norm_nhwc(x, None, None, 4),
        "resample_down": lambda: K.resample_down(x, torch.randn(2, 8, 2, 2), None, 2),
        "resample_up": lambda: K.resample_up(x, torch.randn(2, 8), None, 2),
    }[fn]
    with raises(ValueError, "x", "4-d", r"\(N, H, W, C\)"):
        args()


def test_batch_uniformity_wrong_rank():
    with raises(ValueError, "u", "B"):
        K.batch_uniformity_loss(torch.randn(8))


# -- mismatched q/k/v -------------------------------------------------------------------------------

def test_attention_mismatched_k_shape():
    q, k, v = attn()
    with raises(ValueError, "k", "heads"):
        K.axial_time_attention(q, k[..., :4], v)


def test_attention_mismatched_v_shape():
    q, k, v = attn()
    with raises(ValueError, "v", "k's shape"):
        K.axial_time_attention(q, k, v[:, :2])


def test_attention_mismatched_dtypes():
    q, k, v = attn()
    with raises(TypeError, "q", "k", "float16"):
        K.axial_time_attention(q, k.half(), v)


# -- masks ------------------------------------------------------------------------------------------

def test_mask_wrong_shape():
    q, k, v = attn()
    with raises(ValueError, "key_padding_mask", r"\(B, T\)"):
        K.axial_time_attention(q, k, v, torch.ones(2, 3, dtype=torch.bool))


def test_mask_wrong_dtype():
    q, k, v = attn()
    with raises(TypeError, "key_padding_mask", "bool"):
        K.axial_time_attention(q, k, v, torch.ones(2, 4))


# -- dtypes -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.int32, torch.bool, torch.complex64])
def test_non_floating_dtypes(dtype):
    x = torch.zeros(2, 4, 4, 8, dtype=dtype)
    with raises(TypeError, "x", "floating"):
        K.vmf_normalize(x)
    with raises(TypeError, "x", "floating"):
        K.group_norm_nhwc(x, None, None, 4)


def test_non_tensor_argument():
    with raises(TypeError, "x", "Tensor", "list"):
        K.vmf_normalize([1.0, 2.0])


# -- devices ----------------------------------------------------------------------------------------

def test_tensors_on_different_devices():
    """A tensor on another device (the meta device stands in for a GPU) is refused, never copied."""
    x = torch.randn(2, 4, 4, 8)
    with raises(ValueError, "device", "weight", "meta"):
        K.resample_up(x, torch.randn(3, 8, device="meta"), None, 2)
    q, k, v = attn()
    with raises(ValueError, "device", "key_padding_mask"):
        K.axial_time_attention(q, k, v, torch.ones(2, 4, dtype=torch.bool, device="meta"))


# -- num_groups, factor -----------------------------------------------------------------------------

@pytest.mark.parametrize("groups", [3, 0, 5])
def test_num_groups_must_divide_channels(groups):
    with raises(ValueError, "num_groups"):
        K.precision_operator(*prec(8), groups)
    with raises(ValueError, "num_groups"):
        K.group_norm_nhwc(torch.randn(1, 2, 2, 8), None, None, groups)


def test_factor_must_divide_height_and_width():
    x = torch.randn(1, 6, 8, 4)
    with raises(ValueError, "factor=4", "H=6"):
        K.resample_down(x, torch.randn(2, 4, 4, 4), None, 4)
    with raises(ValueError, "factor=3", "W=8"):
        K.resample_down(torch.randn(1, 6, 8, 4), torch.randn(2, 4, 3, 3), None, 3)


def test_factor_must_be_a_positive_int():
    with raises(ValueError, "factor", "positive int"):
        K.resample_up(torch.randn(1, 2, 2, 4), torch.randn(3, 4), None, 0)


def test_weight_shapes_are_checked():
    x = torch.randn(1, 4, 4, 8)
    with raises(ValueError, "weight", r"\(Cout, Cin, factor, factor\)"):
        K.resample_down(x, torch.randn(2, 8, 4, 4), None, 2)
    args = list(prec(8))
    args[3] = torch.randn(16, 8, 3, 3)
    with raises(ValueError, "w1", r"\(4C, C, 3, 3\)"):
        K.precision_operator(*args, 4)
    with raises(ValueError, "bias", r"\(C,\)"):
        K.resample_up(x, torch.randn(3, 8), torch.randn(4), 2)


def test_exchange_checks_resolutions_and_params():
    xs, xt, xp, p = exchange()
    with raises(ValueError, "xp", "xt", "multiple"):
        K.pyramid_exchange(xs, xt, xp[:, :6], p)
    with raises(ValueError, "params.t_to_p_w"):
        K.pyramid_exchange(xs, xt, xp, p._replace(t_to_p_w=torch.randn(2, 4)))
    with raises(TypeError, "params", "ExchangeParams"):
        K.pyramid_exchange(xs, xt, xp, {"p_to_s_w": p.p_to_s_w})


# -- contiguity, D = 0 -------------------------------------------------------------------------------

def test_non_contiguous_last_dim_is_refused():
    q, k, v = attn()
    q_t = q.transpose(-1, -2)  # last dim stride != 1
    with raises(ValueError, "q", "last dimension", "contiguous"):
        K.axial_time_attention(q_t, k.transpose(-1, -2), v.transpose(-1, -2))
    x = torch.randn(2, 4, 8, 4).transpose(-1, -2)
    with raises(ValueError, "x", "contiguous"):
        K.group_norm_nhwc(x, None, None, 2)


@pytest.mark.parametrize("fn", [K.vmf_normalize, K.batch_uniformity_loss])
def test_zero_length_vectors_are_refused(fn):
    with raises(ValueError, "D", "at least 1"):
        fn(torch.randn(3, 4, 0))


def test_attention_zero_head_dim_is_refused():
    q, k, v = attn(d=0)
    with raises(ValueError, "q", "D"):
        K.axial_time_attention(q, k, v)


def test_valid_calls_pass_validation():
    """The checks accept what they should: strided views, Tq != T, both mask shapes, defaults."""
    q, k, v = attn()
    assert K.axial_time_attention(q, k, v, torch.ones(2, 4, 2, 3, dtype=torch.bool)).shape == q.shape
    assert K.precision_operator(*prec(8), 4).shape == (2, 4, 4, 8)
    ys, yt, yp = K.pyramid_exchange(*exchange())
    assert (ys.shape, yt.shape, yp.shape) == ((2, 1, 1, 4), (2, 2, 2, 3), (2, 8, 8, 2))


def test_kernel_tests_compare_with_a_full_float32_reference():
    """The kernel tests' references run without TF32 (tests/aef_kernels/conftest.py): cuDNN's
    default would let the fp32 convolution references round their inputs to 10 mantissa bits."""
    assert not torch.backends.cudnn.allow_tf32
    assert not torch.backends.cuda.matmul.allow_tf32
