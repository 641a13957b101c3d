"""aef embed: scene in, 64-band embedding GeoTIFF out, tiled as the paper does (docs/model.md §8.2 and §9.2)."""

import json

import numpy as np
import pytest
import torch

rasterio = pytest.importorskip("rasterio")

from aef.pipelines import quantize as Q  # noqa: E402
from aef.pipelines.cli import main  # noqa: E402
from aef.pipelines.embed import Tiling, default_period, embed_scene, merge_shards, parse_shard  # noqa: E402
from aef.pipelines.geo import SceneError, open_scene, parse_time  # noqa: E402

from pipeline_fixtures import HEIGHT, TEST_TILING, WIDTH, read_window_directly, tiny_model, write_scene  # noqa: E402

TILING = Tiling(**TEST_TILING)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return write_scene(tmp_path_factory.mktemp("scene"))


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def _embed(model, scene, out, **kw):
    with open_scene(scene) as s:
        return embed_scene(model, s, out, tiling=TILING, progress=False, **kw)


@pytest.fixture(scope="module")
def float_output(model, scene, tmp_path_factory):
    return _embed(model, scene, tmp_path_factory.mktemp("f32") / "emb.tif", dtype="float32")


@pytest.fixture(scope="module")
def int8_output(model, scene, tmp_path_factory):
    return _embed(model, scene, tmp_path_factory.mktemp("i8") / "emb.tif", dtype="int8")


def _read(path):
    """(H, W, bands) values and the raster's metadata."""
    with rasterio.open(path) as ds:
        meta = dict(crs=ds.crs, transform=ds.transform, width=ds.width, height=ds.height, count=ds.count,
                    dtypes=set(ds.dtypes), nodata=ds.nodata, descriptions=ds.descriptions, tags=ds.tags())
        return np.moveaxis(ds.read(), 0, -1), meta


def test_int8_output_bands_grid_and_norm(int8_output, float_output, scene):
    """The int8 output has 64 bands A00..A63, the input's CRS, transform and size, and dequantises to
    unit vectors within the quantisation error, equal to the float32 output within max_error."""
    q, ds = _read(int8_output)
    f, _ = _read(float_output)
    with rasterio.open(scene.parent / "sentinel2_0.tif") as src:
        assert (ds["crs"], ds["transform"], ds["width"], ds["height"]) == (src.crs, src.transform, WIDTH, HEIGHT)
    assert ds["count"] == 64 and ds["dtypes"] == {"int8"} and ds["nodata"] == Q.NODATA
    assert ds["descriptions"] == tuple(f"A{i:02d}" for i in range(64))
    x = Q.dequantize(q)
    assert np.isfinite(x).all()
    bound = np.sqrt((Q.max_error(f) ** 2).sum(axis=-1))
    assert (np.abs(np.linalg.norm(x, axis=-1) - 1) <= bound).all()
    assert (np.abs(x - f) <= Q.max_error(f) + 1e-6).all()
    np.testing.assert_allclose(np.linalg.norm(f, axis=-1), 1, atol=1e-5)


@pytest.mark.parametrize("tile_rc", [(0, 0), (1, 2), (2, 3)])
def test_interior_equals_embedding_the_window_directly(float_output, scene, model, tile_rc):
    """Away from the blended overlaps, the output equals model.embed on that tile's buffered window
    read straight from the GeoTIFFs (edge tiles included, whose windows reach past the scene)."""
    f, _ = _read(float_output)
    i, j = tile_rc
    t, b, o = TILING.tile, TILING.buffer, TILING.overhang
    data, times, masks = read_window_directly(scene, i * t - b, j * t - b, TILING.side)
    with torch.no_grad():
        direct = model.embed(data, times, torch.tensor([[parse_time("2024-01-01"), parse_time("2025-01-01")]]),
                             masks)[0].numpy()
    # Pixels within o of the tile's edge are blended with the neighbour's; inside, one tile alone.
    r0, c0 = i * t + o, j * t + o
    r1, c1 = min((i + 1) * t - o, HEIGHT), min((j + 1) * t - o, WIDTH)
    assert r1 > r0 and c1 > c0
    want = direct[r0 - i * t + b:r1 - i * t + b, c0 - j * t + b:c1 - j * t + b]
    np.testing.assert_allclose(f[r0:r1, c0:c1], want, atol=2e-5)


