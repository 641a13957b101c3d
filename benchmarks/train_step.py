"""Time one full AEF pretraining step: teacher and student encoders, decoders and every loss term,
forward alone and forward + backward.

    PYTHONPATH=. python benchmarks/train_step.py                       # small, B=2, L=64, CPU
    PYTHONPATH=. python benchmarks/train_step.py --device cuda --backend triton --bf16

Input: 8 frames in total (4 sentinel2, 2 landsat, 2 sentinel1), whose sources are decoded;
``--targets all`` adds one frame of every target-only source, so that all nine decoders run.
Reports medians (and minima) over ``--repeats`` steps after ``--warmup`` steps. On a shared machine
the numbers are noisy: compare runs made in one invocation, and report the load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
from tqdm.auto import tqdm

from aef import AEF
from aef.pipelines.data import collate, synthetic_sample
from aef.pipelines.data.synthetic import DEFAULT_START_MS, YEAR_MS

INPUT_FRAMES = {"sentinel2": 4, "landsat": 2, "sentinel1": 2}
TARGET_ONLY_FRAMES = {"palsar2": 1, "glo30": 1, "gedi": 1, "era5": 1, "grace": 1, "nlcd": 1}


def _to(x, device):
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, dict):
        return {k: _to(v, device) for k, v in x.items()}
    return x


def _median(fn, warmup: int, repeats: int, device: str, label: str, progress: bool) -> list[float]:
    """Times of ``repeats`` calls after ``warmup`` untimed ones, with a progress bar on stderr (a step
    of the small preset takes many seconds on a CPU, and the first one compiles when asked to)."""

    def once() -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    times = []
    with tqdm(total=warmup + repeats, desc=label, unit="step", file=sys.stderr, disable=not progress) as bar:
        for i in range(warmup + repeats):
            bar.set_postfix_str("warm-up" if i < warmup else "timed")
            t = once()
            if i >= warmup:
                times.append(t)
            bar.update(1)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--side", type=int, default=64)
    p.add_argument("--targets", choices=("inputs", "all"), default="inputs")
    p.add_argument("--no-text", action="store_true", help="leave out the text points (and the CLIP term)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--backend", default="auto", help="aef_kernels backend: auto, reference, triton, cuda")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast")
    p.add_argument("--compile", action="store_true", help="torch.compile the STP encoder (Inductor)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    progress = not args.no_progress
    if progress:
        print(f"train_step: building the {args.preset} model and a batch of {args.batch} on {args.device}, then "
              f"{args.warmup} warm-up + {args.repeats} timed steps, forward and forward+backward"
              + (" (the first step compiles the encoder)" if args.compile else ""), file=sys.stderr, flush=True)
    torch.manual_seed(0)
    model = AEF(args.preset, backend=args.backend).to(args.device).train()
    if args.compile:
        model.encoder = torch.compile(model.encoder, fullgraph=True)
    frames = dict(INPUT_FRAMES, **(TARGET_ONLY_FRAMES if args.targets == "all" else {}))
    text_dim = None if args.no_text else model.config.text_dim
    batch = _to(collate([synthetic_sample(args.side, frames, seed=i, text_dim=text_dim) for i in range(args.batch)]),
                args.device)
    periods = torch.tensor([[DEFAULT_START_MS, DEFAULT_START_MS + YEAR_MS]] * args.batch, device=args.device)

    def forward():
        gen = torch.Generator(device=args.device).manual_seed(0)
        with torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.bf16):
            return model(**batch, valid_periods=periods, targets={}, generator=gen)["losses"]["total"]

    def forward_backward():
        forward().backward()
        model.zero_grad(set_to_none=True)

    fwd = _median(forward, args.warmup, args.repeats, args.device, "forward", progress)
    step = _median(forward_backward, args.warmup, args.repeats, args.device, "forward+backward", progress)
    n_params = sum(q.numel() for q in model.parameters())
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"preset={args.preset} B={args.batch} L={args.side} frames={sum(INPUT_FRAMES.values())} "
          f"targets={args.targets} text={not args.no_text} device={args.device} backend={args.backend} "
          f"bf16={args.bf16} compile={args.compile} threads={torch.get_num_threads()} "
          f"params={n_params / 1e6:.1f}M load1={load:.1f}")
    for name, ts in (("forward", fwd), ("forward+backward", step)):
        print(f"{name:>16}: median {statistics.median(ts):.3f} s, min {min(ts):.3f} s  "
              f"({', '.join(f'{t:.3f}' for t in ts)})")


if __name__ == "__main__":
    main()
