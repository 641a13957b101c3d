"""Pretraining loop behind ``aef train`` (docs/model.md §7).

- Data: the synthetic generator or a folder of ``.npz`` samples (``aef.pipelines.data``), batched by
  :class:`StepBatches`, which maps every global step to a fixed set of sample indices, so that a
  resumed run sees exactly the batches the uninterrupted run would have seen.
- The objective's random draws come from a generator seeded by (seed, step, rank); the global RNGs
  (vMF sampling) are saved in every checkpoint. On CPU, N steps + resume + N steps therefore give
  the same weights as 2N steps straight.
- Adam with linear warm-up and linear decay (``aef.pipelines.schedule``), gradient-norm clipping, bf16
  autocast on GPU.
- Under ``torchrun``: one process per device, DistributedDataParallel, a distributed sampler, the
  global batch split evenly among processes; gloo on CPU, nccl on GPU.
- Rank 0 shows a tqdm bar (loss terms, samples/s), appends metrics to ``RUN/metrics.csv``, writes
  TensorBoard logs to ``RUN/tensorboard`` when tensorboard is installed, and writes checkpoints
  (``aef.pipelines.checkpoint``) every ``checkpoint_every`` steps and at the end.
"""

from __future__ import annotations

import csv
import gc
import math
import os
import sys
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Sampler
from torch.utils.data.distributed import DistributedSampler

from . import checkpoint as ckpt

METRICS = "metrics.csv"
DEFAULT_SYNTHETIC = 256
# Arguments that define the run; resuming with different values would silently train another run.
RUN_ARGS = ("preset", "override", "steps", "batch_size", "lr", "warmup", "seed", "side", "frames", "synthetic",
            "data")


@dataclass(frozen=True)
class Dist:
    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: Optional[str] = None) -> Dist:
    """One process per device under torchrun (gloo on CPU, nccl on GPU), else a single process."""
    from .cli import parse_device

    world = int(os.environ.get("WORLD_SIZE", 1))
    rank, local = int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))
    dev = parse_device(device)
    if dev.type == "cuda":
        if dev.index is None:
            dev = torch.device("cuda", local if world > 1 else torch.cuda.current_device())
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank, world, dev)


class StepBatches(Sampler):
    """Per-process batches of sample indices for global steps [start, stop).

    Step s is batch s % per_epoch of epoch s // per_epoch of a :class:`DistributedSampler`
    (shuffled with ``seed + epoch``); the union over processes of one step's batches is the same
    for any number of processes that divides the global batch.
    """

    def __init__(self, dataset_len: int, global_batch: int, rank: int, world: int, seed: int, start: int, stop: int):
        if global_batch % world:
            raise ValueError(f"--batch-size {global_batch} must be divisible by the number of processes ({world})")
        self.local = global_batch // world
        self.sampler = DistributedSampler(range(dataset_len), num_replicas=world, rank=rank, shuffle=True,
                                          seed=seed, drop_last=True)
        self.per_epoch = len(self.sampler) // self.local
        if self.per_epoch == 0:
            raise ValueError(f"the dataset has {dataset_len} samples, fewer than one batch of {global_batch}")
        self.start, self.stop = start, stop

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        epoch, order = None, None
        for step in range(self.start, self.stop):
            e, k = divmod(step, self.per_epoch)
            if e != epoch:
                epoch = e
                self.sampler.set_epoch(e)
                order = list(self.sampler)
            yield order[k * self.local:(k + 1) * self.local]


def step_generator(seed: int, step: int, rank: int, device) -> torch.Generator:
    """The objective's generator for one step of one process: independent of what ran before."""
    g = torch.Generator(device=device)
    g.manual_seed(int(np.random.SeedSequence([seed, step, rank]).generate_state(1, np.uint64)[0] >> 1))
    return g


def _to(batch, device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to(v, device) for k, v in batch.items()}
    return batch


