"""The command line as a user meets it: reports of a recorded trace, and clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TRACE = Path(__file__).parent / "data" / "vm-6.1" / "trace.jsonl"


def kmodtrace(*args: str, user: int | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tracer", *args], capture_output=True,
                          text=True, timeout=120, check=False,
                          cwd=Path(__file__).parent.parent,
                          user=user)


def test_report_table_of_a_recorded_storm() -> None:
    p = kmodtrace("report", str(TRACE))
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert "kernel 6.1.0-56-amd64 profile 6.1: 791 events, lost 0" in out
    dummy = next(ln.split() for ln in out.splitlines() if ln.startswith("dummy "))
    # MODULE REQS DUPS MODPROBE LOADS OK FAILED ...
    assert dummy[1:7] == ["50", "49", "50/1", "10", "1", "EEXIST:9"]
    assert "duplicate request for module dummy" in out


def test_report_json_schema() -> None:
    p = kmodtrace("report", "--json", str(TRACE))
    assert p.returncode == 0, p.stderr
    rep = json.loads(p.stdout)
    assert rep["kernel"] == "6.1.0-56-amd64" and rep["lost_events"] == 0 and rep["complete"]
    req = next(r for r in rep["requests"] if r["name"] == "kmt-no-such-module")
    assert req["ret"] == 256 and req["modprobe_status"] == 256 and req["verdict"] in (
        "first", "duplicate")
    for key in ("name", "wait", "pid", "comm", "ret", "queue_ns", "duration_ns", "verdict",
                "modprobe_pid", "modprobe_status"):
        assert key in req
    load = next(ld for ld in rep["loads"] if ld["module"] == "xfs" and ld["verdict"] == "loaded")
    for key in ("module", "syscall", "pid", "comm", "file", "inode", "size", "ret",
                "duration_ns", "verdict"):
        assert key in load
    assert rep["modules"]["dummy"]["modprobe_spawns"] == 50
    assert rep["modules"]["xfs"]["load_failures"] == {"EEXIST": 7}


def test_report_of_a_foreign_file_is_one_clear_line(tmp_path: Path) -> None:
    bad = tmp_path / "notes.txt"
    bad.write_text("hello\n")
    p = kmodtrace("report", str(bad))
    assert p.returncode == 1
    assert p.stderr.strip().splitlines() == [
        f"kmodtrace: {bad}: line 1 is not JSON: not a kmodtrace trace "
        "(give a file written by `kmodtrace record -o FILE`)"]


def test_report_of_a_killed_recording(tmp_path: Path) -> None:
    lines = TRACE.read_text().splitlines()
    cut = tmp_path / "killed.jsonl"
    cut.write_text("\n".join(lines[:400]) + "\n" + lines[400][:20])
    p = kmodtrace("report", str(cut))
    assert p.returncode == 0, p.stderr
    assert "trace has no trailer" in p.stdout
    assert "1 unreadable line(s), first at line 401" in p.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to an unprivileged user")
def test_live_as_non_root_says_so() -> None:
    p = kmodtrace("live", "-d", "1", user=65534)
    assert p.returncode == 1
    assert p.stderr.strip() == "kmodtrace: kmodtrace must run as root (it loads BPF programs)"


def test_live_on_this_machine_ends_cleanly_or_in_one_line() -> None:
    """Here (no modules, no kprobes) a clear error; with a traceable kernel, a summary."""
    p = kmodtrace("live", "-d", "1")
    if p.returncode == 0:
        assert "events," in p.stderr and "lost" in p.stderr
    else:
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 1 and len(lines) == 1 and lines[0].startswith("kmodtrace: ")
