"""kmodlab.vm.end_session: a VM's whole process tree goes when its run ends or times out,
QEMU included, even where QEMU ignores SIGTERM (a guest locked up under emulation)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from kmodlab import vm

# A leader that starts a child ignoring SIGTERM (as QEMU with every vCPU spinning did), and
# writes the child's pid where the test can read it.
_TREE = """
import signal, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
open(sys.argv[1], "w").write(str(child.pid))
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie not yet reaped by init counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_tree_that_ignores_sigterm_is_killed(tmp_path: Path) -> None:
    pidfile = tmp_path / "child"
    proc = subprocess.Popen([sys.executable, "-c", _TREE, str(pidfile)],
                            start_new_session=True)
    deadline = time.monotonic() + 30
    while not pidfile.exists() or not pidfile.read_text():
        assert time.monotonic() < deadline, "the tree did not start"
        time.sleep(0.05)
    child = int(pidfile.read_text())
    t0 = time.monotonic()
    vm.end_session(proc, grace=1.0)
    assert proc.returncode is not None
    assert not _alive(child)
    assert time.monotonic() - t0 < 30


def test_an_ended_session_is_left_alone() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    proc.wait()
    vm.end_session(proc)  # nothing left: returns without signalling anyone
    assert proc.returncode == 0
