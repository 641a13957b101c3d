"""The fair comparison of providers (benchmarks.harness.time_interleaved, runner.run_providers): each
provider warmed up on its own before any timing, then timed in rounds whose order rotates, so no
provider is timed cold or always first. No test asserts a speed: the timing test compares two
names of one implementation with the spread the same run measured."""

from __future__ import annotations

import pytest
import torch

import aef_kernels as K
from benchmarks import harness, runner
from benchmarks.providers import under_provider

CPU = torch.device("cpu")


def _recording(log: list, name: str, sets: int = 2):
    return [lambda: log.append(name) for _ in range(sets)]


def test_each_provider_is_warmed_alone_then_timed_in_rotating_rounds():
    """The call sequence is: every provider's warm-up (one untimed call and one warm call here) as
    one block per provider, then round r runs the providers rotated by r, each its share of the
    repeats (6 over 3 rounds: 2 per round). So each provider's first (cold) call is untimed and each
    is first in one round of three."""
    log: list[str] = []
    policy = harness.TimingPolicy(warmup_s=0.0, budget_s=0.0, min_repeats=6, max_repeats=6, rounds=3)
    stats = harness.time_interleaved({n: _recording(log, n) for n in "abc"}, CPU, policy)
    warm = ["a", "a", "b", "b", "c", "c"]
    rounds = [["a", "a", "b", "b", "c", "c"], ["b", "b", "c", "c", "a", "a"], ["c", "c", "a", "a", "b", "b"]]
    assert log == warm + [n for r in rounds for n in r]
    assert all(s.repeats == 6 and len(s.round_medians_ms) == 3 for s in stats.values())


def test_repeats_are_split_over_rounds_exactly():
    """The repeats the budget allows are all timed, spread over at most ``rounds`` non-empty rounds."""
    assert harness.split_repeats(7, 5) == [2, 2, 1, 1, 1]
    assert harness.split_repeats(2, 5) == [1, 1]
    assert harness.split_repeats(10, 1) == [10]
    for repeats in range(1, 30):
        for rounds in range(1, 8):
            split = harness.split_repeats(repeats, rounds)
            assert sum(split) == repeats and len(split) == min(repeats, rounds) and min(split) >= 1


def test_a_provider_that_breaks_is_dropped_and_the_others_keep_their_rounds():
    """A provider raising in its second round becomes that exception; the rotation of the others
    goes on and they get all their repeats."""
    log: list[str] = []
    calls = {"n": 0}

    def flaky():
        calls["n"] += 1
        if calls["n"] > 4:  # 2 warm-up calls, then the first round's 2 calls
            raise RuntimeError("broke in round 2")

    policy = harness.TimingPolicy(warmup_s=0.0, budget_s=0.0, min_repeats=6, max_repeats=6, rounds=3)
    out = harness.time_interleaved({"a": _recording(log, "a"), "bad": [flaky], "c": _recording(log, "c")}, CPU,
                                   policy)
    assert isinstance(out["bad"], RuntimeError)
    assert out["a"].repeats == 6 and out["c"].repeats == 6
    assert list(out) == ["a", "bad", "c"]


def test_run_providers_rows_follow_the_given_order_and_time_interleaved():
    """runner.run_providers builds every provider, reports unavailable ones as rows, and times the
    rest through the same rotation (recorded call order: warm-ups first, then rotating rounds)."""
    log: list[str] = []

    def build(provider):
        if provider == "missing":
            raise K.BackendUnavailableError("no CUDA here")
        return _recording(log, provider)

    case = runner.Case("s", "shape", runner.FWD, build)
    policy = harness.TimingPolicy(warmup_s=0.0, budget_s=0.0, min_repeats=2, max_repeats=2, rounds=2)
    rows = runner.run_providers(case, ["x", "missing", "y"], CPU, policy, None)
    assert [r["provider"] for r in rows] == ["x", "missing", "y"]
    assert rows[1]["status"] == "not available" and "no CUDA" in rows[1]["reason"]
    assert rows[0]["status"] == rows[2]["status"] == "ok" and rows[0]["repeats"] == 2
    assert log == ["x", "x", "y", "y", "x", "y", "y", "x"]


def test_one_implementation_under_two_provider_names_times_within_the_noise():
    """The reference vmf_normalize registered as two providers, timed interleaved on CPU at a small
    shape: the two medians differ by no more than the spread the run itself measured (the wider of
    the two p20-p80 ranges and of the two ranges of per-round medians)."""
    inputs = runner.Inputs(CPU, torch.float32, seed=0)
    sets, _ = inputs.sets(lambda: (inputs.randn(256, 64),))
    providers = {name: runner.fwd_calls(under_provider("reference", K.vmf_normalize, CPU), sets)
                 for name in ("reference", "reference-again")}
    policy = harness.TimingPolicy(warmup_s=0.05, budget_s=0.4, min_repeats=40, max_repeats=400, rounds=8)
    stats = harness.time_interleaved(providers, CPU, policy)
    assert all(isinstance(s, harness.Stats) for s in stats.values()), stats
    spread = max(max(s.p80_ms - s.p20_ms, max(s.round_medians_ms) - min(s.round_medians_ms))
                 for s in stats.values())
    assert abs(stats["reference"].median_ms - stats["reference-again"].median_ms) <= spread, stats


@pytest.mark.parametrize("repeats, rounds", [(7, 5), (3, 5)])
def test_time_calls_alone_times_every_repeat(repeats, rounds):
    """A single provider (harness.time_calls, as the ceilings use) keeps its repeat count whatever
    the number of rounds."""
    log: list[str] = []
    policy = harness.TimingPolicy(0.0, 0.0, repeats, repeats, rounds)
    stats = harness.time_calls(_recording(log, "a", sets=3), CPU, policy)
    assert stats.repeats == repeats and len(log) == 2 + repeats
    assert len(stats.round_medians_ms) == min(repeats, rounds)
