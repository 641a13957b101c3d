"""The CLI never loses data or corrupts an output silently, and what the user can fix is one clear
error line (issue #17): outputs that are inputs, partials of other runs, glob characters in names,
unusable --out locations, truncated files, bad train arguments, misleading messages, SIGTERM."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

rasterio = pytest.importorskip("rasterio")

import subprocess_helpers  # noqa: E402
from aef.pipelines.cli import main  # noqa: E402
from aef.pipelines.embed import Tiling, embed_scene, merge_shards, model_tags  # noqa: E402
from aef.pipelines.geo import SceneError, open_scene, parse_time  # noqa: E402

from pipeline_fixtures import TEST_TILING, tiny_model, write_scene  # noqa: E402

TILING = Tiling(**TEST_TILING)
EMBED = ["--preset", "tiny", "--tile", "32", "--no-progress"]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def scene(tmp_path):
    """A fresh copy of the test scene per test: a test that fails may have overwritten its files."""
    return write_scene(tmp_path / "scene")


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def _cli(capsys, *argv):
    code = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def _one_error_line(err: str, command: str = "embed") -> str:
    """The error of a refused command: one line, nothing printed before it, no traceback."""
    assert "Traceback" not in err, err
    assert err.startswith(f"aef {command}: error: ") and err.count("\n") == 1, err
    return err


def _digests(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _npz_scene(path: Path, frames: int = 2, height: int = 40, width: int = 50) -> Path:
    rng = np.random.default_rng(0)
    times = [parse_time(f"2023-{m:02d}-01") for m in range(1, frames + 1)]
    np.savez(path, **{"source_data/sentinel2": rng.normal(size=(frames, height, width, 5)).astype(np.float32),
                      "timestamps/sentinel2": np.array(times, dtype=np.int64)})
    return path


# ---------------------------------------------------------------- 1. outputs that are inputs

@pytest.mark.parametrize("target", ["frame", "mask", "manifest", "hard link", "symlink", "symlinked folder"])
def test_out_resolving_to_an_input_of_a_manifest_is_refused_before_any_work(scene, tmp_path, capsys, target):
    """--out naming a frame, a mask or the manifest itself, directly or through a hard link, a
    symbolic link or a symlinked folder, exits 2 before anything else is printed (no model, no
    statistics), naming both paths, and leaves every input byte as it was."""
    folder = scene.parent
    frame = folder / "sentinel2_1.tif"
    if target == "frame":
        out = frame
    elif target == "mask":
        out = folder / "sentinel2_0_clear.tif"
    elif target == "manifest":
        out = scene
    elif target == "hard link":
        out = tmp_path / "linked.tif"
        os.link(frame, out)
    elif target == "symlink":
        out = tmp_path / "linked.tif"
        out.symlink_to(frame)
    else:
        (tmp_path / "alias").symlink_to(folder, target_is_directory=True)
        out = tmp_path / "alias" / frame.name
    before = _digests(folder)
    code, _, err = _cli(capsys, "embed", scene, "--out", out, *EMBED)
    assert code == 2
    _one_error_line(err)
    inputs = {"frame": frame, "mask": folder / "sentinel2_0_clear.tif", "manifest": scene}
    assert str(out) in err and str(inputs.get(target, frame)) in err, err
    assert _digests(folder) == before
    assert not list(tmp_path.rglob("*.partial"))


@pytest.mark.parametrize("link", [False, True])
def test_out_that_is_the_npz_scene_is_refused(tmp_path, capsys, link):
    """An .npz scene given as its own --out (or through a symlink) is refused and left intact."""
    path = _npz_scene(tmp_path / "scene.npz")
    out = path
    if link:
        out = tmp_path / "out.tif"
        out.symlink_to(path)
    before = path.read_bytes()
    code, _, err = _cli(capsys, "embed", path, "--out", out, *EMBED)
    assert code == 2 and str(path) in _one_error_line(err) and str(out) in err
    assert path.read_bytes() == before


@pytest.mark.parametrize("target", ["stats", "checkpoint"])
def test_out_that_is_a_file_of_the_model_is_refused(scene, tmp_path, capsys, target):
    """--out naming the --stats file, or a file of the --checkpoint folder, is refused and the file
    is left as it was."""
    if target == "stats":
        stats = tmp_path / "stats.json"
        assert main(["stats", str(scene), "--out", str(stats), "--no-progress"]) == 0
        argv, out = ["--preset", "tiny", "--stats", stats], stats
    else:
        folder = tmp_path / "ckpt"
        tiny_model().save_pretrained(folder)
        out = next(p for p in folder.iterdir() if p.suffix == ".safetensors")
        argv = ["--checkpoint", folder]
    capsys.readouterr()
    before = out.read_bytes()
    code, _, err = _cli(capsys, "embed", scene, "--out", out, "--tile", "32", "--no-progress", *argv)
    assert code == 2 and f"would overwrite the input {out}" in _one_error_line(err), err
    assert out.read_bytes() == before


# ---------------------------------------------------------------- 2. partials record what made them

def _two_shards(scene, out, first: dict, second: dict):
    """Shard 0 and 1 of 2 written with different embed_scene settings (model, tags, period, dtype,
    tiling, scene)."""
    for i, kw in enumerate((first, second)):
        kw = dict(kw)
        mdl = kw.pop("model")
        with open_scene(kw.pop("scene", scene)) as s:
            embed_scene(mdl, s, out, tiling=kw.pop("tiling", TILING), progress=False, shard=(i, 2), **kw)


def _shifted_scene(scene: Path, folder: Path) -> Path:
    """The same frames one pixel further east: another grid of the same size."""
    folder.mkdir()
    m = json.loads(scene.read_text())
    for f in m["sources"]["sentinel2"] + m["sources"]["sentinel1"]:
        for key in ("path", "mask"):
            if key in f:
                with rasterio.open(scene.parent / f[key]) as ds:
                    profile, data = ds.profile, ds.read()
                profile["transform"] = profile["transform"] @ rasterio.Affine.translation(1, 0)
                with rasterio.open(folder / f[key], "w", **profile) as dst:
                    dst.write(data)
    path = folder / "scene.json"
    path.write_text(json.dumps(m))
    return path


@pytest.mark.parametrize("field", ["weights", "preset", "statistics", "period", "dtype", "tiling", "grid"])
def test_merge_refuses_partials_of_different_runs(scene, tmp_path, model, field):
    """Shards embedded with another model, preset, statistics, period, dtype, tiling or grid are
    refused by --merge, naming the field and both values; the partials stay and no output or
    .partial is written."""
    from aef.pipelines.stats import scene_statistics

    out = tmp_path / "emb.tif"
    first = dict(model=model, dtype="float32")
    second = dict(first)
    year = (parse_time("2024-01-01"), parse_time("2025-01-01"))
    if field == "weights":
        second["model"] = tiny_model(seed=1)
    elif field == "preset":
        first["tags"], second["tags"] = model_tags(model, "tiny"), model_tags(model)
    elif field == "statistics":
        from aef.models import AEF

        with open_scene(scene) as s:
            stats = scene_statistics(s, progress=False)
        torch.manual_seed(0)
        second["model"] = AEF("tiny", statistics=stats.to_dict()).eval()
    elif field == "period":
        first["period"], second["period"] = year, (year[0], parse_time("2024-07-01"))
    elif field == "dtype":
        second["dtype"] = "int8"
    elif field == "tiling":
        second["tiling"] = Tiling(tile=48, buffer=8, trim=0)
    else:
        second["scene"] = _shifted_scene(scene, tmp_path / "shifted")
    _two_shards(scene, out, first, second)
    with pytest.raises(SceneError) as e:
        merge_shards(out, progress=False)
    message = str(e.value)
    assert re.search(rf"\b{field}\b", message), message
    with rasterio.open(out.with_name(out.name + ".shard-0-of-2.tif")) as p0, \
            rasterio.open(out.with_name(out.name + ".shard-1-of-2.tif")) as p1:
        t0, t1 = p0.tags(), p1.tags()
    # Long values (the statistics) may be shortened in the message; their beginnings must be there.
    differing = [(t0[k][:40], t1.get(k, "")[:40]) for k in t0 if k.startswith("AEF_") and t0[k] != t1.get(k)]
    assert any(a in message and b in message for a, b in differing), (message, differing)
    if field == "grid":
        assert "500000" in message and "500010" in message, message
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == [
        "emb.tif.shard-0-of-2.tif", "emb.tif.shard-1-of-2.tif"]


# ---------------------------------------------------------------- 3. glob characters

def test_merge_finds_partials_whose_names_hold_glob_characters(scene, tmp_path, capsys, model):
    """`aef embed --merge --out 'g/a[1].tif'` merges that name's 2 partials, and only those: the 3
    partials of g/a1.tif (names that the pattern a[1] matches) are left alone."""
    folder = tmp_path / "g"
    folder.mkdir()
    out, other = folder / "a[1].tif", folder / "a1.tif"
    _two_shards(scene, out, dict(model=model), dict(model=model))
    for i in range(3):
        with open_scene(scene) as s:
            embed_scene(model, s, other, tiling=TILING, progress=False, shard=(i, 3))
    code, stdout, err = _cli(capsys, "embed", "--merge", "--out", out, "--no-progress")
    assert code == 0, err
    assert stdout.strip() == str(out)
    assert sorted(p.name for p in folder.iterdir()) == [
        "a1.tif.shard-0-of-3.tif", "a1.tif.shard-1-of-3.tif", "a1.tif.shard-2-of-3.tif", "a[1].tif"]


# ---------------------------------------------------------------- 4. unusable outputs, truncated files

@pytest.mark.parametrize("where,message", [
    ("existing folder", "is a folder"),
    ("missing folder", "no such folder"),
    ("unwritable", "cannot write"),
])
def test_unusable_out_is_refused_before_any_work(scene, tmp_path, capsys, where, message):
    """--out an existing folder, inside a folder that does not exist, or where nothing can be
    written (/proc refuses new files even to root) exits 2 with one line naming --out, before the
    model or the statistics are made, and leaves no .partial."""
    out = {"existing folder": tmp_path / "taken", "missing folder": tmp_path / "nowhere" / "o.tif",
           "unwritable": Path("/proc/aef-embed-test.tif")}[where]
    if where == "existing folder":
        out.mkdir()
    code, _, err = _cli(capsys, "embed", scene, "--out", out, *EMBED)
    assert code == 2
    assert message in _one_error_line(err) and str(out) in err, err
    assert not list(tmp_path.rglob("*.partial"))


def test_unusable_merge_out_is_refused(tmp_path, capsys):
    """--merge with --out an existing folder exits 2 naming it."""
    code, _, err = _cli(capsys, "embed", "--merge", "--out", tmp_path, "--no-progress")
    assert code == 2 and "is a folder" in _one_error_line(err)


def _truncate(path: Path, keep: float) -> None:
    with open(path, "r+b") as f:
        f.truncate(int(path.stat().st_size * keep))


def test_a_truncated_frame_is_a_clear_error_naming_it(scene, tmp_path, capsys):
    """A frame whose pixel data is cut off (its header still opens) exits 2 with one line naming the
    file, not rasterio's 'Read failed' traceback, and leaves no output or .partial."""
    frame = scene.parent / "sentinel1_0.tif"
    _truncate(frame, 0.5)
    out = tmp_path / "o.tif"
    code, _, err = _cli(capsys, "embed", scene, "--out", out, *EMBED)
    assert code == 2
    last = err.strip().splitlines()[-1]
    assert last.startswith("aef embed: error: ") and str(frame) in last and "truncated" in last, err
    assert "Traceback" not in err
    assert not out.exists() and not list(tmp_path.rglob("*.partial"))


