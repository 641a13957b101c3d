"""Embedding a scene into a 64-band GeoTIFF, tiled as the paper does it (docs/model.md §8.2).

The scene is cut into tiles of ``tile`` px (96 = 960 m), each read with ``buffer`` px of context per
side (16, so the model sees 128 px). The outer ``trim`` px (8) of each output are discarded, so
neighbouring tiles overlap by ``2 * (buffer - trim)`` px (16). Overlaps are blended with linear ramps
that sum to one, and the result is renormalised to unit length. Pixels without any valid observation
in any frame are written as no-data (-128 in int8, NaN in float32).

Work proceeds one row of tiles at a time, reading each tile's window and writing finished rows, so
memory is O(scene width) and independent of the scene's height and number of frames.

Sharding: ``shard=(i, n)`` embeds the i-th of n contiguous blocks of tile rows and writes a partial
file (float32 weighted sums, plus an observation count) next to the output; :func:`merge_shards`
sums the partials and writes the single output. Under ``torchrun`` each rank takes its own shard.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from ..model import preprocess as _pre
from . import quantize as _q
from .geo import BAND_NAMES, EMBED_DIM, Grid, Scene, SceneError, block_row_bytes, calendar_year, create_raster, \
    format_time, gdal_cache, reading_errors, require_rasterio

OUTPUT_DTYPES = ("int8", "float32")
# Rows per block when merging shard partials; bounds the merge's memory to a few rows of the scene.
MERGE_ROWS = 256
# Tags of a shard partial that do not describe the final raster.
SHARD_TAGS = ("AEF_SHARD", "AEF_ROW0", "AEF_ROWS", "AEF_HEIGHT", "AEF_DTYPE", "AEF_GRID")
# What made a shard partial, as (field, tag): the shards of one output must agree on all of it.
PROVENANCE = (("weights", "AEF_WEIGHTS_SHA256"), ("preset", "AEF_PRESET"), ("statistics", "AEF_STATISTICS"),
              ("period start", "AEF_PERIOD_START"), ("period end", "AEF_PERIOD_END"), ("dtype", "AEF_DTYPE"),
              ("tiling", "AEF_TILING"), ("grid", "AEF_GRID"))
# Files written next to an output on the way to it (the raster, then its COG copy).
TEMPORARY_SUFFIXES = (".partial", ".cog-partial")


@dataclass(frozen=True)
class Tiling:
    """Tile geometry: ``tile`` px kept per tile, ``buffer`` px of context per side, ``trim`` px cut off."""

    tile: int = 96
    buffer: int = 16
    trim: int = 8

    def __post_init__(self):
        if self.tile <= 0 or self.buffer < 0 or not 0 <= self.trim <= self.buffer:
            raise ValueError(f"tiling: need tile > 0 and 0 <= trim <= buffer, got {self}")
        if self.side % 16:
            raise ValueError(f"tiling: tile + 2 * buffer = {self.side} must be a multiple of 16 (the model's "
                             "patch side)")
        if self.tile < 2 * self.overhang:
            raise ValueError(f"tiling: tile ({self.tile}) must be at least the overlap 2 * (buffer - trim) "
                             f"= {2 * self.overhang}")

    @property
    def side(self) -> int:
        """Side of the window the model sees."""
        return self.tile + 2 * self.buffer

    @property
    def overhang(self) -> int:
        """Kept pixels beyond the tile on each side; neighbours overlap by twice this."""
        return self.buffer - self.trim

    @property
    def kept(self) -> int:
        return self.tile + 2 * self.overhang

    def ramp(self) -> np.ndarray:
        """(kept,) blending weights: linear over the overlaps, so overlapping weights sum to one."""
        o = self.overhang
        if o == 0:
            return np.ones(self.tile, dtype=np.float32)
        d = np.minimum(np.arange(self.kept), np.arange(self.kept)[::-1])
        return np.minimum(1.0, (d + 0.5) / (2 * o)).astype(np.float32)


def parse_shard(text: str) -> tuple[int, int]:
    """"i/n" -> (i, n) with 0 <= i < n; "auto" -> this torchrun rank and world size (0/1 outside)."""
    if text == "auto":
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard: expected i/n (e.g. 0/4) or auto, got {text!r}") from None
    if not 0 <= i < n:
        raise ValueError(f"--shard: need 0 <= i < n, got {text!r}")
    return i, n


def shard_path(out: Path, i: int, n: int) -> Path:
    return out.with_name(f"{out.name}.shard-{i}-of-{n}.tif")


def _same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` are one file: the same path once symbolic links are resolved, or the
    same device and inode (hard links)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def check_output(out, inputs: Sequence = (), shard: tuple[int, int] = (0, 1)) -> None:
    """Refuse, before any work, an output that cannot be written or that would overwrite an input.

    ``out`` must not be a folder, must be in a folder that exists and takes new files, and neither it
    nor the files written on the way to it (this shard's partial, the temporaries) may be one of
    ``inputs`` (the same file directly, through a symbolic link or a hard link).
    """
    out = Path(out)
    if out.is_dir():
        raise SceneError(f"--out {out} is a folder; give the path of the GeoTIFF to write")
    folder = out.parent
    if not folder.is_dir():
        raise SceneError(f"--out {out}: no such folder {folder}" if not folder.exists() else
                         f"--out {out}: {folder} is not a folder")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".aef-write-check-"):
            pass
    except OSError as e:
        raise SceneError(f"--out {out}: cannot write in {folder} ({e.strerror or e})") from None
    index, count = shard
    final = out if count == 1 else shard_path(out, index, count)
    written = [out, final, *(final.with_name(final.name + s) for s in TEMPORARY_SUFFIXES)]
    for path in dict.fromkeys(written):
        for source in inputs:
            if _same_file(path, Path(source)):
                via = "" if path == out else f" (through {path}, written on the way)"
                raise SceneError(f"--out {out} would overwrite the input {source}{via}; choose another output path")


def default_period(scene: Scene) -> tuple[int, int]:
    """The calendar year of the data: the UTC year containing the median acquisition time."""
    times = np.concatenate([t for t in scene.timestamps.values()])
    return calendar_year(int(np.median(times)))


def check_scene_for_model(scene: Scene, model) -> None:
    allowed = tuple(model.config.input_sources)
    extra = [n for n in scene.source_names if n not in allowed]
    if extra:
        raise SceneError(f"the scene has source(s) {', '.join(extra)} that this model does not take as input "
                         f"(its inputs: {', '.join(allowed)})")


def _normalise(acc: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """Weighted sums (..., 64) -> unit vectors, NaN where nothing was observed."""
    norm = np.linalg.norm(acc, axis=-1, keepdims=True)
    ok = observed[..., None] & (norm > 0)
    return np.where(ok, acc / np.where(ok, norm, 1), np.float32(np.nan)).astype(np.float32)


def _encode(values: np.ndarray, dtype: str) -> np.ndarray:
    return _q.quantize(values) if dtype == "int8" else values


def _nodata(dtype: str):
    return _q.NODATA if dtype == "int8" else float("nan")


class _Writer:
    """Receives finished rows (weighted sums and observation counts) and writes them."""

    def __init__(self, ds, row0: int, final: bool, dtype: str):
        self.ds, self.row0, self.final, self.dtype = ds, row0, final, dtype

    def write(self, row: int, acc: np.ndarray, observed: np.ndarray) -> None:
        from rasterio.windows import Window

        win = Window(0, row - self.row0, acc.shape[1], acc.shape[0])
        if self.final:
            self.ds.write(np.moveaxis(_encode(_normalise(acc, observed > 0), self.dtype), -1, 0), window=win)
        else:
            self.ds.write(np.concatenate([np.moveaxis(acc, -1, 0), observed[None].astype(np.float32)]), window=win)


def _batches(items: Sequence, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]


@torch.no_grad()
def _embed_tiles(model, scene: Scene, tiles: Sequence[tuple[int, int]], tiling: Tiling, period, device):
    """Embed the windows of ``tiles`` (tile row, tile col): (B, kept, kept, 64) float32 and the
    (B, kept, kept) count of valid observations, both trimmed to the kept region."""
    side, t, b, tr = tiling.side, tiling.tile, tiling.buffer, tiling.trim
    data, masks, times = {}, {}, {}
    observed = np.zeros((len(tiles), side, side), dtype=np.int32)
    for name in scene.source_names:
        ds, vs = zip(*(scene.read(name, i * t - b, j * t - b, side, side) for i, j in tiles))
        d, v = np.stack(ds), np.stack(vs)
        # Per-band validity: a frame missing some bands still counts with the others.
        band = torch.from_numpy(v[..., None] & np.isfinite(d))
        if model.statistics is not None:
            _, band = _pre.transform(torch.from_numpy(d), band, model.input_specs[name])
        observed += band.any(dim=-1).numpy().sum(axis=1)
        # The model ignores masked values whatever they hold; zeros keep NaN out of every kernel.
        data[name] = torch.from_numpy(np.where(band.numpy(), d, np.float32(0))).to(device)
        masks[name] = band.to(device)
        times[name] = torch.from_numpy(np.broadcast_to(scene.timestamps[name], v.shape[:2]).copy()).to(device)
    periods = torch.tensor([period] * len(tiles), dtype=torch.int64, device=device)
    emb = model.embed(data, times, periods, masks)
    keep = slice(tr, side - tr)
    return emb[:, keep, keep].float().cpu().numpy(), observed[:, keep, keep]


def embed_scene(model, scene: Scene, out, *, period: Optional[tuple[int, int]] = None,
                tiling: Tiling = Tiling(), dtype: str = "int8", batch: int = 4, device="cpu",
                shard: tuple[int, int] = (0, 1), progress: bool = True, tags: Optional[dict] = None,
                cog: bool = True) -> Path:
    """Embed ``scene`` with ``model`` into ``out`` (or, when sharded, into this shard's partial file).

    Returns the path written. ``period`` is [start, end) epoch ms (default: the calendar year of the
    data). ``dtype`` is "int8" (the paper's quantisation, docs/model.md §9.1) or "float32". ``tags``
    are added to the raster's (see :func:`model_tags`). The output is a Cloud-Optimized GeoTIFF
    (:mod:`aef.pipelines.cog`) unless ``cog`` is False.
    """
    require_rasterio()
    if dtype not in OUTPUT_DTYPES:
        raise ValueError(f"dtype: expected one of {OUTPUT_DTYPES}, got {dtype!r}")
    if batch < 1:
        raise ValueError(f"batch: expected at least 1, got {batch}")
    check_scene_for_model(scene, model)
    period = period or default_period(scene)
    if period[1] <= period[0]:
        raise ValueError(f"period: the end {format_time(period[1])} must be after the start {format_time(period[0])}")
    out = Path(out)
    check_output(out, scene.inputs, shard)
    bands, written = (EMBED_DIM, dtype) if shard[1] == 1 else (EMBED_DIM + 1, "float32")
    # Rows of tiles end inside a block row of the output, so two are being filled at a time.
    with gdal_cache(scene.cache_bytes() + 2 * block_row_bytes(scene.grid.width, bands, written)):
        return _embed_scene(model, scene, out, period, tiling, dtype, batch, device, shard, progress, tags, cog)


def _embed_scene(model, scene: Scene, out: Path, period, tiling: Tiling, dtype: str, batch: int, device,
                 shard: tuple[int, int], progress: bool, tags: Optional[dict], cog: bool) -> Path:
    from tqdm.auto import tqdm

    grid, t, o = scene.grid, tiling.tile, tiling.overhang
    n_rows, n_cols = math.ceil(grid.height / t), math.ceil(grid.width / t)
    index, count = shard
    rows = range(index * n_rows // count, (index + 1) * n_rows // count)
    tags = dict(AEF_PERIOD_START=format_time(period[0]), AEF_PERIOD_END=format_time(period[1]),
                AEF_TILING=f"tile={tiling.tile} buffer={tiling.buffer} trim={tiling.trim}",
                **(tags or model_tags(model)))
    if count == 1:
        path, row0, row1 = out, 0, grid.height
        partial = path.with_name(path.name + ".partial")
        ds = create_raster(partial, grid, EMBED_DIM, dtype, _nodata(dtype), BAND_NAMES, tags)
    else:
        # A shard's partial covers its tile rows plus the overlaps it shares with its neighbours.
        path = shard_path(out, index, count)
        partial = path.with_name(path.name + ".partial")
        row0 = max(rows.start * t - o, 0) if len(rows) else 0
        row1 = min(rows.stop * t + o, grid.height) if len(rows) else 0
        sub = Grid(max(row1 - row0, 1), grid.width, grid.crs, _shift_rows(grid.transform, row0))
        ds = create_raster(partial, sub, EMBED_DIM + 1, "float32", None, None,
                           dict(tags, AEF_SHARD=f"{index}/{count}", AEF_ROW0=row0, AEF_ROWS=row1 - row0,
                                AEF_HEIGHT=grid.height, AEF_DTYPE=dtype, AEF_GRID=_describe_grid(grid)))
    writer = _Writer(ds, row0, final=count == 1, dtype=dtype)
    ramp = tiling.ramp()
    weight = ramp[:, None] * ramp[None, :]
    tiles_total = len(rows) * n_cols
    bar = tqdm(total=tiles_total, unit="tile", desc=f"embed {out.name}" + (f" [{index}/{count}]" if count > 1 else ""),
               disable=not progress)
    try:
        # Accumulator rows [top, top + tile + 2*o) of the current tile row; the last 2*o rows carry
        # into the next tile row. Columns are offset by o so that a tile's kept region never goes negative.
        width = n_cols * t + 2 * o
        acc = np.zeros((t + 2 * o, width, EMBED_DIM), dtype=np.float32)
        obs = np.zeros((t + 2 * o, width), dtype=np.int32)
        for i in rows:
            top = i * t - o
            for group in _batches([(i, j) for j in range(n_cols)], batch):
                emb, seen = _embed_tiles(model, scene, group, tiling, period, device)
                for (_, j), e, s in zip(group, emb, seen):
                    acc[:, j * t:j * t + tiling.kept] += e * weight[..., None]
                    obs[:, j * t:j * t + tiling.kept] += s
                bar.update(len(group))
            last = i == rows.stop - 1
            # Rows from top to top + t are final (no later tile row reaches them); at the end of the
            # shard the carry rows are written too, as the partial's last rows.
            stop = top + t + (2 * o if last else 0)
            _flush(writer, acc, obs, top, stop, row0, row1, o, grid.width)
            acc = np.concatenate([acc[t:], np.zeros_like(acc[:t])])
            obs = np.concatenate([obs[t:], np.zeros_like(obs[:t])])
    except BaseException:
        ds.close()
        partial.unlink(missing_ok=True)
        raise
    finally:
        bar.close()
    ds.close()
    # Rename only when complete, so a crash never leaves an output that looks finished.
    _finish(partial, path, cog and count == 1)
    return path


def _finish(partial: Path, path: Path, cog: bool) -> None:
    if cog:
        from .cog import write_cog

        try:
            write_cog(partial, path)
        finally:
            partial.unlink(missing_ok=True)
    else:
        os.replace(partial, path)


def year_layout_path(out_dir, scene_path, period) -> Path:
    """OUT_DIR/YEAR/NAME.tif: YEAR of the period's start, NAME the scene file's name without suffix."""
    import datetime as dt

    year = dt.datetime.fromtimestamp(period[0] / 1000, tz=dt.timezone.utc).year
    return Path(out_dir) / str(year) / f"{Path(scene_path).stem}.tif"


def model_tags(model, preset: Optional[str] = None, checkpoint: Optional[str] = None) -> dict:
    """Raster tags naming the model: preset (or "custom"), checkpoint, weights digest, statistics."""
    import json

    from .checkpoint import weights_digest

    stats = model.config.statistics
    return dict(AEF_PRESET=preset or "custom", AEF_CHECKPOINT=checkpoint or "none (random weights)",
                AEF_WEIGHTS_SHA256=weights_digest(model.state_dict()),
                AEF_STATISTICS=json.dumps(stats, separators=(",", ":")) if stats is not None else "none")


def _flush(writer: _Writer, acc, obs, top: int, stop: int, row0: int, row1: int, o: int, width: int) -> None:
    lo, hi = max(top, row0), min(stop, row1)
    if hi > lo:
        writer.write(lo, acc[lo - top:hi - top, o:o + width], obs[lo - top:hi - top, o:o + width])


def _describe_grid(grid: Grid) -> str:
    """The whole output grid of a shard, as a tag: size, CRS, affine coefficients."""
    crs = "none" if grid.crs is None else grid.crs.to_string() if hasattr(grid.crs, "to_string") else str(grid.crs)
    coeffs = "none" if grid.transform is None else repr(tuple(float(v) for v in tuple(grid.transform)[:6]))
    return f"{grid.height}x{grid.width} crs={crs} transform={coeffs}"


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _check_provenance(paths: Sequence[Path], tags: Sequence[dict]) -> None:
    """Every shard partial records what made it (PROVENANCE) and all record the same."""
    for path, tg in zip(paths, tags):
        for field, key in PROVENANCE:
            if key not in tg:
                raise SceneError(f"{path}: the partial does not record its {field} ({key}); it was written by "
                                 "an older version of aef: embed that shard again")
            if tg[key] != tags[0][key]:
                raise SceneError(f"{path}: its {field} is {_short(tg[key])!r}, that of {paths[0]} is "
                                 f"{_short(tags[0][key])!r}; the shards of one output must come from one run "
                                 "(same model, preset, statistics, period, dtype, tiling and grid): embed the "
                                 "stale shards again")


def _open_partial(path: Path):
    rasterio = require_rasterio()
    try:
        return rasterio.open(path)
    except rasterio.errors.RasterioError as e:
        raise SceneError(f"{path}: not a readable shard partial; the file may be truncated or corrupt ({e})") \
            from None


def _shift_rows(transform, rows: int):
    """The affine transform of a raster starting ``rows`` rows further down."""
    if transform is None:
        return None
    from rasterio.transform import Affine

    a = transform if isinstance(transform, Affine) else Affine(*transform[:6])
    return a @ Affine.translation(0, rows)


def merge_shards(out, progress: bool = True, remove_partials: bool = True) -> Path:
    """Sum the shard partials written for ``out`` and write the final embedding raster.

    The partials are found by name (``OUT.shard-i-of-n.tif``, the name taken literally); every one of
    the n must be present and complete, and all must record the same model, preset, statistics,
    period, dtype, tiling and grid. Once the output is in place they are deleted, unless
    ``remove_partials`` is False. A merge that fails leaves the partials and no output.
    """
    require_rasterio()
    out = Path(out)
    pattern = re.compile(re.escape(out.name) + r"\.shard-(\d+)-of-(\d+)\.tif")
    found = [(int(m[1]), int(m[2]), p) for p in (out.parent.iterdir() if out.parent.is_dir() else ())
             if (m := pattern.fullmatch(p.name))]
    check_output(out, [p for _, _, p in found])
    if not found:
        raise SceneError(f"{out}: no shard partials ({out.name}.shard-I-of-N.tif) to merge")
    counts = {n for _, n, _ in found}
    if len(counts) != 1:
        raise SceneError(f"{out}: partials from runs with different shard counts {sorted(counts)}; "
                         "delete the stale ones")
    n = counts.pop()
    missing = [i for i in range(n) if not shard_path(out, i, n).is_file()]
    if missing:
        raise SceneError(f"{out}: shard(s) {', '.join(map(str, missing))} of {n} are missing or unfinished")
    paths = [shard_path(out, i, n) for i in range(n)]
    parts = []
    try:
        for path in paths:
            parts.append(_open_partial(path))
        tags = [p.tags() for p in parts]
        _check_provenance(paths, tags)
        first = tags[0]
        width, dtype = parts[0].width, first["AEF_DTYPE"]
        # A block of merged rows straddles two block rows of the partials it overlaps (two at most).
        cache = 2 * 2 * block_row_bytes(width, EMBED_DIM + 1, "float32") + 2 * block_row_bytes(width, EMBED_DIM, dtype)
        with gdal_cache(cache):
            _merge(out, paths, parts, tags, progress)
    finally:
        for p in parts:
            p.close()
    if remove_partials:
        for path in paths:
            path.unlink()
    return out


def _merge(out: Path, paths, parts, tags, progress: bool) -> None:
    from rasterio.windows import Window
    from tqdm.auto import tqdm

    first = tags[0]
    height, dtype, width = int(first["AEF_HEIGHT"]), first["AEF_DTYPE"], parts[0].width
    grid = Grid(height, width, parts[0].crs, _shift_rows(parts[0].transform, -int(first["AEF_ROW0"])))
    keep = [k for k in first if k.startswith("AEF_") and k not in SHARD_TAGS]
    partial = out.with_name(out.name + ".partial")
    ds = create_raster(partial, grid, EMBED_DIM, dtype, _nodata(dtype), BAND_NAMES, {k: first[k] for k in keep})
    try:
        with ds, tqdm(total=height, unit="row", desc=f"merge {out.name}", disable=not progress) as bar:
            for lo in range(0, height, MERGE_ROWS):
                hi = min(lo + MERGE_ROWS, height)
                acc = np.zeros((hi - lo, width, EMBED_DIM + 1), dtype=np.float32)
                for path, p, tg in zip(paths, parts, tags):
                    p0 = int(tg["AEF_ROW0"])
                    a, b = max(lo, p0), min(hi, p0 + int(tg["AEF_ROWS"]))
                    if b > a:
                        with reading_errors(str(path)):
                            block = p.read(window=Window(0, a - p0, width, b - a))
                        acc[a - lo:b - lo] += np.moveaxis(block, 0, -1)
                values = _normalise(acc[..., :EMBED_DIM], acc[..., EMBED_DIM] > 0)
                ds.write(np.moveaxis(_encode(values, dtype), -1, 0), window=Window(0, lo, width, hi - lo))
                bar.update(hi - lo)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    _finish(partial, out, cog=True)
