"""Trace files: written crash-safe with mode 0600, read back whatever state they are in."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from tracer.events import Event, Kind
from tracer.record import (
    TraceFormatError,
    TraceOutputError,
    TraceWriter,
    make_header,
    read_trace,
)


def _write(path: Path, n: int, trailer: bool = True) -> None:
    w = TraceWriter(str(path))
    w.write(make_header({"release": "x"}, ["kprobe:__request_module"], []))
    for i in range(n):
        w.event(Event(ts_ns=i, kind=int(Kind.REQ_TP), pid=i, name=f"m{i}"))
    if trailer:
        w.close({"lost": 0, "missed": 0, "events": n})
    else:
        w.flush()  # a recorder killed after its last poll


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


def test_every_flushed_line_is_on_disk_before_close(tmp_path: Path) -> None:
    """What kill -9 leaves: every event flushed so far (the tracer flushes once per poll),
    no trailer; only the batch since the last flush is lost."""
    p = tmp_path / "t.jsonl"
    w = TraceWriter(str(p))
    w.write(make_header({}, [], []))
    w.event(Event(ts_ns=1, kind=int(Kind.REQ_TP), name="a"))
    w.flush()
    w.event(Event(ts_ns=2, kind=int(Kind.REQ_TP), name="b"))
    tr = read_trace(str(p))  # read while the writer is still open
    assert [e.name for e in tr.events] == ["a"] and tr.trailer is None
    w.close({"lost": 0})
    assert [e.name for e in read_trace(str(p)).events] == ["a", "b"]


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


@pytest.mark.parametrize("bad", [
    '{"k": "nope"}',  # an object of no type
    '{"type": "event"}',  # an event with no kind
    '{"type": "event", "kind": 3, "bogus": 1}',  # a field the layout does not have
    '{"type": "proc", "pid": "1", "comm": "x", "cmdline": "", "parents": []}',
    # (a second header ends the trace: tests/test_input_bounds.py)
    '{"type": "what"}',
    '{"type": "event", "kind": true}',  # a bool is not an int
    '{"type": "event", "kind": 3, "pid": null}',
    '{"type": "event", "kind": 3, "name": 5}',
    '{"kind": 3, "type": "event", "ts_ns": 1.5}',
    '"a string"',
    '',
])
def test_every_invalid_line_is_counted_and_named(tmp_path: Path, bad: str) -> None:
    p = tmp_path / "t.jsonl"
    _write(p, 4)
    lines = p.read_text().splitlines()
    lines.insert(3, bad)
    p.write_text("\n".join(lines) + "\n")
    tr = read_trace(str(p))
    assert tr.first_bad_line == 4 and tr.bad_lines == 1, bad
    assert [e.name for e in tr.events] == ["m0", "m1", "m2", "m3"] and tr.trailer is not None


def test_event_lines_of_any_key_order_and_early_mark(tmp_path: Path) -> None:
    """Lines are decoded by their shape (keys and value types): each shape must give
    the event its fields say, whatever the order, with the early mark counted."""
    p = tmp_path / "t.jsonl"
    _write(p, 0)
    lines = p.read_text().splitlines()
    lines[1:1] = [
        '{"name": "b", "kind": 3, "type": "event", "ts_ns": 2}',
        '{"type": "event", "kind": 3, "ts_ns": 3, "name": "b"}',  # (not 2: a duplicate)
        '{"type": "event", "kind": 3, "early": 1, "pid": 7}',
        '{"early": "yes", "type": "event", "kind": 3, "pid": 7, "ts_ns": 1}',
        '{"type": "event", "kind": 1, "ret": -17, "path": "x", "comm": "c", "size": 9}',
    ]
    p.write_text("\n".join(lines) + "\n")
    tr = read_trace(str(p))
    assert tr.bad_lines == 0 and tr.early_events == 2
    assert tr.events == [Event(ts_ns=2, kind=3, name="b"), Event(ts_ns=3, kind=3, name="b"),
                         Event(kind=3, pid=7), Event(ts_ns=1, kind=3, pid=7),
                         Event(kind=1, ret=-17, path="x", comm="c", size=9)]


def test_a_second_trailer_is_a_bad_line(tmp_path: Path) -> None:
    p = tmp_path / "t.jsonl"
    _write(p, 1)
    with p.open("a") as f:
        f.write(json.dumps({"type": "trailer", "lost": 9}) + "\n")
    tr = read_trace(str(p))
    assert tr.trailer is not None and tr.trailer["lost"] == 0
    assert tr.bad_lines == 1 and tr.first_bad_line == 4


def test_proc_records_are_read_back(tmp_path: Path) -> None:
    p = tmp_path / "t.jsonl"
    w = TraceWriter(str(p))
    w.write(make_header({}, [], []))
    w.proc(42, "mount", "mount -t minix none /mnt", ("bash[7]", "systemd[1]"))
    w.event(Event(ts_ns=1, kind=int(Kind.REQ_TP), pid=42, comm="mount", name="fs-minix"))
    w.close({"lost": 0})
    tr = read_trace(str(p))
    assert tr.procs == {(42, "mount"): ("mount -t minix none /mnt", ("bash[7]", "systemd[1]"))}
    assert tr.bad_lines == 0


def test_recorded_procs_of_the_6_12_storms() -> None:
    tr = read_trace(str(Path(__file__).parent / "data" / "vm-6.12" / "trace.jsonl"))
    assert len(tr.procs) > 100 and tr.bad_lines == 0 and tr.first_bad_line is None
    assert any(cmd.startswith("modprobe") for cmd, _ in tr.procs.values())


def test_features_of_a_trace() -> None:
    tr = read_trace(str(Path(__file__).parent / "data" / "vm-6.12" / "trace.jsonl"))
    assert tr.features.idempotent and tr.features.profile.name == "6.5+"


def test_output_is_never_written_through_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.write_text("keep me\n")
    link = tmp_path / "t.jsonl"
    link.symlink_to(target)
    with pytest.raises(TraceOutputError, match=f"{link} is a symbolic link"):
        TraceWriter(str(link))
    assert target.read_text() == "keep me\n"


def test_output_with_another_hard_link_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.write_text("keep me\n")
    os.link(target, tmp_path / "t.jsonl")
    with pytest.raises(TraceOutputError, match="2 hard links"):
        TraceWriter(str(tmp_path / "t.jsonl"))
    assert target.read_text() == "keep me\n"


@pytest.mark.parametrize("make", ["missing", "directory", "binary", "newer"])
def test_unreadable_inputs_say_why(tmp_path: Path, make: str) -> None:
    p = tmp_path / "t.jsonl"
    if make == "directory":
        p.mkdir()
    elif make == "binary":
        p.write_bytes(bytes(range(256)) * 64)
    elif make == "newer":
        p.write_text(json.dumps({"type": "header", "format": "kmodtrace-trace",
                                 "version": 2}) + "\n")
    want = {"missing": "no such file", "directory": "is a directory",
            "binary": "line 1 is not JSON", "newer": "format version 2"}[make]
    with pytest.raises(TraceFormatError, match=want):
        read_trace(str(p))
