"""Ahead-of-time compilation, for sm_80 and sm_90 and without a GPU, of exactly what the Triton
launchers launch at the model's shapes (see ``aef_kernels.triton.aot``).

The compilation runs once per session in child processes without the interpreter (the
``aot_results`` fixture of this folder's conftest, shared with test_perf_contract); the table of
shared memory, registers and spills is printed and written to ``aot_report.txt`` in the pytest
temporary directory. ``AEF_AOT_SWEEP=1`` adds the shapes outside the model's (about three times the
compilations).
"""

import json
import os
import sys

import pytest
import torch

import subprocess_helpers
from aef_kernels.triton import aot, attention, common, gemm, precision, resample, sphere

# Every module with kernels; gemm's weight-gradient kernel is launched by precision and resample.
MODULES = {m.__name__: m for m in (attention, precision, resample, sphere, gemm)}


@pytest.fixture(scope="module")
def results(aot_results):
    return aot_results


def _name(kernel) -> str:
    return getattr(kernel, "fn", kernel).__name__


def _recorded():
    return aot.record(aot.collect_calls())


def test_every_call_launches_through_the_recorder_with_explicit_options():
    """Every AOT call of every module runs its launchers on meta tensors with every launch recorded
    (a launch bypassing common.launch would try to run on meta tensors and fail), and each launch
    passes num_warps and num_stages (Triton's defaults would be compiled otherwise)."""
    recorded = _recorded()
    assert {type(launch.kernel).__name__ for _, launch in recorded}
    for call, launch in recorded:
        assert {"num_warps", "num_stages"} <= set(launch.kwargs), call.name
        assert all(t.device.type == "meta" for t in launch.args if isinstance(t, torch.Tensor)), call.name


def test_every_path_of_the_attention_kernels_is_launched():
    """The attention kernels' path constexprs take every value among the recorded calls: the single
    tile and the key loop (SINGLE) in forward and backward, and the key loop's dk/dv and dq passes
    (DQ), so the AOT compiles each path's kernel."""
    seen = {}
    for _, launch in _recorded():
        if "SINGLE" in launch.kwargs:
            paths = (launch.kwargs["SINGLE"], launch.kwargs.get("DQ"))
            seen.setdefault(_name(launch.kernel), set()).add(paths)
    assert seen == {"_attn_fwd_kernel": {(True, None), (False, None)},
                    "_attn_bwd_kernel": {(True, False), (False, False), (False, True)}}


# Run in a child without the interpreter, where kernels are the JIT's own objects.
_SPECIALISE = """
import json, sys
import torch
from aef_kernels.triton import aot, common, sphere
q = torch.empty((2, 8, 4, 4, 3, 1, 32), device="meta", dtype=torch.float16)
flat = torch.empty(10, device="meta", dtype=torch.float16)
launch = common.Launch(sphere._vmf_normalize_fwd_kernel, (1,), (q, flat[1:], 1, 48, 17, 1e-12),
                       dict(BLOCK_R=4, BLOCK_D=32, num_warps=2, num_stages=1))
signature, constexprs, attrs, options = aot.specialize(launch, int(sys.argv[1]))
print(json.dumps(dict(signature=signature, constexprs={str(k[0]): v for k, v in constexprs.items()},
                      attrs={str(k[0]): v for k, v in attrs.items()}, warps=options.num_warps,
                      stages=options.num_stages)))
"""


@pytest.mark.parametrize("cc", [80, 90])
def test_specialisation_follows_the_jit_rules(cc):
    """The spec of a launch carries the JIT's specialisation: an integer equal to 1 is a constant,
    one divisible by 16 gets tt.divisibility 16, others none; a pointer whose view starts on a
    16-byte boundary is aligned and one starting an element later is not; a float is not
    specialised; num_stages and num_warps are those the launch passed."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess_helpers.run([sys.executable, "-c", _SPECIALISE, str(cc)], env=env, check=True,
                                 capture_output=True, text=True, timeout=600).stdout
    spec = json.loads(out.splitlines()[-1])
    index = {n: str(i) for i, n in enumerate(sphere._vmf_normalize_fwd_kernel.arg_names)}
    assert spec["signature"]["n_rows"] == "constexpr" and spec["constexprs"][index["n_rows"]] == 1
    assert spec["signature"]["D"] == "i32" and spec["attrs"][index["D"]] == [["tt.divisibility", 16]]
    assert spec["signature"]["stride_x"] == "i32" and not spec["attrs"].get(index["stride_x"])
    assert spec["signature"]["eps"] == "fp32" and not spec["attrs"].get(index["eps"])
    assert spec["attrs"][index["x_ptr"]] == [["tt.divisibility", 16]]
    assert spec["signature"]["y_ptr"] == "*fp16" and not spec["attrs"].get(index["y_ptr"])
    assert spec["stages"] == 1 and spec["warps"] == 2


def test_every_configuration_compiles_and_fits(results):
    """Every distinct launch of every module compiles for sm_80 and sm_90 (the same launches for
    both), and its shared memory fits the target's per-block opt-in limit."""
    names = {cc: sorted(r.name for r in results if r.cc == cc) for cc in aot.TARGETS}
    assert names[80] and names[80] == names[90]
    too_big = [r.row() for r in results if not r.fits]
    assert not too_big, "shared memory over the target's limit:\n" + "\n".join(too_big)


