"""``--check BASELINE.json``: compare a run against a stored result of the same job, device and config.

A case regresses when its median is more than ``margin`` (default 10%) slower than the baseline's,
or when it ran in the baseline and does not run now. The margin is the stated noise allowance:
differences smaller than it are not treated as evidence of a change. It has not been calibrated on
a GPU yet; measure the run-to-run spread of medians on the target machine and set ``--margin``
accordingly. CPU timings on a shared machine are far noisier; the check is meant for GPU machines.

Exit codes: 0 no regression, 1 regression, 2 the two results are not comparable.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .record import case_key

DEFAULT_MARGIN = 0.10
OK, REGRESSION, NOT_COMPARABLE = 0, 1, 2


@dataclass
class CheckResult:
    exit_code: int
    regressions: list[str] = field(default_factory=list)
    improvements: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def report(self, margin: float) -> str:
        verdict = {OK: "no regression", REGRESSION: "REGRESSION", NOT_COMPARABLE: "NOT COMPARABLE"}[self.exit_code]
        lines = [f"--check (noise margin {margin:.0%}): {verdict}"]
        lines += [f"  regression: {m}" for m in self.regressions]
        lines += [f"  faster: {m}" for m in self.improvements]
        lines += [f"  note: {m}" for m in self.notes]
        return "\n".join(lines)


def _label(key: tuple[str, str, str, str]) -> str:
    return " / ".join(k for k in key if k)


def compare(current: dict, baseline: dict, margin: float = DEFAULT_MARGIN) -> CheckResult:
    if margin < 0:
        raise ValueError(f"margin: expected a non-negative fraction, got {margin}")
    mismatches = []
    for what, a, b in (
        ("job", current["job"], baseline["job"]),
        ("device", current["environment"]["device_name"], baseline["environment"]["device_name"]),
        ("config", current["config"], baseline["config"]),
    ):
        if a != b:
            mismatches.append(f"{what} differs: now {a!r}, baseline {b!r}")
    if mismatches:
        return CheckResult(NOT_COMPARABLE, notes=mismatches)

    now = {case_key(r): r for r in current["rows"]}
    result = CheckResult(OK)
    for key, base in ((case_key(r), r) for r in baseline["rows"]):
        if base["status"] != "ok":
            continue
        row = now.get(key)
        if row is None:
            result.regressions.append(f"{_label(key)}: ran in the baseline ({base['median_ms']:.3f} ms), absent now")
        elif row["status"] != "ok":
            result.regressions.append(f"{_label(key)}: ran in the baseline ({base['median_ms']:.3f} ms), "
                                      f"now {row['status']}: {row['reason']}")
        else:
            ratio = row["median_ms"] / base["median_ms"]
            text = f"{_label(key)}: {row['median_ms']:.3f} ms vs {base['median_ms']:.3f} ms ({ratio:.2f}x)"
            if ratio > 1 + margin:
                result.regressions.append(text)
            elif ratio < 1 / (1 + margin):
                result.improvements.append(text)
    for key in now.keys() - {case_key(r) for r in baseline["rows"]}:
        result.notes.append(f"{_label(key)}: new case, not in the baseline")
    if result.regressions:
        result.exit_code = REGRESSION
    return result