def test_overlaps_blend_smoothly(float_output, scene, model):
    """In an overlap the output is the renormalised blend of both tiles, so it lies between them:
    closer to each tile's own embedding than that tile's neighbour is."""
    f, _ = _read(float_output)
    t, b, o = TILING.tile, TILING.buffer, TILING.overhang
    period = torch.tensor([[parse_time("2024-01-01"), parse_time("2025-01-01")]])
    outs = []
    for j in (0, 1):
        data, times, masks = read_window_directly(scene, -b, j * t - b, TILING.side)
        with torch.no_grad():
            outs.append(model.embed(data, times, period, masks)[0].numpy())
    rows = slice(o + b, t - o + b)  # tile row 0 interior, in window coordinates of row 0
    # Columns t - o .. t + o of the scene are covered by tile 0 (window col + b) and tile 1 (col - t + b).
    cols = np.arange(t - o, t + o)
    a, c = outs[0][rows][:, cols + b], outs[1][rows][:, cols - t + b]
    got = f[o:t - o][:, cols]
    cos = lambda u, v: (u * v).sum(-1)  # noqa: E731
    assert (cos(got, a) >= cos(a, c) - 1e-5).all() and (cos(got, c) >= cos(a, c) - 1e-5).all()
    np.testing.assert_allclose(np.linalg.norm(got, axis=-1), 1, atol=1e-5)


@pytest.mark.parametrize("tiling", [Tiling(), Tiling(32, 16, 8), Tiling(16, 8, 4), Tiling(48, 8, 8)])
def test_blend_weights_sum_to_one(tiling):
    """Laid along a line like the tiles, the ramps of neighbouring tiles sum to 1 at every pixel
    that two tiles cover or one tile covers alone (so blending never changes magnitude)."""
    n, t, o = 5, tiling.tile, tiling.overhang
    total = np.zeros(n * t + 2 * o)
    for k in range(n):
        total[k * t:k * t + tiling.kept] += tiling.ramp()
    np.testing.assert_allclose(total[2 * o:n * t], 1, atol=1e-6)


def test_default_tiling_is_the_papers():
    """Defaults: 96 px tiles buffered by 16 to 128 px, 8 px trimmed, so neighbours overlap by 16."""
    t = Tiling()
    assert (t.tile, t.buffer, t.trim, t.side, t.kept) == (96, 16, 8, 128, 112)


@pytest.mark.parametrize("bad", [dict(tile=30, buffer=16, trim=8), dict(tile=32, buffer=8, trim=9),
                                 dict(tile=8, buffer=12, trim=0)])
def test_bad_tiling_is_refused(bad):
    """A side that is not a multiple of 16, trim > buffer, or tiles narrower than the overlap raise."""
    with pytest.raises(ValueError, match="tiling"):
        Tiling(**bad)


