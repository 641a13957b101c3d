"""benchmarks/gpu_check.py on CPU: the budget logic, the stage order, the result log under kills, the
dry-run's fit, the architecture check, and the parity check's ability to fail."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import subprocess_helpers
from aef_kernels import dispatch
from benchmarks import gpu_check as G

REPO = Path(__file__).resolve().parents[2]


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _plan(costs_by_stage, shares):
    return [G.Stage(name, shares[name], [G.Item(f"{name}{i}", "fake", {"cost": c}) for i, c in enumerate(costs)])
            for name, costs in costs_by_stage.items()]


def _run(plan, budget, tmp_path, clock=None):
    clock = clock or FakeClock()
    log = G.ResultLog(tmp_path / "log.jsonl", clock)
    ran = []

    def run_item(item):
        ran.append(item.name)
        clock.now += item.kwargs["cost"]
        yield {"status": G.PASS}

    summaries = G.run_stages(plan, budget, log, run_item, clock=clock, timer=G.NoTimer())
    log.close()
    return ran, summaries, G.read_log(tmp_path / "log.jsonl")


@pytest.mark.parametrize("budget,costs,expect_ran", [
    # stage a's share is 5 s: its third item would start at 6 s, past the share, so it is cut
    (10.0, {"a": [3, 3, 3], "b": [1]}, ["a0", "a1", "b0"]),
    # a leaves 4 of its 5 s unused; b gets 5 + 4 and runs all three 3 s items
    (10.0, {"a": [1], "b": [3, 3, 3]}, ["a0", "b0", "b1", "b2"]),
    # the budget ends before b: nothing of b starts
    (4.0, {"a": [5], "b": [1]}, ["a0"]),
])
def test_stages_stop_at_their_share_and_pass_on_slack(tmp_path, budget, costs, expect_ran):
    """With fake item costs, a stage starts no item once its share (plus earlier slack, never past the
    budget) is spent; every item not run is logged as cut, and stages run in order."""
    ran, summaries, rows = _run(_plan(costs, {"a": 0.5, "b": 0.5}), budget, tmp_path)
    assert ran == expect_ran
    results = {r["item"]: r["status"] for r in rows if r["kind"] == "result"}
    every = [f"{s}{i}" for s, c in costs.items() for i in range(len(c))]
    assert set(results) == set(every)
    assert all(results[i] == (G.PASS if i in ran else G.CUT) for i in every)
    assert [s["stage"] for s in summaries] == list(costs)


def test_a_blocking_item_is_interrupted_at_the_deadline(tmp_path):
    """SIGALRM interrupts an item that runs past its stage's deadline; it is logged as cut and the next
    stage still runs."""
    log = G.ResultLog(tmp_path / "log.jsonl")

    def run_item(item):
        if item.name == "slow":
            time.sleep(30)
        yield {"status": G.PASS}

    plan = [G.Stage("a", 0.5, [G.Item("slow", "x")]), G.Stage("b", 0.5, [G.Item("quick", "x")])]
    G.run_stages(plan, 0.6, log, run_item)
    log.close()
    rows = {r["item"]: r for r in G.read_log(tmp_path / "log.jsonl") if r["kind"] == "result"}
    assert rows["slow"]["status"] == G.CUT and "interrupted" in rows["slow"]["reason"]
    assert rows["quick"]["status"] in (G.PASS, G.CUT)


def test_a_failing_item_is_an_error_row_and_the_stage_goes_on(tmp_path):
    """An exception in one item becomes an error row naming it; later items still run."""
    log = G.ResultLog(tmp_path / "log.jsonl", FakeClock())

    def run_item(item):
        if item.name == "bad":
            raise RuntimeError("boom")
        yield {"status": G.PASS}

    G.run_stages([G.Stage("a", 1.0, [G.Item("bad", "x"), G.Item("good", "x")])], 10, log, run_item,
                 clock=FakeClock(), timer=G.NoTimer())
    rows = {r["item"]: r for r in log.records if r["kind"] == "result"}
    assert rows["bad"]["status"] == G.ERROR and "boom" in rows["bad"]["reason"]
    assert rows["good"]["status"] == G.PASS


SCRIPT = textwrap.dedent("""
    import sys, time
    sys.path.append({repo!r})
    from pathlib import Path
    from benchmarks import gpu_check as G
    log = G.ResultLog(Path({path!r}))
    def run_item(item):
        for i in range(1000):
            yield {{"status": G.PASS, "figures": {{"i": i, "x": float("nan")}}}}
            time.sleep(0.002)
    G.run_stages([G.Stage("a", 1.0, [G.Item("loop", "x")])], 60, log, run_item)
