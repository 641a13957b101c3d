"""Input statistics behind ``aef stats``: per-source, per-band mean and standard deviation of the
values after their transform (:mod:`aef.model.preprocess`), in one streaming pass.

Each chunk (one ``.npz`` sample, or one window of a scene) is reduced to float64 count, mean and sum
of squared deviations per band, and the chunks are combined with the pairwise update of Chan, Golub
and LeVeque, so memory depends on the chunk size only, never on the amount of data, and the result
does not suffer the cancellation of a one-pass sum of squares.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
import torch

from ..model import preprocess as _pre
from ..model import sources as _sources
from .geo import gdal_cache

# Scene windows of this side bound the pass's memory to a few window-sized arrays.
WINDOW = 512


class RunningStats:
    """Count, mean and sum of squared deviations per band, float64, updated chunk by chunk."""

    def __init__(self, channels: int):
        self.count = np.zeros(channels, dtype=np.float64)
        self.mean = np.zeros(channels, dtype=np.float64)
        self.m2 = np.zeros(channels, dtype=np.float64)

    def update(self, values: np.ndarray, valid: np.ndarray) -> None:
        """values, valid: (..., C); only valid entries count."""
        C = self.count.shape[0]
        y = values.reshape(-1, C).astype(np.float64)
        v = valid.reshape(-1, C)
        n_b = v.sum(axis=0).astype(np.float64)
        if not n_b.any():
            return
        y = np.where(v, y, 0.0)
        mean_b = y.sum(axis=0) / np.maximum(n_b, 1)
        m2_b = (np.where(v, y - mean_b, 0.0) ** 2).sum(axis=0)
        n = self.count + n_b
        safe = np.maximum(n, 1)
        delta = mean_b - self.mean
        self.mean = self.mean + delta * n_b / safe
        self.m2 = self.m2 + m2_b + delta ** 2 * self.count * n_b / safe
        self.count = n

    def result(self, source: _sources.Source) -> _pre.SourceStatistics:
        seen = self.count > 0
        std = np.sqrt(self.m2 / np.maximum(self.count, 1))
        return _pre.SourceStatistics(
            source.transform, source.bands, tuple(int(c) for c in self.count),
            tuple(float(m) if s else 0.0 for m, s in zip(self.mean, seen)),
            tuple(float(max(d, _pre.MIN_STD)) if s else 1.0 for d, s in zip(std, seen)))


class StatsAccumulator:
    """Statistics of every normalised source met in the data."""

    def __init__(self):
        self.running: dict[str, RunningStats] = {}

    def add(self, name: str, data: np.ndarray, valid: np.ndarray) -> None:
        """Raw ``data`` (..., C) of source ``name`` and its per-band (..., C) or per-pixel (...) validity."""
        src = _sources.REGISTRY.get(name)
        if src is None or data.shape[-1] != src.channels or not _pre.needs_statistics(src):
            return
        if valid.shape != data.shape:
            valid = np.broadcast_to(valid[..., None], data.shape)
        y, v = _pre.transform(torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32)),
                              torch.from_numpy(np.ascontiguousarray(valid)), src)
        self.running.setdefault(name, RunningStats(src.channels)).update(y.numpy(), v.numpy())

    def statistics(self) -> _pre.Statistics:
        return _pre.Statistics({n: r.result(_sources.get(n)) for n, r in self.running.items()})


def _npz_chunks(path: Path):
    """(source, data, validity) of one ``.npz`` sample or scene, one source at a time."""
    with np.load(path, allow_pickle=False) as z:
        names = [k.split("/", 1)[1] for k in z.files if k.startswith("source_data/")]
        for name in names:
            d = z[f"source_data/{name}"]
            if d.ndim != 4:
                raise ValueError(f"{path}: 'source_data/{name}' must be (N, H, W, C), got shape {d.shape}")
            m = z[f"masks/{name}"] if f"masks/{name}" in z.files else np.ones(d.shape[:3], dtype=bool)
            if m.shape == d.shape[:1]:
                m = np.broadcast_to(m[:, None, None], d.shape[:3])
            if m.shape != d.shape[:3]:
                raise ValueError(f"{path}: 'masks/{name}' must be (N,) or (N, H, W) = {d.shape[:3]}, got {m.shape}")
            yield name, d, m.astype(bool)


def scene_windows(scene, window: int = WINDOW):
    """(row, col) of the windows covering a scene."""
    return [(r, c) for r in range(0, scene.grid.height, window) for c in range(0, scene.grid.width, window)]


def scene_statistics(scene, progress: bool = True, window: int = WINDOW, acc: Optional[StatsAccumulator] = None,
                     desc: str = "stats") -> _pre.Statistics:
    """Statistics of every normalised input source of an open :class:`aef.pipelines.geo.Scene`."""
    from tqdm.auto import tqdm

    acc = acc or StatsAccumulator()
    wins = scene_windows(scene, window)
    need = scene.cache_bytes()
    # A scene read through GDAL: its block cache held to what consecutive windows share.
    with gdal_cache(need) if need else contextlib.nullcontext():
        for r, c in tqdm(wins, unit="window", desc=desc, disable=not progress):
            h, w = min(window, scene.grid.height - r), min(window, scene.grid.width - c)
            for name in scene.source_names:
                d, _ = scene.read(name, r, c, h, w)
                acc.add(name, d, np.isfinite(d))
    return acc.statistics()


def expand_paths(paths: Iterable) -> list[Path]:
    """Files and folders (-> their ``*.npz``, sorted) as one list of files."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(p.glob("*.npz"))
            if not found:
                raise ValueError(f"{p}: no .npz files in this folder")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise ValueError(f"{p}: no such file or folder")
    return out


