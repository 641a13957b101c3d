"""Child processes for tests that cannot outlive their timeout.

``subprocess.run(timeout=...)`` kills only the child it started. A launcher such as torchrun puts
each rank in a session of its own, so a rank that hangs survives the kill, keeps its ports and CPU,
and the next test inherits it. :func:`run` starts the child as the leader of a new session and, on
timeout or interruption, kills that session's process group and every process descended from the
child, whatever group it moved to. (Importable from every test: pytest puts the folder of the
top-level conftest.py on sys.path.)
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path


def descendants(pid: int) -> list[int]:
    """Every live process descended from ``pid``, found through the parent links in /proc (empty
    where /proc is absent)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # the process ended while being listed
            continue
        # The command name is in parentheses and may itself contain spaces or parentheses.
        ppid = int(text[text.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_tree(pid: int) -> None:
    """SIGKILL the process group led by ``pid`` and every descendant of ``pid`` with its group.

    The descendants are listed before anything is killed: once a parent dies, its children are
    re-parented and the link to ``pid`` is lost.
    """
    own_group = os.getpgrp()
    targets = [pid, *descendants(pid)]
    groups = set()
    for p in targets:
        try:
            groups.add(os.getpgid(p))
        except ProcessLookupError:
            pass
    for group in groups - {own_group}:
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for p in targets:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def run(cmd, *, timeout: float, check: bool = False, capture_output: bool = False, **kwargs):
    """``subprocess.run`` with the child in a new session, killed with all it started on timeout.

    Raises ``subprocess.TimeoutExpired`` (with what the child printed) after the kill, and
    ``subprocess.CalledProcessError`` for a non-zero exit when ``check``.
    """
    if capture_output:
        kwargs["stdout"] = kwargs["stderr"] = subprocess.PIPE
    with subprocess.Popen(cmd, start_new_session=True, **kwargs) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_tree(proc.pid)
            try:
                out, err = proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:  # a process started after the listing holds the pipes
                out = err = None
            raise subprocess.TimeoutExpired(proc.args, timeout, output=out, stderr=err) from None
        except BaseException:  # KeyboardInterrupt: leave nothing running behind the interrupted test
            kill_tree(proc.pid)
            raise
    result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    if check:
        result.check_returncode()
    return result
