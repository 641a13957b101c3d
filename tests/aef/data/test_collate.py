"""aef.pipelines.data.collate: padding frames and recording masks."""

import torch

from aef.pipelines.data import collate, synthetic_sample


def test_pads_to_the_longest_and_masks_the_padding():
    """Each source is padded to its largest N; padding has NaN data, time 0 and a False mask; a
    source missing from a sample is all padding; real frames are copied unchanged."""
    a = synthetic_sample(16, {"sentinel2": 3, "landsat": 1}, seed=0)
    b = synthetic_sample(16, {"sentinel2": 1}, seed=1)
    batch = collate([a, b])
    x, t, m = (batch[k]["sentinel2"] for k in ("source_data", "timestamps", "masks"))
    assert x.shape == (2, 3, 16, 16, 5) and t.dtype == torch.int64 and m.shape == (2, 3, 16, 16)
    assert torch.equal(m[1, 0], b["masks"]["sentinel2"][0]) and not m[1, 1:].any()
    assert torch.isnan(x[1, 1:]).all() and (t[1, 1:] == 0).all()
    torch.testing.assert_close(x[0], a["source_data"]["sentinel2"], equal_nan=True)
    assert not batch["masks"]["landsat"][1].any()


def test_text_and_metadata():
    """Text vectors are stacked with a validity flag; metadata is padded with zeros."""
    a = synthetic_sample(16, {"sentinel1": 2}, seed=0, text_dim=8)
    b = synthetic_sample(16, {"sentinel1": 1}, seed=1)
    batch = collate([a, b])
    assert batch["text"]["valid"].tolist() == [True, False]
    assert batch["text"]["vectors"].shape == (2, 8) and batch["text"]["pixel"].dtype == torch.int64
    meta = batch["metadata"]["sentinel1"]
    assert meta.shape == (2, 2, 2) and (meta[1, 1] == 0).all()
