"""The suite's subprocess runner leaves nothing running after a timeout."""

import os
import signal
import subprocess
import sys
import time

import pytest

from subprocess_helpers import descendants, run


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _gone(pid: int, wait_s: float = 30.0) -> bool:
    # A killed orphan is reaped by init a moment later; until then it is a zombie, which counts as gone.
    deadline = time.monotonic() + wait_s
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="descendants are found through /proc")
@pytest.mark.parametrize("own_session", [False, True], ids=["same-group", "own-session"])
def test_timeout_kills_the_child_and_what_it_started(tmp_path, own_session):
    """On timeout, the child and a grandchild it started are killed, also when the grandchild runs in
    a session of its own (as torchrun starts its ranks), and what the child printed is kept."""
    pid_file = tmp_path / "grandchild.pid"
    start = "setsid sleep 600 &" if own_session else "sleep 600 &"
    script = f"{start} echo $! > {pid_file}; echo started; wait"
    with pytest.raises(subprocess.TimeoutExpired) as info:
        run(["sh", "-c", script], timeout=4, capture_output=True, text=True)
    assert "started" in info.value.output
    grandchild = int(pid_file.read_text())
    assert _gone(grandchild), f"grandchild {grandchild} survived the timeout"


def test_a_finished_child_returns_like_subprocess_run():
    """Exit status and output come back as from subprocess.run; check=True raises on failure."""
    code = "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"
    result = run([sys.executable, "-c", code], timeout=120, capture_output=True, text=True)
    assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "err\n")
    with pytest.raises(subprocess.CalledProcessError):
        run([sys.executable, "-c", code], timeout=120, check=True, capture_output=True)


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="descendants are found through /proc")
def test_descendants_follow_the_parent_links():
    """A grandchild is listed as a descendant of the process that started its parent."""
    with subprocess.Popen(["sh", "-c", "sleep 600 & echo $!; wait"], stdout=subprocess.PIPE, text=True,
                          start_new_session=True) as proc:
        try:
            grandchild = int(proc.stdout.readline())
            assert grandchild in descendants(proc.pid)
            assert proc.pid not in descendants(grandchild)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
