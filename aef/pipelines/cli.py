"""The ``aef`` command: ``aef train``, ``aef stats``, ``aef embed`` and ``aef show``.

Errors the user can fix (bad arguments, missing or corrupt files, malformed manifests) are reported
as one ``aef <command>: error: ...`` line and exit status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Optional, Sequence

from .checkpoint import CheckpointError
from .geo import SceneError

USER_ERRORS = (SceneError, CheckpointError, ValueError, FileNotFoundError, FloatingPointError)


def _overrides(text: str) -> dict:
    """``--override`` JSON object of AEFConfig fields, e.g. '{"blocks": 1}'."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"expected a JSON object of config fields, e.g. '{{\"blocks\": 1}}' ({e.msg})")
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object of config fields, e.g. '{\"blocks\": 1}'")
    return value


def _frames(text: str) -> dict:
    """``--frames`` "sentinel2=4,sentinel1=2" -> {"sentinel2": 4, "sentinel1": 2}."""
    out = {}
    for item in text.split(","):
        name, _, n = item.partition("=")
        if not name.strip() or not n.strip().isdigit() or int(n) < 1:
            raise argparse.ArgumentTypeError(f"expected NAME=N[,NAME=N...] with N >= 1, got {text!r}")
        out[name.strip()] = int(n)
    return out


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _add_model_args(p: argparse.ArgumentParser) -> None:
    from ..model.config import PRESETS

    p.add_argument("--preset", choices=list(PRESETS), help="model preset (docs/model.md §5)")
    p.add_argument("--override", type=_overrides, default={}, metavar="JSON",
                   help="AEFConfig fields overriding the preset, as a JSON object")
    p.add_argument("--backend", default=None, help="aef_kernels backend (default: automatic)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _nodata(text: str) -> tuple:
    """``--nodata`` "0" (every source) or "landsat=0" -> ("*" or source, value)."""
    name, _, value = text.rpartition("=")
    try:
        return name.strip() or "*", float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected V or SOURCE=V with a number V, got {text!r}") from None


def _add_grid_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resolution", type=float, default=10.0,
                   help="output pixel size in CRS units (default 10); frames on other grids are reprojected")
    p.add_argument("--extent", choices=["union", "intersection"], default="union",
                   help="output extent: the union (default) or intersection of the frames' extents")
    p.add_argument("--crs", default=None, help="output CRS (default: the first frame's), e.g. EPSG:32621")
    p.add_argument("--nodata", type=_nodata, action="append", default=[], metavar="[SOURCE=]V",
                   help="nodata value of every source, or of SOURCE; overrides the files' tags (a manifest "
                        "frame's own \"nodata\" wins); repeatable")


