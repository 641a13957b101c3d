"""The memory law of `aef embed` that the README states: peak memory does not grow with the scene's
height (GDAL's block cache is capped to a few block rows) except by at most OVERVIEW_BLOCK_ROWS
block rows of the output per overview level of the final COG, and grows with the frame count only
through the model's batch, by at most FRAME_BYTES per frame and pixel of the batch's windows.

Each case runs `aef embed` in a child process of its own and reads that process's peak resident
set (getrusage RUSAGE_SELF in the child, so no other process counts).
"""

import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest

rasterio = pytest.importorskip("rasterio")

import subprocess_helpers  # noqa: E402
from aef.pipelines.geo import RASTER_BLOCK, block_row_bytes  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
WIDTH = 256
LOW, TALL = 512, 2048
# The README's allowances: block rows of the output per overview level that GDAL's COG driver
# builds, and bytes per frame and pixel of one batch's windows (tiny preset, measured 140-360: the
# model's activations). SLACK covers the allocator's own growth over a longer run.
OVERVIEW_BLOCK_ROWS = 4
FRAME_BYTES = 1024
SLACK = 32 << 20
BATCH, SIDE = 4, 128  # --batch and the default tile + 2 * buffer


def overview_levels(side: int) -> int:
    """Overviews of a COG whose larger side is ``side``: one per halving down to one block."""
    return max(0, math.ceil(math.log2(side / RASTER_BLOCK)))


_DRIVER = ("import resource, sys; from aef.pipelines.cli import main; code = main(sys.argv[1:]); "
           "print('peak-kib', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); "
           "sys.exit(code)")


def _scene(folder: Path, height: int, frames: int) -> Path:
    """A manifest of `frames` sentinel2 frames, WIDTH x `height`, tiled GeoTIFFs with noise."""
    from rasterio.transform import Affine

    folder.mkdir()
    rng = np.random.default_rng(0)
    entries = []
    for i in range(frames):
        path = folder / f"f{i}.tif"
        with rasterio.open(path, "w", driver="GTiff", height=height, width=WIDTH, count=5, dtype="float32",
                           crs="EPSG:32633", transform=Affine(10, 0, 500_000, 0, -10, 4_650_000), tiled=True) as ds:
            ds.write(rng.normal(size=(5, height, WIDTH)).astype(np.float32))
        entries.append({"path": path.name, "time": f"2024-{i + 1:02d}-15"})
    manifest = folder / "scene.json"
    manifest.write_text(json.dumps({"sources": {"sentinel2": entries}}))
    return manifest


def _peak(scene: Path) -> int:
    """Peak resident bytes of `aef embed` on `scene` (float32 output, random tiny model)."""
    env = {k: v for k, v in os.environ.items() if k != "GDAL_CACHEMAX"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-c", _DRIVER, "embed", str(scene), "--out", str(scene.with_name("emb.tif")),
           "--preset", "tiny", "--dtype", "float32", "--batch", str(BATCH), "--no-progress"]
    run = subprocess_helpers.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    line = [ln for ln in run.stderr.splitlines() if ln.startswith("peak-kib ")][-1]
    return int(line.split()[1]) * 1024


def test_peak_memory_is_flat_in_height_and_bounded_per_frame(tmp_path):
    """Four times the height adds at most OVERVIEW_BLOCK_ROWS block rows of the float32 output per
    extra overview level (plus SLACK), far less than the taller output itself (128 MiB here, which
    an uncapped block cache keeps); three times the frames add at most FRAME_BYTES per added frame
    and pixel of a batch's windows."""
    base = _peak(_scene(tmp_path / "base", LOW, 2))
    tall = _peak(_scene(tmp_path / "tall", TALL, 2))
    more = _peak(_scene(tmp_path / "frames", LOW, 6))
    mib = 1 << 20
    levels = overview_levels(TALL) - overview_levels(LOW)
    allowed = levels * OVERVIEW_BLOCK_ROWS * block_row_bytes(WIDTH, 64, "float32") + SLACK
    assert tall - base <= allowed, \
        f"height {LOW} -> {TALL}: {base / mib:.0f} -> {tall / mib:.0f} MiB (allowed +{allowed / mib:.0f})"
    bound = (6 - 2) * BATCH * SIDE * SIDE * FRAME_BYTES
    assert more - base <= bound, f"2 -> 6 frames: {base / mib:.0f} -> {more / mib:.0f} MiB (allowed +{bound / mib:.0f})"
