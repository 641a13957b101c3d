"""The project's main job: time one STP block and the whole STP encoder, forward and forward+backward,
for every provider (reference eager, ``torch.compile`` of the reference, Triton, CUDA, auto), and
axial time attention alone against PyTorch's SDPA backends, xformers and flash-attn.

    python benchmarks/stp_block.py                      # GPU: large, bf16, B=2, T=16, L=128
                                                        # CPU: small, fp32, B=1, T=4, L=32
    python benchmarks/stp_block.py --quick              # smoke run (tiny sizes, few repeats)
    python benchmarks/stp_block.py --check benchmarks/results/<baseline>.json

Prints a table (median with p20-p80, speedup against reference eager, peak memory) and writes the
JSON and the table to benchmarks/results/ (or --out). Parameters and activations are in --dtype
(no autocast); the key mask is a random pixel mask (90% valid) unless --no-mask.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script: make the `benchmarks` package importable. Appended, not prepended, so an
    # installed aef_kernels (with its compiled extension) wins over the source tree beside it.
    sys.path.append(str(Path(__file__).resolve().parent.parent))

import torch

import aef_kernels as K
from aef.model.config import PRESETS, AEFConfig
from aef.model.encoder import STPBlock, STPEncoder
from benchmarks import peers, record, runner
from benchmarks.providers import COMPILE, MODEL_PROVIDERS, Skipped, under_provider
from benchmarks.runner import FWD, FWD_BWD, Case

JOB = "stp_block"
SECTIONS = ("block", "encoder", "attention")
# (device type, --quick) -> preset, batch, frames, size. The CPU default finishes in about 2 minutes
# on a 2-core machine; torch.compile's first call dominates it.
DEFAULTS = {
    ("cuda", False): dict(preset="large", batch=2, frames=16, size=128),
    ("cuda", True): dict(preset="small", batch=1, frames=8, size=64),
    ("cpu", False): dict(preset="small", batch=1, frames=4, size=32),
    ("cpu", True): dict(preset="tiny", batch=1, frames=3, size=32),
}
MASK_VALID = 0.9


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=tuple(PRESETS), help="model widths (default: large on GPU, small on CPU)")
    p.add_argument("--batch", type=int, help="samples B")
    p.add_argument("--frames", type=int, help="frames T per sample")
    p.add_argument("--size", type=int, help="patch side L in pixels (a multiple of 16)")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {', '.join(SECTIONS)}")
    p.add_argument("--no-mask", action="store_true", help="time without a key mask")
    p.add_argument("--compile-encoder", action="store_true",
                   help="on CPU, also time torch.compile of the whole encoder (compiling it takes minutes)")
    runner.add_common_args(p)
    return p.parse_args(argv)


def _sizes(args, device: torch.device) -> dict:
    d = DEFAULTS[(device.type, args.quick)]
    sizes = {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in d.items()}
    if sizes["size"] % 16 or sizes["size"] <= 0:
        raise SystemExit(f"--size: expected a positive multiple of 16, got {sizes['size']}")
    if sizes["batch"] <= 0 or sizes["frames"] <= 0:
        raise SystemExit("--batch and --frames: expected positive integers")
    return sizes


class Setup(runner.Inputs):
    """The run's sizes and its source of random inputs."""

    def __init__(self, cfg: AEFConfig, B: int, T: int, L: int, dtype, device, mask: bool, seed: int,
                 compile_encoder: bool = True):
        super().__init__(device, dtype, seed)
        self.cfg, self.B, self.T, self.L = cfg, B, T, L
        self.use_mask, self.compile_encoder = mask, compile_encoder

    def pixel_mask(self, side: int):
        return self.mask(self.B, self.T, side, side, valid=MASK_VALID) if self.use_mask else None


def module_case(section: str, shape: str, mode: str, module: torch.nn.Module, setup: Setup, make, out_shapes) -> Case:
    params = [p for p in module.parameters() if p.requires_grad]
    grad = mode == FWD_BWD
    inputs, grads = setup.sets(lambda: make(grad), out_shapes if grad else None)

    def build(provider: str):
        if provider == COMPILE and section == "encoder" and not setup.compile_encoder:
            raise Skipped("compiling the whole encoder takes minutes on CPU; --compile-encoder times it")
        fn = under_provider(provider, module, setup.device)
        if grad:
            return runner.fwd_bwd_calls(fn, inputs, grads, params)
        return runner.fwd_calls(fn, inputs)

    return Case(section, shape, mode, build)