def _scene_options(args) -> dict:
    return dict(resolution=args.resolution, extent=args.extent, crs=args.crs, nodata=dict(args.nodata))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aef", description="AlphaEarth Foundations: train the model, embed "
                                     "scenes into 64-band embedding GeoTIFFs, and look at them.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", required=True)

    from .train import TrainConfig as D  # the run's defaults are the config's

    t = sub.add_parser("train", help="pretrain a model (resumable; multi-GPU with torchrun)",
                       description="Pretrain AEF with the objective and schedule of docs/model.md §6-§7. Run under "
                                   "torchrun for DistributedDataParallel (gloo on CPU, nccl on GPU).")
    t.add_argument("--run-dir", type=Path, required=True,
                   help="output folder: checkpoints/, metrics.csv, tensorboard/")
    data = t.add_mutually_exclusive_group()
    data.add_argument("--synthetic", type=_positive, metavar="N", default=None,
                      help="train on N synthetic samples (the default, with N = 256)")
    data.add_argument("--data", type=Path, metavar="DIR", help="train on the .npz samples in DIR")
    t.add_argument("--stats", type=Path, metavar="JSON",
                   help="input statistics (aef stats) stored in the model; default: computed from --data "
                        "before step 1")
    t.add_argument("--side", type=_positive, default=D.side, help="patch side L of synthetic samples (default %(default)s)")
    t.add_argument("--frames", type=_frames, default=None, metavar="NAME=N,...",
                   help="frames per source of synthetic samples, e.g. sentinel2=4,sentinel1=2,glo30=1 "
                        "(default: the generator's, every registered source)")
    t.add_argument("--steps", type=_positive, default=D.steps, help="total optimizer steps (default %(default)s)")
    t.add_argument("--batch-size", type=_positive, default=D.batch_size,
                   help="global batch size, split evenly among torchrun processes (default %(default)s)")
    t.add_argument("--lr", type=float, default=D.lr, help="peak learning rate (default %(default)s)")
    t.add_argument("--warmup", type=int, default=None, metavar="STEPS",
                   help="linear warm-up steps (default: 1%% of --steps), then linear decay to 0")
    t.add_argument("--clip-grad", type=float, default=D.clip_grad, help="gradient-norm clipping (default %(default)s; 0: off)")
    t.add_argument("--checkpoint-every", type=_positive, default=D.checkpoint_every, help="steps between checkpoints")
    t.add_argument("--keep", type=_positive, default=D.keep, help="checkpoints kept (default %(default)s)")
    t.add_argument("--log-every", type=_positive, default=D.log_every, help="steps between metric rows")
    t.add_argument("--workers", type=int, default=D.workers, help="DataLoader worker processes (default %(default)s)")
    t.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    t.add_argument("--stop-after", type=_positive, metavar="STEP",
                   help="stop (with a checkpoint) after this step, e.g. to fit a job's time limit; the "
                        "schedule still spans --steps, and --resume continues")
    _add_model_args(t)

    e = sub.add_parser("embed", help="embed a scene into a 64-band GeoTIFF",
                       description="Embed a scene (a JSON manifest of GeoTIFF frames, or an .npz scene) into a "
                                   "64-band GeoTIFF (bands A00..A63), tiled as the paper does (docs/model.md §8.2).")
    e.add_argument("scene", nargs="?", type=Path, help="JSON manifest or .npz scene")
    e.add_argument("--out", type=Path, required=True, help="output GeoTIFF")
    e.add_argument("--checkpoint", type=Path,
                   help="model: a run folder, a checkpoints/step-* folder or a save_pretrained folder")
    e.add_argument("--no-verify-weights", action="store_true",
                   help="load --checkpoint weights even when they differ from the sha256 digest in its "
                        "config.json (for weights edited by hand)")
    e.add_argument("--period", nargs=2, metavar=("START", "END"),
                   help="summary period [START, END) in ISO 8601 (default: the calendar year of the data)")
    e.add_argument("--dtype", choices=["int8", "float32"], default="int8",
                   help="int8 with the paper's quantisation (default) or float32")
    e.add_argument("--batch", type=_positive, default=4, help="tiles per forward pass (default 4)")
    e.add_argument("--tile", type=_positive, default=96, help="tile size in px (default 96)")
    e.add_argument("--buffer", type=int, default=16, help="context px per tile side (default 16)")
    e.add_argument("--trim", type=int, default=8, help="px trimmed per tile side (default 8)")
    e.add_argument("--shard", default=None, metavar="I/N",
                   help="embed the I-th of N parts of the tiles (or 'auto' under torchrun); then --merge")
    e.add_argument("--merge", action="store_true", help="merge the shard partials of --out into --out")
    _add_grid_args(e)
    e.add_argument("--stats", type=Path, metavar="JSON",
                   help="input statistics (from aef stats) for a --preset model; default: computed from the "
                        "scene (a --checkpoint carries its own)")
    e.add_argument("--year-layout", action="store_true",
                   help="--out is a folder: write OUT/YEAR/NAME.tif (NAME: the scene's file name), the layout "
                        "of TorchGeo's GoogleSatelliteEmbedding")
    _add_model_args(e)

    st = sub.add_parser("stats", help="per-source, per-band input statistics (after the transform) as JSON",
                        description="Compute the per-band statistics of aef.model.preprocess (after each source's "
                                    "transform) over .npz samples (files or folders) or scenes (JSON manifests, "
                                    ".npz scenes), in one streaming pass.")
    st.add_argument("data", nargs="+", type=Path, help=".npz samples, folders of them, or scene manifests")
    st.add_argument("--out", type=Path, required=True, help="statistics JSON to write")
    _add_grid_args(st)
    st.add_argument("--no-progress", action="store_true", help="no progress bar")

    s = sub.add_parser("show", help="PCA map (and similarity map) of an embedding GeoTIFF as PNG")
    s.add_argument("embeddings", type=Path, help="embedding GeoTIFF written by aef embed")
    s.add_argument("--out", type=Path, required=True, help="PNG of the first three principal components")
    s.add_argument("--similarity", nargs=2, type=int, metavar=("ROW", "COL"),
                   help="also map the cosine similarity of every pixel to this pixel")
    s.add_argument("--similarity-out", type=Path, help="PNG of the similarity map (default: OUT with _sim)")
    s.add_argument("--max-size", type=_positive, default=2048, help="longer side of the PNGs (default 2048)")
    return parser


