"""aef.pipelines.data.npz: one .npz per sample, a writer, a reader and a Dataset."""

import numpy as np
import pytest
import torch

from aef.pipelines.data import NpzDataset, load_sample, save_sample, synthetic_sample


def test_round_trip(tmp_path):
    """save_sample then load_sample gives back every tensor with its dtype, NaN included."""
    s = synthetic_sample(16, seed=0, text_dim=8)
    save_sample(tmp_path / "a.npz", s)
    back = load_sample(tmp_path / "a.npz")
    for field in ("source_data", "timestamps", "masks", "metadata"):
        assert set(back[field]) == set(s[field])
        for name, t in s[field].items():
            assert back[field][name].dtype == t.dtype
            torch.testing.assert_close(back[field][name], t, equal_nan=True)
    assert torch.equal(back["text"]["pixel"], s["text"]["pixel"])


def test_dataset_and_validation(tmp_path):
    """NpzDataset serves the files sorted by name; float32 timestamps and empty folders are refused."""
    for i in (1, 0):
        save_sample(tmp_path / f"{i}.npz", synthetic_sample(16, {"sentinel2": 1 + i}, seed=i))
    ds = NpzDataset(tmp_path)
    assert len(ds) == 2 and ds[1]["source_data"]["sentinel2"].shape[0] == 2
    np.savez(tmp_path / "bad.npz", **{"timestamps/sentinel2": np.zeros(1, np.float32)})
    with pytest.raises(ValueError, match="float32"):
        load_sample(tmp_path / "bad.npz")
    with pytest.raises(FileNotFoundError):
        NpzDataset(tmp_path / "empty")