def test_shards_merged_equal_the_single_run(model, scene, float_output, tmp_path):
    """Embedding in 3 shards and merging writes the same raster as one run and then removes the
    partials; a merge with a shard missing refuses with a clear error."""
    out = tmp_path / "emb.tif"
    for i in range(3):
        _embed(model, scene, out, dtype="float32", shard=(i, 3))
        if i == 1:
            with pytest.raises(SceneError, match="shard.*2 of 3.*missing"):
                merge_shards(out, progress=False)
    merge_shards(out, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.tif"]
    got, ds = _read(out)
    want, ref = _read(float_output)
    assert all(ds[k] == ref[k] for k in ("crs", "transform", "descriptions", "width", "height"))
    np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("text,want", [("0/1", (0, 1)), ("2/4", (2, 4))])
def test_parse_shard(text, want):
    """i/n parses to (i, n)."""
    assert parse_shard(text) == want


@pytest.mark.parametrize("text", ["4/4", "-1/2", "1", "a/b"])
def test_parse_shard_rejects(text):
    """Out-of-range or malformed shards raise a ValueError naming --shard."""
    with pytest.raises(ValueError, match="--shard"):
        parse_shard(text)


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_npz_scene_and_nodata(model, tmp_path):
    """An .npz scene in the sample format embeds too (target-only sources ignored); pixels never
    observed in any frame are no-data (-128), all others unit vectors; an npz without
    georeferencing gives an ungeoreferenced raster."""
    rng = np.random.default_rng(0)
    h, w = 40, 50
    s2 = rng.normal(size=(2, h, w, 5)).astype(np.float32)
    s2[:, :10, :10] = np.nan
    mask = np.ones((2, h, w), dtype=bool)
    mask[0, 30:, 30:] = False
    s2[1, 30:, 30:] = np.nan  # invalid in both frames, once by mask and once by NaN
    times = np.array([parse_time("2023-04-01"), parse_time("2023-07-01")], dtype=np.int64)
    path = tmp_path / "scene.npz"
    np.savez(path, **{"source_data/sentinel2": s2, "timestamps/sentinel2": times, "masks/sentinel2": mask,
                      "source_data/glo30": np.zeros((1, h, w, 4), np.float32)})
    out = _embed(model, path, tmp_path / "emb.tif")
    q, ds = _read(out)
    dead = np.zeros((h, w), dtype=bool)
    dead[:10, :10] = dead[30:, 30:] = True
    assert (q[dead] == Q.NODATA).all()
    x = Q.dequantize(q[~dead])
    assert np.isfinite(x).all() and (np.abs(np.linalg.norm(x, axis=-1) - 1) < 0.025).all()
    assert ds["tags"]["AEF_PERIOD_START"] == "2023-01-01T00:00:00Z" and ds["crs"] is None


def test_default_period_is_the_calendar_year(scene):
    """Without --period the summary period is the calendar year of the data."""
    with open_scene(scene) as s:
        assert default_period(s) == (parse_time("2024-01-01"), parse_time("2025-01-01"))


def _cli(capsys, *argv):
    code = main(list(argv))
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_cli_embed_writes_the_geotiff(scene, tmp_path, capsys):
    """`aef embed` with a preset and --period writes an int8 GeoTIFF tagged with that period."""
    out = tmp_path / "cli.tif"
    code, stdout, err = _cli(capsys, "embed", str(scene), "--out", str(out), "--preset", "tiny", "--tile", "32",
                             "--period", "2024-03-01", "2024-09-01", "--no-progress")
    assert code == 0, err
    assert stdout.strip() == str(out)
    with rasterio.open(out) as ds:
        assert ds.count == 64 and ds.dtypes[0] == "int8"
        assert ds.tags()["AEF_PERIOD_START"] == "2024-03-01T00:00:00Z"


def _break(scene, how, tmp_path):
    """A copy of the test manifest, broken in one way."""
    m = json.loads(scene.read_text())
    for f in m["sources"]["sentinel2"] + m["sources"]["sentinel1"]:
        f["path"] = str(scene.parent / f["path"])
        if "mask" in f:
            f["mask"] = str(scene.parent / f["mask"])
    text = None
    if how == "not json":
        text = '{"sources": {"sentinel2": [}'
    elif how == "no sources":
        m = {"frames": []}
    elif how == "unknown source":
        m["sources"]["sentinel3"] = m["sources"].pop("sentinel1")
    elif how == "target source":
        m["sources"]["glo30"] = m["sources"].pop("sentinel1")
    elif how == "bad time":
        m["sources"]["sentinel2"][1]["time"] = "2024-13-45"
    elif how == "missing file":
        m["sources"]["sentinel2"][0]["path"] = str(tmp_path / "gone.tif")
    elif how == "wrong bands":
        m["sources"]["sentinel2"][0]["path"] = m["sources"]["sentinel2"][0]["mask"]
    elif how == "not georeferenced":
        with rasterio.open(scene.parent / "sentinel1_0.tif") as ds:
            profile, data = ds.profile, ds.read()
        profile.pop("crs")
        profile.pop("transform")
        with rasterio.open(tmp_path / "plain.tif", "w", **profile) as dst:
            dst.write(data)
        m["sources"]["sentinel1"][0]["path"] = str(tmp_path / "plain.tif")
    elif how == "not a raster":
        (tmp_path / "junk.tif").write_bytes(b"II*\x00 definitely not a tiff")
        m["sources"]["sentinel2"][0]["path"] = str(tmp_path / "junk.tif")
    elif how == "empty frames":
        m["sources"]["sentinel2"] = []
    path = tmp_path / "broken.json"
    path.write_text(text if text is not None else json.dumps(m))
    return path


@pytest.mark.parametrize("how,message", [
    ("not json", "not valid JSON"),
    ("no sources", '"sources"'),
    ("unknown source", "unknown source 'sentinel3'"),
    ("target source", "not a model input"),
    ("bad time", "sources.sentinel2\\[1\\].time.*ISO 8601"),
    ("missing file", "gone.tif does not exist"),
    ("wrong bands", "has 1 bands; sentinel2 needs 5"),
    ("not georeferenced", "plain.tif: cannot be brought onto the output grid"),
    ("not a raster", "not a readable raster"),
    ("empty frames", "non-empty list"),
])
def test_malformed_manifest_gives_a_clear_error(scene, tmp_path, capsys, how, message):
    """Each way of breaking a manifest exits with status 2 and one line naming the problem, never a traceback."""
    import re

    code, _, err = _cli(capsys, "embed", str(_break(scene, how, tmp_path)), "--out", str(tmp_path / "o.tif"),
                        "--preset", "tiny", "--no-progress")
    assert code == 2
    assert re.search(message, err), err
    assert "Traceback" not in err and err.startswith("aef embed: error:")
    assert not (tmp_path / "o.tif").exists()


@pytest.mark.parametrize("argv,message", [
    (["--period", "2024-06-01", "2024-01-01"], "end .* must be after the start"),
    (["--period", "2024-06-01", "June"], "--period END"),
    (["--shard", "3/2"], "--shard"),
    ([], "--checkpoint"),
])
def test_bad_embed_arguments_give_clear_errors(scene, tmp_path, capsys, argv, message):
    """Reversed or unparsable periods, bad shards and a missing model exit 2 with a clear message."""
    import re

    base = ["embed", str(scene), "--out", str(tmp_path / "o.tif"), "--no-progress"]
    extra = argv if argv == [] else argv + ["--preset", "tiny"]
    code, _, err = _cli(capsys, *base, *extra)
    assert code == 2 and re.search(message, err), err
    assert "Traceback" not in err


def test_without_rasterio_the_message_names_the_extra(scene, tmp_path, capsys, monkeypatch):
    """Without rasterio, `aef embed` says to install the geo extra instead of failing on an import."""
    import sys

    monkeypatch.setitem(sys.modules, "rasterio", None)
    code, _, err = _cli(capsys, "embed", str(scene), "--out", str(tmp_path / "o.tif"), "--preset", "tiny")
    assert code == 2 and "pip install '.[geo]'" in err


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_a_saved_training_sample_is_a_scene(model, tmp_path):
    """A sample written by aef.pipelines.data.save_sample (all sources, metadata, text) embeds as a scene: its
    input sources are used, everything else ignored, and every pixel with data gets a unit vector."""
    from aef.pipelines.data import save_sample, synthetic_sample

    path = tmp_path / "sample.npz"
    save_sample(path, synthetic_sample(32, seed=1, text_dim=8))
    out = _embed(model, path, tmp_path / "emb.tif", dtype="float32")
    x, meta = _read(out)
    assert (meta["height"], meta["width"], meta["count"]) == (32, 32, 64)
    np.testing.assert_allclose(np.linalg.norm(x, axis=-1), 1, atol=1e-5)
