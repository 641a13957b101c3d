"""Looking at an embedding field: the first three principal components of the 64 bands as RGB, and
optionally the cosine similarity of every pixel to one chosen pixel.

Large rasters are read decimated to at most ``max_size`` px on the longer side (GDAL's nearest
resampling of each block), so showing a continent-sized field needs no more memory than the PNG.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional

import numpy as np

from . import quantize as _q
from .geo import EMBED_DIM, SceneError, open_raster, require_rasterio

# Pixels used to fit the PCA; more changes the components by less than the percentile stretch does.
PCA_SAMPLES = 100_000
# Colour stops (value in [-1, 1] -> RGB) of the similarity map: dissimilar blue, orthogonal white,
# similar red, so the sign of the cosine reads at a glance.
SIMILARITY_STOPS = np.array([[-1.0, 33, 102, 172], [0.0, 247, 247, 247], [1.0, 178, 24, 43]], dtype=np.float32)


def read_embeddings(path, max_size: Optional[int] = 2048) -> tuple[np.ndarray, tuple[int, int]]:
    """(H', W', 64) float32 unit vectors (NaN at no-data), read decimated to at most ``max_size`` px
    on the longer side, and the raster's full size (H, W)."""
    path = Path(path)
    if not path.is_file():
        raise SceneError(f"{path}: no such embedding raster")
    with open_raster(path, "embeddings") as ds:
        if ds.count != EMBED_DIM:
            raise SceneError(f"{path}: expected {EMBED_DIM} embedding bands, found {ds.count}")
        scale = max(1.0, max(ds.height, ds.width) / max_size) if max_size else 1.0
        shape = (EMBED_DIM, max(1, round(ds.height / scale)), max(1, round(ds.width / scale)))
        raw = ds.read(out_shape=shape)
        dtype = ds.dtypes[0]
    if dtype == "int8":
        values = _q.dequantize(raw)
    elif dtype in ("float32", "float64"):
        values = raw.astype(np.float32)
    else:
        raise SceneError(f"{path}: embedding bands must be int8 or float32, found {dtype}")
    return np.moveaxis(values, 0, -1), (ds.height, ds.width)


def pca_rgb(emb: np.ndarray, seed: int = 0) -> np.ndarray:
    """(H, W, 64) -> (H, W, 3) uint8: the top 3 principal components, each stretched between its
    2nd and 98th percentile. No-data pixels are black."""
    valid = np.isfinite(emb).all(axis=-1)
    rgb = np.zeros(emb.shape[:2] + (3,), dtype=np.uint8)
    if valid.sum() < 2:
        return rgb
    x = emb[valid].astype(np.float64)
    rng = np.random.default_rng(seed)
    fit = x[rng.choice(len(x), PCA_SAMPLES, replace=False)] if len(x) > PCA_SAMPLES else x
    mean = fit.mean(axis=0)
    _, _, vt = np.linalg.svd(fit - mean, full_matrices=False)
    comps = vt[:3]
    # An SVD's signs are arbitrary; fixing them keeps the colours of one field stable across runs.
    comps *= np.sign(comps[np.arange(len(comps)), np.abs(comps).argmax(axis=1)])[:, None]
    proj = (x - mean) @ comps.T  # (n, k), k <= 3
    lo, hi = np.percentile(proj, [2, 98], axis=0)
    scaled = np.clip((proj - lo) / np.where(hi > lo, hi - lo, 1), 0, 1)
    out = np.zeros((len(x), 3))
    out[:, :scaled.shape[1]] = scaled
    rgb[valid] = np.round(out * 255).astype(np.uint8)
    return rgb


def similarity(emb: np.ndarray, row: int, col: int) -> np.ndarray:
    """(H, W) cosine similarity of every pixel to pixel (row, col); NaN at no-data."""
    h, w = emb.shape[:2]
    if not (0 <= row < h and 0 <= col < w):
        raise ValueError(f"similarity pixel ({row}, {col}) is outside the {h}x{w} raster")
    ref = emb[row, col]
    if not np.isfinite(ref).all():
        raise ValueError(f"similarity pixel ({row}, {col}) is no-data")
    norms = np.linalg.norm(emb, axis=-1) * np.linalg.norm(ref)
    return (emb @ ref) / np.where(norms > 0, norms, np.nan)


def colorize(values: np.ndarray) -> np.ndarray:
    """(H, W) values in [-1, 1] -> (H, W, 3) uint8 on the diverging similarity scale; NaN is black."""
    v = np.clip(np.nan_to_num(values, nan=0.0), -1, 1)
    stops = SIMILARITY_STOPS
    rgb = np.stack([np.interp(v, stops[:, 0], stops[:, k]) for k in (1, 2, 3)], axis=-1)
    rgb[~np.isfinite(values)] = 0
    return np.round(rgb).astype(np.uint8)


def write_png(path, rgb: np.ndarray) -> Path:
    """Write (H, W, 3) uint8 as a PNG (through GDAL's PNG driver, without georeferencing sidecars)."""
    rasterio = require_rasterio()
    path = Path(path)
    if path.parent and not path.parent.exists():
        raise SceneError(f"{path}: the folder {path.parent} does not exist")
    with rasterio.Env(GDAL_PAM_ENABLED="NO"):
        with rasterio.open(path, "w", driver="PNG", height=rgb.shape[0], width=rgb.shape[1], count=3,
                           dtype="uint8") as ds:
            ds.write(np.moveaxis(rgb, -1, 0))
    return path


def show(path, out, similarity_pixel: Optional[tuple[int, int]] = None, similarity_out=None,
         max_size: Optional[int] = 2048) -> list[Path]:
    """Write the PCA map of ``path`` to ``out`` and, given a (row, col) pixel of the full-resolution
    raster, its cosine-similarity map to ``similarity_out``. Returns the paths written."""
    from rasterio.errors import NotGeoreferencedWarning

    emb, (height, width) = read_embeddings(path, max_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        written = [write_png(out, pca_rgb(emb))]
        if similarity_pixel is not None:
            if similarity_out is None:
                raise ValueError("a similarity pixel needs an output path for the similarity map")
            r, c = similarity_pixel
            if not (0 <= r < height and 0 <= c < width):
                raise ValueError(f"similarity pixel ({r}, {c}) is outside the {height}x{width} raster")
            sim = similarity(emb, r * emb.shape[0] // height, c * emb.shape[1] // width)
            written.append(write_png(similarity_out, colorize(sim)))
    return written