def test_hot_kernels_do_not_spill(results):
    """No configuration the model's hot path launches spills registers to local memory (stack or
    local bytes in the cubin), on either target."""
    spills = [r.row() for r in results if r.hot and r.spill_bytes]
    assert not spills, "register spills in hot kernels:\n" + "\n".join(spills)


def test_declared_shared_memory_bounds_hold_and_fit_every_device(results):
    """Each module's SHARED_BYTES (what the dispatcher's reasons compare with the device's opt-in
    limit) bounds the shared memory of every compiled configuration of its kernels, per code family
    (sm_80 code for sm_80/86/89, sm_90 code for sm_90), and fits the smallest limit of that family
    (99 KB on sm_86/sm_89, 227 KB on sm_90), so no supported device is refused."""
    over = [f"{r.row()} > {MODULES[r.module].SHARED_BYTES[r.cc]}" for r in results
            if r.shared > MODULES[r.module].SHARED_BYTES[common.code_family(r.cc)]]
    assert not over, "configurations over their module's SHARED_BYTES:\n" + "\n".join(over)
    for name, module in MODULES.items():
        assert module.SHARED_BYTES[80] <= aot.SHARED_LIMITS[86], name
        assert module.SHARED_BYTES[90] <= aot.SHARED_LIMITS[90], name


@pytest.mark.parametrize("cc, limit, refused", [(86, 99 * 1024, False), (90, 227 * 1024, False),
                                                (86, 1024, True), (90, 1024, True)])
def test_reasons_refuse_devices_without_the_shared_memory(monkeypatch, cc, limit, refused):
    """The Triton backend's reasons for every op compare the op's shared-memory need with the
    device's opt-in limit: nothing is refused on sm_86/sm_89 (99 KB) or sm_90 (227 KB), everything
    on a device with less than the kernels need, with a reason naming both figures."""
    from aef_kernels import dispatch
    from aef_kernels.functional import ExchangeParams

    monkeypatch.setattr(common, "device_shared_limit", lambda t: (cc, limit))
    x = torch.zeros(1, 4, 4, 16)
    q = torch.zeros(1, 3, 1, 1, 1, 16)
    w = lambda *s: torch.zeros(*s)
    xs, xt, xp = torch.zeros(1, 1, 1, 16), torch.zeros(1, 2, 2, 16), torch.zeros(1, 8, 8, 16)
    params = ExchangeParams(w(16, 16, 8, 8), None, w(16, 16, 2, 2), None, w(16, 16, 4, 4), None,
                            w(16, 16), None, w(16, 16), None, w(16, 16), None)
    calls = {"axial_time_attention": (q, q, q, None, 0.25),
             "precision_operator": (x, w(16), w(16), w(64, 16, 3, 3), w(64), w(16, 64, 3, 3), w(16), 8, 1e-5),
             "group_norm_nhwc": (x, w(16), w(16), 8, 1e-5, None),
             "resample_down": (x, w(16, 16, 2, 2), None, 2), "resample_up": (x, w(16, 16), None, 2),
             "pyramid_exchange": (xs, xt, xp, params), "vmf_normalize": (x, 1e-12),
             "batch_uniformity_loss": (x,)}
    for op, args in calls.items():
        reasons = [r for r in dispatch.not_supported_reasons(op, "triton", *args) if "shared memory" in r]
        assert bool(reasons) == refused, (op, reasons)
        if refused:
            assert str(limit) in reasons[0] and f"sm_{cc}" in reasons[0], reasons
