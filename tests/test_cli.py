"""The command line as a user meets it: reports of a recorded trace, and clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.schema_check import check_report
from tracer import report, reportdata

TRACE = Path(__file__).parent / "data" / "vm-6.1" / "trace.jsonl"
TRACE_6_12 = Path(__file__).parent / "data" / "vm-6.12" / "trace.jsonl"


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
    # per module: MODULE TRIES OK FAILED WASTED DEVICES SPAN LOAD REQS DUPS REJ
    assert dummy[1:4] == ["10", "1", "EEXIST:9"] and dummy[8:10] == ["50", "49"]
    # fs-minix requests are joined to the minix module they loaded: one row
    minix = next(ln.split() for ln in out.splitlines() if ln.startswith("minix "))
    assert minix[1:4] == ["7", "1", "EEXIST:6"] and minix[8:10] == ["8", "7"]
    assert not any(ln.startswith("fs-minix ") for ln in out.splitlines())
    assert any(" dummy " in ln and " dup mp=" in ln for ln in out.splitlines())
    assert "duplicate request for module dummy" not in out  # that is --wide's detail


def test_report_wide_keeps_every_detail() -> None:
    p = kmodtrace("report", "--wide", str(TRACE))
    assert p.returncode == 0, p.stderr
    assert "duplicate request for module dummy (dups: ret 0, wait" in p.stdout
    assert "file=xfs.ko ino=" in p.stdout and "for-request=#" in p.stdout
    assert "DUPWAIT(ms)" in p.stdout and "--wide adds" not in p.stdout
    assert "per request string and module name" in p.stdout  # the model's own keys
    assert any(ln.startswith("fs-minix ") for ln in p.stdout.splitlines())


def test_report_json_schema() -> None:
    p = kmodtrace("report", "--json", str(TRACE))
    assert p.returncode == 0, p.stderr
    rep = check_report(json.loads(p.stdout))
    assert rep["schema_version"] == 2
    assert rep["kernel"] == "6.1.0-56-amd64" and rep["lost_events"] == 0 and rep["complete"]
    assert rep["first_bad_line"] is None and rep["bad_lines"] == 0
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


def test_report_json_has_the_recorded_cmdlines() -> None:
    """live writes proc records; the report gives requests and loads their cmdline and
    parents, as `live --json` does."""
    p = kmodtrace("report", "--json", str(TRACE_6_12))
    assert p.returncode == 0, p.stderr
    rep = check_report(json.loads(p.stdout))
    for story in rep["requests"] + rep["loads"]:
        assert isinstance(story["cmdline"], str) and isinstance(story["parents"], list)
    mount = [r for r in rep["requests"] if r["comm"] == "mount"]
    assert mount and all(r["cmdline"].startswith("mount -t minix") for r in mount)
    assert all(r["parents"] for r in mount)
    assert any(ld["cmdline"].startswith("modprobe") for ld in rep["loads"])


def test_live_on_this_machine_ends_cleanly_or_in_one_line() -> None:
    """Here (no modules, no kprobes) a clear error; with a traceable kernel, a summary."""
    p = kmodtrace("live", "-d", "1")
    if p.returncode == 0:
        assert "events," in p.stderr and "lost" in p.stderr
    else:
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 1 and len(lines) == 1 and lines[0].startswith("kmodtrace: ")


@pytest.mark.parametrize("trace_path", [TRACE, TRACE_6_12], ids=["6.1", "6.12"])
def test_default_lines_fit_100_columns_and_wide_keeps_the_detail(trace_path: Path) -> None:
    """Every line `live` and `report` print by default, from real replayed storms."""
    trace, rep = report.load(str(trace_path))
    t0 = trace.header["start_mono_ns"]
    ts = "12:34:56.789 "  # live -T's prefix
    for req, v in rep.requests:
        for width in (report.LINE_WIDTH, report.LINE_WIDTH - len(ts)):
            assert len(report.request_line(req, v, t0, width=width)) <= width
        wide = report.request_line(req, v, t0, wide=True)
        if v is not None and v.verdict == "duplicate":
            assert f"duplicate request for module {req.name} (dups: ret" in wide
        if req.modprobe_pid is not None:
            assert f"modprobe={req.modprobe_pid}" in wide
    for ld, lv in rep.loads:
        for width in (report.LINE_WIDTH, report.LINE_WIDTH - len(ts)):
            assert len(report.load_line(ld, lv, t0, width=width)) <= width
        wide = report.load_line(ld, lv, t0, wide=True)
        assert f"size={ld.size}" in wide
        if lv is not None and lv.wasted_bytes:
            assert f"wasted={lv.wasted_bytes}B" in wide
    judged = reportdata.build(trace, rep)
    for line in report.render_text(judged):
        assert len(line) <= report.LINE_WIDTH, line
    assert max(len(line) for line in report.render_text(judged, wide=True)) > 100
    assert len(report.header()) <= report.LINE_WIDTH


def test_ebpf_prints_the_program_without_root_or_bcc(tmp_path: Path) -> None:
    """As bcc's tools do: no root, and bcc is never imported (here, importing it fails)."""
    (tmp_path / "bcc.py").write_text("raise SystemExit('bcc was imported')\n")
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}:{Path(__file__).parent.parent}")
    for cmd in (["live", "--ebpf"], ["record", "--ebpf"]):
        argv = [sys.executable, "-m", "tracer", *cmd]
        if os.geteuid() == 0:
            argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *argv]
        p = subprocess.run(argv, capture_output=True, text=True, env=env, check=False,
                           cwd="/")
        assert p.returncode == 0, p.stderr
        assert "struct event {" in p.stdout and "BPF_RINGBUF_OUTPUT" in p.stdout
        assert p.stdout.startswith("#define KIND_REQ_ENTER 1\n")


def test_failed_only_filter_on_a_recorded_storm() -> None:
    """-x keeps duplicates, failures and loads that wasted memory, as bcc's -x keeps errors."""
    from tracer.reportdata import Filter

    _, rep = report.load(str(TRACE))
    keep = Filter(None, None, failed_only=True)
    shown = [(r, v) for r, v in rep.requests if keep.request(r, v)]
    assert shown and all(r.ret != 0 or r.rejected or (v is not None and v.verdict == "duplicate")
                         for r, v in shown)
    dups = sum(1 for _, v in rep.requests if v is not None and v.verdict == "duplicate")
    assert len(shown) >= dups == 74
    loads = [(ld, v) for ld, v in rep.loads if keep.load(ld, v)]
    assert all(ld.ret != 0 or (v is not None and (v.outcome != "loaded" or v.wasted_bytes))
               for ld, v in loads)
    assert not any(ld.module == "kmodstorm" for ld, _ in loads)  # loaded once, cleanly
    assert len([1 for ld, _ in loads if ld.module == "xfs"]) == 7  # the 7 EEXIST of 8
    assert Filter(None, "xfs", failed_only=True).load(*next(
        (ld, v) for ld, v in rep.loads if ld.module == "xfs" and ld.ret != 0))
