"""Trace files: written crash-safe with mode 0600, read back whatever state they are in."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from tracer.events import Event, Kind
from tracer.record import TraceFormatError, TraceWriter, make_header, read_trace


def _write(path: Path, n: int, trailer: bool = True) -> None:
    w = TraceWriter(str(path))
    w.write(make_header({"release": "x"}, ["kprobe:__request_module"], []))
    for i in range(n):
        w.event(Event(ts_ns=i, kind=int(Kind.REQ_TP), pid=i, name=f"m{i}"))
    if trailer:
        w.close({"lost": 0, "missed": 0, "events": n})


def test_round_trip(tmp_path: Path) -> None:
    p = tmp_path / "t.jsonl"
    _write(p, 3)
    tr = read_trace(str(p))
    assert [e.name for e in tr.events] == ["m0", "m1", "m2"]
    assert tr.events[1] == Event(ts_ns=1, kind=int(Kind.REQ_TP), pid=1, name="m1")
    assert tr.trailer is not None and tr.trailer["events"] == 3
    assert tr.header["hooks"] == ["kprobe:__request_module"] and tr.first_bad_line is None


def test_file_is_private_even_if_it_existed(tmp_path: Path) -> None:
    p = tmp_path / "t.jsonl"
    p.write_text("old")
    os.chmod(p, 0o644)
    _write(p, 1)
    assert stat.S_IMODE(p.stat().st_mode) == 0o600


def test_every_line_is_on_disk_before_close(tmp_path: Path) -> None:
    """What kill -9 leaves: every event written so far, no trailer."""
    p = tmp_path / "t.jsonl"
    w = TraceWriter(str(p))
    w.write(make_header({}, [], []))
    w.event(Event(ts_ns=1, kind=int(Kind.REQ_TP), name="a"))
    tr = read_trace(str(p))  # read while the writer is still open
    assert [e.name for e in tr.events] == ["a"] and tr.trailer is None


def test_truncated_last_line(tmp_path: Path) -> None:
    p = tmp_path / "t.jsonl"
    _write(p, 4, trailer=False)
    data = p.read_bytes()
    p.write_bytes(data[:-10])  # power cut in the middle of the last line
    tr = read_trace(str(p))
    assert len(tr.events) == 3 and tr.first_bad_line == 5 and tr.trailer is None


def test_corrupt_middle_line_is_named_and_the_rest_kept(tmp_path: Path) -> None:
    p = tmp_path / "t.jsonl"
    _write(p, 4)
    lines = p.read_text().splitlines()
    lines[2] = "{garbage"
    lines[3] = json.dumps({"type": "event", "ts_ns": "x", "bogus": 1})
    p.write_text("\n".join(lines) + "\n")
    tr = read_trace(str(p))
    assert tr.first_bad_line == 3 and tr.bad_lines == 2
    assert [e.name for e in tr.events] == ["m0", "m3"] and tr.trailer is not None


@pytest.mark.parametrize("content", ["", "hello\n", json.dumps({"type": "header"}) + "\n",
                                     "[1, 2]\n"])
def test_foreign_files_are_rejected(tmp_path: Path, content: str) -> None:
    p = tmp_path / "t.jsonl"
    p.write_text(content)
    with pytest.raises(TraceFormatError, match="not a kmodtrace trace"):
        read_trace(str(p))