def block_inputs(setup: Setup):
    """One STP block in the run's dtype, ``make(grad)`` drawing its inputs (xs, xt, xp, timecode,
    mask), and the shapes of its three outputs."""
    c, B, T, L = setup.cfg, setup.B, setup.T, setup.L
    block = STPBlock(c).to(setup.device, setup.dtype)
    out_shapes = [(B, T, L // 16, L // 16, c.d_s), (B, T, L // 8, L // 8, c.d_t), (B, T, L // 2, L // 2, c.d_p)]

    def make(grad):
        xs, xt, xp = (setup.randn(*s, grad=grad) for s in out_shapes)
        return xs, xt, xp, setup.randn(B, T, c.timecode_dim), setup.pixel_mask(L // 8)

    return block, make, out_shapes


def block_cases(setup: Setup, shape: str) -> list[Case]:
    block, make, out_shapes = block_inputs(setup)
    return [module_case("block", shape, mode, block, setup, make, out_shapes) for mode in (FWD, FWD_BWD)]


def encoder_cases(setup: Setup, shape: str) -> list[Case]:
    c, B, T, L = setup.cfg, setup.B, setup.T, setup.L
    encoder = STPEncoder(c).to(setup.device, setup.dtype)
    out_shapes = [(B, T, L // 2, L // 2, c.d_p)]

    def make(grad):
        x = setup.randn(B, T, L // 2, L // 2, c.d_p, grad=grad)
        return x, setup.randn(B, T, c.timecode_dim), setup.pixel_mask(L // 2)

    return [module_case("encoder", shape, mode, encoder, setup, make, out_shapes) for mode in (FWD, FWD_BWD)]


def attention_cases(setup: Setup, shape: str) -> list[Case]:
    """The time operator's attention: q, k, v strided slices of one fused projection, as in the model."""
    c, B, T, L = setup.cfg, setup.B, setup.T, setup.L
    heads = c.num_heads(c.d_t)
    qkv_shape = (B, T, L // 8, L // 8, 3, heads, c.d_t // heads)
    out_shape = (B, T, L // 8, L // 8, heads, c.d_t // heads)
    cases = []
    for mode in (FWD, FWD_BWD):
        grad = mode == FWD_BWD
        inputs, grads = setup.sets(lambda: (setup.randn(*qkv_shape, grad=grad), setup.pixel_mask(L // 8)),
                                   [out_shape] if grad else None)

        def build(provider, inputs=inputs, grads=grads, grad=grad):
            mask = inputs[0][1]
            if provider in peers.PEERS:
                attn = peers.peer(provider, mask)
            else:
                attn = under_provider(provider, _axial, setup.device)

            def fn(qkv, m):
                return attn(qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :], m)

            calls = runner.fwd_bwd_calls(fn, inputs, grads, []) if grad else runner.fwd_calls(fn, inputs)
            if provider in peers.PEERS:
                peers.trial(calls[0])
            return calls

        cases.append(Case("attention", shape, mode, build))
    return cases


def _axial(q, k, v, mask):
    return K.axial_time_attention(q, k, v, key_padding_mask=mask)


def main(argv=None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    device = runner.resolve_device(args.device)
    dtype = runner.resolve_dtype(args.dtype, device)
    sizes = _sizes(args, device)
    sections = runner.select(args.sections, SECTIONS, "--sections")
    model_providers = runner.select(args.providers, MODEL_PROVIDERS + peers.PEERS, "--providers")
    torch.manual_seed(args.seed)
    cfg = AEFConfig.from_preset(sizes["preset"])
    setup = Setup(cfg, sizes["batch"], sizes["frames"], sizes["size"], dtype, device, not args.no_mask,
                  args.seed, device.type == "cuda" or args.compile_encoder)
    shape = f"{sizes['preset']} B{setup.B} T{setup.T} L{setup.L}"
    policy = runner.policy_for(device, args.quick)
    print(f"{JOB}: {shape} {str(dtype).removeprefix('torch.')} on {device}", file=sys.stderr)

    builders = {"block": block_cases, "encoder": encoder_cases, "attention": attention_cases}
    rows = []
    for section in sections:
        for case in builders[section](setup, shape):
            # Every provider warmed up on its own, then all timed interleaved in rotating rounds.
            names = [p for p in model_providers if section == "attention" or p not in peers.PEERS]
            rows += runner.run_providers(case, names, device, policy, None)
            del case
    config = {"preset": sizes["preset"], "batch": setup.B, "frames": setup.T, "size": setup.L,
              "dtype": str(dtype).removeprefix("torch."), "mask": "none" if args.no_mask else f"pixel, {MASK_VALID:.0%} valid",
              "quick": args.quick, "seed": args.seed, "widths": {k: getattr(cfg, k) for k in ("d_p", "d_t", "d_s", "blocks")}}
    timing = runner.timing_record(device, policy)
    timing["wall_s"] = round(time.perf_counter() - t_start, 1)
    result = record.make_result(JOB, record.environment(device), None, config, timing, rows)
    return runner.finish(result, args)


if __name__ == "__main__":
    sys.exit(main())