def test_a_truncated_shard_is_a_clear_error_and_the_merge_leaves_no_partial(scene, tmp_path, capsys, model):
    """--merge with one shard partial cut off exits 2 naming that shard, writes no output and leaves
    no .partial of the merge behind."""
    out = tmp_path / "emb.tif"
    _two_shards(scene, out, dict(model=model), dict(model=model))
    shard = tmp_path / "emb.tif.shard-1-of-2.tif"
    _truncate(shard, 0.6)
    code, _, err = _cli(capsys, "embed", "--merge", "--out", out, "--no-progress")
    assert code == 2 and str(shard) in _one_error_line(err), err
    assert not out.exists() and not list(tmp_path.glob("*.partial"))


# ---------------------------------------------------------------- 5. aef train arguments

def test_train_bad_device_is_a_clear_error(tmp_path, capsys):
    """`aef train --device foo` says, as embed does, that foo is not a torch device."""
    code, _, err = _cli(capsys, "train", "--run-dir", tmp_path / "run", "--steps", "1", "--preset", "tiny",
                        "--no-progress", "--device", "foo")
    assert code == 2 and "--device: 'foo' is not a torch device" in _one_error_line(err, "train")
    code, _, err_embed = _cli(capsys, "embed", tmp_path / "s.npz", "--out", tmp_path / "o.tif", "--preset", "tiny",
                              "--device", "foo")
    assert err_embed.replace("aef embed", "aef train") == err