def parse_device(name: Optional[str]):
    """``--device`` of any command as a torch.device (None: cuda if available, else cpu), or a
    ValueError saying what is wrong with it."""
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device: {name!r} is not a torch device (e.g. cpu, cuda, cuda:1)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device: CUDA is not available on this machine")
    return device


def _check_config(args, default_preset: Optional[str]) -> None:
    """Build the config of --preset and --override now, so that a bad field is reported before any
    work, as a one-line error naming the field (type errors included)."""
    from ..model.config import AEFConfig

    preset = args.preset or default_preset
    if preset is None:
        return
    try:
        AEFConfig.from_preset(preset, **args.override)
    except (TypeError, ValueError) as e:
        raise ValueError(f"--override: {e}" if args.override else str(e)) from None


def _embed_model(args, device, scene):
    import torch

    from .checkpoint import load_model
    from ..model.aef import AEF

    if args.checkpoint is not None:
        model = load_model(args.checkpoint, device, args.backend, verify_weights=not args.no_verify_weights)
        if args.stats is not None:
            raise ValueError("--stats: a checkpoint carries the statistics it was trained with; --stats is for "
                             "--preset models")
    elif args.preset is not None:
        print(f"aef embed: no --checkpoint, using preset {args.preset!r} with random weights (seed "
              f"{args.seed}); the embeddings carry no meaning", file=sys.stderr)
        from ..model.preprocess import Statistics

        if args.stats is not None:
            stats = Statistics.load(args.stats)
        else:
            from .stats import scene_statistics

            print("aef embed: input statistics computed from the scene (pass --stats to use others)",
                  file=sys.stderr)
            stats = scene_statistics(scene, progress=not args.no_progress)
        torch.manual_seed(args.seed)
        model = AEF(args.preset, backend=args.backend, statistics=stats.to_dict(), **args.override).to(device)
    else:
        raise ValueError("give --checkpoint (a trained model) or --preset (random weights, for testing)")
    return model.eval()


