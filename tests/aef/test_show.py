"""aef show: PCA-to-RGB and cosine-similarity PNGs of an embedding GeoTIFF."""

import numpy as np
import pytest

rasterio = pytest.importorskip("rasterio")
pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")

from aef.pipelines import quantize as Q  # noqa: E402
from aef.pipelines.cli import main  # noqa: E402
from aef.pipelines.show import SIMILARITY_STOPS, colorize, pca_rgb, similarity  # noqa: E402

from pipeline_fixtures import HEIGHT, WIDTH, write_scene  # noqa: E402


def _clusters(h=30, w=40, seed=0):
    """A field of four clusters of unit vectors (vertical stripes) with a no-data block: the four
    centres span three dimensions, which the three principal components capture."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4, 64))
    labels = np.repeat(np.arange(4), w // 4)[None].repeat(h, 0)
    x = centres[labels] + 0.05 * rng.normal(size=(h, w, 64))
    x = (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)
    x[:5, :5] = np.nan
    return x, labels


def _png(path):
    with rasterio.open(path) as ds:
        return np.moveaxis(ds.read(), 0, -1)


def test_pca_colours_separate_clusters_and_blacken_nodata():
    """Pixels of one cluster get nearly one colour, different clusters clearly different colours,
    and no-data pixels are black."""
    x, labels = _clusters()
    rgb = pca_rgb(x).astype(float)
    assert rgb.shape == x.shape[:2] + (3,)
    assert (rgb[:5, :5] == 0).all()
    valid = np.isfinite(x).all(-1)
    means = [rgb[valid & (labels == k)].mean(0) for k in range(4)]
    spread = max(rgb[valid & (labels == k)].std(0).max() for k in range(4))
    gaps = [np.abs(means[a] - means[b]).max() for a in range(4) for b in range(a + 1, 4)]
    assert min(gaps) > 4 * spread and min(gaps) > 60


def test_similarity_is_cosine_to_the_chosen_pixel():
    """The similarity map is 1 at the chosen pixel, equals the cosine elsewhere, and NaN at no-data."""
    x, labels = _clusters()
    s = similarity(x, 10, 3)
    assert s[10, 3] == pytest.approx(1, abs=1e-6)
    np.testing.assert_allclose(s[20, 30], float(x[20, 30] @ x[10, 3]), rtol=1e-5)
    assert np.isnan(s[:5, :5]).all()
    same = labels == labels[10, 3]
    assert np.nanmin(s[same]) > np.nanmax(s[~same])


def test_similarity_colours_hit_the_stops():
    """-1, 0 and 1 map to the three colour stops; NaN maps to black."""
    rgb = colorize(np.array([[-1.0, 0.0, 1.0, np.nan]]))
    np.testing.assert_array_equal(rgb[0, :3], SIMILARITY_STOPS[:, 1:].astype(np.uint8))
    assert (rgb[0, 3] == 0).all()


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    """An int8 embedding GeoTIFF of the test scene, written by `aef embed`."""
    folder = tmp_path_factory.mktemp("show")
    scene = write_scene(folder / "scene")
    out = folder / "emb.tif"
    assert main(["embed", str(scene), "--out", str(out), "--preset", "tiny", "--tile", "32", "--no-progress"]) == 0
    return out


def test_embed_then_show_writes_pngs(embedded, tmp_path, capsys):
    """`aef show` on `aef embed` output writes a full-size RGB PCA PNG with varied colours and a
    similarity PNG in which the chosen pixel has the 'similar' colour."""
    out = tmp_path / "map.png"
    code = main(["show", str(embedded), "--out", str(out), "--similarity", "40", "60"])
    stdout = capsys.readouterr().out.split()
    assert code == 0 and stdout == [str(out), str(tmp_path / "map_sim.png")]
    rgb, sim = _png(out), _png(tmp_path / "map_sim.png")
    assert rgb.shape == sim.shape == (HEIGHT, WIDTH, 3)
    assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 100
    np.testing.assert_array_equal(sim[40, 60], SIMILARITY_STOPS[2, 1:].astype(np.uint8))
    assert not list(tmp_path.glob("*.aux.xml"))


def test_show_decimates_large_rasters(embedded, tmp_path):
    """--max-size bounds the longer side of the PNG, keeping the aspect ratio."""
    out = tmp_path / "small.png"
    assert main(["show", str(embedded), "--out", str(out), "--max-size", "55"]) == 0
    assert _png(out).shape == (round(HEIGHT / 2), 55, 3)


def test_float32_embeddings_show_like_int8(tmp_path):
    """A float32 raster and its int8 quantisation give nearly the same PCA picture."""
    x, _ = _clusters()
    paths = {}
    for dtype, data in (("float32", x), ("int8", Q.quantize(x))):
        paths[dtype] = tmp_path / f"{dtype}.tif"
        with rasterio.open(paths[dtype], "w", driver="GTiff", height=x.shape[0], width=x.shape[1], count=64,
                           dtype=dtype) as ds:
            ds.write(np.moveaxis(data, -1, 0))
        assert main(["show", str(paths[dtype]), "--out", str(tmp_path / f"{dtype}.png")]) == 0
    a, b = _png(tmp_path / "float32.png").astype(int), _png(tmp_path / "int8.png").astype(int)
    assert np.abs(a - b).mean() < 3


@pytest.mark.parametrize("case,message", [
    ("missing", "no such embedding raster"),
    ("bands", "expected 64 embedding bands, found 3"),
    ("pixel", "outside the 75x110 raster"),
    ("folder", "does not exist"),
])
def test_show_errors_are_clear(embedded, tmp_path, capsys, case, message):
    """A missing file, a raster that is not an embedding, a similarity pixel outside the raster and
    an output folder that does not exist exit 2 with a clear line."""
    src, out, extra = embedded, tmp_path / "m.png", []
    if case == "missing":
        src = tmp_path / "nope.tif"
    elif case == "bands":
        src = tmp_path / "rgb.tif"
        with rasterio.open(src, "w", driver="GTiff", height=4, width=4, count=3, dtype="uint8") as ds:
            ds.write(np.zeros((3, 4, 4), np.uint8))
    elif case == "pixel":
        extra = ["--similarity", str(HEIGHT), "0"]
    elif case == "folder":
        out = tmp_path / "no" / "m.png"
    code = main(["show", str(src), "--out", str(out), *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err, err
