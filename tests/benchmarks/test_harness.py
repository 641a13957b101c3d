"""The benchmark harness: statistics, roofline arithmetic, the JSON schema, --check, and a --quick CPU
run of the main job. No test asserts a speed: timings belong to the benchmarks themselves."""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest
import subprocess_helpers
import torch

from benchmarks import check, floors, harness, record, runner

REPO = Path(__file__).resolve().parents[2]


# --- statistics -----------------------------------------------------------------------------------


def test_quantile_interpolates_like_numpy():
    values = [5.0, 1.0, 3.0, 2.0, 4.0]
    assert harness.quantile(values, 0.5) == 3.0
    assert harness.quantile(values, 0.2) == pytest.approx(1.8)
    assert harness.quantile(values, 0.8) == pytest.approx(4.2)
    assert harness.quantile(values, 0.0) == 1.0 and harness.quantile(values, 1.0) == 5.0
    assert harness.quantile([7.0], 0.3) == 7.0


def test_quantile_rejects_bad_input():
    with pytest.raises(ValueError, match="at least one"):
        harness.quantile([], 0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        harness.quantile([1.0], 1.5)


def test_summarize_orders_quantiles():
    s = harness.summarize([4.0, 1.0, 10.0, 2.0, 3.0, 100.0])
    assert s.p20_ms <= s.median_ms <= s.p80_ms
    assert s.median_ms == pytest.approx(3.5)
    assert s.repeats == 6


def test_time_calls_warms_up_then_repeats_within_policy():
    counts = [0, 0, 0]

    def make(i):
        def call():
            counts[i] += 1
        return call

    policy = harness.TimingPolicy(warmup_s=0.0, budget_s=0.0, min_repeats=7, max_repeats=9)
    stats = harness.time_calls([make(0), make(1), make(2)], torch.device("cpu"), policy)
    assert stats.repeats == 7
    # One untimed call, at least one warm-up call, then the repeats, cycling through every set.
    assert sum(counts) == 1 + 1 + 7
    assert min(counts) >= 2
    assert 0 < stats.p20_ms <= stats.median_ms <= stats.p80_ms


def test_rotation_exceeds_twice_the_cache():
    cache = 50 << 20
    for set_bytes in (1 << 10, 3 << 20, 40 << 20, 200 << 20):
        n = harness.rotation_count(set_bytes, cache, max_sets=1 << 20)
        assert n >= 2
        assert n * set_bytes > 2 * cache or n == 2
    assert harness.rotation_count(1, cache, max_sets=64) == 64


def test_cache_size_is_read_for_cpu():
    assert harness.cache_bytes("cpu") > 0
    assert harness._parse_size("2048K") == 2 << 20
    assert harness._parse_size("4M") == 4 << 20


def test_tensor_bytes_walks_containers():
    a = torch.zeros(10, dtype=torch.float32)
    b = torch.zeros(3, 4, dtype=torch.bfloat16)
    assert harness.tensor_bytes(a, (b, None), {"x": [a]}, 3) == 40 + 24 + 40


def test_peak_memory_is_not_invented_on_cpu():
    calls = []
    assert harness.peak_memory(lambda: calls.append(1), torch.device("cpu")) is None
    assert calls == []


# --- floors and roofline --------------------------------------------------------------------------


def test_attention_floor_by_hand():
    # 1 x 2 x 3 pixels, 4 heads -> 24 sequences of T = 5, d = 8, bf16.
    q = floors.meta(1, 5, 2, 3, 4, 8, dtype=torch.bfloat16)
    c = floors.cost("axial_time_attention", q, q, q, None, 1.0)
    elems = 24 * 5 * 8
    assert c.bytes == 4 * elems * 2
    assert c.flops == 4 * 24 * 5 * 5 * 8
    cb = floors.cost("axial_time_attention", q, q, q, None, 1.0, backward=True)
    assert cb.flops == 3 * c.flops
    # + backward: q, k, v, o, dO read, dq, dk, dv written, float32 LSE written and read.
    assert cb.bytes == c.bytes + 8 * elems * 2 + 2 * 24 * 5 * 4


def test_conv_and_resample_floors_by_hand():
    f32 = dict(dtype=torch.float32)
    p = floors.cost("precision_operator", floors.meta(2, 4, 4, 8, **f32), floors.meta(8, **f32), floors.meta(8, **f32),
                    floors.meta(32, 8, 3, 3, **f32), floors.meta(32, **f32), floors.meta(8, 32, 3, 3, **f32),
                    floors.meta(8, **f32), 4, 1e-5)
    assert p.flops == 2 * 2 * (2 * 4 * 4) * 9 * 4 * 8 * 8
    assert p.bytes == (2 * 2 * 4 * 4 * 8 + 2 * 9 * 4 * 64 + 4 * 8 + 3 * 8) * 4
    bf16 = dict(dtype=torch.bfloat16)
    d = floors.cost("resample_down", floors.meta(1, 8, 8, 3, **bf16), floors.meta(5, 3, 4, 4, **bf16), None, 4)
    assert d.flops == 2 * 8 * 8 * 3 * 5
    assert d.bytes == (8 * 8 * 3 + 2 * 2 * 5 + 5 * 3 * 16 + 5) * 2
    u = floors.cost("resample_up", floors.meta(1, 2, 2, 3, **bf16), floors.meta(5, 3, **bf16), None, 4)
    assert u.flops == 2 * 2 * 2 * 3 * 5
    assert u.bytes == (2 * 2 * 3 + 8 * 8 * 5 + 5 * 3 + 5) * 2
    ds, dt, dp = 4, 2, 1
    params = [floors.meta(*shape, **bf16) for shape in ((ds, dp, 8, 8), (ds,), (ds, dt, 2, 2), (ds,), (dt, dp, 4, 4),
                                                        (dt,), (dt, ds), (dt,), (dp, dt), (dp,), (dp, ds), (dp,))]
    e = floors.cost("pyramid_exchange", floors.meta(1, 1, 1, ds, **bf16), floors.meta(1, 2, 2, dt, **bf16),
                    floors.meta(1, 8, 8, dp, **bf16), params)
    assert e.flops == 2 * (64 * 1 * 4 + 4 * 2 * 4 + 64 * 1 * 2 + 1 * 4 * 2 + 4 * 2 * 1 + 1 * 4 * 1)
    assert floors.cost("vmf_normalize", floors.meta(10, 64, **bf16), 1e-12).bytes == 10 * 64 * 2 * 2
    assert floors.cost("batch_uniformity_loss", floors.meta(10, 64, **bf16), backward=True).bytes == 10 * 64 * 2 * 3


def test_roofline_fraction_and_bound():
    ceil = floors.Ceilings(bandwidth=1e12, matmul_rate=1e15)
    mem = floors.Cost(bytes=1e9, flops=1e9)  # 1 ms of bytes, 1 us of FLOPs
    assert floors.floor_seconds(mem, ceil) == pytest.approx(1e-3)
    assert floors.bound(mem, ceil) == "memory"
    assert floors.roofline_fraction(mem, ceil, 2e-3) == pytest.approx(0.5)
    comp = floors.Cost(bytes=1e6, flops=4e12)  # 1 us of bytes, 4 ms of FLOPs
    assert floors.bound(comp, ceil) == "compute"
    assert floors.roofline_fraction(comp, ceil, 4e-3) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        floors.roofline_fraction(mem, ceil, 0.0)


def test_ceilings_are_measured_on_cpu():
    c = harness.measure_ceilings(torch.device("cpu"), torch.float32, quick=True)
    assert c["bandwidth_GBps"] > 0 and c["matmul_TFLOPs"] > 0
    assert c["matmul_dtype"] == "float32"
    ceil = harness.ceilings_of(c)
    assert ceil.bandwidth == pytest.approx(c["bandwidth_GBps"] * 1e9)


# --- record: schema, speedups, table, files -------------------------------------------------------


def _env(name="Test GPU"):
    return {"device": "cuda", "device_name": name, "torch": "x", "triton": "y", "cuda": "z", "python": "3",
            "git_commit": "0" * 40, "git_dirty": False}


def _ok(provider, median, section="block", mode="fwd", **extra):
    return record.make_row(section, "s", mode, provider, "ok", median_ms=median, p20_ms=median * 0.9,
                           p80_ms=median * 1.1, repeats=10, peak_mem_bytes=1 << 20, **extra)


def _result(rows, name="Test GPU"):
    return record.make_result("stp_block", _env(name), None, {"preset": "large"}, {"method": "cuda-events"}, rows)


def test_speedups_are_against_reference_eager_of_the_same_case():
    rows = [_ok("reference", 10.0), _ok("auto", 4.0), _ok("reference", 3.0, mode="fwd+bwd"),
            _ok("auto", 6.0, mode="fwd+bwd"),
            record.make_row("block", "s", "fwd", "triton", "not available", reason="no GPU")]
    rows[1]["peak_mem_bytes"] = 3 << 18
    _result(rows)
    assert rows[0]["speedup"] == 1.0 and rows[0]["mem_vs_eager"] == 1.0
    assert rows[1]["speedup"] == pytest.approx(2.5)
    assert rows[1]["mem_vs_eager"] == pytest.approx(0.75)
    assert rows[3]["speedup"] == pytest.approx(0.5)
    assert rows[4]["speedup"] is None and rows[4]["mem_vs_eager"] is None


def test_schema_round_trip(tmp_path):
    result = _result([_ok("reference", 2.0), record.make_row("block", "s", "fwd", "cuda", "not available", reason="x")])
    table = record.format_table(result)
    json_path, txt_path = record.write(result, table, str(tmp_path))
    assert json_path.name.startswith("test-gpu_") and json_path.name.endswith("_stp_block.json")
    assert txt_path.read_text() == table
    assert record.load(json_path) == json.loads(json.dumps(result))
    explicit, _ = record.write(result, table, str(tmp_path / "a" / "run.json"))
    assert explicit == tmp_path / "a" / "run.json" and explicit.with_suffix(".txt").exists()


@pytest.mark.parametrize("breakage, message", [
    (lambda r: r.pop("rows"), "missing field 'rows'"),
    (lambda r: r.update(schema_version=99), "schema"),
    (lambda r: r["environment"].pop("git_commit"), "git_commit"),
    (lambda r: r["rows"][0].update(status="fast"), "status"),
    (lambda r: r["rows"][0].update(median_ms="1"), "median_ms"),
    (lambda r: r["rows"][0].update(p20_ms=5.0), "p20 <= median"),
    (lambda r: r["rows"][1].update(reason=None), "must say why"),
    (lambda r: r["rows"][0].pop("peak_mem_bytes"), "peak_mem_bytes"),
])
def test_schema_rejects_broken_results(breakage, message):
    result = _result([_ok("reference", 2.0), record.make_row("block", "s", "fwd", "cuda", "failed", reason="boom")])
    record.validate(result)
    broken = copy.deepcopy(result)
    breakage(broken)
    with pytest.raises(ValueError, match=message):
        record.validate(broken)


def test_make_row_rejects_unknown_fields_and_statuses():
    with pytest.raises(ValueError, match="status"):
        record.make_row("a", "b", "fwd", "reference", "great")
    with pytest.raises(ValueError, match="unknown row field"):
        record.make_row("a", "b", "fwd", "reference", "ok", speed=1.0)


def test_table_shows_figures_and_reasons():
    rows = [_ok("reference", 2.0, bytes=1e9, flops=0.0, gbps=500.0, roofline_fraction=0.25, bound="memory"),
            record.make_row("block", "s", "fwd", "triton", "not available", reason="needs CUDA\nmore detail")]
    result = _result(rows)
    result["ceilings"] = {"bandwidth_GBps": 2000.0, "matmul_TFLOPs": 700.0, "matmul_dtype": "bfloat16"}
    table = record.format_table(result)
    assert "Test GPU" in table and "  2  " in table and "(1.8-2.2)" in table and "1.00x" in table
    assert "25.0% memory" in table and "  500  " in table
    assert "not available: needs CUDA" in table and "more detail" not in table


# --- --check ----------------------------------------------------------------------------------------


def test_check_flags_slowdowns_beyond_the_margin_only():
    base = _result([_ok("reference", 10.0), _ok("auto", 5.0), _ok("compile", 8.0)])
    now = _result([_ok("reference", 10.9), _ok("auto", 5.6), _ok("compile", 4.0)])
    out = check.compare(now, base, margin=0.10)
    assert out.exit_code == check.REGRESSION
    assert len(out.regressions) == 1 and "auto" in out.regressions[0]
    assert len(out.improvements) == 1 and "compile" in out.improvements[0]
    assert check.compare(now, base, margin=0.15).exit_code == check.OK


def test_check_treats_a_case_that_stopped_running_as_a_regression():
    base = _result([_ok("reference", 10.0), _ok("triton", 5.0)])
    now = _result([_ok("reference", 10.0),
                   record.make_row("block", "s", "fwd", "triton", "failed", reason="illegal memory access")])
    out = check.compare(now, base)
    assert out.exit_code == check.REGRESSION and "illegal memory access" in out.regressions[0]
    gone = _result([_ok("reference", 10.0)])
    assert check.compare(gone, base).exit_code == check.REGRESSION


def test_check_refuses_other_devices_and_configs():
    base = _result([_ok("reference", 10.0)])
    other = _result([_ok("reference", 1.0)], name="Other GPU")
    assert check.compare(other, base).exit_code == check.NOT_COMPARABLE
    cfg = _result([_ok("reference", 10.0)])
    cfg["config"] = {"preset": "small"}
    assert check.compare(cfg, base).exit_code == check.NOT_COMPARABLE


def _args(tmp_path, baseline=None):
    return argparse.Namespace(out=str(tmp_path / "run.json"), plot=False, check=baseline, margin=0.10)


def test_finish_exit_codes(tmp_path, capsys):
    base = _result([_ok("reference", 10.0)])
    base_path, _ = record.write(base, record.format_table(base), str(tmp_path / "base.json"))
    assert runner.finish(_result([_ok("reference", 10.5)]), _args(tmp_path, str(base_path))) == 0
    assert runner.finish(_result([_ok("reference", 20.0)]), _args(tmp_path, str(base_path))) == 1
    failed = _result([_ok("reference", 10.0), record.make_row("block", "s", "fwd", "auto", "failed", reason="boom")])
    assert runner.finish(failed, _args(tmp_path)) == runner.EXIT_FAILED
    assert "REGRESSION" in capsys.readouterr().out


def test_plot_writes_a_png_or_says_what_is_missing(tmp_path):
    from benchmarks import plot

    result = _result([_ok("reference", 10.0), _ok("auto", 5.0)])
    if importlib.util.find_spec("matplotlib") is None:
        with pytest.raises(plot.PlotUnavailable, match="pip install matplotlib"):
            plot.plot(result, tmp_path / "x.png")
    else:
        path = plot.plot(result, tmp_path / "x.png")
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- the main job, end to end -----------------------------------------------------------------------


def test_run_case_rows_for_compile_unavailable_and_broken_providers():
    import aef_kernels as K

    from benchmarks.providers import under_provider

    inputs = runner.Inputs(torch.device("cpu"), torch.float32, seed=0)
    sets, _ = inputs.sets(lambda: (inputs.randn(4, 3, 8),))
    cost = floors.cost("vmf_normalize", floors.meta(4, 3, 8, dtype=torch.float32), 1e-12)
    ceilings = {"bandwidth_GBps": 10.0, "matmul_TFLOPs": 1.0}

    def case(fn):
        return runner.Case("vmf", "4x3x8", "fwd", lambda p: runner.fwd_calls(under_provider(p, fn, torch.device("cpu")), sets),
                           cost)

    policy = harness.TimingPolicy(0.0, 0.0, 2, 2)
    ok = runner.run_case(case(K.vmf_normalize), "compile", torch.device("cpu"), policy, ceilings)
    assert ok["status"] == "ok" and ok["repeats"] == 2
    assert ok["gbps"] == pytest.approx(cost.bytes / (ok["median_ms"] / 1e3) / 1e9)
    assert ok["roofline_fraction"] == pytest.approx(cost.bytes / 10e9 / (ok["median_ms"] / 1e3))
    assert ok["bound"] == "memory"
    cuda = runner.run_case(case(K.vmf_normalize), "cuda", torch.device("cpu"), policy, ceilings)
    assert cuda["status"] == "not available" and "cuda" in cuda["reason"]

    def broken(x):
        raise ZeroDivisionError("kernel bug")

    bad = runner.run_case(case(broken), "reference", torch.device("cpu"), policy, ceilings)
    assert bad["status"] == "failed" and "ZeroDivisionError: kernel bug" in bad["reason"]


def test_stp_block_quick_cpu_run(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = tmp_path / "quick.json"
    # torch.compile is left out here (its CPU compile time would dominate the suite); the test above
    # runs the compile provider.
    cmd = [sys.executable, str(REPO / "benchmarks" / "stp_block.py"), "--quick", "--device", "cpu",
           "--sections", "block,encoder,attention", "--providers", "reference,triton,cuda,auto,sdpa-math,xformers",
           "--out", str(out)]
    proc = subprocess_helpers.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = record.load(out)
    assert result["environment"]["device"] == "cpu" and result["config"]["preset"] == "tiny"
    rows = {(r["section"], r["mode"], r["provider"]): r for r in result["rows"]}
    for section in ("block", "encoder", "attention"):
        for mode in ("fwd", "fwd+bwd"):
            for provider in ("reference", "auto"):
                assert rows[(section, mode, provider)]["status"] == "ok"
            assert rows[(section, mode, "reference")]["speedup"] == 1.0
            assert rows[(section, mode, "triton")]["status"] == "not available"
            assert rows[(section, mode, "cuda")]["status"] == "not available"
    assert rows[("attention", "fwd", "sdpa-math")]["status"] == "ok"
    assert rows[("attention", "fwd", "xformers")]["status"] == "not available"
    assert ("block", "fwd", "sdpa-math") not in rows
    assert "vs eager" in proc.stdout and "not available:" in proc.stdout
    assert out.with_suffix(".txt").read_text() in proc.stdout
