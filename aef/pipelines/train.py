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
from dataclasses import MISSING, dataclass, field, fields
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
# Settings that define the run; resuming with different values would silently train another run.
RUN_ARGS = ("preset", "override", "steps", "batch_size", "lr", "warmup", "seed", "side", "frames", "synthetic",
            "data")


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run is given: ``aef train``'s options, one field each (the CLI's
    defaults are these), so a run can be started from Python as from the command line."""

    run_dir: Path
    preset: Optional[str] = None
    override: dict = field(default_factory=dict)  # AEFConfig fields over the preset's
    backend: Optional[str] = None
    seed: int = 0
    device: Optional[str] = None
    no_progress: bool = False
    synthetic: Optional[int] = None  # N synthetic samples (DEFAULT_SYNTHETIC when data is None)
    data: Optional[Path] = None  # a folder of .npz samples
    stats: Optional[Path] = None  # input statistics JSON; default: computed from data
    side: int = 32
    frames: Optional[dict] = None
    steps: int = 1000
    batch_size: int = 8
    lr: float = 1e-4
    warmup: Optional[int] = None  # default: 1% of steps
    clip_grad: float = 1.0  # 0: off
    checkpoint_every: int = 100
    keep: int = 3
    log_every: int = 10
    workers: int = 0
    resume: bool = False
    stop_after: Optional[int] = None

    @classmethod
    def from_args(cls, args) -> "TrainConfig":
        """The config of parsed ``aef train`` arguments."""
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})

    def warmup_steps(self) -> int:
        warmup = self.warmup if self.warmup is not None else max(1, round(0.01 * self.steps))
        if not 0 <= warmup <= self.steps:
            raise ValueError(f"--warmup {warmup} must be between 0 and --steps {self.steps}")
        return warmup

    def last_step(self) -> int:
        """The step this invocation stops after: --stop-after, else the end of the schedule."""
        return min(self.steps, self.stop_after) if self.stop_after else self.steps


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


def _run_args(cfg: TrainConfig) -> dict:
    out = {}
    for k in RUN_ARGS:
        v = getattr(cfg, k)
        out[k] = str(v) if isinstance(v, (Path, dict)) else v
    return out


def _statistics(cfg: TrainConfig, d: Dist) -> Optional[dict]:
    """The input statistics a new run stores in its model: --stats, else computed from --data before
    step 1; synthetic data are generated in model space and need none."""
    from ..model.preprocess import Statistics
    from .stats import compute_statistics

    path = cfg.stats
    if path is not None:
        return Statistics.load(path).to_dict()
    if cfg.data is None:
        if d.main:
            print("aef train: synthetic data are in model space; no input statistics", file=sys.stderr)
        return None
    if not Path(cfg.data).is_dir():
        raise ValueError(f"--data: {cfg.data} is not a folder")
    if d.main:
        print(f"aef train: computing input statistics from {cfg.data} (pass --stats to skip)", file=sys.stderr)
    return compute_statistics([cfg.data], progress=d.main and not cfg.no_progress).to_dict()


def _dataset(cfg: TrainConfig, model):
    from .data import NpzDataset, SyntheticDataset

    if cfg.data is not None:
        if not Path(cfg.data).is_dir():
            raise ValueError(f"--data: {cfg.data} is not a folder")
        try:
            return NpzDataset(cfg.data)
        except FileNotFoundError as e:
            raise ValueError(f"--data: {e}") from None
    from ..model import sources

    for name in cfg.frames or {}:
        if name not in sources.REGISTRY:
            raise ValueError(f"--frames: unknown source {name!r}; known sources: {', '.join(sources.REGISTRY)}")
    return SyntheticDataset(cfg.synthetic or DEFAULT_SYNTHETIC, side=cfg.side, frames=cfg.frames, seed=cfg.seed,
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


def train(config: TrainConfig) -> Optional[dict]:
    """Run one training run (``aef train``); returns rank 0's last metrics row."""
    with distributed(config.device) as d:
        return _train(config, d)


