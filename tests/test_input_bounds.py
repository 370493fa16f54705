"""Input is bounded and values are checked where they are read (issue #24, items 3, 4).

Each hostile input gets a test of its exact behaviour: lines over the cap, FIFOs,
devices, sockets, standard input, out-of-range values, unknown kinds, duplicated events,
concatenated traces, damaged trailer counts. A property test throws random lines, bytes
and mutated real traces at the reader: it never raises anything but TraceFormatError,
and never holds a line over the cap whole.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import time
import tracemalloc
import typing
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tracer import report, reportdata
from tracer.events import Event, Kind, KnownKind
from tracer.record import (
    CHUNK,
    LINE_CAP,
    STDIN_CAP,
    TOO_LONG,
    Trace,
    TraceFormatError,
    iter_lines,
    make_header,
    read_trace,
)

ROOT = Path(__file__).parent.parent
DATA = Path(__file__).parent / "data"
TRACE = DATA / "vm-6.1" / "trace.jsonl"
REAL = [DATA / d / "trace.jsonl" for d in ("vm-6.1", "vm-6.1-udev", "vm-6.12")]
HOW = "give a file written by `kmodtrace record -o FILE`, or `-` to read one from standard input"
# What reading may hold at once, a constant: the last line (at most LINE_CAP) and its
# decoded value, the part of the next carried from chunk to chunk (at most LINE_CAP) and
# the copy that joins it to the next chunk, a chunk read and its split.
HELD = 4 * LINE_CAP + 4 * CHUNK


def kmodtrace(*args: str, stdin: Any = subprocess.DEVNULL,
              timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tracer", *args], stdin=stdin,
                          capture_output=True, text=True, timeout=timeout, check=False,
                          cwd=ROOT)


def one_line(p: subprocess.CompletedProcess[str]) -> str:
    """The error line of a failed command: its whole stderr."""
    assert "Traceback" not in p.stderr, p.stderr
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 1 and len(lines) == 1, (p.returncode, p.stderr)
    return lines[0]


def _lines(n: int = 4, trailer: dict[str, Any] | None = None) -> list[str]:
    """A small trace's lines: a header, N events at 1..N s, a trailer (end at 100 s)."""
    head = make_header({"release": "x"}, ["kprobe:__request_module"], [])
    head["start_mono_ns"] = 10**9
    out = [json.dumps(head)]
    out += [json.dumps({"type": "event", "ts_ns": (i + 1) * 10**9, "kind": int(Kind.REQ_TP),
                        "pid": 100 + i, "tid": 100 + i, "name": f"m{i}"}) for i in range(n)]
    out.append(json.dumps({"type": "trailer", "lost": 0, "missed": 0, "events": n,
                           "end_mono_ns": 100 * 10**9, **(trailer or {})}))
    return out


def _file(tmp_path: Path, lines: list[str] | list[bytes], name: str = "t.jsonl") -> Path:
    p = tmp_path / name
    p.write_bytes(b"".join((ln.encode() if isinstance(ln, str) else ln) + b"\n"
                           for ln in lines))
    return p


def _names(tr: Trace) -> list[str]:
    return [e.name for e in tr.events]


# --- 3. input is bounded ------------------------------------------------------------------


def test_a_line_over_the_cap_is_a_bad_line_and_the_rest_is_read(tmp_path: Path) -> None:
    lines = _lines(4)
    lines.insert(3, "x" * (3 * LINE_CAP))  # line 4
    tr = read_trace(str(_file(tmp_path, lines)))
    assert (tr.bad_lines, tr.first_bad_line) == (1, 4)
    assert tr.first_bad_why == "longer than 1 MiB"
    assert _names(tr) == ["m0", "m1", "m2", "m3"] and tr.trailer is not None


