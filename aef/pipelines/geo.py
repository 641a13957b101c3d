"""Scene input and embedding-raster output for the pipelines: GeoTIFF frames listed in a JSON
manifest, ``.npz`` scenes, ISO 8601 times, and the 64-band embedding GeoTIFF.

A *scene* is every frame of every input source over one pixel grid. It is read window by window
(:meth:`Scene.read`), so a scene never has to fit in memory.

JSON manifest (paths relative to the manifest's folder)::

    {
      "sources": {
        "sentinel2": [
          {"path": "s2/20240305.tif", "time": "2024-03-05T10:31:02Z", "mask": "s2/20240305_clear.tif"},
          {"path": "s2/20240410_rgb.tif", "time": "2024-04-10T10:30:51Z", "bands": ["B4", "B3", "B2"]}
        ],
        "landsat": [
          {"time": "2020-05-18", "nodata": 0,
           "paths": {"B2": "LC08_..._B2.TIF", "B3": "LC08_..._B3.TIF", "B4": "LC08_..._B4.TIF"}}
        ],
        "sentinel1": [{"path": "s1/20240307.tif", "time": "2024-03-07T17:45:00Z", "units": "linear"}]
      }
    }

A frame is either one GeoTIFF (``"path"``) holding the source's bands in registry order
(``aef.model.sources``), or the bands listed in ``"bands"`` (registry names, any order); or one
single-band file per band (``"paths"``), the way Landsat and Sentinel-2 are distributed. Bands a
frame does not give are invalid. Validity is per band: a band is invalid where it is NaN or equals
the nodata value (the frame's ``"nodata"``, else ``--nodata``, else the file's tag), and a pixel is
invalid only where all its bands are, or where the optional single-band ``mask`` raster is 0
(nonzero = clear). SAR frames may be given in linear power (``"units": "linear"``); they are read
as dB.

Frames need not share a grid: each is brought onto the output grid (:mod:`aef.pipelines.georef`: resolution,
CRS, and the union or intersection of the frames' extents) on read, bilinear for data and nearest
for masks.

``.npz`` scene: the keys of the ``aef.pipelines.data`` sample format (``source_data/<source>`` (N, H, W, C)
float, ``timestamps/<source>`` (N,) int64 epoch ms, optionally ``masks/<source>`` (N, H, W) or (N,)
bool, True = valid), so a saved training sample is a scene, with H and W free; optionally ``crs``
(WKT or "EPSG:xxxx") and ``transform`` (the six affine coefficients a, b, c, d, e, f). Sources that
are only training targets, and any other fields of a sample, are ignored. An ``.npz`` scene is
loaded whole; use a manifest for large scenes.

rasterio is an optional dependency (the ``geo`` extra); everything that needs it says so clearly.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import warnings
import zipfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ..model import sources as _sources
from ..model.preprocess import linear_to_db as _linear_to_db

EMBED_DIM = 64
BAND_NAMES = tuple(f"A{i:02d}" for i in range(EMBED_DIM))
# The package is not on a package index: the extra is installed from the checkout.
INSTALL_HINT = "pip install '.[geo]' in the aef-kernels checkout (or pip install rasterio)"


class SceneError(ValueError):
    """A scene, manifest or raster that cannot be used, with a message that says why."""


def require_rasterio():
    """Import rasterio or raise a :class:`SceneError` naming the extra to install."""
    try:
        import rasterio
    except ImportError as e:
        raise SceneError(f"reading and writing GeoTIFFs needs rasterio: {INSTALL_HINT}") from e
    return rasterio


def open_raster(path: Path, where: str):
    """``rasterio.open(path)``, or a :class:`SceneError` prefixed by ``where`` when it is not a
    readable raster. Rasters without georeferencing are allowed: the frames of one grid, and the
    embeddings of an .npz scene, legitimately have none."""
    rasterio = require_rasterio()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            return rasterio.open(path)
    except rasterio.errors.RasterioError as e:
        raise SceneError(f"{where}: {path} is not a readable raster ({e})") from None


# ---------------------------------------------------------------- times

def parse_time(value: str, what: str = "time") -> int:
    """ISO 8601 date or date-time -> epoch milliseconds (int). A time without a zone is UTC."""
    if not isinstance(value, str):
        raise SceneError(f"{what}: expected an ISO 8601 string, got {value!r}")
    try:
        t = _dt.datetime.fromisoformat(value.strip())
    except ValueError:
        raise SceneError(f"{what}: {value!r} is not an ISO 8601 date or time "
                         "(e.g. 2024-03-05 or 2024-03-05T10:31:02Z)") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=_dt.timezone.utc)
    return int(round(t.timestamp() * 1000))


# Frame times must lie where every period the pipelines derive from them is a calendar date: the
# default summary period of a frame ends on 1 January of the next year, so the year 9999 is out.
TIME_MIN_MS = -62_135_596_800_000  # 0001-01-01T00:00:00Z
TIME_END_MS = 253_370_764_800_000  # 9999-01-01T00:00:00Z
TIME_RANGE = "0001-01-01 to 9998-12-31 (a frame's calendar year, the default summary period, must end by " \
             "9999-12-31)"


def check_frame_time(ms: int, what: str, shown=None) -> int:
    """``ms`` if it is in the supported range of frame times, else a :class:`SceneError` naming
    ``what`` and the value (``shown``, default: ``ms`` in ms)."""
    if not TIME_MIN_MS <= ms < TIME_END_MS:
        value = f"{ms} ms" if shown is None else repr(shown)
        raise SceneError(f"{what}: {value} is out of range; frame times must be from {TIME_RANGE}")
    return ms


def format_time(ms: int) -> str:
    """Epoch milliseconds -> ISO 8601 UTC string."""
    t = _dt.datetime.fromtimestamp(ms / 1000, tz=_dt.timezone.utc)
    return t.isoformat().replace("+00:00", "Z")


def calendar_year(ms: int) -> tuple[int, int]:
    """[1 January, next 1 January) in epoch ms of the UTC calendar year containing ``ms``."""
    year = _dt.datetime.fromtimestamp(ms / 1000, tz=_dt.timezone.utc).year
    return parse_time(f"{year}-01-01"), parse_time(f"{year + 1}-01-01")


# ---------------------------------------------------------------- scenes

@dataclass(frozen=True)
class Grid:
    """The pixel grid of a scene: size, and the CRS/affine transform (None where not georeferenced)."""

    height: int
    width: int
    crs: object = None
    transform: object = None


def _window_bounds(start: int, size: int, limit: int) -> tuple[int, int, int, int]:
    """Clip [start, start+size) to [0, limit): (source lo, source hi, dest lo, dest hi)."""
    lo, hi = max(start, 0), min(start + size, limit)
    return lo, max(hi, lo), lo - start, max(hi, lo) - start


class Scene:
    """Base class: frames of several sources on one grid, read by window."""

    grid: Grid
    timestamps: dict[str, np.ndarray]  # source -> (N,) int64 epoch ms
    inputs: tuple[Path, ...] = ()  # every file the scene reads: the scene file, frames, masks

    def cache_bytes(self) -> int:
        """GDAL block cache that lets reads of consecutive rows of windows decode each block of
        every raster once: two block rows of each (0 for scenes read without GDAL)."""
        return 0

    @property
    def source_names(self) -> tuple[str, ...]:
        return tuple(self.timestamps)

    def read(self, name: str, row: int, col: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """Frames of ``name`` over rows [row, row+height), cols [col, col+width).

        Returns data (N, height, width, C) float32, NaN where a band is invalid, and pixel validity
        (N, height, width) bool: a pixel is valid where any of its bands is (a missing band never voids
        the others; per-band validity is ``np.isfinite(data)``). The window may extend past the scene:
        pixels outside are NaN and invalid.
        """
        n = len(self.timestamps[name])
        c = _sources.get(name).channels
        data = np.full((n, height, width, c), np.nan, dtype=np.float32)
        valid = np.zeros((n, height, width), dtype=bool)
        r0, r1, dr0, dr1 = _window_bounds(row, height, self.grid.height)
        c0, c1, dc0, dc1 = _window_bounds(col, width, self.grid.width)
        if r1 > r0 and c1 > c0:
            d, v = self._read_inside(name, r0, r1, c0, c1)
            band = v[..., None] & np.isfinite(d)
            data[:, dr0:dr1, dc0:dc1] = np.where(band, d, np.float32(np.nan))
            valid[:, dr0:dr1, dc0:dc1] = band.any(axis=-1)
        return data, valid

    def _read_inside(self, name, r0, r1, c0, c1) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _check_source(name: str, where: str) -> _sources.Source:
    src = _sources.REGISTRY.get(name)
    if src is None:
        raise SceneError(f"{where}: unknown source {name!r}; known sources: {', '.join(_sources.REGISTRY)}")
    if not src.is_input:
        raise SceneError(f"{where}: {name!r} is a training target, not a model input; input sources: "
                         f"{', '.join(_sources.INPUT_SOURCES)}")
    return src


class NpzScene(Scene):
    def __init__(self, path: Path):
        self.inputs = (path,)
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
            raise SceneError(f"{path}: not a readable .npz file ({e})") from None
        names = sorted({k.split("/", 1)[1] for k in arrays if k.startswith("source_data/")})
        names = [n for n in names if n not in _sources.REGISTRY or _sources.REGISTRY[n].is_input]
        if not names:
            raise SceneError(f"{path}: no 'source_data/<input source>' arrays in this .npz scene")
        self.timestamps, self._data, self._masks = {}, {}, {}
        shape = None
        for name in names:
            src = _check_source(name, str(path))
            if f"timestamps/{name}" not in arrays:
                raise SceneError(f"{path}: missing array 'timestamps/{name}'")
            d, t = arrays[f"source_data/{name}"], arrays[f"timestamps/{name}"]
            if d.ndim != 4 or d.shape[-1] != src.channels or not np.issubdtype(d.dtype, np.floating):
                raise SceneError(f"{path}: 'source_data/{name}' must be float (N, H, W, {src.channels}), "
                                 f"got {d.dtype} {d.shape}")
            if t.shape != (d.shape[0],) or t.dtype.kind not in "iu":
                raise SceneError(f"{path}: 'timestamps/{name}' must be int64 epoch ms of shape "
                                 f"({d.shape[0]},), got {t.dtype} {t.shape}")
            if d.shape[0] == 0:
                raise SceneError(f"{path}: 'source_data/{name}' has no frames (shape {d.shape}); give at least one, "
                                 "or leave the source out")
            if d.shape[1] == 0 or d.shape[2] == 0:
                raise SceneError(f"{path}: 'source_data/{name}' has no pixels ({d.shape[1]}x{d.shape[2]})")
            for i, ms in enumerate(t.tolist()):
                check_frame_time(ms, f"{path}: 'timestamps/{name}'[{i}]")
            if shape is None:
                shape = d.shape[1:3]
            elif d.shape[1:3] != shape:
                raise SceneError(f"{path}: 'source_data/{name}' is {d.shape[1]}x{d.shape[2]} pixels, the other "
                                 f"sources {shape[0]}x{shape[1]}; all sources must share one grid")
            m = arrays.get(f"masks/{name}")
            if m is None:
                m = np.ones(d.shape[:3], dtype=bool)
            elif m.shape == d.shape[:1]:
                m = np.broadcast_to(m.astype(bool)[:, None, None], d.shape[:3])
            elif m.shape == d.shape[:3]:
                m = m.astype(bool)
            else:
                raise SceneError(f"{path}: 'masks/{name}' must be (N,) or (N, H, W) = {d.shape[:3]}, got {m.shape}")
            self.timestamps[name] = t.astype(np.int64)
            self._data[name], self._masks[name] = d.astype(np.float32, copy=False), m
        crs = str(arrays["crs"]) if "crs" in arrays else None
        transform = None
        if "transform" in arrays:
            coeffs = np.asarray(arrays["transform"], dtype=np.float64).ravel()
            if coeffs.size != 6:
                raise SceneError(f"{path}: 'transform' must hold the 6 affine coefficients a, b, c, d, e, f")
            transform = tuple(coeffs.tolist())
        self.grid = Grid(int(shape[0]), int(shape[1]), crs, transform)

    def _read_inside(self, name, r0, r1, c0, c1):
        return self._data[name][:, r0:r1, c0:c1], self._masks[name][:, r0:r1, c0:c1]


class ManifestScene(Scene):
    """Frames listed in a JSON manifest, each brought onto one output grid (:mod:`aef.pipelines.georef`)."""

    def __init__(self, path: Path, resolution: Optional[float] = None, extent: str = "union", crs=None,
                 nodata: Optional[dict] = None):
        rasterio = require_rasterio()
        from .georef import BandSource, GridError, target_grid

        self._path = path
        self._files = [path]
        try:
            manifest = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise SceneError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
        except (OSError, UnicodeDecodeError) as e:
            raise SceneError(f"{path}: cannot read the manifest ({e})") from None
        if not isinstance(manifest, dict) or not isinstance(manifest.get("sources"), dict) or not manifest["sources"]:
            raise SceneError(f"{path}: expected an object with a non-empty \"sources\" object mapping source "
                             "names to lists of frames")
        nodata = dict(nodata or {})
        for key in nodata:
            if key != "*":
                _check_source(key, "--nodata")
        self._frames: dict[str, list] = {}
        self.timestamps = {}
        self._open = []
        self._parts: list = []
        try:
            for name, frames in manifest["sources"].items():
                where = f"{path}: sources.{name}"
                src = _check_source(name, where)
                if not isinstance(frames, list) or not frames:
                    raise SceneError(f"{where}: expected a non-empty list of frames")
                times, opened = [], []
                for i, frame in enumerate(frames):
                    fwhere = f"{where}[{i}]"
                    if not isinstance(frame, dict) or "time" not in frame or ("path" in frame) == ("paths" in frame):
                        raise SceneError(f"{fwhere}: expected an object with \"time\" and either \"path\" (one "
                                         "file with the frame's bands) or \"paths\" (one file per band)")
                    times.append(check_frame_time(parse_time(frame["time"], f"{fwhere}.time"), f"{fwhere}.time",
                                                  frame["time"]))
                    fill = frame.get("nodata", nodata.get(name, nodata.get("*")))
                    if fill is not None and (isinstance(fill, bool) or not isinstance(fill, (int, float))):
                        raise SceneError(f"{fwhere}.nodata: expected a number, got {fill!r}")
                    units = frame.get("units", "db")
                    if units not in ("db", "linear") or (units == "linear" and src.transform != "sar"):
                        raise SceneError(f"{fwhere}.units: expected \"db\" or \"linear\" (SAR sources only), "
                                         f"got {units!r}")
                    parts = self._frame_parts(rasterio, frame, src, fwhere, fill, BandSource)
                    mask = None
                    if frame.get("mask") is not None:
                        ds = self._open_raster(rasterio, frame["mask"], f"{fwhere}.mask")
                        if ds.count != 1:
                            raise SceneError(f"{fwhere}.mask: {ds.name} must have 1 band, has {ds.count}")
                        mask = BandSource(ds, [1], [], None)
                    opened.append((parts, mask, units == "linear"))
                self._frames[name] = opened
                self.timestamps[name] = np.asarray(times, dtype=np.int64)
            try:
                self.grid = target_grid([p.ds for p in self._parts], resolution, extent, crs)
                for parts, mask, _ in (f for fs in self._frames.values() for f in fs):
                    for p in parts:
                        p.attach(self.grid, "bilinear")
                    if mask is not None:
                        mask.attach(self.grid, "nearest")
            except GridError as e:
                raise SceneError(f"{path}: {e}") from None
        except BaseException:
            self.close()
            raise
        self.inputs = tuple(self._files)

    def cache_bytes(self) -> int:
        total = 0
        for ds in self._open:
            block_rows = max(h for h, _ in ds.block_shapes)
            total += 2 * block_rows * ds.width * sum(np.dtype(t).itemsize for t in ds.dtypes)
        return total

    def _frame_parts(self, rasterio, frame: dict, src: _sources.Source, where: str, fill, BandSource) -> list:
        """The rasters of one frame, each with the source bands it fills."""
        if "paths" in frame:
            paths = frame["paths"]
            if not isinstance(paths, dict) or not paths:
                raise SceneError(f"{where}.paths: expected an object mapping band names ({', '.join(src.bands)}) "
                                 "to single-band files")
            parts = []
            for band, rel in paths.items():
                if band not in src.bands:
                    raise SceneError(f"{where}.paths: unknown band {band!r} of {src.name} (bands: "
                                     f"{', '.join(src.bands)})")
                ds = self._open_raster(rasterio, rel, f"{where}.paths.{band}")
                if ds.count != 1:
                    raise SceneError(f"{where}.paths.{band}: {ds.name} has {ds.count} bands; a per-band file "
                                     "must have one")
                parts.append(BandSource(ds, [1], [src.bands.index(band)], ds.nodata if fill is None else fill))
        else:
            bands = frame.get("bands", list(src.bands))
            if not isinstance(bands, list) or not bands or any(b not in src.bands for b in bands) or \
                    len(set(bands)) != len(bands):
                raise SceneError(f"{where}.bands: expected a list of distinct band names of {src.name} "
                                 f"({', '.join(src.bands)}), got {bands!r}")
            ds = self._open_raster(rasterio, frame["path"], f"{where}.path")
            if ds.count != len(bands):
                hint = "" if "bands" in frame else "; list the bands it holds with \"bands\""
                raise SceneError(f"{where}.path: {ds.name} has {ds.count} bands; {src.name} needs "
                                 f"{len(bands)} ({', '.join(bands)}){hint}")
            parts = [BandSource(ds, list(range(1, ds.count + 1)), [src.bands.index(b) for b in bands],
                                ds.nodata if fill is None else fill)]
        self._parts.extend(parts)
        return parts

    def _open_raster(self, rasterio, rel: str, where: str):
        if not isinstance(rel, str):
            raise SceneError(f"{where}: expected a file path, got {rel!r}")
        p = Path(rel) if os.path.isabs(rel) else self._path.parent / rel
        problem = not_a_file(p)
        if problem:
            raise SceneError(f"{where}: {p} {problem}")
        ds = open_raster(p, where)
        self._open.append(ds)
        self._files.append(p)
        return ds

    def _read_inside(self, name, r0, r1, c0, c1):
        from rasterio.windows import Window

        win = Window(c0, r0, c1 - c0, r1 - r0)
        src = _sources.get(name)
        frames = self._frames[name]
        data = np.full((len(frames), r1 - r0, c1 - c0, src.channels), np.nan, dtype=np.float32)
        valid = np.ones((len(frames), r1 - r0, c1 - c0), dtype=bool)
        angle = np.array([b == "angle" for b in src.bands])
        for i, (parts, mask, linear) in enumerate(frames):
            for p in parts:
                with reading_errors(p.ds.name):
                    data[i][..., p.positions] = np.moveaxis(p.read(win), 0, -1)
            if linear:
                data[i][..., ~angle] = _linear_to_db(data[i][..., ~angle])
            if mask is not None:
                with reading_errors(mask.ds.name):
                    valid[i] &= mask.read_mask(win)
        return data, valid

    def close(self):
        for p in self._parts:
            p.close()
        for parts, mask, _ in (f for fs in getattr(self, "_frames", {}).values() for f in fs):
            if mask is not None:
                mask.close()
        for ds in self._open:
            ds.close()
        self._open = []


def not_a_file(path: Path) -> Optional[str]:
    """Why ``path`` is not a regular file one can read ("does not exist", "is a directory", "is not a
    regular file"), or None where it is one."""
    if path.is_file():
        return None
    if path.is_dir():
        return "is a directory"
    if path.exists():
        return "is not a regular file"
    return "does not exist"


@contextmanager
def reading_errors(name: str):
    """Turn GDAL's read failures of raster ``name`` (a truncated or corrupt file) into a
    :class:`SceneError` naming it, with GDAL's own reason."""
    rasterio = require_rasterio()
    try:
        yield
    except rasterio.errors.RasterioError as e:
        reason = f"{e.__cause__}" if e.__cause__ is not None else f"{e}"
        raise SceneError(f"{name}: cannot read its pixels; the file may be truncated or corrupt ({reason})") \
            from None


def open_scene(path, resolution: Optional[float] = None, extent: str = "union", crs=None,
               nodata: Optional[dict] = None) -> Scene:
    """Open a scene from a JSON manifest or an ``.npz`` file, validating it with clear errors.

    For manifests: the output grid's ``resolution`` (CRS units; None: the first frame's grid when all
    frames share it, else its pixel size), ``extent`` ("union" or "intersection" of the frames),
    ``crs`` (None: the first frame's) and ``nodata`` ({source or "*": value}, overriding the files'
    nodata tags; a frame's own "nodata" takes precedence). An ``.npz`` scene has one grid already.
    """
    path = Path(path)
    problem = not_a_file(path)
    if problem:
        raise SceneError(f"{path}: no such scene file" if problem == "does not exist" else
                         f"{path} {problem}; a scene is a JSON manifest (.json) or an .npz file")
    if path.suffix.lower() == ".npz":
        return NpzScene(path)
    if path.suffix.lower() == ".json":
        return ManifestScene(path, resolution, extent, crs, nodata)
    raise SceneError(f"{path}: a scene is a JSON manifest (.json) or an .npz file")


# ---------------------------------------------------------------- embedding rasters

# Internal tile side of the rasters written here.
RASTER_BLOCK = 256
# GDAL's block cache beyond what the rasters being read and written need (Scene.cache_bytes,
# block_row_bytes): room for GDAL's own datasets (VRTs, overviews) and for small rasters.
CACHE_MARGIN = 16 << 20


def block_row_bytes(width: int, count: int, dtype: str) -> int:
    """Bytes of one row of blocks of a raster written by :func:`create_raster`."""
    return RASTER_BLOCK * width * count * np.dtype(dtype).itemsize


@contextmanager
def gdal_cache(nbytes: int):
    """Cap GDAL's block cache at ``nbytes`` + CACHE_MARGIN for the body of a with block.

    Left alone, the cache keeps every block read or written up to 5% of the machine's memory, so the
    process grows with the scene's height. ``GDAL_CACHEMAX`` set in the environment is the user's
    choice and wins.
    """
    rasterio = require_rasterio()
    if "GDAL_CACHEMAX" in os.environ:
        yield
        return
    # rasterio hands an integer to GDALSetCacheMax64, in bytes.
    with rasterio.Env(GDAL_CACHEMAX=int(nbytes) + CACHE_MARGIN):
        yield


def create_raster(path, grid: Grid, count: int, dtype: str, nodata, descriptions=None, tags=None):
    """Open a new tiled, compressed GeoTIFF for windowed writing on ``grid``."""
    rasterio = require_rasterio()
    from rasterio.transform import Affine

    transform = grid.transform
    if transform is not None and not isinstance(transform, Affine):
        transform = Affine(*transform[:6])
    profile = dict(driver="GTiff", height=grid.height, width=grid.width, count=count, dtype=dtype,
                   nodata=nodata, tiled=True, blockxsize=RASTER_BLOCK, blockysize=RASTER_BLOCK, compress="deflate",
                   BIGTIFF="IF_SAFER")
    if grid.crs is not None:
        profile["crs"] = grid.crs
    if transform is not None:
        profile["transform"] = transform
    try:
        with warnings.catch_warnings():
            # An .npz scene may have no georeferencing; the raster then has none either, as intended.
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            ds = rasterio.open(path, "w", **profile)
    except rasterio.errors.RasterioError as e:
        raise SceneError(f"{path}: cannot create the output raster ({e})") from None
    if descriptions:
        for i, d in enumerate(descriptions, 1):
            ds.set_band_description(i, d)
    if tags:
        ds.update_tags(**{k: str(v) for k, v in tags.items()})
    return ds