def compute_statistics(paths: Sequence, progress: bool = True, scene_options: Optional[dict] = None) -> _pre.Statistics:
    """Statistics over ``.npz`` samples (files or folders of them) and scenes (``.json`` manifests or
    ``.npz`` scenes; an ``.npz`` sample is a scene). ``scene_options`` go to :func:`aef.pipelines.geo.open_scene`
    for manifests."""
    from tqdm.auto import tqdm

    from .geo import open_scene

    files = expand_paths(paths)
    acc = StatsAccumulator()
    npz = [f for f in files if f.suffix.lower() == ".npz"]
    other = [f for f in files if f.suffix.lower() != ".npz"]
    for f in other:
        if f.suffix.lower() != ".json":
            raise ValueError(f"{f}: expected .npz samples or scenes, or a .json scene manifest")
        with open_scene(f, **(scene_options or {})) as scene:
            scene_statistics(scene, progress, acc=acc, desc=f"stats {f.name}")
    for f in tqdm(npz, unit="file", desc="stats", disable=not progress or not npz):
        try:
            for name, d, m in _npz_chunks(f):
                acc.add(name, d, m)
        except (OSError, KeyError) as e:
            raise ValueError(f"{f}: not a readable .npz sample ({type(e).__name__}: {e})") from None
    stats = acc.statistics()
    if not stats.sources:
        raise ValueError("the data have no source that needs statistics (optical or SAR inputs: "
                         + ", ".join(n for n, s in _sources.REGISTRY.items() if _pre.needs_statistics(s)) + ")")
    return stats


def write_statistics(stats: _pre.Statistics, out) -> Path:
    import json
    import os

    out = Path(out)
    tmp = out.with_name(out.name + ".partial")
    tmp.write_text(json.dumps(stats.to_dict(), indent=1) + "\n")
    os.replace(tmp, out)
    return out


def describe(stats: _pre.Statistics) -> str:
    """A short table: source, band, count, mean, std (bands without data marked)."""
    lines = [f"{'source':<10} {'band':<10} {'count':>12} {'mean':>10} {'std':>10}"]
    for name, s in stats.sources.items():
        for b, n, m, d in zip(s.bands, s.count, s.mean, s.std):
            lines.append(f"{name:<10} {b:<10} {n:>12} {m:>10.4f} {d:>10.4f}" + ("  (no data)" if n == 0 else ""))
    return "\n".join(lines)
