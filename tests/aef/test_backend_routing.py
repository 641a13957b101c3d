"""The model's backend is chosen in one place: ``AEF(backend=...)`` (or the caller's ``use_backend``)
reaches every kernel call of forward, the training objective, embed and embed_text, including the
source projectors' resampling, with no backend passed through the submodules."""

from __future__ import annotations

import pytest
import torch

import aef_kernels as K
from aef import AEF
from aef_kernels import dispatch
from model_fixtures import year_periods


@pytest.fixture
def routed(monkeypatch):
    """Records (op, requested backend) of every kernel call and runs it on the reference, so that a
    backend that cannot run here (cuda on CPU) can still be asked for."""
    calls = []
    select = dispatch.select

    def spy(op, inputs, backend=None):
        calls.append((op, dispatch.requested_backend(backend)))
        return select(op, inputs, "reference")

    monkeypatch.setattr(dispatch, "select", spy)
    return calls


def _run_everything(model, batch, text_dim):
    periods = year_periods(2)
    model.train()
    model(**batch, valid_periods=periods, targets={}, generator=torch.Generator().manual_seed(0))
    model.eval()
    with torch.no_grad():
        model.embed(batch["source_data"], batch["timestamps"], periods, batch["masks"])
        model.embed_text(torch.randn(2, text_dim), periods)


@pytest.mark.parametrize("backend", ["cuda", "triton", "reference"])
def test_every_kernel_call_gets_the_models_backend(routed, make_batch, backend):
    """Every op call made by forward (training objective included), embed and embed_text asks for
    the backend the model was built with, and every op the model uses is among them."""
    torch.manual_seed(0)
    model = AEF("tiny", blocks=1, backend=backend)
    text_dim = model.config.text_dim
    batch = make_batch(text_dim=text_dim)
    _run_everything(model, batch, text_dim)
    assert {b for _, b in routed} == {backend}
    assert {op for op, _ in routed} == set(dispatch.OPS) - {"group_norm_nhwc"}


def test_auto_defers_to_the_callers_context(routed, make_batch):
    """A model built with backend="auto" runs its kernels on the backend of the caller's context."""
    torch.manual_seed(0)
    model = AEF("tiny", blocks=1)
    text_dim = model.config.text_dim
    batch = make_batch(text_dim=text_dim)
    with K.use_backend("cuda"):
        _run_everything(model, batch, text_dim)
    assert {b for _, b in routed} == {"cuda"}


def test_the_models_backend_wins_over_the_callers_context(routed, make_batch):
    """A named model backend is forced even inside another use_backend block."""
    torch.manual_seed(0)
    model = AEF("tiny", blocks=1, backend="triton")
    text_dim = model.config.text_dim
    batch = make_batch(text_dim=text_dim)
    with K.use_backend("reference"):
        _run_everything(model, batch, text_dim)
    assert {b for _, b in routed} == {"triton"}