def _train(cfg: TrainConfig, d: Dist) -> Optional[dict]:
    run_dir, resume_from = _open_run_dir(cfg, d)
    warmup = cfg.warmup_steps()
    torch.manual_seed(cfg.seed)
    model, state, start = _model(cfg, d, resume_from)
    optimizer, scheduler = _optimizer(cfg, d, model, warmup, state, resume_from, start)
    stop = cfg.last_step()
    if start >= stop and d.main:
        print(f"aef train: {resume_from} is at step {start}; nothing to do up to step {stop}", file=sys.stderr)
    loader = _loader(cfg, d, model, start, stop)
    last_row = _run_steps(cfg, d, run_dir, model, optimizer, scheduler, loader, start, stop,
                          resumed=resume_from is not None)
    if d.main and start < stop < cfg.steps:
        print(f"aef train: stopped after step {stop} of {cfg.steps}, as --stop-after asked; checkpoint "
              f"{ckpt.latest_checkpoint(run_dir)}. Continue with"
              + (" (under torchrun, as this run was started)" if d.world > 1 else "")
              + f":\n  {resume_command(cfg)}", file=sys.stderr)
    return last_row


def _open_run_dir(cfg: TrainConfig, d: Dist) -> tuple[Path, Optional[Path]]:
    """The run's folder (created by rank 0) and the checkpoint to resume from, if any."""
    run_dir = Path(cfg.run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"--run-dir {run_dir} is not a folder (it is a file); give the run's folder")
    resume_from = ckpt.latest_checkpoint(run_dir) if cfg.resume else None
    if not cfg.resume and ckpt.list_checkpoints(run_dir):
        raise ValueError(f"--run-dir {run_dir} already has checkpoints; pass --resume to continue that run, "
                         "or choose another folder")
    if d.main:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ValueError(f"--run-dir {run_dir}: cannot create the folder ({e.strerror or e})") from None
        if cfg.resume and resume_from is None:
            print(f"aef train: no checkpoint in {run_dir}, starting from step 0", file=sys.stderr)
    return run_dir, resume_from


def _model(cfg: TrainConfig, d: Dist, resume_from: Optional[Path]):
    """(model in training mode, the checkpoint's training state or None, the first step)."""
    from ..model.aef import AEF

    if resume_from is None:
        model = AEF(cfg.preset or "small", backend=cfg.backend, statistics=_statistics(cfg, d),
                    **cfg.override).to(d.device)
        return model.train(), None, 0
    state = ckpt.load_state(resume_from)
    saved = state.get("args", {})
    changed = {k: (saved.get(k), v) for k, v in _run_args(cfg).items() if saved.get(k) != v}
    if changed:
        raise ValueError(f"--resume: {resume_from} belongs to a run with other settings: " + ", ".join(
            f"{k} was {a!r}, now {b!r}" for k, (a, b) in changed.items()))
    model = ckpt.load_model(resume_from, d.device, cfg.backend)
    return model.train(), state, int(state["step"])


def _optimizer(cfg: TrainConfig, d: Dist, model, warmup: int, state, resume_from, start: int):
    """Adam and its schedule, restored from ``state`` with the RNG streams when resuming."""
    from .schedule import build_optimizer

    optimizer, scheduler = build_optimizer(model.parameters(), cfg.steps, lr=cfg.lr,
                                           warmup_fraction=warmup / cfg.steps)
    if state is None:
        # Processes share the initial weights (seeded before the model) but draw different vMF noise.
        torch.manual_seed(cfg.seed + 1 + d.rank)
        return optimizer, scheduler
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
        torch.manual_seed(cfg.seed + 1 + d.rank + start)
        if d.main:
            print(f"aef train: the checkpoint was written by {len(rngs)} processes, this run has {d.world}; "
                  "the vMF noise streams are re-seeded", file=sys.stderr)
    return optimizer, scheduler


def _loader(cfg: TrainConfig, d: Dist, model, start: int, stop: int) -> DataLoader:
    """This process's batches of steps [start, stop), the same whatever the run was resumed from."""
    from .data import collate

    dataset = _dataset(cfg, model)
    batches = StepBatches(len(dataset), cfg.batch_size, d.rank, d.world, cfg.seed, start, stop)
    return DataLoader(dataset, batch_sampler=batches, collate_fn=collate, num_workers=cfg.workers,
                      pin_memory=d.device.type == "cuda")