def cmd_embed(args) -> int:
    from .embed import Tiling, embed_scene, merge_shards, parse_shard
    from .geo import open_scene, parse_time

    progress = not args.no_progress
    if args.merge:
        print(merge_shards(args.out, progress=progress))
        return 0
    if args.scene is None:
        raise ValueError("give a scene (JSON manifest or .npz), or --merge to merge shards")
    index, count = parse_shard(args.shard) if args.shard else (0, 1)
    tiling = Tiling(args.tile, args.buffer, args.trim)
    period = None
    if args.period:
        period = (parse_time(args.period[0], "--period START"), parse_time(args.period[1], "--period END"))
    device = parse_device(args.device)
    if device.type == "cuda" and args.device is None and args.shard == "auto":
        import os

        device = parse_device(f"cuda:{os.environ.get('LOCAL_RANK', 0)}")
    with open_scene(args.scene, **_scene_options(args)) as scene:
        from .embed import check_output, default_period, model_tags, year_layout_path

        out = args.out
        if args.year_layout:
            if args.out.exists() and not args.out.is_dir():
                raise SceneError(f"--out {args.out}: with --year-layout, --out is a folder; this is a file")
            out = year_layout_path(args.out, args.scene, period or default_period(scene))
            try:
                out.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise SceneError(f"--out {args.out}: cannot create the folder {out.parent} ({e.strerror or e})") \
                    from None
        # Before the model and the statistics: nothing is computed for an output that cannot be written.
        check_output(out, [*scene.inputs, *_model_files(args)], (index, count))
        model = _embed_model(args, device, scene)
        tags = model_tags(model, None if args.checkpoint else args.preset,
                          str(args.checkpoint) if args.checkpoint else None)
        written = embed_scene(model, scene, out, period=period, tiling=tiling, dtype=args.dtype,
                              batch=args.batch, device=device, shard=(index, count), progress=progress, tags=tags)
    if count > 1 and args.shard == "auto":
        _merge_after_all_ranks(out, count, index, progress)
    elif count > 1:
        print(f"{written}\nwhen all {count} shards are done: aef embed --merge --out {out}", file=sys.stderr)
    else:
        print(written)
    return 0


def _model_files(args) -> list[Path]:
    """The files the model of ``aef embed`` is read from: --stats, and every file of --checkpoint."""
    files = [args.stats] if args.stats is not None else []
    if args.checkpoint is not None:
        path = Path(args.checkpoint)
        files += [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return files


def _merge_after_all_ranks(out: Path, count: int, rank: int, progress: bool) -> None:
    """Under torchrun: wait for every rank (gloo works for a barrier on any device), rank 0 merges."""
    import torch.distributed as dist

    from .embed import merge_shards

    dist.init_process_group("gloo")
    try:
        dist.barrier()
        if rank == 0:
            print(merge_shards(out, progress=progress))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def cmd_show(args) -> int:
    from .show import show

    sim_out = args.similarity_out
    if args.similarity and sim_out is None:
        sim_out = args.out.with_name(args.out.stem + "_sim" + args.out.suffix)
    for p in show(args.embeddings, args.out, tuple(args.similarity) if args.similarity else None, sim_out,
                  args.max_size):
        print(p)
    return 0


def cmd_stats(args) -> int:
    from .stats import compute_statistics, describe, write_statistics

    stats = compute_statistics(args.data, progress=not args.no_progress, scene_options=_scene_options(args))
    print(describe(stats), file=sys.stderr)
    print(write_statistics(stats, args.out))
    return 0


def cmd_train(args) -> int:
    from .train import TrainConfig, train

    _check_config(args, "small")
    train(TrainConfig.from_args(args))
    return 0


class Terminated(BaseException):
    """SIGTERM, raised where the program is, so that it unwinds (removing partial outputs) as on Ctrl-C."""


def _raise_terminated(signum, frame):
    raise Terminated()


@contextmanager
def _sigterm_unwinds(command: str):
    """SIGTERM raises :class:`Terminated` during ``command``, except for ``aef train``: its checkpoints
    are written atomically, and under torchrun the launcher stops the ranks with SIGTERM when one
    fails; a rank then ends at once instead of tearing down a process group whose peers are gone.
    Signal handlers belong to the main thread; elsewhere nothing changes."""
    if command == "train" or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command = {"train": cmd_train, "embed": cmd_embed, "show": cmd_show, "stats": cmd_stats}[args.command]
    try:
        with _sigterm_unwinds(args.command):
            return command(args)
    except USER_ERRORS as e:
        if args.debug:
            raise
        print(f"aef {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"aef {args.command}: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print(f"aef {args.command}: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM


if __name__ == "__main__":
    sys.exit(main())
