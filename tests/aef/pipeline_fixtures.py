"""Builders shared by the pipeline tests: small GeoTIFF scenes and a tiny model.

The scene is what the issue asks the tests to cover: non-square, not a multiple of the tile, NaN
no-data, nodata values, per-frame cloud-mask rasters, and sources with different frame counts.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

HEIGHT, WIDTH = 75, 110
# Small tiles keep the tests fast; the paper's 96/16/8 are the defaults and tested separately.
TEST_TILING = dict(tile=32, buffer=16, trim=8)
CRS = "EPSG:32633"
ORIGIN = (500_000.0, 4_650_000.0)
FRAMES = {
    "sentinel2": ["2024-02-11T10:30:00Z", "2024-05-02T10:30:00Z", "2024-08-20T10:30:00Z"],
    "sentinel1": ["2024-03-07T17:45:00Z", "2024-09-30T17:45:00+00:00"],
}
CHANNELS = {"sentinel2": 5, "sentinel1": 5}


def tiny_model(seed: int = 0):
    from aef.models import AEF

    torch.manual_seed(seed)
    return AEF("tiny").eval()


def _field(rng, channels: int) -> np.ndarray:
    """(channels, H, W) smooth spatial structure, so embeddings vary over the scene."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH] / 20.0
    phases = rng.uniform(0, 2 * np.pi, size=(channels, 2))
    return np.stack([np.sin(y + a) * np.cos(x + b) for a, b in phases]).astype(np.float32)


def write_scene(folder: Path, masks: bool = True) -> Path:
    """Write the GeoTIFF frames, cloud masks and manifest of the test scene; return the manifest."""
    import rasterio
    from rasterio.transform import Affine

    folder.mkdir(parents=True, exist_ok=True)
    transform = Affine(10.0, 0.0, ORIGIN[0], 0.0, -10.0, ORIGIN[1])
    rng = np.random.default_rng(0)
    manifest = {"sources": {}}
    for name, times in FRAMES.items():
        entries = []
        for i, time in enumerate(times):
            data = _field(rng, CHANNELS[name]) + rng.normal(0, 0.05, (CHANNELS[name], HEIGHT, WIDTH)).astype(np.float32)
            nodata = None
            if name == "sentinel2":
                data[:, :12, :20] = np.nan  # a no-data corner, NaN in every frame
            else:
                nodata = -9999.0
                data[:, -5:, -30:] = nodata
            profile = dict(driver="GTiff", height=HEIGHT, width=WIDTH, count=CHANNELS[name], dtype="float32",
                           crs=CRS, transform=transform, nodata=nodata)
            path = folder / f"{name}_{i}.tif"
            with rasterio.open(path, "w", **profile) as ds:
                ds.write(data)
            entry = {"path": path.name, "time": time}
            if masks and name == "sentinel2":
                clear = np.ones((HEIGHT, WIDTH), dtype=np.uint8)
                r, c = rng.integers(0, HEIGHT - 20), rng.integers(0, WIDTH - 30)
                clear[r:r + 20, c:c + 30] = 0  # a cloud in this frame only
                mpath = folder / f"{name}_{i}_clear.tif"
                with rasterio.open(mpath, "w", **{**profile, "count": 1, "dtype": "uint8", "nodata": None}) as ds:
                    ds.write(clear, 1)
                entry["mask"] = mpath.name
            entries.append(entry)
        manifest["sources"][name] = entries
    path = folder / "scene.json"
    path.write_text(json.dumps(manifest, indent=1))
    return path


def read_window_directly(manifest: Path, row: int, col: int, side: int):
    """The model inputs of one window, read with rasterio alone (independent of aef.pipelines.geo)."""
    import rasterio
    from rasterio.windows import Window

    from aef.pipelines.geo import parse_time

    m = json.loads(manifest.read_text())
    data, times, masks = {}, {}, {}
    for name, frames in m["sources"].items():
        d = np.full((len(frames), side, side, CHANNELS[name]), np.nan, dtype=np.float32)
        v = np.zeros((len(frames), side, side), dtype=bool)
        r0, c0 = max(row, 0), max(col, 0)
        r1, c1 = min(row + side, HEIGHT), min(col + side, WIDTH)
        for i, f in enumerate(frames):
            with rasterio.open(manifest.parent / f["path"]) as ds:
                x = ds.read(window=Window(c0, r0, c1 - c0, r1 - r0), masked=True)
            ok = ~np.ma.getmaskarray(x).any(axis=0) & np.isfinite(x.filled(np.nan)).all(axis=0)
            if "mask" in f:
                with rasterio.open(manifest.parent / f["mask"]) as ds:
                    ok &= ds.read(1, window=Window(c0, r0, c1 - c0, r1 - r0)) != 0
            d[i, r0 - row:r1 - row, c0 - col:c1 - col] = np.moveaxis(x.filled(np.nan), 0, -1)
            v[i, r0 - row:r1 - row, c0 - col:c1 - col] = ok
        data[name] = torch.from_numpy(np.where(v[..., None], d, 0))[None]
        masks[name] = torch.from_numpy(v)[None]
        times[name] = torch.tensor([[parse_time(f["time"]) for f in frames]], dtype=torch.int64)
    return data, times, masks
