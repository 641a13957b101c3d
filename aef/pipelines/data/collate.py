"""Batching samples with different frame counts: pad frames, record validity in masks."""

from __future__ import annotations

from typing import Sequence

import torch

from ...model import sources as _sources
from ...model.timecode import finite_times
from .npz import frame_valid

# Padding frames are filled with NaN so that any leak of a masked frame shows up downstream.
PAD_VALUE = float("nan")


def collate(samples: Sequence[dict]) -> dict:
    """Samples -> a batch: per source (B, N_max, L, L, C) data, (B, N_max) int64 times and
    (B, N_max, L, L) masks (False on padding); a source missing from a sample is all padding.
    Text, where any sample has it: vectors (B, D), pixel (B, 2), valid (B,)."""
    if not samples:
        raise ValueError("collate: expected at least one sample")
    names = [n for n in _sources.REGISTRY if any(n in s["source_data"] for s in samples)]
    sides = {x.shape[1] for s in samples for x in s["source_data"].values()}
    if len(sides) != 1:
        raise ValueError(f"collate: every sample needs the same patch side L, got {sorted(sides)}")
    L = sides.pop()
    B = len(samples)
    batch = {"source_data": {}, "timestamps": {}, "masks": {}, "metadata": {}}
    for name in names:
        src = _sources.get(name)
        n_max = max(s["source_data"][name].shape[0] for s in samples if name in s["source_data"])
        data = torch.full((B, n_max, L, L, src.channels), PAD_VALUE, dtype=torch.float32)
        times = torch.zeros(B, n_max, dtype=torch.int64)
        masks = torch.zeros(B, n_max, L, L, dtype=torch.bool)
        meta = torch.zeros(B, n_max, src.metadata_size) if src.metadata_size else None
        for b, s in enumerate(samples):
            if name not in s["source_data"]:
                continue
            x = s["source_data"][name]
            n = x.shape[0]
            data[b, :n] = x
            # Cast to int64 only once finite: a NaN time would become a garbage epoch silently.
            times[b, :n] = finite_times(f"collate: sample {b} timestamps[{name!r}]", s["timestamps"][name],
                                        frame_valid(s.get("masks", {}).get(name), n))
            masks[b, :n] = s["masks"][name] if name in s.get("masks", {}) else True
            if meta is not None and name in s.get("metadata", {}):
                meta[b, :n] = s["metadata"][name]
        batch["source_data"][name], batch["timestamps"][name], batch["masks"][name] = data, times, masks
        if meta is not None:
            batch["metadata"][name] = meta
    texts = [s.get("text") for s in samples]
    if any(t is not None for t in texts):
        dim = next(t["vector"].shape[0] for t in texts if t is not None)
        batch["text"] = {
            "vectors": torch.stack([t["vector"] if t is not None else torch.zeros(dim) for t in texts]),
            "pixel": torch.stack([torch.as_tensor(t["pixel"]) if t is not None else torch.zeros(2, dtype=torch.long)
                                  for t in texts]).long(),
            "valid": torch.tensor([t is not None for t in texts]),
        }
    return batch
