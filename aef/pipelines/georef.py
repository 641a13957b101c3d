"""Bringing frames onto one output grid: the target grid of a scene (resolution, CRS, the union or
intersection of the frames' extents) and windowed reading through GDAL's warper.

Frames already on the target grid are read directly. Others are read through a
:class:`rasterio.vrt.WarpedVRT` onto the target grid, bilinear for data bands (nodata pixels take
no part in the interpolation) and nearest for masks, one window at a time, so a reprojected scene
is never materialised.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

EXTENTS = ("union", "intersection")


class GridError(ValueError):
    """A frame that cannot be brought onto the output grid; the message names the file."""


def _affine(transform):
    from rasterio.transform import Affine

    return transform if transform is None or isinstance(transform, Affine) else Affine(*transform[:6])


def same_grid(ds, grid) -> bool:
    return (ds.height, ds.width) == (grid.height, grid.width) and ds.crs == grid.crs and \
        _affine(ds.transform) == _affine(grid.transform)


def _georeferenced(ds) -> bool:
    from rasterio.transform import Affine

    return ds.crs is not None and not ds.transform.is_identity and ds.transform != Affine.identity()


def target_grid(datasets: Sequence, resolution: Optional[float] = None, extent: str = "union", crs=None):
    """The output grid for ``datasets`` (opened rasters, the first one decides the defaults).

    ``resolution`` (CRS units; None: the first frame's pixel size), ``extent`` "union" or
    "intersection" of the frames' bounds, ``crs`` (None: the first frame's). Without any
    georeferencing, all frames must already share one grid, which is then the output grid.
    """
    from rasterio.crs import CRS
    from rasterio.errors import CRSError
    from rasterio.transform import Affine
    from rasterio.warp import transform_bounds

    from .geo import Grid

    if extent not in EXTENTS:
        raise GridError(f"--extent: expected one of {', '.join(EXTENTS)}, got {extent!r}")
    if resolution is not None and not (math.isfinite(resolution) and resolution > 0):
        raise GridError(f"--resolution: expected a positive number, got {resolution!r}")
    first = datasets[0]
    plain = [ds for ds in datasets if not _georeferenced(ds)]
    if plain:
        if len(plain) < len(datasets):
            raise GridError(f"{plain[0].name}: cannot be brought onto the output grid: it has no CRS or "
                            f"geotransform, while {next(d for d in datasets if _georeferenced(d)).name} has")
        grid = Grid(first.height, first.width, first.crs, first.transform)
        for ds in datasets[1:]:
            if (ds.height, ds.width) != (grid.height, grid.width):
                raise GridError(f"{ds.name}: cannot be brought onto the output grid: neither it nor "
                                f"{first.name} is georeferenced, and their sizes differ ({ds.width}x{ds.height} "
                                f"and {first.width}x{first.height})")
        return grid
    try:
        dst_crs = CRS.from_user_input(crs) if crs is not None else first.crs
    except CRSError as e:
        raise GridError(f"--crs: {crs!r} is not a coordinate reference system ({e})") from None
    if dst_crs.is_geographic and resolution is not None:
        raise GridError(f"the output CRS ({dst_crs.to_string()}) is geographic, so --resolution {resolution} "
                        "would be in degrees; give a projected --crs (e.g. the UTM zone, EPSG:326xx)")
    if resolution is None:
        if crs is None and all(same_grid(ds, Grid(first.height, first.width, first.crs, first.transform))
                               for ds in datasets):
            return Grid(first.height, first.width, first.crs, first.transform)
        if first.crs != dst_crs:
            raise GridError(f"{first.name}: give --resolution: its pixel size is in the units of another CRS "
                            f"than the output's {dst_crs.to_string()}")
        resolution = abs(first.transform.a)
    boxes = []
    for ds in datasets:
        try:
            b = transform_bounds(ds.crs, dst_crs, *ds.bounds, densify_pts=21)
        except Exception as e:  # noqa: BLE001 - PROJ raises several types for one cause
            raise GridError(f"{ds.name}: cannot be brought onto the output grid ({dst_crs.to_string()}): its "
                            f"bounds do not transform ({type(e).__name__}: {e})") from None
        if not all(math.isfinite(v) for v in b):
            raise GridError(f"{ds.name}: cannot be brought onto the output grid ({dst_crs.to_string()}): its "
                            "bounds fall outside that CRS's domain")
        boxes.append(b)
    box = np.array(boxes)
    if extent == "union":
        left, bottom, right, top = box[:, 0].min(), box[:, 1].min(), box[:, 2].max(), box[:, 3].max()
    else:
        left, bottom, right, top = box[:, 0].max(), box[:, 1].max(), box[:, 2].min(), box[:, 3].min()
        if left >= right or bottom >= top:
            raise GridError("--extent intersection: the frames do not overlap (e.g. "
                            f"{datasets[int(np.argmax(box[:, 0]))].name} and "
                            f"{datasets[int(np.argmin(box[:, 2]))].name})")
    r = float(resolution)
    # Snapped to multiples of the resolution, so that scenes of one area share pixel edges.
    left, top = math.floor(left / r + 1e-9) * r, math.ceil(top / r - 1e-9) * r
    width = max(1, math.ceil((right - left) / r - 1e-9))
    height = max(1, math.ceil((top - bottom) / r - 1e-9))
    return Grid(height, width, dst_crs, Affine.translation(left, top) @ Affine.scale(r, -r))


@dataclass
class BandSource:
    """One opened raster giving some bands of a frame: ``indexes`` (1-based, in the file) fill the
    source's bands ``positions``; ``nodata`` (None: none) marks invalid values."""

    ds: object
    indexes: list
    positions: list
    nodata: Optional[float]
    vrt: object = None

    def attach(self, grid, resampling: str) -> None:
        """Read through a warped VRT when the raster is not on ``grid``."""
        from rasterio.enums import Resampling
        from rasterio.vrt import WarpedVRT

        if same_grid(self.ds, grid):
            return
        try:
            self.vrt = WarpedVRT(self.ds, crs=grid.crs, transform=_affine(grid.transform), width=grid.width,
                                 height=grid.height, resampling=Resampling[resampling], src_nodata=self.nodata,
                                 nodata=math.nan, dtype="float32")
        except Exception as e:  # noqa: BLE001 - GDAL's warper reports through several exception types
            raise GridError(f"{self.ds.name}: cannot be brought onto the output grid ({type(e).__name__}: {e})") \
                from None

    def read(self, window) -> np.ndarray:
        """(len(indexes), h, w) float32, NaN where invalid (nodata, or outside the raster)."""
        if self.vrt is not None:
            return self.vrt.read(self.indexes, window=window)
        raw = self.ds.read(self.indexes, window=window)
        out = raw.astype(np.float32)
        if self.nodata is not None and not math.isnan(self.nodata):
            out[raw == np.asarray(self.nodata).astype(raw.dtype)] = np.nan
        return out

    def read_mask(self, window) -> np.ndarray:
        """(h, w) bool of a single-band mask raster: nonzero = clear; outside the raster: not clear."""
        if self.vrt is not None:
            m = self.vrt.read(1, window=window)
            return np.isfinite(m) & (m != 0)
        return self.ds.read(1, window=window) != 0

    def close(self) -> None:
        if self.vrt is not None:
            self.vrt.close()
            self.vrt = None