def test_train_run_dir_that_is_a_file_is_a_clear_error(tmp_path, capsys):
    """`aef train --run-dir FILE` exits 2 saying the run folder is a file, and leaves the file alone."""
    path = tmp_path / "notes.txt"
    path.write_text("keep me")
    code, _, err = _cli(capsys, "train", "--run-dir", path, "--steps", "1", "--preset", "tiny", "--no-progress",
                        "--device", "cpu")
    assert code == 2 and str(path) in _one_error_line(err, "train") and "not a folder" in err, err
    assert path.read_text() == "keep me"


# ---------------------------------------------------------------- 6. messages that said something else

def _manifest(scene: Path, tmp_path: Path, **frame0) -> Path:
    """The test manifest with absolute paths and its first sentinel2 frame changed."""
    m = json.loads(scene.read_text())
    for f in m["sources"]["sentinel2"] + m["sources"]["sentinel1"]:
        for key in ("path", "mask"):
            if key in f:
                f[key] = str(scene.parent / f[key])
    m["sources"]["sentinel2"][0].update(frame0)
    path = tmp_path / "changed.json"
    path.write_text(json.dumps(m))
    return path


@pytest.mark.parametrize("time_", ["9999-12-31", "9999-06-01T12:00:00Z"])
def test_a_frame_time_past_the_calendar_says_out_of_range(scene, tmp_path, capsys, time_):
    """A frame in the year 9999 (whose calendar year would end in the year 10000) is out of range,
    and the message names the frame, not an unparsable '10000-01-01'."""
    code, _, err = _cli(capsys, "embed", _manifest(scene, tmp_path, time=time_), "--out", tmp_path / "o.tif",
                        *EMBED)
    assert code == 2 and "out of range" in _one_error_line(err) and "sources.sentinel2[0].time" in err, err
    assert "10000" not in err


