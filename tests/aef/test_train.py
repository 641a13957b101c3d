"""aef train: the loop, checkpoints and resume, DDP, and clear errors for damaged checkpoints."""

import os
import re
import shlex
import shutil
import sys
import weakref
from pathlib import Path

import pytest
import subprocess_helpers
import torch
import torch.distributed as dist
from safetensors.torch import load_file

from aef.pipelines.checkpoint import STATE_FILE, latest_checkpoint, list_checkpoints, load_state
from aef.pipelines import train as train_module
from aef.pipelines.cli import main
from aef.pipelines.data import SyntheticDataset, collate
from aef.models import AEF
from aef.pipelines.train import StepBatches, step_generator, training_losses

REPO = Path(__file__).resolve().parents[2]
# A tiny model on 16 px patches with 3 frames keeps a step around a second on a shared CPU.
BASE = ["train", "--preset", "tiny", "--side", "16", "--frames", "sentinel2=2,sentinel1=1", "--batch-size", "2",
        "--lr", "3e-3", "--log-every", "1", "--no-progress", "--seed", "5"]


def _train(capsys, run_dir, *extra):
    code = main([*BASE, "--run-dir", str(run_dir), *extra])
    err = capsys.readouterr().err
    assert code == 0, err
    return err


def _weights(folder):
    return load_file(str(Path(folder) / "model.safetensors"))


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """A run of 4 steps without interruption, checkpoints every 2 steps."""
    run = tmp_path_factory.mktemp("straight")
    assert main([*BASE, "--run-dir", str(run), "--synthetic", "4", "--steps", "4", "--checkpoint-every", "2"]) == 0
    return run


