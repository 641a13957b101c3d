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


def test_the_extension_exports_csrc_constants_and_python_builds_on_them():
    """The dtype codes, status codes and attention head dims come from csrc/common.h through the
    extension: DTYPE_CODES is its table, the cuda attention backend's HEAD_DIMS its list, every
    status code has its own message, and the messages that list dtype codes and head dims list
    the exported ones."""
    from aef_kernels.cuda import attention

    assert DTYPE_CODES == {getattr(torch, name): code for name, code in _C.dtype_codes.items()}
    assert attention.HEAD_DIMS == tuple(_C.attention_head_dims)
    assert len(set(_C.status_codes.values())) == len(_C.status_codes)
    for name, code in _C.status_codes.items():
        assert not _C.error_string(code).startswith("CUDA error"), f"status {name} ({code}) has no message"
    dtypes = ", ".join(f"{code} = {name}" for name, code in sorted(_C.dtype_codes.items(), key=lambda kv: kv[1]))
    assert f"({dtypes})" in _C.error_string(_C.status_codes["bad_dtype"])
    dims = ", ".join(map(str, _C.attention_head_dims))
    assert f"(supported: {dims})" in _C.error_string(_C.status_codes["bad_head_dim"])


@pytest.mark.parametrize("exported, named", [
    ({"float32": 0, "float16": 1}, "bfloat16"),  # a dtype the dispatcher sends to the kernels has no code
    ({"float32": 0, "float16": 1, "bfloat16": 2, "float8": 3}, "float8"),  # not a torch dtype
    ({"float32": 0, "float16": 1, "bfloat16": 1}, "bfloat16"),  # two dtypes, one code
    ({"float32": 0, "float16": 1, "bfloat16": 2, "float64": 3}, "float64"),  # one the kernels are never sent
])
def test_dtype_codes_that_do_not_match_the_package_are_an_import_error(exported, named):
    """An extension whose dtype table does not give one code to each of checks.KERNEL_DTYPES is
    refused at import with an ImportError that names the table and says to rebuild."""
    from aef_kernels.cuda._launch import dtype_codes

    with pytest.raises(ImportError, match=rf"{named}.*rebuild it \(pip install \.\)"):
        dtype_codes(exported)


def test_a_faulted_context_is_reported_as_an_earlier_error_not_the_kernels():
    """kContextFaulted (a sticky error found before the launch) raises naming the kernel, saying it
    was not launched and that the error is not its own."""
    code = _C.status_codes["context_faulted"]
    with pytest.raises(KernelLaunchError, match=r"vmf_normalize_fwd: not launched: an earlier CUDA error left "
                                                r"the context unusable \(code -11\)\. The error is not "
                                                r"vmf_normalize_fwd's"):
        check("vmf_normalize_fwd", code)