class MetricsLog:
    """Rank 0's CSV (and TensorBoard, when installed) metric sink."""

    def __init__(self, run_dir: Path, resume_step: Optional[int]):
        self.path = run_dir / METRICS
        self.fields: Optional[list[str]] = None
        if self.path.exists():
            with self.path.open(newline="") as f:
                rows = list(csv.DictReader(f))
            if rows:
                self.fields = list(rows[0])
            # Rows past the checkpoint belong to steps that are about to be redone.
            keep = [r for r in rows if resume_step is not None and int(r["step"]) <= resume_step]
            if len(keep) != len(rows):
                self._rewrite(keep)
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            pass
        else:
            self.tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resume_step)

    def _rewrite(self, rows):
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, self.fields)
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, self.path)

    def write(self, row: dict) -> None:
        new = self.fields is None
        if new:
            self.fields = list(row)
        with self.path.open("a", newline="") as f:
            w = csv.DictWriter(f, self.fields, extrasaction="ignore", restval="")
            if new:
                w.writeheader()
            w.writerow(row)
        if self.tb is not None:
            for k, v in row.items():
                if k != "step":
                    self.tb.add_scalar(k, v, row["step"])

    def close(self):
        if self.tb is not None:
            self.tb.close()


def _run_args(args) -> dict:
    out = {}
    for k in RUN_ARGS:
        v = getattr(args, k)
        out[k] = str(v) if isinstance(v, (Path, dict)) else v
    return out


def _statistics(args, d: Dist) -> Optional[dict]:
    """The input statistics a new run stores in its model: --stats, else computed from --data before
    step 1; synthetic data are generated in model space and need none."""
    from ..model.preprocess import Statistics
    from .stats import compute_statistics

    path = getattr(args, "stats", None)
    if path is not None:
        return Statistics.load(path).to_dict()
    if args.data is None:
        if d.main:
            print("aef train: synthetic data are in model space; no input statistics", file=sys.stderr)
        return None
    if not Path(args.data).is_dir():
        raise ValueError(f"--data: {args.data} is not a folder")
    if d.main:
        print(f"aef train: computing input statistics from {args.data} (pass --stats to skip)", file=sys.stderr)
    return compute_statistics([args.data], progress=d.main and not args.no_progress).to_dict()


def _dataset(args, model):
    from .data import NpzDataset, SyntheticDataset

    if args.data is not None:
        if not Path(args.data).is_dir():
            raise ValueError(f"--data: {args.data} is not a folder")
        try:
            return NpzDataset(args.data)
        except FileNotFoundError as e:
            raise ValueError(f"--data: {e}") from None
    from ..model import sources

    for name in args.frames or {}:
        if name not in sources.REGISTRY:
            raise ValueError(f"--frames: unknown source {name!r}; known sources: {', '.join(sources.REGISTRY)}")
    return SyntheticDataset(args.synthetic or DEFAULT_SYNTHETIC, side=args.side, frames=args.frames, seed=args.seed,
                            text_dim=model.config.text_dim)


def wrap_ddp(model, d: Dist):
    """DistributedDataParallel under torchrun; the model itself in a single process. Unused
    parameters are expected: a batch without text points leaves the text adapter idle."""
    if d.world == 1:
        return model
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[d.device.index] if d.device.type == "cuda" else None, find_unused_parameters=True)


def sample_periods(batch: dict) -> torch.Tensor:
    """(B, 2) epoch ms: from each sample's first to just after its last valid frame."""
    lo = hi = None
    for name, t in batch["timestamps"].items():
        valid = batch["masks"][name].flatten(2).any(-1)  # (B, N) frames with any valid pixel
        big = torch.iinfo(torch.int64).max
        t = t.long()
        first = torch.where(valid, t, torch.full_like(t, big)).amin(1)
        last = torch.where(valid, t, torch.full_like(t, -big)).amax(1)
        lo = first if lo is None else torch.minimum(lo, first)
        hi = last if hi is None else torch.maximum(hi, last)
    if (lo > hi).any():
        raise ValueError("a training sample has no valid frame in any source")
    return torch.stack([lo, hi + 1], dim=1)


def training_losses(module, batch: dict, generator: torch.Generator) -> dict:
    """One pretraining forward pass on a collated batch: every loss term and ``total``."""
    out = module(batch["source_data"], batch["timestamps"], sample_periods(batch), batch["masks"], targets={},
                 metadata=batch.get("metadata") or None, text=batch.get("text"), generator=generator)
    return dict(out["losses"])