def test_resume_gives_the_same_weights_as_a_straight_run(straight, tmp_path, capsys):
    """2 steps, a stop, and 2 resumed steps give bitwise the same weights and optimizer state as 4
    steps straight, and the metrics file holds each step once. The stop says so, at which step, and
    prints the command that resumes; that command is the one run here."""
    run = tmp_path / "resumed"
    err = _train(capsys, run, "--synthetic", "4", "--steps", "4", "--checkpoint-every", "2", "--stop-after", "2")
    assert [s for s, _ in list_checkpoints(run)] == [2]
    assert "stopped after step 2 of 4, as --stop-after asked" in err and str(latest_checkpoint(run)) in err, err
    command = shlex.split(err.strip().splitlines()[-1])
    assert command[:2] == ["aef", "train"] and "--resume" in command and "--stop-after" not in command
    assert main(command[1:]) == 0, capsys.readouterr().err
    want, got = _weights(latest_checkpoint(straight)), _weights(latest_checkpoint(run))
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want)
    sa, sb = load_state(latest_checkpoint(straight)), load_state(latest_checkpoint(run))
    assert sa["step"] == sb["step"] == 4
    for pa, pb in zip(sa["optimizer"]["state"].values(), sb["optimizer"]["state"].values()):
        assert torch.equal(pa["exp_avg"], pb["exp_avg"]) and torch.equal(pa["exp_avg_sq"], pb["exp_avg_sq"])
    steps = [line.split(",")[0] for line in (run / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == ["1", "2", "3", "4"]


def test_checkpoints_are_complete_and_code_free(straight):
    """Each checkpoint folder holds safetensors weights, the JSON config and a state that loads with
    weights_only=True (model, optimizer, scheduler, RNG, step); no temporary folder is left."""
    found = list_checkpoints(straight)
    assert [s for s, _ in found] == [2, 4]
    for step, folder in found:
        assert {p.name for p in folder.iterdir()} == {"model.safetensors", "config.json", STATE_FILE}
        state = torch.load(folder / STATE_FILE, weights_only=True)
        assert state["step"] == step and {"optimizer", "scheduler", "rng", "args"} <= set(state)
        assert AEF.from_pretrained(folder).config.d_p == 16
    assert not [p for p in (straight / "checkpoints").iterdir() if ".tmp-" in p.name]
    header = (straight / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"step", "lr", "loss", "reconstruction", "uniformity", "consistency", "clip", "samples_per_s"} <= set(header)


def test_training_lowers_the_loss(tmp_path, capsys):
    """Six steps on two synthetic samples lower the pretraining loss on those samples, measured
    with the same random draws (targets, perturbations, vMF noise) before and after, for each of
    four draws and on average."""
    run = tmp_path / "run"
    _train(capsys, run, "--synthetic", "2", "--steps", "6", "--checkpoint-every", "6", "--lr", "5e-3")
    data = SyntheticDataset(2, side=16, frames={"sentinel2": 2, "sentinel1": 1}, seed=5, text_dim=768)
    batch = collate([data[0], data[1]])

    def losses(model):
        out = []
        for draw in range(4):
            torch.manual_seed(draw)
            with torch.no_grad():
                out.append(float(training_losses(model.train(), batch, step_generator(0, draw, 0, "cpu"))["total"]))
        return torch.tensor(out)

    torch.manual_seed(5)  # the initial weights of the run (its --seed)
    before = losses(AEF("tiny"))
    after = losses(AEF.from_pretrained(latest_checkpoint(run)))
    assert (after < before).all() and after.mean() < before.mean() - 0.01, (before, after)


def test_partial_checkpoint_folders_are_ignored(straight, tmp_path):
    """A folder left by a crash mid-write (``*.tmp-PID``) never counts as the newest checkpoint."""
    run = tmp_path / "run"
    shutil.copytree(straight, run)
    (run / "checkpoints" / "step-00000099.tmp-12345").mkdir()
    assert latest_checkpoint(run).name == "step-00000004"


@pytest.mark.parametrize("world", [1, 2, 4])
def test_step_batches_split_the_same_global_batch(world):
    """For every step, the processes' batches are disjoint and together form the one-process batch,
    also across epoch boundaries and when starting mid-run (resume)."""
    single = list(StepBatches(10, 4, 0, 1, seed=3, start=0, stop=7))
    for start in (0, 3):
        parts = [list(StepBatches(10, 4, r, world, seed=3, start=start, stop=7)) for r in range(world)]
        for k, step in enumerate(range(start, 7)):
            merged = [i for p in parts for i in p[k]]
            assert sorted(merged) == sorted(single[step]) and len(set(merged)) == 4


def _damage(folder: Path, how: str) -> str:
    """Break a checkpoint folder; return the message the user must see."""
    if how == "truncated weights":
        f = folder / "model.safetensors"
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
        return "corrupt or truncated"
    if how == "garbage weights":
        (folder / "model.safetensors").write_bytes(os.urandom(256))
        return "corrupt or truncated"
    if how == "missing weights":
        (folder / "model.safetensors").unlink()
        return "incomplete checkpoint, model.safetensors is missing"
    if how == "missing config":
        (folder / "config.json").unlink()
        return "incomplete checkpoint, config.json is missing"
    if how == "bad config":
        (folder / "config.json").write_text("{not json")
        return "corrupt or truncated"
    if how == "truncated state":
        f = folder / STATE_FILE
        f.write_bytes(f.read_bytes()[:100])
        return "state.pt: corrupt or truncated"
    if how == "missing state":
        (folder / STATE_FILE).unlink()
        return "incomplete checkpoint, state.pt is missing"
    raise AssertionError(how)


DAMAGE = ["truncated weights", "garbage weights", "missing weights", "missing config", "bad config",
          "truncated state", "missing state"]


@pytest.mark.parametrize("how", DAMAGE)
def test_resume_from_a_damaged_checkpoint_fails_clearly(straight, tmp_path, capsys, how):
    """`aef train --resume` on a corrupt, truncated or incomplete checkpoint exits 2 with one line
    naming the file and the problem, not a traceback from safetensors or torch."""
    run = tmp_path / "run"
    shutil.copytree(straight, run)
    message = _damage(latest_checkpoint(run), how)
    code = main([*BASE, "--run-dir", str(run), "--synthetic", "4", "--steps", "4", "--checkpoint-every", "2",
                 "--resume"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "step-00000004" in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize("how", [h for h in DAMAGE if "state" not in h] + ["no such folder", "empty run"])
def test_embed_with_a_damaged_checkpoint_fails_clearly(straight, tmp_path, capsys, how):
    """`aef embed --checkpoint` on a damaged, missing or empty checkpoint exits 2 with a clear line."""
    pytest.importorskip("rasterio")
    from pipeline_fixtures import write_scene

    scene = write_scene(tmp_path / "scene")
    run = tmp_path / "run"
    shutil.copytree(straight, run)
    if how == "no such folder":
        target, message = tmp_path / "nowhere", "no such checkpoint"
    elif how == "empty run":
        shutil.rmtree(run / "checkpoints")
        (run / "checkpoints").mkdir()
        target, message = run, "no complete checkpoint"
    else:
        target, message = run, _damage(latest_checkpoint(run), how)
    code = main(["embed", str(scene), "--out", str(tmp_path / "o.tif"), "--checkpoint", str(target),
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err, err


@pytest.mark.parametrize("extra,message", [
    (["--steps", "4"], "already has checkpoints; pass --resume"),
    (["--steps", "6", "--resume"], "steps was 4, now 6"),
])
def test_conflicting_runs_are_refused(straight, tmp_path, capsys, extra, message):
    """Training into a folder with checkpoints without --resume, or resuming with other settings,
    is refused instead of overwriting or silently mixing runs."""
    run = tmp_path / "run"
    shutil.copytree(straight, run)
    code = main([*BASE, "--run-dir", str(run), "--synthetic", "4", "--checkpoint-every", "2", *extra])
    err = capsys.readouterr().err
    assert code == 2 and re.search(message, err), err


def test_torchrun_two_gloo_processes_average_to_the_full_batch_gradient(tmp_path):
    """Two gloo processes under torchrun, each on half the global batch from the distributed
    sampler, end with DDP-averaged gradients equal to one process's on the whole batch."""
    worker = Path(__file__).with_name("ddp_grads_worker.py")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    # Generous limits: three interpreters importing torch on a loaded 2-core machine are slow to start.
    subprocess_helpers.run([sys.executable, str(worker), str(one)], env=env, check=True, timeout=600)
    run = subprocess_helpers.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                                  "2", str(worker), str(two)], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    a, b = torch.load(one), torch.load(two)
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("step_raises", [False, True], ids=["returns", "raises"])
def test_process_group_is_destroyed_after_the_ddp_wrapper_is_freed(monkeypatch, tmp_path, step_raises):
    """When aef train destroys its process group, no DDP wrapper of the run is alive, also when a
    step raised and its traceback keeps the training frames: a reducer left holding the last
    reference to a gloo group destroys it with the interpreter lock held, which can hang the
    process at exit."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    wrappers, alive_at_destroy = [], []
    real_destroy = dist.destroy_process_group

    def fake_train(config, d):
        module = train_module.wrap_ddp(torch.nn.Linear(4, 2), d)
        wrappers.append(weakref.ref(module))
        module(torch.randn(3, 4)).sum().backward()
        if step_raises:
            raise FloatingPointError("the loss is not finite")
        return {"step": 1}

    def destroy(*a, **k):
        alive_at_destroy.extend(w() is not None for w in wrappers)
        real_destroy(*a, **k)

    # One real gloo process stands in for a rank of two, so that aef train wraps the model in DDP.
    rank_of_two = train_module.Dist(0, 2, torch.device("cpu"))
    monkeypatch.setattr(train_module, "setup_distributed", lambda device=None: rank_of_two)
    monkeypatch.setattr(train_module, "_train", fake_train)
    monkeypatch.setattr(dist, "destroy_process_group", destroy)
    try:
        if step_raises:
            with pytest.raises(FloatingPointError):
                train_module.train(train_module.TrainConfig(tmp_path, device="cpu"))
        else:
            assert train_module.train(train_module.TrainConfig(tmp_path, device="cpu")) == {"step": 1}
    finally:
        if dist.is_initialized():
            real_destroy()
    assert alive_at_destroy == [False]


def test_a_run_is_configured_from_python_as_from_the_command_line(tmp_path):
    """TrainConfig has one field per aef train option with the CLI's defaults, so parsed arguments
    and a config built in Python describe the same run; its resume command names what differs."""
    from aef.pipelines.cli import build_parser

    args = build_parser().parse_args(["train", "--run-dir", str(tmp_path), "--steps", "7", "--lr", "0.01"])
    cfg = train_module.TrainConfig.from_args(args)
    assert cfg == train_module.TrainConfig(tmp_path, steps=7, lr=0.01)
    assert train_module.resume_command(cfg).split()[1:] == ["train", "--run-dir", str(tmp_path), "--resume",
                                                            "--steps", "7", "--lr", "0.01"]
    with pytest.raises(ValueError, match="--warmup 9 must be between 0 and --steps 7"):
        train_module.TrainConfig(tmp_path, steps=7, warmup=9).warmup_steps()
