"""Backend selection: auto's choice, explicitly requested backends, the context manager and the
environment variable."""

import os
import sys

import pytest
import subprocess_helpers
import torch

import aef_kernels as K
from aef_kernels import dispatch
from aef_kernels.ops import BY_NAME, SPECS


def vec():
    return torch.randn(4, 8)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_auto_picks_reference_on_cpu(spec):
    """For CPU tensors auto selects the reference backend for every op (even under the interpreter)."""
    inputs = spec.typical(torch.device("cpu"), torch.float32)
    assert dispatch.select(spec.name, inputs, "auto").backend == "reference"


def test_requested_backend_that_cannot_run_lists_reasons():
    """Asking for the cuda backend on CPU tensors raises, listing why, instead of falling back."""
    with pytest.raises(K.BackendUnavailableError, match="(?s)vmf_normalize.*'cuda'.*  - "):
        K.vmf_normalize(vec(), backend="cuda")


def test_unknown_backend_name():
    with pytest.raises(ValueError, match="unknown backend 'cudnn'"):
        K.vmf_normalize(vec(), backend="cudnn")
    with pytest.raises(ValueError, match="use_backend"):
        with K.use_backend("fast"):
            pass


def test_use_backend_context_nests_and_restores():
    """use_backend sets the backend for calls inside it; the innermost wins; exit restores."""
    assert dispatch.requested_backend() == (os.environ.get("AEF_KERNELS_BACKEND") or "auto")
    with K.use_backend("reference"):
        with K.use_backend("cuda"):
            assert dispatch.requested_backend() == "cuda"
            with pytest.raises(K.BackendUnavailableError):
                K.vmf_normalize(vec())
            assert dispatch.requested_backend("reference") == "reference"  # backend= beats the context
            K.vmf_normalize(vec(), backend="reference")
        assert dispatch.requested_backend() == "reference"
    assert dispatch.requested_backend() == (os.environ.get("AEF_KERNELS_BACKEND") or "auto")


def test_context_is_restored_after_an_exception():
    with pytest.raises(RuntimeError):
        with K.use_backend("cuda"):
            raise RuntimeError("boom")
    assert "cuda" not in dispatch._STACK


def run_python(code, **env):
    full_env = {**os.environ, **env}
    return subprocess_helpers.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env,
                                  timeout=600)


def test_environment_variable_selects_the_backend():
    """AEF_KERNELS_BACKEND=cuda makes every call ask for cuda (here: fail loudly on CPU tensors)."""
    code = "import torch, aef_kernels as K; K.vmf_normalize(torch.randn(2, 3))"
    assert run_python(code, AEF_KERNELS_BACKEND="reference").returncode == 0
    failed = run_python(code, AEF_KERNELS_BACKEND="cuda")
    assert failed.returncode != 0 and "BackendUnavailableError" in failed.stderr


def test_invalid_environment_variable_is_reported_at_import():
    failed = run_python("import aef_kernels", AEF_KERNELS_BACKEND="gpu")
    assert failed.returncode != 0 and "AEF_KERNELS_BACKEND" in failed.stderr


def test_backend_without_an_implementation_is_named():
    """A backend lacking an op says so among its reasons (the exchange has no CUDA C++ kernel)."""
    inputs = BY_NAME["pyramid_exchange"].typical(torch.device("cpu"), torch.float32)
    assert "no cuda implementation of pyramid_exchange" in dispatch.not_supported_reasons("pyramid_exchange", "cuda",
                                                                                         inputs)


def test_register_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown op"):
        dispatch.register("softmax", "triton", dispatch.REFERENCE_CAPABILITY)
    with pytest.raises(ValueError, match="unknown backend"):
        dispatch.register("vmf_normalize", "metal", dispatch.REFERENCE_CAPABILITY)


def test_auto_priority_covers_every_op_and_keeps_slow_paths_second():
    """auto's CUDA table names only known ops (an op without an entry runs the reference until
    there is evidence for another order), each with a default order naming only registered backends (never the unverified cuda one); float32 precision_operator, whose Triton convolutions
    do three TF32 passes where cuDNN does one, keeps the reference first; other devices
    run the reference."""
    assert set(dispatch.AUTO_PRIORITY) <= set(dispatch.OPS)
    assert dispatch.auto_order("not_an_op", "cuda", torch.float32) == ("reference",)
    for op, table in dispatch.AUTO_PRIORITY.items():
        assert None in table
        for order in table.values():
            assert "cuda" not in order and set(order) <= set(dispatch.registered_backends(op)) | {"triton"}
    assert dispatch.auto_order("precision_operator", "cuda", torch.float32)[0] == "reference"
    assert dispatch.auto_order("precision_operator", "cuda", torch.bfloat16)[0] == "triton"
    assert dispatch.auto_order("vmf_normalize", "cpu", torch.bfloat16) == ("reference",)
