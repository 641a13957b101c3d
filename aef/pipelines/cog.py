"""Cloud-Optimized GeoTIFF output: the finished embedding raster is copied with GDAL's COG driver
(internal 256 px tiles, overviews, IFDs before the data), and :func:`check_cog` verifies a file has
that layout.
"""

from __future__ import annotations

import os
from pathlib import Path

BLOCK = 256
# The COG driver writes this marker in the ghost header that opens the file.
_LAYOUT_MARKER = b"LAYOUT=IFDS_BEFORE_DATA"


def has_cog_driver() -> bool:
    import rasterio

    with rasterio.Env() as env:
        return "COG" in env.drivers()


def write_cog(src, dst) -> Path:
    """Copy the GeoTIFF ``src`` to ``dst`` as a COG (deflate, nearest overviews: averaging
    quantised components would not give the quantised mean), via a temporary file renamed at the
    end. Band descriptions, nodata and tags travel with the copy."""
    import rasterio
    from rasterio.shutil import copy as rio_copy

    if not has_cog_driver():
        raise RuntimeError(f"the installed GDAL ({rasterio.__gdal_version__}) has no COG driver (GDAL >= 3.1 has)")
    dst = Path(dst)
    tmp = dst.with_name(dst.name + ".cog-partial")
    try:
        rio_copy(str(src), str(tmp), driver="COG", COMPRESS="DEFLATE", BLOCKSIZE=str(BLOCK),
                 OVERVIEW_RESAMPLING="NEAREST", BIGTIFF="IF_SAFER")
        os.replace(tmp, dst)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return dst


def check_cog(path) -> list[str]:
    """Problems that keep ``path`` from being a COG as GDAL's driver writes it (empty: none)."""
    import rasterio

    problems = []
    with open(path, "rb") as f:
        head = f.read(1024)
    if _LAYOUT_MARKER not in head:
        problems.append("no COG ghost header (LAYOUT=IFDS_BEFORE_DATA) at the start of the file")
    with rasterio.open(path) as ds:
        if ds.driver != "GTiff":
            problems.append(f"driver {ds.driver}, not a GeoTIFF")
        if not ds.profile.get("tiled"):
            problems.append("not internally tiled")
        if any(b != (BLOCK, BLOCK) for b in ds.block_shapes):
            problems.append(f"blocks {set(ds.block_shapes)}, expected {BLOCK}x{BLOCK}")
        if max(ds.width, ds.height) > BLOCK and not ds.overviews(1):
            problems.append("no overviews")
        if ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") != "COG":
            problems.append("GDAL does not report LAYOUT=COG")
    return problems
