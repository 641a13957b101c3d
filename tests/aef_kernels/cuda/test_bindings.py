"""The raw launchers of aef_kernels._C reject bad arguments with a status code before launching, so
these run without a GPU; the Python check turns a code into an exception naming the kernel."""

from __future__ import annotations

import math
import os

import pytest
import torch

from aef_kernels import _C

pytestmark = pytest.mark.skipif(not _C.with_cuda, reason=f"built without CUDA: {_C.cuda_skip_reason}")

if _C.with_cuda:
    from aef_kernels.cuda._launch import DTYPE_CODES, KernelLaunchError, check

# A well-formed call on a (never dereferenced) fake pointer: 4 rows of 64 float32.
GOOD = dict(x=4096, y=8192, rows=4, D=64, x_row_stride=64, y_row_stride=64, dtype=0, eps=1e-12, stream=0)


def launch(**changes):
    return _C.launch_vmf_normalize_fwd(**{**GOOD, **changes})


@pytest.mark.parametrize(
    "changes, code, message",
    [
        (dict(x=0), -1, "null data pointer"),
        (dict(y=0), -1, "null data pointer"),
        (dict(rows=0), -2, "sizes must be positive"),
        (dict(D=0), -2, "sizes must be positive"),
        (dict(rows=-3), -2, "sizes must be positive"),
        (dict(dtype=3), -3, "unknown dtype code"),
        (dict(dtype=-1), -3, "unknown dtype code"),
        (dict(x_row_stride=-64), -4, "bad row stride"),
        (dict(y_row_stride=32), -4, "bad row stride"),
        (dict(eps=-1.0), -5, "eps"),
        (dict(eps=math.nan), -5, "eps"),
    ],
)
def test_bad_arguments_return_a_code_and_raise_naming_the_kernel(changes, code, message):
    assert launch(**changes) == code
    with pytest.raises(KernelLaunchError, match=rf"vmf_normalize_fwd: bad arguments: {message}.*\(code {code}\)"):
        check("vmf_normalize_fwd", launch(**changes))


def test_a_single_row_may_have_any_stride():
    # One row has no neighbour to overlap. The bad eps is checked last, so getting its code back
    # shows the stride checks passed.
    assert launch(rows=1, x_row_stride=0, y_row_stride=0, eps=-1.0) == -5


@pytest.mark.parametrize("bad", [dict(x=-1), dict(rows=1.5), dict(dtype="f32"), dict(stream=None)])
def test_wrong_python_types_raise_type_error(bad):
    with pytest.raises(TypeError):
        launch(**bad)


def test_cuda_error_codes_are_reported_as_cuda_errors():
    assert _C.error_string(2) == "out of memory"  # cudaErrorMemoryAllocation
    with pytest.raises(KernelLaunchError, match=r"vmf_normalize_fwd: CUDA error: out of memory \(code 2\)"):
        check("vmf_normalize_fwd", 2)
    check("vmf_normalize_fwd", 0)


def test_every_python_dtype_code_is_accepted():
    # As above: a bad eps reported means the dtype check passed.
    assert sorted(DTYPE_CODES.values()) == [0, 1, 2]
    for code in DTYPE_CODES.values():
        assert launch(dtype=code, eps=-1.0) == -5


NO_GPU = not torch.cuda.is_available() and not os.path.exists("/dev/nvidiactl")


@pytest.mark.skipif(not NO_GPU, reason="needs a machine without a GPU (the pointers are fake)")
def test_valid_call_without_a_gpu_returns_a_cuda_error_not_a_crash():
    code = launch()
    assert code > 0, "a launch with no GPU must fail with a cudaError_t"
    with pytest.raises(KernelLaunchError, match=r"vmf_normalize_fwd: CUDA error"):
        check("vmf_normalize_fwd", code)
