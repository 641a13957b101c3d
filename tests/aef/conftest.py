"""Fixtures shared by the tests of the ``aef`` package: a seeded tiny model and small batches."""

from __future__ import annotations

import pytest
import torch

from aef.pipelines.data import collate, synthetic_sample
from model_fixtures import INPUT_FRAMES


@pytest.fixture
def tiny_model():
    from aef import AEF

    torch.manual_seed(0)
    return AEF("tiny").eval()


@pytest.fixture
def make_batch():
    """make_batch(side=16, frames=INPUT_FRAMES, batch=2, seed=0, text_dim=None) -> a collated batch."""

    def make(side=16, frames=None, batch=2, seed=0, text_dim=None):
        frames = INPUT_FRAMES if frames is None else frames
        return collate([synthetic_sample(side, frames, seed=seed + i, text_dim=text_dim) for i in range(batch)])

    return make
