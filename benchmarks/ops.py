"""Per-op benchmarks: each op family over a sweep of shapes at the large preset's widths, for every
provider, forward and forward+backward, as time, achieved GB/s and TFLOP/s, and the fraction of the
roofline floor (benchmarks/floors.py) against the bandwidth and matrix rate measured at start-up.

    python benchmarks/ops.py                          # GPU: the full sweep, bf16
    python benchmarks/ops.py --quick                  # small sweep (the only sweep on CPU)
    python benchmarks/ops.py --families attention,precision
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
from aef.model.config import AEFConfig
from aef_kernels.ops import SPECS
from benchmarks import floors, harness, peers, record, runner
from benchmarks.providers import COMPILE, MODEL_PROVIDERS, Skipped, under_provider
from benchmarks.runner import FWD, FWD_BWD, Case

JOB = "ops"
LARGE = AEFConfig.from_preset("large")
# Sweeps: full on a GPU, small with --quick and always on CPU (the full one needs tens of GB).
SWEEPS = {
    False: dict(attention_T=(8, 16, 32, 64, 103), pixels=128, frames=(32, 64), side_p=64, sphere_batch=(8, 64),
                sphere_side=128, resample_frames=32),
    True: dict(attention_T=(8, 16), pixels=8, frames=(2,), side_p=16, sphere_batch=(4,), sphere_side=16,
               resample_frames=2),
}
EMBED_DIM = LARGE.embed_dim


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--families", default=",".join(FAMILIES), help=f"comma-separated subset of {', '.join(FAMILIES)}")
    runner.add_common_args(p)
    return p.parse_args(argv)


def _axial(q, k, v, mask):
    return K.axial_time_attention(q, k, v, key_padding_mask=mask)


def _fused_attention(attn):
    """Attention on q, k, v as strided slices of one fused (..., 3, heads, d) projection, as in the model."""

    def fn(qkv):
        return attn(qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :], None)

    return fn


def _peer_attention(provider):
    return _fused_attention(peers.peer(provider, None)) if provider in peers.PEERS else None


class OpCases:
    """Builds the cases of every family from one source of random inputs."""

    def __init__(self, inputs: runner.Inputs, sweep: dict, skip_compile: bool = False):
        self.inp, self.sweep, self.skip_compile = inputs, sweep, skip_compile

    def meta(self, *shape: int) -> torch.Tensor:
        return floors.meta(*shape, dtype=self.inp.dtype)

    def _case(self, section, shape, fn, make, out_shapes, params, cost_of, fn_for=None) -> list[Case]:
        """Forward and forward+backward cases of ``fn(*make(grad))`` with weights ``params``; ``fn_for``
        gives the function a provider runs when it is not ``fn`` under that provider (attention peers)."""
        cases = []
        for mode in (FWD, FWD_BWD):
            grad = mode == FWD_BWD
            for p in params:
                p.requires_grad_(grad)
            sets, grads = self.inp.sets(lambda: make(grad), out_shapes if grad else None)

            def build(provider, sets=sets, grads=grads, grad=grad, ps=tuple(params)):
                if provider == COMPILE and self.skip_compile:
                    raise Skipped("compiling every op case takes many minutes on CPU; --providers ...,compile times it")
                call = fn_for(provider) if fn_for else None
                if call is None:
                    call = under_provider(provider, fn, self.inp.device)
                calls = runner.fwd_bwd_calls(call, sets, grads, ps) if grad else runner.fwd_calls(call, sets)
                if provider in peers.PEERS:
                    peers.trial(calls[0])
                return calls

            cases.append(Case(section, shape, mode, build, cost_of(grad)))
        return cases

    def attention(self) -> list[Case]:
        n, heads = self.sweep["pixels"], LARGE.num_heads(LARGE.d_t)
        d = LARGE.d_t // heads
        cases = []
        for T in self.sweep["attention_T"]:
            shape = f"B1 T{T} {n}x{n} {heads}x{d}"
            qkv = (1, T, n, n, 3, heads, d)
            out = (1, T, n, n, heads, d)

            cases += self._case("attention", shape, _fused_attention(_axial), lambda g, qkv=qkv: (self.inp.randn(*qkv, grad=g),),
                                [out], [], lambda g, out=out: floors.cost("axial_time_attention", self.meta(*out),
                                                                         self.meta(*out), self.meta(*out), None, 1.0,
                                                                         backward=g),
                                fn_for=_peer_attention)
        return cases

    def precision(self) -> list[Case]:
        C, s = LARGE.d_p, self.sweep["side_p"]
        groups = LARGE.precision_groups
        cases = []
        for N in self.sweep["frames"]:
            w = [self.inp.randn(C), self.inp.randn(C), self.inp.randn(4 * C, C, 3, 3) * 0.05, self.inp.randn(4 * C),
                 self.inp.randn(C, 4 * C, 3, 3) * 0.02, self.inp.randn(C)]
            w = [t.detach() for t in w]

            def fn(x, *, w=w):
                return K.precision_operator(x, *w, groups)

            cases += self._case("precision", f"N{N} {s}x{s} C{C}", fn,
                                lambda g, N=N: (self.inp.randn(N, s, s, C, grad=g),), [(N, s, s, C)], w,
                                lambda g, N=N, w=w: floors.cost("precision_operator", self.meta(N, s, s, C), *w, groups,
                                                                1e-5, backward=g))
        return cases

    def group_norm(self) -> list[Case]:
        C, s, N = LARGE.d_p, self.sweep["side_p"], max(self.sweep["frames"])
        w = [self.inp.randn(C), self.inp.randn(C)]

        def fn(x):
            return K.group_norm_nhwc(x, w[0], w[1], LARGE.precision_groups)

        return self._case("group_norm", f"N{N} {s}x{s} C{C}", fn, lambda g: (self.inp.randn(N, s, s, C, grad=g),),
                          [(N, s, s, C)], w, lambda g: floors.cost("group_norm_nhwc", self.meta(N, s, s, C), *w,
                                                                   LARGE.precision_groups, 1e-5, None, backward=g))

    def _exchange_params(self) -> K.ExchangeParams:
        ds, dt, dp = LARGE.d_s, LARGE.d_t, LARGE.d_p
        shapes = [(ds, dp, 8, 8), (ds,), (ds, dt, 2, 2), (ds,), (dt, dp, 4, 4), (dt,),
                  (dt, ds), (dt,), (dp, dt), (dp,), (dp, ds), (dp,)]
        return K.ExchangeParams(*((self.inp.randn(*sh) * sh[-1] ** -0.5).detach() for sh in shapes))

    def exchange(self) -> list[Case]:
        ds, dt, dp = LARGE.d_s, LARGE.d_t, LARGE.d_p
        hp = self.sweep["side_p"]
        ht, hs = hp // 4, hp // 8
        params = self._exchange_params()
        cases = []
        for N in self.sweep["frames"]:
            shapes = [(N, hs, hs, ds), (N, ht, ht, dt), (N, hp, hp, dp)]

            def fn(xs, xt, xp):
                return K.pyramid_exchange(xs, xt, xp, params)

            cases += self._case("exchange", f"N{N} S{hs} T{ht} P{hp}", fn,
                                lambda g, shapes=shapes: tuple(self.inp.randn(*sh, grad=g) for sh in shapes),
                                shapes, list(params),
                                lambda g, shapes=shapes: floors.cost("pyramid_exchange",
                                                                     *(self.meta(*sh) for sh in shapes), params,
                                                                     backward=g))
        return cases

    def resample(self) -> list[Case]:
        ds, dt, dp = LARGE.d_s, LARGE.d_t, LARGE.d_p
        N, hp = self.sweep["resample_frames"], self.sweep["side_p"]
        side = {"p": hp, "t": hp // 4, "s": hp // 8}
        width = {"p": dp, "t": dt, "s": ds}
        cases = []
        for src, dst in (("p", "t"), ("p", "s"), ("t", "s"), ("s", "t"), ("t", "p"), ("s", "p")):
            h, cin, cout = side[src], width[src], width[dst]
            down = side[src] > side[dst]
            f = side[src] // side[dst] if down else side[dst] // side[src]
            w = self.inp.randn(*((cout, cin, f, f) if down else (cout, cin)))
            b = self.inp.randn(cout)
            name = "resample_down" if down else "resample_up"
            op = getattr(K, name)
            out_h = h // f if down else h * f

            def fn(x, op=op, w=w, b=b, f=f):
                return op(x, w, b, f)

            cases += self._case(name, f"{src}->{dst} N{N} {h}x{h} x{f}", fn,
                                lambda g, h=h, cin=cin: (self.inp.randn(N, h, h, cin, grad=g),),
                                [(N, out_h, out_h, cout)], [w, b],
                                lambda g, name=name, h=h, cin=cin, w=w, b=b, f=f: floors.cost(
                                    name, self.meta(N, h, h, cin), w, b, f, backward=g))
        return cases

    def sphere(self) -> list[Case]:
        side, D = self.sweep["sphere_side"], EMBED_DIM
        cases = []
        for B in self.sweep["sphere_batch"]:
            shape = f"B{B} {side}x{side} D{D}"
            cases += self._case("vmf_normalize", shape, K.vmf_normalize,
                                lambda g, B=B: (self.inp.randn(B, side, side, D, grad=g),), [(B, side, side, D)], [],
                                lambda g, B=B: floors.cost("vmf_normalize", self.meta(B, side, side, D), 1e-12,
                                                           backward=g))
            cases += self._case("batch_uniformity_loss", shape, K.batch_uniformity_loss,
                                lambda g, B=B: (torch.nn.functional.normalize(self.inp.randn(B, side, side, D), dim=-1)
                                                .requires_grad_(g),), [()], [],
                                lambda g, B=B: floors.cost("batch_uniformity_loss", self.meta(B, side, side, D),
                                                           backward=g))
        return cases


# The op specs' families that have a sweep (a method of OpCases), in the specs' order.
FAMILIES = tuple(f for f in dict.fromkeys(spec.family for spec in SPECS) if hasattr(OpCases, f))


def main(argv=None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    device = runner.resolve_device(args.device)
    dtype = runner.resolve_dtype(args.dtype, device)
    families = runner.select(args.families, FAMILIES, "--families")
    providers = runner.select(args.providers, MODEL_PROVIDERS + peers.PEERS, "--providers")
    quick_sweep = args.quick or device.type == "cpu"
    policy = runner.policy_for(device, args.quick)
    torch.manual_seed(args.seed)
    print(f"{JOB}: {'small' if quick_sweep else 'full'} sweep, {str(dtype).removeprefix('torch.')} on {device}; "
          "measuring ceilings", file=sys.stderr)
    ceilings = harness.measure_ceilings(device, dtype, quick=args.quick)
    maker = OpCases(runner.Inputs(device, dtype, args.seed), SWEEPS[quick_sweep],
                    skip_compile=device.type == "cpu" and not args.providers)
    rows = []
    for family in families:
        for case in getattr(maker, family)():
            # Every provider warmed up on its own, then all timed interleaved in rotating rounds.
            names = [p for p in providers if case.section == "attention" or p not in peers.PEERS]
            rows += runner.run_providers(case, names, device, policy, ceilings)
    config = {"sweep": "small" if quick_sweep else "full", "dtype": str(dtype).removeprefix("torch."),
              "quick": args.quick, "seed": args.seed, "families": list(families),
              "widths": {k: getattr(LARGE, k) for k in ("d_p", "d_t", "d_s")}}
    timing = runner.timing_record(device, policy)
    timing["wall_s"] = round(time.perf_counter() - t_start, 1)
    result = record.make_result(JOB, record.environment(device), ceilings, config, timing, rows)
    return runner.finish(result, args)


if __name__ == "__main__":
    sys.exit(main())
