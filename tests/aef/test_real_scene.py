"""A real Landsat 8 scene end to end (the crop in tests/data/landsat8_crop): statistics, per-band
files at 30 m with 0-valued fill and no nodata tag, embedding onto a 10 m grid, per-band validity,
reprojection from another CRS, and the Cloud-Optimized GeoTIFF output."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

rasterio = pytest.importorskip("rasterio")

from aef.pipelines import quantize as Q  # noqa: E402
from aef.pipelines.cli import main  # noqa: E402
from aef.pipelines.cog import check_cog  # noqa: E402
from aef.pipelines.geo import open_scene  # noqa: E402
from aef.model.preprocess import Statistics  # noqa: E402

CROP = Path(__file__).resolve().parents[1] / "data" / "landsat8_crop"
MANIFEST = CROP / "scene.json"
BANDS = ("B2", "B3", "B4")


def _band(b):
    return CROP / f"LC08_224077_20200518_crop_{b}.TIF"


def _cli(capsys, *argv):
    code = main(list(argv))
    cap = capsys.readouterr()
    return code, cap.out, cap.err


@pytest.fixture(scope="module")
def stats(tmp_path_factory):
    out = tmp_path_factory.mktemp("stats") / "stats.json"
    assert main(["stats", str(MANIFEST), "--out", str(out), "--no-progress"]) == 0
    return out


@pytest.fixture(scope="module")
def embedding(stats, tmp_path_factory):
    out = tmp_path_factory.mktemp("emb") / "emb.tif"
    assert main(["embed", str(MANIFEST), "--preset", "tiny", "--stats", str(stats), "--out", str(out),
                 "--no-progress"]) == 0
    return out


def test_stats_of_the_crop_are_those_of_its_footprint(stats):
    """`aef stats` on the manifest: B2-B4 counted over the footprint on the 10 m grid (about 9 output
    pixels per valid 30 m pixel, fill excluded), mean and std of log(DN + 1) as in the 30 m data;
    the bands the frame does not give have no data."""
    s = Statistics.load(stats).sources["landsat"]
    for i, b in enumerate(BANDS):
        with rasterio.open(_band(b)) as ds:
            dn = ds.read(1)
        logs = np.log1p(dn[dn > 0].astype(np.float64))
        assert 8.7 * logs.size < s.count[i] < 9.3 * logs.size
        assert s.mean[i] == pytest.approx(logs.mean(), abs=0.01 * logs.std())
        assert s.std[i] == pytest.approx(logs.std(), rel=0.1)
    assert s.count[3:] == (0,) * 4


def test_embedding_is_a_10m_grid_over_the_footprint(embedding):
    """The output is on a 10 m grid in the scene's CRS covering its bounds; fill pixels are nodata (not
    embedded zeros) and valid pixels are unit vectors within the quantisation error."""
    with rasterio.open(_band("B2")) as src, rasterio.open(embedding) as ds:
        dn = src.read(1)
        assert ds.crs == src.crs and (ds.transform.a, ds.transform.e) == (10.0, -10.0)
        assert ds.transform.b == ds.transform.d == 0
        b, o = src.bounds, ds.bounds
        assert o.left <= b.left < o.left + 10 and o.top >= b.top > o.top - 10
        assert o.right >= b.right and o.bottom <= b.bottom
        q = np.moveaxis(ds.read(), 0, -1)
        rows, cols = np.mgrid[0:ds.height, 0:ds.width]
        xs = ds.transform.c + (cols + 0.5) * ds.transform.a
        ys = ds.transform.f + (rows + 0.5) * ds.transform.e
        sc = np.floor((xs - src.transform.c) / src.transform.a).astype(int)
        sr = np.floor((ys - src.transform.f) / src.transform.e).astype(int)
    inside = (sr >= 0) & (sr < dn.shape[0]) & (sc >= 0) & (sc < dn.shape[1])
    footprint = np.zeros(rows.shape, dtype=bool)
    footprint[inside] = dn[sr[inside], sc[inside]] > 0
    nodata = (q == Q.NODATA).all(axis=-1)
    assert ((q == Q.NODATA).any(axis=-1) == nodata).all()
    # Bilinear resampling may move the footprint's edge by up to one 30 m pixel.
    assert (nodata == ~footprint).mean() > 0.98
    assert 0.2 < nodata.mean() < 0.3
    x = Q.dequantize(q[~nodata])
    bound = np.sqrt((Q.max_error(x) ** 2).sum(axis=-1))
    assert (np.abs(np.linalg.norm(x, axis=-1) - 1) <= bound + 1e-6).all()


def test_output_is_a_cog_with_model_tags(embedding, stats):
    """The embedding is a COG (ghost header, 256 px tiles, overviews), 64 int8 bands A00..A63 with
    nodata -128, tagged with the preset, weights digest, period and the statistics used."""
    assert check_cog(embedding) == []
    with rasterio.open(embedding) as ds:
        assert ds.count == 64 and set(ds.dtypes) == {"int8"} and ds.nodata == Q.NODATA
        assert ds.descriptions == tuple(f"A{i:02d}" for i in range(64))
        tags = ds.tags()
    assert tags["AEF_PRESET"] == "tiny" and len(tags["AEF_WEIGHTS_SHA256"]) == 64
    assert tags["AEF_PERIOD_START"] == "2020-01-01T00:00:00Z"
    assert json.loads(tags["AEF_STATISTICS"]) == json.loads(stats.read_text())


def _copy_crop(folder, edit=None):
    folder.mkdir(parents=True, exist_ok=True)
    for b in BANDS:
        shutil.copy(_band(b), folder / _band(b).name)
    m = json.loads(MANIFEST.read_text())
    if edit:
        edit(folder, m["sources"]["landsat"][0])
    (folder / "scene.json").write_text(json.dumps(m))
    return folder / "scene.json"


def test_pixels_missing_a_band_stay_valid(tmp_path):
    """Where B4 is fill but B2 and B3 are not, the pixel stays valid with the two bands (its B4 is
    invalid, the others are read); a frame without B3 at all is valid wherever B2 or B4 are."""
    def hole(folder, frame):
        path = folder / _band("B4").name
        with rasterio.open(path, "r+") as ds:
            a = ds.read(1)
            a[10:40, 100:150] = 0
            ds.write(a, 1)

    with open_scene(_copy_crop(tmp_path / "hole", hole)) as scene:
        d, v = scene.read("landsat", 0, 0, scene.grid.height, scene.grid.width)
    assert v[0, 10:40, 100:150].all()
    assert np.isnan(d[0, 10:40, 100:150, 2]).all() and np.isfinite(d[0, 10:40, 100:150, :2]).all()

    def drop_b3(folder, frame):
        del frame["paths"]["B3"]

    with open_scene(_copy_crop(tmp_path / "nob3", drop_b3)) as scene:
        d2, v2 = scene.read("landsat", 0, 0, scene.grid.height, scene.grid.width)
    with rasterio.open(_band("B2")) as ds:
        footprint = ds.read(1) > 0
    assert (v2[0] == footprint).all() and np.isnan(d2[..., 1]).all()


def test_a_frame_on_another_crs_is_reprojected(tmp_path):
    """B2-B4 reprojected to UTM zone 22S, read back onto the scene's 30 m grid in EPSG:32621, match
    the original frame: the same footprint and values within the error of two bilinear resamplings."""
    from rasterio.warp import Resampling, calculate_default_transform, reproject

    folder = tmp_path / "utm22"
    folder.mkdir()
    for b in BANDS:
        with rasterio.open(_band(b)) as src:
            transform, w, h = calculate_default_transform(src.crs, "EPSG:32722", src.width, src.height, *src.bounds)
            profile = dict(src.profile, crs="EPSG:32722", transform=transform, width=w, height=h, nodata=0)
            with rasterio.open(folder / _band(b).name, "w", **profile) as dst:
                reproject(rasterio.band(src, 1), rasterio.band(dst, 1), resampling=Resampling.bilinear,
                          src_nodata=0, dst_nodata=0)
    m = json.loads(MANIFEST.read_text())
    (folder / "scene.json").write_text(json.dumps(m))
    with rasterio.open(_band("B2")) as ds:
        bounds, crs = ds.bounds, ds.crs
    with open_scene(MANIFEST) as a, open_scene(folder / "scene.json", resolution=30.0,
                                                                crs=str(crs)) as b:
        assert b.grid.crs == crs and b.grid.width >= a.grid.width and b.grid.height >= a.grid.height
        da, va = a.read("landsat", 0, 0, a.grid.height, a.grid.width)
        # The reprojected frame's extent is larger (rotated box); read it over the original's area.
        r0 = round((b.grid.transform.f - bounds.top) / 30)
        c0 = round((bounds.left - b.grid.transform.c) / 30)
        db, vb = b.read("landsat", r0, c0, a.grid.height, a.grid.width)
    both = va[0] & vb[0]
    assert (va[0] != vb[0]).mean() < 0.03 and both.mean() > 0.7
    rel = np.abs(db[0][both][:, :3] - da[0][both][:, :3]) / da[0][both][:, :3]
    assert np.median(rel) < 0.01


def test_statistics_without_the_scene_source_are_refused(tmp_path, capsys):
    """Embedding with statistics that do not cover landsat exits 2 naming landsat."""
    st = {"format": "aef-statistics/1", "sources": {"sentinel2": {
        "transform": "optical", "bands": ["B2", "B3", "B4", "B8", "B11"], "count": [1] * 5, "mean": [8.0] * 5,
        "std": [1.0] * 5}}}
    (tmp_path / "s2.json").write_text(json.dumps(st))
    code, _, err = _cli(capsys, "embed", str(MANIFEST), "--preset", "tiny", "--stats", str(tmp_path / "s2.json"),
                        "--out", str(tmp_path / "o.tif"), "--no-progress")
    assert code == 2 and "do not cover source 'landsat'" in err, err
    assert not (tmp_path / "o.tif").exists()


def test_year_layout_and_scene_statistics(tmp_path, capsys):
    """--year-layout writes OUT/YEAR/NAME.tif; a --preset model without --stats computes the
    statistics from the scene and says so."""
    code, out, err = _cli(capsys, "embed", str(MANIFEST), "--preset", "tiny", "--out", str(tmp_path),
                          "--year-layout", "--resolution", "30", "--no-progress")
    assert code == 0, err
    assert out.strip() == str(tmp_path / "2020" / "scene.tif")
    assert "statistics computed from the scene" in err
    assert check_cog(tmp_path / "2020" / "scene.tif") == []
