"""aef.pipelines.stats / aef stats: streaming per-band statistics after the transform, and aef train storing
them in the checkpoint's config."""

import json

import numpy as np
import pytest
import torch

from aef.model import preprocess as P
from aef.model import sources
from aef.pipelines.cli import main
from aef.pipelines.data import save_sample
from aef.pipelines.stats import RunningStats, compute_statistics


@pytest.mark.parametrize("chunks", [1, 3, 17])
@pytest.mark.parametrize("offset", [0.0, 1e8])
def test_chunked_statistics_equal_the_float64_reference(chunks, offset):
    """Mean and std combined over any chunking equal numpy's float64 result over all valid values,
    per band, also for values far from zero (no cancellation of a naive sum of squares)."""
    rng = np.random.default_rng(chunks)
    x = offset + rng.normal(0, [1.0, 3.0, 0.01], size=(1000, 3))
    valid = rng.random((1000, 3)) > 0.3
    valid[:, 2] &= np.arange(1000) < 400  # one band mostly missing
    rs = RunningStats(3)
    for part in np.array_split(np.arange(1000), chunks):
        rs.update(x[part], valid[part])
    for c in range(3):
        ref = x[valid[:, c], c]
        assert rs.count[c] == ref.size
        np.testing.assert_allclose(rs.mean[c], ref.mean(), rtol=1e-12)
        np.testing.assert_allclose(np.sqrt(rs.m2[c] / rs.count[c]), ref.std(), rtol=1e-6)


def _samples(folder, n=3, side=8):
    """n .npz samples with landsat digital numbers (some values NaN or masked) and a target-only source."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    raw = []
    for i in range(n):
        x = rng.uniform(5000, 12000, size=(2, side, side, 7)).astype(np.float32)
        x[0, :2, :, 3:] = np.nan
        m = np.ones((2, side, side), dtype=bool)
        m[1, -1] = False
        save_sample(folder / f"s{i}.npz", {
            "source_data": {"landsat": torch.from_numpy(x), "glo30": torch.zeros(1, side, side, 4)},
            "timestamps": {"landsat": torch.tensor([1_590_000_000_000, 1_591_000_000_000]),
                           "glo30": torch.tensor([1_590_000_000_000])},
            "masks": {"landsat": torch.from_numpy(m)}})
        raw.append((x, m))
    return raw


def test_statistics_of_npz_samples_are_those_of_the_transformed_values(tmp_path):
    """Over a folder of samples: per band, the count of valid values and the mean/std of log(x + 1)
    over them; sources without a normalising transform are left out."""
    raw = _samples(tmp_path / "data")
    st = compute_statistics([tmp_path / "data"], progress=False)
    assert list(st.sources) == ["landsat"]
    s = st.sources["landsat"]
    for c in range(7):
        vals = np.concatenate([np.log1p(x[..., c][m & np.isfinite(x[..., c])].astype(np.float64)) for x, m in raw])
        assert s.count[c] == vals.size
        np.testing.assert_allclose(s.mean[c], vals.mean(), rtol=1e-6)
        np.testing.assert_allclose(s.std[c], vals.std(), rtol=1e-4)


def test_aef_stats_cli_writes_loadable_json(tmp_path, capsys):
    """`aef stats DIR --out F` writes statistics that load back, and prints the table."""
    _samples(tmp_path / "data", n=2)
    out = tmp_path / "stats.json"
    assert main(["stats", str(tmp_path / "data"), "--out", str(out), "--no-progress"]) == 0
    cap = capsys.readouterr()
    assert cap.out.strip() == str(out) and "landsat" in cap.err
    assert P.Statistics.load(out).sources["landsat"].bands == sources.get("landsat").bands


def test_aef_stats_refuses_data_without_a_normalised_source(tmp_path, capsys):
    """Data with no optical or SAR source give a one-line error, not an empty file."""
    save_sample(tmp_path / "g.npz", {"source_data": {"glo30": torch.zeros(1, 8, 8, 4)},
                                     "timestamps": {"glo30": torch.tensor([0])}})
    assert main(["stats", str(tmp_path / "g.npz"), "--out", str(tmp_path / "s.json"), "--no-progress"]) == 2
    assert "no source that needs statistics" in capsys.readouterr().err
    assert not (tmp_path / "s.json").exists()


def test_train_stores_statistics_computed_from_its_data(tmp_path, capsys):
    """`aef train --data DIR` computes the statistics before step 1 and stores them in the checkpoint's
    config; `--stats F` stores those of F instead."""
    _samples(tmp_path / "data", n=2, side=16)
    base = ["train", "--preset", "tiny", "--data", str(tmp_path / "data"), "--steps", "1", "--batch-size", "2",
            "--no-progress"]
    assert main([*base, "--run-dir", str(tmp_path / "run")]) == 0, capsys.readouterr().err
    config = json.loads(next((tmp_path / "run" / "checkpoints").glob("step-*/config.json")).read_text())
    assert config["statistics"] == compute_statistics([tmp_path / "data"], progress=False).to_dict()
    given = P.Statistics({"landsat": P.SourceStatistics("optical", sources.get("landsat").bands, (1,) * 7,
                                                        (9.0,) * 7, (0.5,) * 7)})
    (tmp_path / "given.json").write_text(json.dumps(given.to_dict()))
    assert main([*base, "--run-dir", str(tmp_path / "run2"), "--stats", str(tmp_path / "given.json")]) == 0
    config = json.loads(next((tmp_path / "run2" / "checkpoints").glob("step-*/config.json")).read_text())
    assert config["statistics"] == given.to_dict()