def _reduce_mean(values: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.world > 1:
        dist.all_reduce(values)
        values /= d.world
    return values


def shutdown_distributed(d: Dist) -> None:
    """Destroy the process group once every DistributedDataParallel wrapper of this process is gone.

    A DDP reducer holds a reference to the process group. When it holds the last one, the gloo
    group's destructor runs inside the reducer's deallocation, which keeps the interpreter lock, and
    joins gloo's worker threads; a worker still releasing a finished all-reduce needs that lock for
    the work's Python state, so the process never exits (seen under machine load). Freeing the
    wrappers first leaves destroy_process_group with the last reference, and it drops it without the
    lock.
    """
    if d.world > 1 and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


@contextmanager
def distributed(device: Optional[str] = None) -> Iterator[Dist]:
    """``setup_distributed`` for the body of a with block, ``shutdown_distributed`` after it.

    The body must keep its DDP wrappers in functions it calls, not in its own locals, so that they
    are freed when those return. When the body raises, the traceback keeps the frames of the failed
    calls and so the wrappers; their locals are cleared before the group is destroyed.
    """
    d = setup_distributed(device)
    try:
        yield d
    except BaseException as exc:
        traceback.clear_frames(exc.__traceback__)
        raise
    finally:
        shutdown_distributed(d)


def train(args) -> Optional[dict]:
    """Run ``aef train`` with the parsed arguments; returns rank 0's last metrics row."""
    with distributed(args.device) as d:
        return _train(args, d)


def _train(args, d: Dist) -> Optional[dict]:
    from tqdm.auto import tqdm

    from ..model.aef import AEF
    from .schedule import build_optimizer

    run_dir = Path(args.run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"--run-dir {run_dir} is not a folder (it is a file); give the run's folder")
    resume_from = ckpt.latest_checkpoint(run_dir) if args.resume else None
    if not args.resume and ckpt.list_checkpoints(run_dir):
        raise ValueError(f"--run-dir {run_dir} already has checkpoints; pass --resume to continue that run, "
                         "or choose another folder")
    if d.main:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ValueError(f"--run-dir {run_dir}: cannot create the folder ({e.strerror or e})") from None
        if args.resume and resume_from is None:
            print(f"aef train: no checkpoint in {run_dir}, starting from step 0", file=sys.stderr)
    warmup = args.warmup if args.warmup is not None else max(1, round(0.01 * args.steps))
    if not 0 <= warmup <= args.steps:
        raise ValueError(f"--warmup {warmup} must be between 0 and --steps {args.steps}")

    torch.manual_seed(args.seed)
    start, state = 0, None
    if resume_from is not None:
        state = ckpt.load_state(resume_from)
        saved = state.get("args", {})
        changed = {k: (saved.get(k), v) for k, v in _run_args(args).items() if saved.get(k) != v}
        if changed:
            raise ValueError(f"--resume: {resume_from} belongs to a run with other settings: " + ", ".join(
                f"{k} was {a!r}, now {b!r}" for k, (a, b) in changed.items()))
        model = ckpt.load_model(resume_from, d.device, args.backend)
        start = int(state["step"])
    else:
        model = AEF(args.preset or "small", backend=args.backend, statistics=_statistics(args, d),
                    **args.override).to(d.device)
    model.train()
    optimizer, scheduler = build_optimizer(model.parameters(), args.steps, lr=args.lr,
                                           warmup_fraction=warmup / args.steps)
    if state is not None:
        try:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
        except (KeyError, ValueError, RuntimeError) as e:
            raise ckpt.CheckpointError(f"{resume_from}: the training state does not fit this model "
                                       f"({type(e).__name__}: {e})") from None
        rngs = state["rng"]
        if len(rngs) == d.world:
            ckpt.set_rng_state(rngs[d.rank])
        else:
            torch.manual_seed(args.seed + 1 + d.rank + start)
            if d.main:
                print(f"aef train: the checkpoint was written by {len(rngs)} processes, this run has {d.world}; "
                      "the vMF noise streams are re-seeded", file=sys.stderr)
    else:
        # Processes share the initial weights (seed above) but draw different vMF noise.
        torch.manual_seed(args.seed + 1 + d.rank)
    module = wrap_ddp(model, d)

    stop = min(args.steps, args.stop_after) if args.stop_after else args.steps
    if start >= stop and d.main:
        print(f"aef train: {resume_from} is at step {start}; nothing to do up to step {stop}", file=sys.stderr)
    dataset = _dataset(args, model)
    from .data import collate

    batches = StepBatches(len(dataset), args.batch_size, d.rank, d.world, args.seed, start, stop)
    loader = DataLoader(dataset, batch_sampler=batches, collate_fn=collate, num_workers=args.workers,
                        pin_memory=d.device.type == "cuda")
    log = MetricsLog(run_dir, start if resume_from is not None else None) if d.main else None
    bar = tqdm(total=args.steps, initial=start, unit="step", desc="aef train",
               disable=not d.main or args.no_progress)
    use_amp = d.device.type == "cuda"
    last_row, window_start, window_steps = None, time.perf_counter(), 0
    sums: dict[str, float] = {}
    try:
        for step, batch in enumerate(loader, start):
            batch = _to(batch, d.device)
            gen = step_generator(args.seed, step, d.rank, d.device)
            with torch.autocast(device_type=d.device.type, dtype=torch.bfloat16, enabled=use_amp):
                losses = training_losses(module, batch, gen)
            loss = losses.pop("total")
            if not torch.isfinite(loss):
                raise FloatingPointError(f"the loss is not finite at step {step} ("
                                         + ", ".join(f"{k}={float(v):.4g}" for k, v in losses.items())
                                         + "); lower --lr or resume from an earlier checkpoint")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(),
                                                       args.clip_grad if args.clip_grad > 0 else math.inf)
            optimizer.step()
            scheduler.step()
            done = step + 1
            values = {"loss": loss.detach(), **{k: v.detach() for k, v in losses.items()},
                      "grad_norm": grad_norm.detach()}
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            window_steps += 1
            if done % args.log_every == 0 or done == stop:
                keys = list(sums)
                means = _reduce_mean(torch.tensor([sums[k] / window_steps for k in keys], dtype=torch.float64), d)
                elapsed = time.perf_counter() - window_start
                row = {"step": done, "lr": scheduler.get_last_lr()[0],
                       **{k: float(v) for k, v in zip(keys, means)},
                       "samples_per_s": window_steps * args.batch_size / max(elapsed, 1e-9)}
                if d.main:
                    log.write(row)
                    bar.set_postfix({k: f"{v:.4g}" for k, v in row.items()
                                     if k in ("loss", "reconstruction", "uniformity", "consistency", "clip",
                                              "samples_per_s")})
                last_row, sums, window_steps, window_start = row, {}, 0, time.perf_counter()
            bar.update(1)
            if done % args.checkpoint_every == 0 or done == stop:
                _save(run_dir, done, model, optimizer, scheduler, args, d)
    finally:
        bar.close()
        if log is not None:
            log.close()
    if d.main and start < stop < args.steps:
        print(f"aef train: stopped after step {stop} of {args.steps}, as --stop-after asked; checkpoint "
              f"{ckpt.latest_checkpoint(run_dir)}. Continue with"
              + (" (under torchrun, as this run was started)" if d.world > 1 else "")
              + f":\n  {resume_command(args)}", file=sys.stderr)
    return last_row


