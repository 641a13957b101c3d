"""Samples on disk: one ``.npz`` per sample with keys ``<field>/<source>`` (and ``text/<key>``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import numpy as np
import torch
from torch.utils.data import Dataset

from ...model.timecode import finite_times

FIELDS = ("source_data", "timestamps", "masks", "metadata")


def frame_valid(mask, frames: int) -> torch.Tensor:
    """(N,) bool: frames with at least one valid pixel under a sample's (N,) or (N, H, W) mask."""
    if mask is None:
        return torch.ones(frames, dtype=torch.bool)
    return mask.reshape(frames, -1).any(dim=1)


def save_sample(path: Union[str, os.PathLike], sample: dict) -> None:
    arrays = {f"{field}/{name}": t.numpy() for field in FIELDS for name, t in sample.get(field, {}).items()}
    for key, value in (sample.get("text") or {}).items():
        arrays[f"text/{key}"] = torch.as_tensor(value).numpy()
    np.savez_compressed(path, **arrays)


def load_sample(path: Union[str, os.PathLike]) -> dict:
    sample: dict = {field: {} for field in FIELDS}
    with np.load(path) as f:
        for key in f.files:
            field, name = key.split("/", 1)
            if field not in FIELDS and field != "text":
                raise ValueError(f"{path}: unexpected key {key!r} (fields: {', '.join(FIELDS)}, text)")
            sample.setdefault(field, {})[name] = torch.from_numpy(f[key])
    for name, t in sample["timestamps"].items():
        if t.dtype not in (torch.int64, torch.float64):
            raise ValueError(f"{path}: timestamps/{name} must be int64 or float64 epoch ms, got {t.dtype}")
        sample["timestamps"][name] = finite_times(f"{path}: timestamps/{name}", t,
                                                  frame_valid(sample["masks"].get(name), t.shape[0]))
    return sample


class NpzDataset(Dataset):
    """Every ``*.npz`` under ``root`` (sorted by name), one sample each."""

    def __init__(self, root: Union[str, os.PathLike]):
        self.files = sorted(Path(root).glob("*.npz"))
        if not self.files:
            raise FileNotFoundError(f"NpzDataset: no .npz files under {root}")

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict:
        return load_sample(self.files[i])
