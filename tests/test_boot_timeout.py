"""The start-timeout extension: systemd gets EXTEND_TIMEOUT_USEC= only while attach progresses."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from tracer import boot
from tracer.live import sd_notify


class Fake:
    def __init__(self) -> None:
        self.now = 0.0
        self.cpu = 0.0
        self.switches = 0
        self.sent: list[str] = []
        self.log: list[str] = []


def extender(f: Fake, max_s: float = 100.0) -> boot.StartTimeoutExtender:
    ext = boot.StartTimeoutExtender(f.sent.append, every_s=5, extend_s=60, max_s=max_s,
                                    activity=lambda: (f.cpu, f.switches), clock=lambda: f.now,
                                    log=f.log.append)
    ext.begin()
    assert f.sent == ["EXTEND_TIMEOUT_USEC=60000000"]  # at once: the start is slow too
    f.sent.clear()
    return ext


def test_extends_while_the_attaching_thread_uses_cpu() -> None:
    f = Fake()
    ext = extender(f)
    f.now, f.cpu = 5, 4.0
    assert ext.tick()
    assert f.sent == ["EXTEND_TIMEOUT_USEC=60000000"]


def test_a_stalled_attach_gets_no_more_time() -> None:
    f = Fake()
    ext = extender(f)
    for i in range(1, 4):
        f.now = 5 * i  # blocked: no CPU time
        assert ext.tick()
    assert f.sent == []
    f.now, f.switches = 20, 3  # waiting on the kernel or on a read: alive, extended again
    ext.tick()
    assert f.sent == ["EXTEND_TIMEOUT_USEC=60000000"]
    assert f.log == ["attach stalled 5s in", "attach moving again 20s in"]


def test_the_real_thread_activity_moves() -> None:
    read = boot.thread_activity(threading.get_native_id())
    before = read()
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:
        sum(range(1000))
    time.sleep(0.01)
    assert read() != before
    assert boot.thread_activity(2**22 + 12345)() == (0.0, 0)  # no such thread


def test_never_past_the_cap() -> None:
    f = Fake()
    ext = extender(f, max_s=100)
    f.now, f.cpu = 70, 1.0
    assert ext.tick()
    assert f.sent == ["EXTEND_TIMEOUT_USEC=30000000"]  # only up to start + max_s
    f.now, f.cpu = 100, 2.0
    assert not ext.tick()  # past the cap: the loop ends, systemd's timeout decides
    assert len(f.sent) == 1


def test_nothing_outside_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    sent: list[str] = []
    with boot.StartTimeoutExtender(sent.append, every_s=0.01) as ext:
        time.sleep(0.05)
    assert ext._thread is None and sent == []


def test_messages_reach_the_notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under systemd the real sd_notify datagrams arrive while the watched thread computes."""
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as srv:
        srv.bind(path)
        srv.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        with boot.StartTimeoutExtender(sd_notify, every_s=0.05, extend_s=60) as ext:
            deadline = time.monotonic() + 0.5
            while time.monotonic() < deadline:  # burn CPU like a compiler
                sum(range(1000))
        got = srv.recv(100).decode()
    assert ext.sent >= 1
    assert got == "EXTEND_TIMEOUT_USEC=60000000"


def test_the_extender_runs_from_the_package_import(tmp_path: Path) -> None:
    """Under systemd the extension starts as `import tracer` runs (Python's start and the
    imports are slow under emulation too) and the attach holds that same extender."""
    import subprocess
    import sys

    code = ("import tracer.boot as b\n"
            "ext = b.start_timeout_extender(print, log=print)\n"
            "assert ext._thread is not None and ext._thread.is_alive()\n"
            "assert b.start_timeout_extender(print) is not ext\n"
            "with ext:\n"
            "    pass\n"
            "assert not ext._thread.is_alive()\n")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as srv:
        srv.bind(str(tmp_path / "notify"))
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={"NOTIFY_SOCKET": str(tmp_path / "notify")}, check=False)
    assert p.returncode == 0, p.stderr
    # once as the package loaded, once as the attach took over; the attach's log says so
    assert "start timeout extended 2 times" in p.stdout