def resume_command(args) -> str:
    """The ``aef train`` command line that continues this run: its options that differ from the
    defaults, with --resume and without --stop-after."""
    import json
    import shlex

    from .cli import build_parser

    defaults = vars(build_parser().parse_args(["train", "--run-dir", str(args.run_dir)]))
    words = ["aef", "train", "--run-dir", str(args.run_dir), "--resume"]
    for key, default in defaults.items():
        value = getattr(args, key, default)
        if key in ("command", "debug", "run_dir", "resume", "stop_after") or value == default:
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            words.append(flag)
        elif key == "frames":
            words += [flag, ",".join(f"{name}={n}" for name, n in value.items())]
        elif isinstance(value, dict):
            words += [flag, json.dumps(value, separators=(",", ":"))]
        else:
            words += [flag, str(value)]
    return shlex.join(words)


def _save(run_dir, step, model, optimizer, scheduler, args, d: Dist) -> None:
    # Every process has its own RNG streams; the checkpoint keeps them all, in rank order.
    rngs = [ckpt.rng_state()]
    if d.world > 1:
        rngs = [None] * d.world
        dist.all_gather_object(rngs, ckpt.rng_state())
    if d.main:
        state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rngs,
                 "args": _run_args(args)}
        ckpt.save_checkpoint(run_dir, step, model, state, keep=args.keep)
    if d.world > 1:
        dist.barrier()
