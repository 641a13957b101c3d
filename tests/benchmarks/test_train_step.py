"""benchmarks/train_step.py shows what it is doing while it runs, not only its final table."""

import os
import sys
from pathlib import Path

import subprocess_helpers

REPO = Path(__file__).resolve().parents[2]


def test_train_step_reports_progress_on_stderr(tmp_path):
    """Before the first step it says what it will run; each warm-up and timed step of both passes
    advances a progress bar on stderr; the results stay alone on stdout."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, str(REPO / "benchmarks" / "train_step.py"), "--preset", "tiny", "--batch", "1",
           "--side", "16", "--warmup", "1", "--repeats", "2"]
    run = subprocess_helpers.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    err = run.stderr.replace("\r", "\n")
    assert "1 warm-up + 2 timed steps" in err
    for label in ("forward", "forward+backward"):
        assert f"{label}: 100%" in err and "3/3" in err, err
    assert "train_step" not in run.stdout and "forward+backward: median" in run.stdout