@pytest.mark.parametrize("extra, bad", [(0, False), (1, True)])
def test_the_cap_is_exact(tmp_path: Path, extra: int, bad: bool) -> None:
    """A line of LINE_CAP bytes is read whole; one byte more is a bad line. Its bytes
    cross chunk boundaries (the line starts in the middle of a chunk)."""
    line = b" " * (LINE_CAP - 2 + extra) + b"{}"
    p = _file(tmp_path, [b"a" * (CHUNK // 2), line, b"z"])
    got = list(iter_lines(str(p)))
    assert [n for n, _ in got] == [1, 2, 3]
    assert (got[1][1] is TOO_LONG) is bad
    assert bad or got[1][1] == line


def test_a_last_line_over_the_cap_without_newline(tmp_path: Path) -> None:
    p = tmp_path / "t.jsonl"
    p.write_bytes("\n".join(_lines(2)[:-1]).encode() + b"\n" + b"{" * (LINE_CAP + 5))
    tr = read_trace(str(p))
    assert (tr.bad_lines, tr.first_bad_line, tr.first_bad_why) == (1, 4, "longer than 1 MiB")
    assert _names(tr) == ["m0", "m1"] and tr.trailer is None


def test_a_header_over_the_cap_is_no_trace(tmp_path: Path) -> None:
    p = tmp_path / "t.jsonl"
    p.write_bytes(b"\0" * (LINE_CAP * 3))
    with pytest.raises(TraceFormatError, match=f"^{p}: line 1 is longer than 1 MiB: not a "
                                               "kmodtrace trace"):
        read_trace(str(p))


def _read_peak(p: Path) -> tuple[Trace, int]:
    """The trace at P and the peak of what reading it held (tracemalloc)."""
    tracemalloc.start()
    try:
        tr = read_trace(str(p))
        return tr, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_line_over_the_cap_is_never_held_whole(tmp_path: Path) -> None:
    """64 MiB in one line, between events: reading holds a bounded part of it."""
    lines = _lines(2)
    lines.insert(2, '{"type": "event", "name": "' + "x" * (64 * LINE_CAP) + '"}')
    p = _file(tmp_path, lines)
    tr, peak = _read_peak(p)
    assert (tr.bad_lines, tr.first_bad_line, _names(tr)) == (1, 3, ["m0", "m1"])
    assert peak < HELD, peak


def test_memory_follows_the_events_kept_not_the_bytes_read(tmp_path: Path) -> None:
    """Twice what reading may hold in bad lines after two events, long and short ones,
    then an event: none of the bad lines stays, the events do."""
    lines = _lines(3)
    short = ['{"type": "what"}', "not json", '{"type": "event", "kind": 99}'] * 3000
    long = ["x" * (64 * 1024)] * (2 * HELD // (64 * 1024))
    lines[3:3] = short + long
    p = _file(tmp_path, lines)
    tr, peak = _read_peak(p)
    assert _names(tr) == ["m0", "m1", "m2"] and tr.bad_lines == len(short) + len(long)
    assert (tr.first_bad_line, tr.first_bad_why) == (4, "no record of a known type")
    assert peak < HELD, peak


def test_a_fifo_without_writer_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "t.jsonl"
    os.mkfifo(fifo)
    t0 = time.monotonic()
    p = kmodtrace("report", str(fifo), timeout=30)
    assert one_line(p) == f"kmodtrace: {fifo} is a FIFO, not a trace: {HOW}"
    assert time.monotonic() - t0 < 20


def test_dev_zero_is_refused_at_once() -> None:
    p = kmodtrace("report", "/dev/zero", timeout=30)
    assert one_line(p) == f"kmodtrace: /dev/zero is a character device, not a trace: {HOW}"


def test_boot_diff_of_dev_zero_is_refused_at_once() -> None:
    p = kmodtrace("boot", "diff", "/dev/zero", str(TRACE), timeout=30)
    assert one_line(p) == f"kmodtrace: /dev/zero is a character device, not a trace: {HOW}"


def test_a_socket_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
        with pytest.raises(TraceFormatError) as e:
            read_trace(str(path))
    assert str(e.value) == f"{path} is a socket, not a trace: {HOW}"


def test_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TraceFormatError) as e:
        read_trace(str(tmp_path))
    assert str(e.value) == f"{tmp_path} is a directory, not a trace: {HOW}"


def test_standard_input_reads_a_trace() -> None:
    by_name = kmodtrace("report", "--wide", str(TRACE))
    with TRACE.open("rb") as f:
        by_stdin = kmodtrace("report", "--wide", "-", stdin=f)
    assert by_stdin.returncode == 0 and by_stdin.stderr == "", by_stdin.stderr
    assert by_stdin.stdout == by_name.stdout


def test_standard_input_of_dev_zero_ends_at_the_first_line() -> None:
    """An explicit `-` reads a device too, within the caps: /dev/zero has no newline."""
    with open("/dev/zero", "rb") as zero:
        p = kmodtrace("report", "-", stdin=zero, timeout=30)
    assert one_line(p) == ("kmodtrace: standard input: line 1 is longer than 1 MiB: not a "
                           "kmodtrace trace (give a file written by `kmodtrace record -o FILE`)")


def test_closed_standard_input_is_one_line() -> None:
    p = subprocess.run(["bash", "-c", f"{shlex.quote(sys.executable)} -m tracer report - <&-"],
                       capture_output=True, text=True, timeout=60, check=False, cwd=ROOT)
    assert one_line(p) == ("kmodtrace: standard input is closed: give a file written by "
                           "`kmodtrace record -o FILE`")


def test_standard_input_is_capped(tmp_path: Path) -> None:
    """A header, then no end: reading stops at STDIN_CAP bytes with one line."""
    head = _file(tmp_path, _lines(0)[:1])
    cmd = (f"cat {shlex.quote(str(head))} /dev/zero | "
           f"{shlex.quote(sys.executable)} -m tracer report -")
    p = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=120,
                       check=False, cwd=ROOT)
    assert STDIN_CAP == 1 << 30
    assert one_line(p) == ("kmodtrace: standard input holds more than 1 GiB: save the trace "
                           "to a file and give its path")


# --- 4. values are checked where they are read --------------------------------------------


def _one_bad(tmp_path: Path, line: str, at: int = 3) -> Trace:
    lines = _lines(4)
    lines.insert(at - 1, line)
    return read_trace(str(_file(tmp_path, lines)))


@pytest.mark.parametrize("fields, why", [
    ({"ts_ns": -5}, "ts_ns out of range"),
    ({"ts_ns": -5, "early": 1}, "ts_ns out of range"),  # the slow path checks it too
    ({"ts_ns": 100 * 10**9 + 1}, "ts_ns after the trailer's end_mono_ns"),
    ({"ts_ns": 2**63}, "ts_ns out of range"),
    # past what msgspec can bound (int64): only the slow path (an early event) sees it
    ({"ip": 2**64, "early": 1}, "ip out of range"),
    ({"pid": -1}, "pid out of range"),
    ({"pid": 2**32}, "pid out of range"),
    ({"ret": -2**63 - 1}, "ret out of range"),
    ({"ret": 1.5}, "not an event's fields"),
    ({"kind": 99}, "unknown kind 99"),
    ({"kind": 0}, "unknown kind 0"),
    ({"kind": -3, "early": 1}, "unknown kind -3"),
])
def test_out_of_range_values_are_bad_lines(tmp_path: Path, fields: dict[str, Any],
                                           why: str) -> None:
    line = {"type": "event", "kind": int(Kind.REQ_TP), "ts_ns": 5, "name": "x", **fields}
    tr = _one_bad(tmp_path, json.dumps(line))
    assert (tr.bad_lines, tr.first_bad_line, tr.first_bad_why) == (1, 3, why)
    assert _names(tr) == ["m0", "m1", "m2", "m3"]


def test_early_events_before_the_start_and_ts_0_are_valid(tmp_path: Path) -> None:
    tr = _one_bad(tmp_path, json.dumps({"type": "event", "kind": int(Kind.MOD_LOAD),
                                        "ts_ns": 0, "name": "early", "early": 1}))
    assert tr.bad_lines == 0 and tr.early_events == 1
    assert _names(tr) == ["m0", "early", "m1", "m2", "m3"]


def test_every_known_kind_is_read_and_no_other() -> None:
    """The decoder's bounds (events.KnownKind) are Kind's: its values have no gap."""
    bounds = typing.get_args(KnownKind)[2]
    assert [int(k) for k in Kind] == list(range(bounds.ge, bounds.le + 1))


def test_a_duplicated_event_is_a_bad_line_named_by_its_line(tmp_path: Path) -> None:
    lines = _lines(4)
    # a proc record and a bad line before it: the duplicate's line is counted past them
    lines[2:2] = [json.dumps({"type": "proc", "pid": 1, "comm": "a", "cmdline": "a",
                              "parents": []}), "{"]
    dup = json.loads(lines[1])
    # the same kind, thread and timestamp; another name, another key order
    lines.insert(6, json.dumps(dict(reversed(dup.items())) | {"name": "other"}))
    tr = read_trace(str(_file(tmp_path, lines)))
    assert (tr.bad_lines, tr.first_bad_line) == (2, 4)
    assert _names(tr) == ["m0", "m1", "m2", "m3"]
    dupline = next(n for n, ln in enumerate(lines, 1) if '"other"' in ln)
    tr2 = read_trace(str(_file(tmp_path, [ln for ln in lines if ln != "{"], "u.jsonl")))
    assert (tr2.bad_lines, tr2.first_bad_line, tr2.first_bad_why) == (
        1, dupline - 1, "an event seen before (same kind, thread and ts_ns)")


def test_a_duplicated_early_event_is_counted_once(tmp_path: Path) -> None:
    early = json.dumps({"type": "event", "kind": int(Kind.MOD_LOAD), "ts_ns": 7, "tid": 1,
                        "name": "e", "early": 1})
    lines = _lines(2)
    lines[1:1] = [early, early]
    tr = read_trace(str(_file(tmp_path, lines)))
    assert (tr.bad_lines, tr.first_bad_line, tr.early_events) == (1, 3, 1)
    assert _names(tr) == ["e", "m0", "m1"]


def test_same_timestamp_of_another_thread_or_kind_is_no_duplicate(tmp_path: Path) -> None:
    lines = _lines(1)
    ev = json.loads(lines[1])
    lines[2:2] = [json.dumps(ev | {"tid": 7}), json.dumps(ev | {"kind": int(Kind.MOD_LOAD)})]
    tr = read_trace(str(_file(tmp_path, lines)))
    assert tr.bad_lines == 0 and len(tr.events) == 3


def test_two_traces_concatenated_never_mix(tmp_path: Path) -> None:
    """The second trace, from its header on, is bad lines, none of it read: the report is
    the first trace's, and says how much was left out."""
    a, b = _lines(3), _lines(5)
    b[1:] = [ln.replace('"m', '"b') for ln in b[1:]]
    tr = read_trace(str(_file(tmp_path, a + b)))
    assert _names(tr) == ["m0", "m1", "m2"] and tr.trailer is not None
    assert tr.trailer["events"] == 3
    assert (tr.bad_lines, tr.first_bad_line) == (len(b), len(a) + 1)
    assert tr.first_bad_why == "a second header (one trace per file: the next is not read)"


def test_a_killed_trace_with_another_appended(tmp_path: Path) -> None:
    a, b = _lines(3)[:-1], _lines(2)
    tr = read_trace(str(_file(tmp_path, a + b)))
    assert _names(tr) == ["m0", "m1", "m2"] and tr.trailer is None
    assert (tr.bad_lines, tr.first_bad_line) == (len(b), len(a) + 1)


def test_lines_after_the_trailer_are_bad(tmp_path: Path) -> None:
    lines = _lines(2)
    lines.append(lines[1].replace('"m0"', '"late"').replace("1000000000", "2000000001"))
    tr = read_trace(str(_file(tmp_path, lines)))
    assert _names(tr) == ["m0", "m1"]
    assert (tr.bad_lines, tr.first_bad_line, tr.first_bad_why) == (
        1, 5, "after the trailer (one trace per file)")


@pytest.mark.parametrize("counts, wrong", [
    ({"lost": "many"}, "lost"),
    ({"lost": -5}, "lost"),
    ({"missed": True}, "missed"),
    ({"missed": 1.5, "events": -1}, "missed, events"),
    ({"end_mono_ns": -1}, "end_mono_ns"),
    ({"misses": {"kprobe:x": -2}}, "misses"),
    ({"misses": [1]}, "misses"),
    ({"rescue": {"emitted": "3"}}, "rescue"),
])
def test_trailer_counts_that_are_not_counts_read_as_unknown(
        tmp_path: Path, counts: dict[str, Any], wrong: str) -> None:
    tr = read_trace(str(_file(tmp_path, _lines(2, trailer=counts))))
    assert tr.trailer is not None and not set(wrong.split(", ")) & tr.trailer.keys()
    assert (tr.bad_lines, tr.first_bad_line, tr.first_bad_why) == (
        1, 4, f"trailer's {wrong} not a count (read as unknown)")


def test_the_report_says_so_in_one_notice(tmp_path: Path) -> None:
    """lost -5 and a duplicate: JSON carries neither the -5 nor the duplicate, the text
    view one notice naming the first bad line, and its lower-bounds warning."""
    lines = _lines(3, trailer={"lost": -5})
    lines.insert(2, lines[1])
    p = _file(tmp_path, lines)
    doc = json.loads(kmodtrace("report", "--json", str(p)).stdout)
    assert (doc["lost_events"], doc["first_bad_line"], doc["bad_lines"]) == (None, 3, 2)
    out = kmodtrace("report", str(p)).stdout.splitlines()
    notices = [ln for ln in out if "unreadable" in ln]
    assert notices == ["2 unreadable line(s), first at line 3: an event seen before (same "
                       "kind, thread and ts_ns); not used"]
    assert "3 events, lost unknown" in "\n".join(out)
    assert out[-1] == ("WARNING: the trace does not say what was dropped; counts above are "
                       "lower bounds.")
    r = reportdata.read(str(p))
    assert report.damage_lines(r.loss)[-1] == notices[0]


def test_recorded_traces_have_no_bad_line() -> None:
    for path in REAL:
        tr = read_trace(str(path))
        assert (tr.bad_lines, tr.first_bad_line) == (0, None), path


# --- the property: whatever the bytes, no traceback and no line held whole ---------------


_REAL_LINES = [TRACE.read_bytes().splitlines()]
_values = st.one_of(st.integers(-2**70, 2**70), st.text(max_size=8), st.none(), st.booleans(),
                    st.floats(allow_nan=True), st.lists(st.integers(), max_size=2))


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    """A real trace, cut to a window (its header kept) and mutated."""
    src = draw(st.sampled_from(_REAL_LINES))
    start = draw(st.integers(1, len(src) - 1))
    lines = [src[0], *src[start:start + draw(st.integers(0, 40))], src[-1]]
    for _ in range(draw(st.integers(0, 6))):
        if not lines:
            break
        i = draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(["drop", "dup", "bytes", "flip", "value", "long", "header",
                                   "swap"]))
        if op == "drop":
            del lines[i]
        elif op == "dup":
            lines.insert(draw(st.integers(0, len(lines))), lines[i])
        elif op == "bytes":
            lines[i] = draw(st.binary(max_size=64)).replace(b"\n", b"")
        elif op == "flip" and lines[i]:
            j = draw(st.integers(0, len(lines[i]) - 1))
            lines[i] = lines[i][:j] + bytes([draw(st.integers(0, 255))]) + lines[i][j + 1:]
        elif op == "value":
            try:
                obj = json.loads(lines[i])
            except ValueError:
                continue
            if isinstance(obj, dict) and obj:
                obj[draw(st.sampled_from([*sorted(obj), "kind", "ts_ns", "lost", "type"]))] = \
                    draw(_values)
                lines[i] = json.dumps(obj).encode()
        elif op == "long":  # about the cap, or well past what reading may hold
            lines[i] = lines[i] + b" " * draw(st.one_of(
                st.integers(LINE_CAP - len(lines[i]), LINE_CAP + 2 * CHUNK),
                st.just(2 * HELD)))
        elif op == "header":
            lines.insert(i, src[0])
        elif op == "swap" and len(lines) > 1:
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
    data = b"\n".join(lines) + b"\n"
    return data[:draw(st.integers(0, len(data)))] if draw(st.booleans()) else data


_inputs = st.one_of(
    _mutated(),
    st.binary(max_size=512),
    st.lists(st.one_of(st.binary(max_size=40), st.text(max_size=40).map(str.encode)),
             max_size=20).map(lambda ls: b"\n".join([_REAL_LINES[0][0], *ls])),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.data_too_large])
@given(_inputs)
def test_no_input_gives_a_traceback_or_holds_a_long_line(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "t.jsonl")
        with open(path, "wb") as f:
            f.write(data)
        tracemalloc.start()
        try:
            try:
                tr = read_trace(path)
            except TraceFormatError:
                return
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < HELD, peak
        assert all(len(line) <= LINE_CAP for _, line in iter_lines(path))
        # what was read is as a recorder wrote it ...
        assert all(isinstance(e, Event) and e.kind in set(Kind) for e in tr.events)
        keys = [(e.kind, e.tid, e.ts_ns) for e in tr.events]
        assert len(keys) == len(set(keys))
        end = (tr.trailer or {}).get("end_mono_ns")
        assert end is None or all(0 <= e.ts_ns <= end for e in tr.events)
        for key in ("lost", "missed", "events"):
            v = (tr.trailer or {}).get(key)
            assert v is None or (type(v) is int and v >= 0)
        assert (tr.bad_lines == 0) == (tr.first_bad_line is None)
        # ... and the whole report of it renders
        r = reportdata.build(*reportdata.replay_file(path))
        report.render_text(r)
        json.dumps(report.document(r))
