"""Constants and helpers shared by the model tests (fixtures live in conftest.py)."""

import torch

from aef.pipelines.data.synthetic import DEFAULT_START_MS, YEAR_MS

YEAR = (DEFAULT_START_MS, DEFAULT_START_MS + YEAR_MS)
INPUT_FRAMES = {"sentinel2": 3, "landsat": 2, "sentinel1": 2}


def year_periods(batch: int) -> torch.Tensor:
    """(batch, 2) int64: the synthetic data's year for every sample."""
    return torch.tensor([YEAR] * batch, dtype=torch.int64)


def inputs_of(batch: dict) -> tuple[dict, dict, dict]:
    """The input sources' (source_data, timestamps, masks) of a collated batch."""
    keep = [n for n in batch["source_data"] if n in INPUT_FRAMES]
    return tuple({n: batch[k][n] for n in keep} for k in ("source_data", "timestamps", "masks"))
