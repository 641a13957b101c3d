"""Data for AEF: a synthetic generator, the collate function and the npz sample format.

A *sample* is a dict of per-source, unbatched tensors: ``source_data[name]`` (N, L, L, C) float32,
``timestamps[name]`` (N,) int64 epoch ms, ``masks[name]`` (N, L, L) bool, optional
``metadata[name]`` (N, m) and optional ``text`` = {"vector": (D,), "pixel": (2,) long}.
"""

from .collate import collate
from .npz import NpzDataset, load_sample, save_sample
from .synthetic import SyntheticDataset, synthetic_sample

__all__ = ["collate", "NpzDataset", "load_sample", "save_sample", "SyntheticDataset", "synthetic_sample"]
