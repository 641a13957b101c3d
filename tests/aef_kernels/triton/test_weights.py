"""The packed-weight cache (aef_kernels/triton/weights.py): a weight is packed once while it is
unchanged, packed again after any in-place update, and a freed weight leaves nothing behind."""

import gc

import pytest
import torch

from aef_kernels.triton import weights


@pytest.fixture
def counting_pack():
    calls = []

    def pack(w):
        calls.append(tuple(w.shape))
        return w.t().contiguous()

    return pack, calls


def test_unchanged_weight_is_packed_once(counting_pack):
    """Two uses of the same unchanged weight run the packing once and return the same tensor."""
    pack, calls = counting_pack
    w = torch.randn(4, 3)
    first = weights.packed(w, pack)
    assert weights.packed(w, pack) is first
    assert len(calls) == 1


@pytest.mark.parametrize("update", ["add_", "copy_", "optimizer", "assign_data"])
def test_updated_weight_is_packed_again(counting_pack, update):
    """Every way an optimizer or a checkpoint load changes a weight (in-place ops, copy_, an optimizer
    step, assigning .data) makes the next use pack the new values."""
    pack, calls = counting_pack
    w = torch.nn.Parameter(torch.randn(4, 3))
    weights.packed(w, pack)
    with torch.no_grad():
        if update == "add_":
            w.add_(1.0)
        elif update == "copy_":
            w.copy_(torch.randn(4, 3))
        elif update == "optimizer":
            w.grad = torch.ones_like(w)
            torch.optim.SGD([w], lr=0.5).step()
        else:
            w.data = torch.randn(4, 3)
    torch.testing.assert_close(weights.packed(w, pack), w.detach().t(), rtol=0, atol=0)
    assert len(calls) == 2


def test_layouts_of_one_weight_are_cached_apart(counting_pack):
    """One weight packed by two functions (forward and data-gradient layouts) keeps both."""
    pack, calls = counting_pack
    w = torch.randn(4, 3)
    other = lambda t: t.flip(0).contiguous()  # noqa: E731
    torch.testing.assert_close(weights.packed(w, other), w.flip(0))
    torch.testing.assert_close(weights.packed(w, pack), w.t())
    torch.testing.assert_close(weights.packed(w, other), w.flip(0))
    assert len(calls) == 1


def _transpose(w):
    return w.t().contiguous()


def test_freed_weight_leaves_no_entry():
    """The cache holds weights weakly: freeing one drops its packed copy, so a new tensor at a
    reused address is never served it."""
    before = weights.cached_count()
    w = torch.randn(4, 3)
    weights.packed(w, _transpose)
    assert weights.cached_count() == before + 1
    del w
    gc.collect()
    assert weights.cached_count() == before


def test_inference_tensors_are_packed_every_time(counting_pack):
    """Inference tensors have no version counter to check, so they are never cached."""
    pack, calls = counting_pack
    with torch.inference_mode():
        w = torch.randn(4, 3)
        weights.packed(w, pack)
        weights.packed(w, pack)
    assert len(calls) == 2


def test_clear_forgets_updates_made_through_data(counting_pack):
    """An update through .data is invisible to the version counter; clear() is the documented way
    to make the next use see it."""
    pack, calls = counting_pack
    w = torch.randn(4, 3)
    weights.packed(w, pack)
    w.data.add_(1.0)
    weights.clear()
    torch.testing.assert_close(weights.packed(w, pack), w.t(), rtol=0, atol=0)
    assert len(calls) == 2