""")


def test_a_killed_run_leaves_whole_json_lines(tmp_path):
    """A run killed (SIGKILL) mid-stage leaves a log whose every line is valid JSON (non-finite
    figures as strings), holding the rows finished before the kill."""
    path = tmp_path / "log.jsonl"
    code = SCRIPT.format(repo=str(REPO), path=str(path))
    # A session of its own, so that the cleanup below takes whatever the child started with it.
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(REPO)},
                            start_new_session=True)
    try:
        for _ in range(600):
            if path.exists() and path.read_text().count("\n") >= 5:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        subprocess_helpers.kill_tree(proc.pid)
        proc.wait()
    lines = path.read_text().splitlines()
    records = [json.loads(line) for line in lines]
    results = [r for r in records if r["kind"] == "result"]
    assert len(results) >= 3 and all(r["figures"]["x"] == "nan" for r in results)
    assert [r["figures"]["i"] for r in results] == list(range(len(results)))


def test_warm_stage_hands_its_items_to_the_workers_and_cuts_the_rest(tmp_path):
    """The warm stage passes its items and its allowance to ``run_warm``; items the workers report
    are logged as they come, those unreported when it returns are cut, and the next stage runs."""
    seen = {}

    def run_warm(items, seconds):
        seen["items"], seen["seconds"] = [i.name for i in items], seconds
        yield G.ROW, items[1].name, {"status": G.PASS}
        yield G.DONE, items[1].name, None

    plan = [G.Stage("warm", 0.25, [G.Item("w0", "x"), G.Item("w1", "x")]), G.Stage("b", 0.75, [G.Item("b0", "x")])]
    log = G.ResultLog(tmp_path / "log.jsonl", FakeClock())
    G.run_stages(plan, 100, log, lambda item: iter([{"status": G.PASS}]), clock=FakeClock(), timer=G.NoTimer(),
                 run_warm=run_warm)
    assert seen == {"items": ["w0", "w1"], "seconds": 25.0}
    rows = {r["item"]: r["status"] for r in log.records if r["kind"] == "result"}
    assert rows == {"w1": G.PASS, "w0": G.CUT, "b0": G.PASS}


def test_dry_run_fits_the_default_budget_in_the_specified_order(capsys):
    """--dry-run prints every stage in the specified order, each estimate within its share, the total
    within the default 480 s, and exits 0."""
    assert G.main(["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "the plan fits the budget" in out
    positions = [out.index(f"\n{name} ") for name in G.STAGE_ORDER]
    assert positions == sorted(positions)
    plan = G.build_plan(workers=15)
    assert [s.name for s in plan] == list(G.STAGE_ORDER)
    assert all(s.estimate_s <= s.share * G.DEFAULT_BUDGET_S for s in plan)
    assert abs(sum(G.SHARES.values()) - 1.0) < 1e-9


def test_plan_covers_every_op_backend_dtype_and_shape():
    """Parity has one item per op x dtype x shape, each on all three backends; the warm-up holds
    exactly the compiling items of the later stages, the longest first; --stages keeps the order."""
    plan = {s.name: s for s in G.build_plan(workers=15)}
    keys = {(i.kwargs["op"], i.kwargs["dtype"], i.kwargs["size"]) for i in plan["parity"].items}
    assert keys == {(o, d, s) for o in G.OPS for d in G.DTYPES for s in G.SIZES}
    assert all(i.kwargs["backends"] == G.BACKENDS for i in plan["parity"].items)
    warm = plan["warm"].items
    compiling = [i.name for s in G.STAGE_ORDER[2:] for i in plan[s].items if i.warm_s > 0]
    assert sorted(i.name for i in warm) == sorted(compiling)
    assert [i.warm_s for i in warm] == sorted((i.warm_s for i in warm), reverse=True)
    assert [s.name for s in G.build_plan(["timings", "parity"])] == ["parity", "timings"]


def test_makespan_of_a_greedy_pool():
    """Jobs go to the first free worker in order: (4, 3, 3, 2) on two workers end at 6."""
    assert G.makespan([4, 3, 3, 2], 2) == 6
    assert G.makespan([1, 1, 1], 5) == 1


@pytest.mark.parametrize("sm,archs,expect", [
    ("90", ["80", "90"], "sass"), ("90", ["90a"], "sass"), ("90", ["80"], "ptx"), ("86", ["80-real"], "sass compatible"),
    ("90", ["80-real"], None), ("80", ["90"], None), ("90", ["80-virtual"], "ptx"), ("100", ["90a"], None),
])
def test_arch_coverage(sm, archs, expect):
    """A build covers a device with its own SASS, an earlier minor's SASS of the same major, or PTX
    that is not arch-specific and not newer than the device; otherwise it cannot run."""
    assert G.arch_coverage(sm, archs) == expect


def test_timing_estimates_count_the_cases_ops_builds():
    """The case counts the timing estimates assume equal what benchmarks/ops.py builds (quick sweep)."""
    maker = G.ops.OpCases(G.runner.Inputs(torch.device("cpu"), torch.float32, 0), G.ops.SWEEPS[True], skip_compile=True)
    assert G.family_case_counts(G.ops.SWEEPS[True]) == {f: len(getattr(maker, f)()) for f in G.ops.FAMILIES}


@pytest.mark.parametrize("op", ["vmf_normalize", "group_norm_nhwc", "axial_time_attention"])
def test_parity_passes_the_reference_and_fails_broken_kernels(monkeypatch, op):
    """The parity check passes the reference backend, and fails a backend that leaves an element
    unwritten, one that is off by a small error, and one that lets a sample's NaN reach its neighbours."""
    ctx = G.Context(torch.device("cpu"), tiny=True)
    rows = list(G.parity(ctx, op, "fp32", "small", ("reference",)))
    assert [r["status"] for r in rows] == [G.PASS]
    impl = dispatch._REGISTRY[op]["reference"]

    def unwritten(**inputs):
        out = impl.fn(**inputs)
        hole = torch.empty_like(out)
        return torch.where(torch.arange(out.numel()).reshape(out.shape) == 0, hole, out)

    def off(**inputs):
        return impl.fn(**inputs) * (1 + 1e-3)

    def leaky(**inputs):
        out = impl.fn(**inputs)
        return out + 0 * out.flatten()[0]

    for bad, variant in ((unwritten, "clean"), (off, "clean"), (leaky, "sample")):
        monkeypatch.setitem(dispatch._REGISTRY[op], "triton",
                            dispatch.Implementation(op, "triton", bad, dispatch.REFERENCE_CAPABILITY))
        monkeypatch.setitem(dispatch._BACKEND_UNAVAILABLE, "triton", [])
        (row,) = G.parity(ctx, op, "fp32", "small", ("triton",))
        assert row["status"] == G.FAIL and not row["checks"][variant]["ok"], (bad.__name__, row)


def test_summaries_include_the_stage_a_stop_interrupted(tmp_path):
    """After a stop, the summary lists every started stage: ended ones as logged, the interrupted
    one with the counts of the rows it wrote and marked cut."""
    clock = FakeClock()
    log = G.ResultLog(tmp_path / "log.jsonl", clock)
    log.write("stage_start", stage="a", allowance_s=5.0, items=1)
    log.write("stage_end", stage="a", allowance_s=5.0, used_s=1.0, cut=False, counts={G.PASS: 1})
    log.write("stage_start", stage="b", allowance_s=5.0, items=3)
    clock.now = 2.0
    log.write("result", stage="b", item="b0", status=G.FAIL)
    summaries = G.stage_summaries(log.records)
    assert [s["stage"] for s in summaries] == ["a", "b"]
    assert summaries[1] == {"stage": "b", "allowance_s": 5.0, "used_s": 2.0, "cut": True, "counts": {G.FAIL: 1}}
