"""Argument checks of the vmf_normalize backward, batch-uniformity and GroupNorm launchers: each bad
argument gives its status code (and, through ``check``, an exception naming the kernel) before any
CUDA call, so these run without a GPU; the pointers are fake and never dereferenced."""

from __future__ import annotations

import math
import os

import pytest
import torch

from aef_kernels import _C

pytestmark = pytest.mark.skipif(not _C.with_cuda, reason=f"built without CUDA: {_C.cuda_skip_reason}")

if _C.with_cuda:
    from aef_kernels.cuda._launch import KernelLaunchError, check

NULL, SIZE, DTYPE, STRIDE, EPS, GROUPS, WORKSPACE = -1, -2, -3, -4, -5, -7, -8

# Well-formed calls: 4 rows of 64 float32 / 3 samples x 5 positions x 64 / 2 frames of 4 x 4 x 64 in 32 groups.
VMF_BWD = dict(g=4096, x=8192, dx=12288, rows=4, D=64, g_row_stride=64, x_row_stride=64, dx_row_stride=64, dtype=0,
               eps=1e-12, stream=0)
UNI_FWD = dict(u=4096, dots=8192, partials=12288, loss=16384, B=3, M=5, D=64, u_batch_stride=320, u_row_stride=64,
               max_partials=1024, dtype=0, stream=0)
UNI_BWD = dict(grad=4096, u=8192, dots=12288, du=16384, B=3, M=5, D=64, u_batch_stride=320, u_row_stride=64, dtype=0,
               stream=0)
GN_SIZES = dict(N=2, HW=16, C=64, G=32)
GN_FWD = dict(x=4096, gamma=8192, beta=12288, y=16384, mean=20480, rstd=24576, workspace=28672,
              workspace_size=None, **GN_SIZES, dtype=0, eps=1e-5, gelu=1, stream=0)
GN_BWD = dict(dy=4096, x=8192, gamma=12288, beta=16384, mean=20480, rstd=24576, dx=28672, dgamma=32768,
              dbeta=36864, workspace=40960, workspace_size=None, **GN_SIZES, dtype=0, gelu=1, stream=0)

LAUNCHERS = {
    "vmf_normalize_bwd": ("launch_vmf_normalize_bwd", VMF_BWD),
    "batch_uniformity_fwd": ("launch_batch_uniformity_fwd", UNI_FWD),
    "batch_uniformity_bwd": ("launch_batch_uniformity_bwd", UNI_BWD),
    "group_norm_fwd": ("launch_group_norm_fwd", GN_FWD),
    "group_norm_bwd": ("launch_group_norm_bwd", GN_BWD),
}

# Every pointer argument: the fake addresses are the multiples of 4096.
_POINTERS = {name: [k for k, v in good.items() if isinstance(v, int) and v >= 4096 and v % 4096 == 0]
             for name, (_, good) in LAUNCHERS.items()}


def launch(kernel, **changes):
    fn, good = LAUNCHERS[kernel]
    args = {**good, **changes}
    if args.get("workspace_size") is None and "workspace_size" in args:
        # Exactly what the well-formed sizes need: a valid call passes every check with it.
        args["workspace_size"] = _C.group_norm_workspace_size(**GN_SIZES)
    return getattr(_C, fn)(**args)


def _cases():
    """(kernel, changes, expected code) for every argument check."""
    cases = [(k, {p: 0}, NULL) for k in LAUNCHERS for p in _POINTERS[k]]
    cases += [(k, {"dtype": d}, DTYPE) for k in LAUNCHERS for d in (3, -1)]
    cases += [
        ("vmf_normalize_bwd", dict(rows=0), SIZE),
        ("vmf_normalize_bwd", dict(D=-1), SIZE),
        ("vmf_normalize_bwd", dict(g_row_stride=-64), STRIDE),
        ("vmf_normalize_bwd", dict(x_row_stride=-64), STRIDE),
        ("vmf_normalize_bwd", dict(dx_row_stride=32), STRIDE),
        ("vmf_normalize_bwd", dict(eps=-1.0), EPS),
        ("vmf_normalize_bwd", dict(eps=math.nan), EPS),
    ]
    for k in ("batch_uniformity_fwd", "batch_uniformity_bwd"):
        cases += [
            (k, dict(B=0), SIZE),
            (k, dict(M=0), SIZE),
            (k, dict(D=0), SIZE),
            (k, dict(B=2**40, M=2**40), SIZE),  # B * M overflows int64
            (k, dict(u_batch_stride=-1), STRIDE),
            (k, dict(u_row_stride=-1), STRIDE),
        ]
    cases.append(("batch_uniformity_fwd", dict(max_partials=0), SIZE))
    for k in ("group_norm_fwd", "group_norm_bwd"):
        cases += [
            (k, dict(N=0), SIZE),
            (k, dict(HW=0), SIZE),
            (k, dict(C=-64), SIZE),
            (k, dict(G=0), SIZE),
            (k, dict(HW=2**40, C=2**20), SIZE),  # N * HW * C would overflow offsets
            (k, dict(G=48), GROUPS),
            (k, dict(workspace_size=_C.group_norm_workspace_size(**GN_SIZES) - 1), WORKSPACE),
            (k, dict(workspace=LAUNCHERS[k][1]["workspace"] + 4), WORKSPACE),  # not float2-aligned
        ]
    cases += [("group_norm_fwd", dict(eps=-1e-5), EPS), ("group_norm_fwd", dict(eps=math.nan), EPS)]
    return cases


@pytest.mark.parametrize("kernel, changes, code", _cases(), ids=lambda v: str(v))
def test_bad_arguments_return_a_code_and_raise_naming_the_kernel(kernel, changes, code):
    assert launch(kernel, **changes) == code
    with pytest.raises(KernelLaunchError, match=rf"{kernel}: bad arguments: .*\(code {code}\)"):
        check(kernel, launch(kernel, **changes))


@pytest.mark.parametrize("kernel", list(LAUNCHERS))
@pytest.mark.parametrize("arg, value", [("stream", None), ("dtype", "f32"), ("pointer", 1.5), ("pointer", -1)])
def test_wrong_python_types_raise_type_error(kernel, arg, value):
    name = _POINTERS[kernel][0] if arg == "pointer" else arg
    with pytest.raises(TypeError):
        launch(kernel, **{name: value})


NO_GPU = not torch.cuda.is_available() and not os.path.exists("/dev/nvidiactl")


@pytest.mark.skipif(not NO_GPU, reason="needs a machine without a GPU (the pointers are fake)")
@pytest.mark.parametrize("kernel", list(LAUNCHERS))
def test_valid_call_without_a_gpu_returns_a_cuda_error_not_a_crash(kernel):
    code = launch(kernel)
    assert code > 0, "a launch with no GPU must fail with a cudaError_t"
    with pytest.raises(KernelLaunchError, match=rf"{kernel}: CUDA error"):
        check(kernel, code)
