"""Time one full AEF pretraining step (teacher + student forward, all losses, backward) on CPU or GPU.

    PYTHONPATH=. python benchmarks/train_step.py --preset small --batch 2 --side 64 --repeats 5

Reports the median and min wall time of fwd+bwd over ``--repeats`` steps after ``--warmup`` steps.
Input frames: 4 sentinel2 + 2 landsat + 2 sentinel1 (8 in total) by default; ``--targets all`` adds one
frame of every target-only source so that every decoder runs, ``--targets inputs`` decodes only the
input sources.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from aef import AEF, AEFObjective
from aef.data import collate, synthetic_sample

INPUT_FRAMES = {"sentinel2": 4, "landsat": 2, "sentinel1": 2}
TARGET_ONLY_FRAMES = {"palsar2": 1, "glo30": 1, "gedi": 1, "era5": 1, "grace": 1, "nlcd": 1}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--side", type=int, default=64)
    p.add_argument("--targets", choices=("all", "inputs"), default="all")
    p.add_argument("--text", action="store_true", help="add a text point per sample (CLIP term)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--backend", default=None, help="aef_kernels backend (default: auto)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    frames = dict(INPUT_FRAMES, **(TARGET_ONLY_FRAMES if args.targets == "all" else {}))
    model = AEF(args.preset, backend=args.backend).to(args.device).train()
    objective = AEFObjective(model).to(args.device)
    text_dim = model.config.text_dim if args.text else None
    batch = collate([synthetic_sample(args.side, frames, seed=i, text_dim=text_dim) for i in range(args.batch)])
    batch = _to(batch, args.device)
    gen = torch.Generator(device=args.device).manual_seed(0)

    def step() -> float:
        if args.device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.bf16):
            out = objective(batch, gen)
        out.loss.backward()
        if args.device == "cuda":
            torch.cuda.synchronize()
        objective.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    for _ in range(args.warmup):
        step()
    times = [step() for _ in range(args.repeats)]
    n_params = sum(q.numel() for q in model.parameters())
    print(f"preset={args.preset} B={args.batch} L={args.side} targets={args.targets} device={args.device} "
          f"threads={torch.get_num_threads()} params={n_params / 1e6:.1f}M bf16={args.bf16}")
    print(f"fwd+bwd step: median {statistics.median(times):.3f} s, min {min(times):.3f} s "
          f"over {len(times)} steps ({', '.join(f'{t:.3f}' for t in times)})")


def _to(x, device):
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, dict):
        return {k: _to(v, device) for k, v in x.items()}
    return x


if __name__ == "__main__":
    main()