def _step(cfg: TrainConfig, d: Dist, module, model, optimizer, scheduler, batch, step: int) -> dict:
    """One optimizer step; returns the detached loss terms and the gradient norm."""
    batch = _to(batch, d.device)
    gen = step_generator(cfg.seed, step, d.rank, d.device)
    with torch.autocast(device_type=d.device.type, dtype=torch.bfloat16, enabled=d.device.type == "cuda"):
        losses = training_losses(module, batch, gen)
    loss = losses.pop("total")
    if not torch.isfinite(loss):
        raise FloatingPointError(f"the loss is not finite at step {step} ("
                                 + ", ".join(f"{k}={float(v):.4g}" for k, v in losses.items())
                                 + "); lower --lr or resume from an earlier checkpoint")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad if cfg.clip_grad > 0 else math.inf)
    optimizer.step()
    scheduler.step()
    return {"loss": loss.detach(), **{k: v.detach() for k, v in losses.items()}, "grad_norm": grad_norm.detach()}


_BAR_KEYS = ("loss", "reconstruction", "uniformity", "consistency", "clip", "samples_per_s")


def _run_steps(cfg: TrainConfig, d: Dist, run_dir: Path, model, optimizer, scheduler, loader, start: int,
               stop: int, resumed: bool) -> Optional[dict]:
    """Steps [start, stop): metrics every log_every steps (averaged over the window and the
    processes), checkpoints every checkpoint_every steps and at the end; the last metrics row."""
    from tqdm.auto import tqdm

    module = wrap_ddp(model, d)
    log = MetricsLog(run_dir, start if resumed else None) if d.main else None
    bar = tqdm(total=cfg.steps, initial=start, unit="step", desc="aef train", disable=not d.main or cfg.no_progress)
    last_row, window_start, window_steps = None, time.perf_counter(), 0
    sums: dict[str, float] = {}
    try:
        for step, batch in enumerate(loader, start):
            for k, v in _step(cfg, d, module, model, optimizer, scheduler, batch, step).items():
                sums[k] = sums.get(k, 0.0) + float(v)
            window_steps += 1
            done = step + 1
            if done % cfg.log_every == 0 or done == stop:
                keys = list(sums)
                means = _reduce_mean(torch.tensor([sums[k] / window_steps for k in keys], dtype=torch.float64), d)
                elapsed = time.perf_counter() - window_start
                row = {"step": done, "lr": scheduler.get_last_lr()[0], **{k: float(v) for k, v in zip(keys, means)},
                       "samples_per_s": window_steps * cfg.batch_size / max(elapsed, 1e-9)}
                if d.main:
                    log.write(row)
                    bar.set_postfix({k: f"{v:.4g}" for k, v in row.items() if k in _BAR_KEYS})
                last_row, sums, window_steps, window_start = row, {}, 0, time.perf_counter()
            bar.update(1)
            if done % cfg.checkpoint_every == 0 or done == stop:
                _save(run_dir, done, model, optimizer, scheduler, cfg, d)
    finally:
        bar.close()
        if log is not None:
            log.close()
    return last_row


def resume_command(cfg: TrainConfig) -> str:
    """The ``aef train`` command line that continues this run: its settings that differ from the
    defaults, with --resume and without --stop-after."""
    import json
    import shlex

    words = ["aef", "train", "--run-dir", str(cfg.run_dir), "--resume"]
    for f in fields(TrainConfig):
        value = getattr(cfg, f.name)
        default = f.default if f.default_factory is MISSING else f.default_factory()
        if f.name in ("run_dir", "resume", "stop_after") or value == default:
            continue
        flag = "--" + f.name.replace("_", "-")
        if value is True:
            words.append(flag)
        elif f.name == "frames":
            words += [flag, ",".join(f"{name}={n}" for name, n in value.items())]
        elif isinstance(value, dict):
            words += [flag, json.dumps(value, separators=(",", ":"))]
        else:
            words += [flag, str(value)]
    return shlex.join(words)


def _save(run_dir, step, model, optimizer, scheduler, cfg: TrainConfig, d: Dist) -> None:
    # Every process has its own RNG streams; the checkpoint keeps them all, in rank order.
    rngs = [ckpt.rng_state()]
    if d.world > 1:
        rngs = [None] * d.world
        dist.all_gather_object(rngs, ckpt.rng_state())
    if d.main:
        state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rngs,
                 "args": _run_args(cfg)}
        ckpt.save_checkpoint(run_dir, step, model, state, keep=cfg.keep)
    if d.world > 1:
        dist.barrier()