def test_an_npz_timestamp_past_the_calendar_says_out_of_range(tmp_path, capsys):
    """An .npz scene's epoch-ms timestamp beyond the calendar's range is named with its index."""
    path = _npz_scene(tmp_path / "s.npz")
    z = dict(np.load(path))
    z["timestamps/sentinel2"] = np.array([z["timestamps/sentinel2"][0], 2**62], dtype=np.int64)
    np.savez(path, **z)
    code, _, err = _cli(capsys, "embed", path, "--out", tmp_path / "o.tif", *EMBED)
    assert code == 2 and "out of range" in _one_error_line(err) and "timestamps/sentinel2" in err and "[1]" in err


@pytest.mark.parametrize("shape", [(0, 8, 8, 5), (2, 0, 8, 5)])
def test_an_npz_scene_without_frames_or_pixels_says_so(tmp_path, capsys, shape):
    """An .npz scene with 0 frames says it has no frames (and one with 0 rows, no pixels), not
    'cannot convert float NaN to integer'."""
    path = tmp_path / "empty.npz"
    np.savez(path, **{"source_data/sentinel2": np.zeros(shape, np.float32),
                      "timestamps/sentinel2": np.zeros(shape[0], np.int64)})
    code, _, err = _cli(capsys, "embed", path, "--out", tmp_path / "o.tif", *EMBED)
    want = "has no frames" if shape[0] == 0 else "has no pixels"
    assert code == 2 and want in _one_error_line(err) and "source_data/sentinel2" in err, err


@pytest.mark.parametrize("what,message", [("/dev/zero", "is not a regular file"), ("folder", "is a directory")])
def test_a_frame_that_is_not_a_file_says_what_it_is(scene, tmp_path, capsys, what, message):
    """/dev/zero or a directory as a frame path: the message says what it is, not 'does not exist'."""
    path = "/dev/zero" if what == "/dev/zero" else str(tmp_path)
    code, _, err = _cli(capsys, "embed", _manifest(scene, tmp_path, path=path), "--out", tmp_path / "o.tif", *EMBED)
    assert code == 2 and f"{path} {message}" in _one_error_line(err) and "sources.sentinel2[0].path" in err, err


@pytest.mark.parametrize("what,message", [("/dev/zero", "is not a regular file"), ("folder", "is a directory")])
def test_a_scene_that_is_not_a_file_says_what_it_is(tmp_path, capsys, what, message):
    """The scene argument itself: a device or a directory is named as such."""
    path = "/dev/zero" if what == "/dev/zero" else str(tmp_path)
    code, _, err = _cli(capsys, "embed", path, "--out", tmp_path / "o.tif", *EMBED)
    assert code == 2 and f"{path} {message}" in _one_error_line(err), err


# ---------------------------------------------------------------- 7. SIGTERM

def test_sigterm_during_embed_removes_the_partial_and_exits_143(tmp_path):
    """SIGTERM while `aef embed` writes its output is handled as SIGINT is: the .partial is
    removed, nothing is left in the output folder but the scene, and the exit status is 143."""
    scene = _npz_scene(tmp_path / "big.npz", frames=4, height=480, width=480)
    out = tmp_path / "emb.tif"
    partial = tmp_path / "emb.tif.partial"
    cmd = [sys.executable, "-m", "aef.pipelines.cli", "embed", str(scene), "--out", str(out), "--preset", "tiny",
           "--no-progress", "--batch", "1"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    # Popen, not subprocess_helpers.run, because the signal must arrive while the child runs; the
    # child leads a session of its own and kill_tree removes it and its descendants however the test ends.
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        for _ in range(6000):
            if partial.exists() or proc.poll() is not None:
                break
            time.sleep(0.02)
        assert partial.exists(), proc.communicate(timeout=60)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        subprocess_helpers.kill_tree(proc.pid)
        proc.wait()
    assert proc.returncode == 143, err
    assert "aef embed: terminated" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.npz"]
