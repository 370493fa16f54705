"""The trace file: JSON Lines, a header, events, proc records, a trailer.

Every line is written and flushed as it comes, so a killed recorder loses at
most a partial last line. Readers accept a missing trailer, and count and name
every line that is not a valid record (the report goes on without it).
"""

from __future__ import annotations

import errno
import gc
import json
import os
import platform
import stat
import sys
import time
import typing
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import compress
from operator import attrgetter
from typing import Any

import msgspec

from tracer import __version__, text
from tracer.events import LAYOUT, Event, Kind, RecordDecoder
from tracer.kernel import Features

FORMAT = "kmodtrace-trace"
FORMAT_VERSION = 1
_DEFAULTS = Event().to_dict()
_encode_into = msgspec.json.Encoder().encode_into
BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"
# How `record` makes a file that `report` reads: the fix named in format errors.
_HOW = "give a file written by `kmodtrace record -o FILE`"

# (pid, comm) -> (cmdline, parent chain "comm[pid]" up to init), read while it lived
Procs = dict[tuple[int, str], tuple[str, tuple[str, ...]]]


def boot_id() -> str:
    """This boot's id (a UUID with dashes), or "" where it cannot be read."""
    try:
        with open(BOOT_ID_PATH) as f:
            return f.read().strip()
    except OSError:
        return ""


def make_header(features: dict[str, Any], hooks: list[str], skipped: list[str]) -> dict[str, Any]:
    return {
        "type": "header",
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "tool_version": __version__,
        "kernel": platform.release(),
        "features": features,
        "hooks": hooks,
        "skipped": skipped,
        "cpus": os.cpu_count() or 0,
        "boot_id": boot_id(),
        "start_time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "start_mono_ns": time.monotonic_ns(),
        "id": str(uuid.uuid4()),
    }


class TraceOutputError(RuntimeError):
    """An output (the trace, or any file kmodtrace writes on request) cannot be written
    where asked; the message names the path and the fix."""


def _refuse(path: str, st: os.stat_result, what: str, keep: str | None) -> None:
    if stat.S_ISLNK(st.st_mode):
        raise TraceOutputError(
            f"{path} is a symbolic link: a {what} is never written through one "
            "(remove the link or choose another output path)")
    if not stat.S_ISREG(st.st_mode):
        raise TraceOutputError(f"{path} is not a regular file: choose another output path")
    if st.st_nlink > 1:
        raise TraceOutputError(
            f"{path} has {st.st_nlink} hard links: writing it would change another "
            "file too (remove it or choose another output path)")
    try:
        kept = os.stat(keep) if keep is not None else None
    except OSError:
        kept = None
    if kept is not None and (kept.st_dev, kept.st_ino) == (st.st_dev, st.st_ino):
        raise TraceOutputError(f"{path} is {keep}, the trace being read: writing it would "
                               "destroy it (choose another output path)")


def check_output(path: str, what: str = "trace", keep: str | None = None) -> None:
    """Refuse early (before attaching, or replaying) a path open_output() would refuse."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as e:
        raise TraceOutputError(f"cannot write the {what} to {path}: {e.strerror}") from e
    _refuse(path, st, what, keep)


def open_output(path: str, what: str = "trace", keep: str | None = None) -> int:
    """Open PATH for a new WHAT as root would safely: never through a symlink, never
    into KEEP (the input being read).

    A symlink (or a hard link to another file) planted at the output path by someone who
    can write its directory would make a root recorder overwrite its target. O_NOFOLLOW
    refuses the first; a file with other links is refused before it is truncated. Every
    file kmodtrace writes on request is opened here.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as e:
        if e.errno == errno.ELOOP:
            _refuse(path, os.lstat(path), what, keep)
        raise TraceOutputError(f"cannot write the {what} to {path}: {e.strerror}") from e
    try:
        _refuse(path, os.fstat(fd), what, keep)
        os.set_blocking(fd, True)
        os.ftruncate(fd, 0)
        os.fchmod(fd, 0o600)  # an existing file keeps its mode otherwise
    except BaseException:
        os.close(fd)
        raise
    return fd


class TraceWriter:
    """Lines are buffered until flush(), which the tracer calls once per ring-buffer read
    (every 100 ms, tracer/live.py TICK_S) and per batch (tracer/probes.py DEFAULT_BATCH)
    within one: one write(2) each, no stdio buffer, so a kill loses at most the lines of
    the last batch (and a partial last line)."""

    def __init__(self, path: str) -> None:
        self._fd = open_output(path)
        self.path = path
        # Lines are copied into one buffer: a bytes object from orjson.dumps holds about
        # 4 KiB however short the line, so a list of them took 30 times their size.
        self._buf = bytearray()

    def write(self, obj: dict[str, Any]) -> None:
        self._buf += text.dumps(obj)

    def flush(self) -> None:
        if not self._buf:
            return
        buf, self._buf = self._buf, bytearray()
        data = memoryview(buf)
        while data:
            data = data[os.write(self._fd, data):]

    def event(self, ev: Event, early: bool = False) -> None:
        if ev.kind and not early:
            # one C call, into the buffer: "type": "event" and the fields not at their
            # default (the recorder's own cost per event, issue #14)
            end = len(self._buf)
            try:
                _encode_into(ev, self._buf, -1)
                self._buf += b"\n"
                return
            except UnicodeEncodeError:  # a byte that is not UTF-8: text.dumps carries it
                del self._buf[end:]
        # a line with more than the Event holds, or a kind the encoder would omit
        d = {k: v for k, v in ev.to_dict().items() if v != _DEFAULTS[k] or k == "kind"}
        d["type"] = "event"
        if early:  # drained from the kernel's boot-time trace (tracer/early.py)
            d["early"] = 1
        self.write(d)

    def proc(self, pid: int, comm: str, cmdline: str, parents: tuple[str, ...]) -> None:
        self.write({"type": "proc", "pid": pid, "comm": comm, "cmdline": cmdline,
                    "parents": list(parents)})

    def device(self, devpath: str, modalias: str) -> None:
        """A device udev handled and the MODALIAS sysfs gave it, read while it existed."""
        self.write({"type": "device", "devpath": devpath, "modalias": modalias})

    def close(self, trailer: dict[str, Any]) -> None:
        self.write({"type": "trailer", **trailer})
        self.flush()
        os.close(self._fd)


class TraceFormatError(ValueError):
    """The file is not a kmodtrace trace (or cannot be read); the message says why."""


@dataclass(slots=True)
class Trace:
    header: dict[str, Any]
    events: list[Event] = field(default_factory=list)
    trailer: dict[str, Any] | None = None
    first_bad_line: int | None = None
    bad_lines: int = 0
    first_bad_why: str | None = None  # what is wrong with first_bad_line
    procs: Procs = field(default_factory=dict)
    modaliases: dict[str, str] = field(default_factory=dict)  # devpath -> MODALIAS
    early: dict[str, Any] | None = None  # the "early" record: the boot-time trace drained
    early_events: int = 0  # events marked early

    @property
    def features(self) -> Features:
        """What the recorder detected on the traced kernel (its profile is the model's)."""
        raw = self.header.get("features")
        return Features.from_dict(raw if isinstance(raw, dict) else {})

    @property
    def ksyms(self) -> dict[int, str]:
        """Call sites the recorder resolved on the traced kernel."""
        raw = (self.trailer or {}).get("ksyms", {})
        out: dict[int, str] = {}
        for k, v in raw.items() if isinstance(raw, dict) else ():
            try:
                out[int(k, 16)] = str(v)
            except ValueError:  # a damaged trailer: that call site stays unnamed
                continue
        return out

    def bad(self, n: int, why: str) -> None:
        """Line N is not used: counted, and named if it is the first (WHY says why)."""
        self.bad_lines += 1
        if self.first_bad_line is None or n < self.first_bad_line:
            self.first_bad_line, self.first_bad_why = n, why


# Input limits (README, "Input limits"). A line is read in chunks and never held whole past
# LINE_CAP: a longer one is skipped to its newline and counted as a bad line. Standard
# input (`-`) may hold STDIN_CAP bytes at most: a pipe has no end a reader can see coming.
LINE_CAP = 1 << 20
STDIN_CAP = 1 << 30
CHUNK = 1 << 18  # bytes per read(2); below LINE_CAP, so only a chunk's first line can pass it
STDIN = "-"
# What iter_lines yields for a line over LINE_CAP (its bytes are gone); as JSON it is
# invalid, so the reader's fast path refuses it as any corrupt line.
TOO_LONG = b"\0 line over LINE_CAP"
_NOT_FILE = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISSOCK, "a socket"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISDIR, "a directory"))


def _not_a_file(path: str, mode: int) -> TraceFormatError | None:
    if stat.S_ISREG(mode):
        return None
    what = next((name for test, name in _NOT_FILE if test(mode)), "not a regular file")
    return TraceFormatError(f"{path} is {what}, not a trace: {_HOW}, or `-` to read one "
                            "from standard input")


def _open(path: str) -> tuple[Callable[[int], bytes | None], Callable[[], None], int]:
    """(read, close, byte limit) of PATH, a regular file, or of standard input for `-`.

    The type is checked before open(2), which on a device can act (a watchdog arms), and
    again on the descriptor, opened non-blocking: a FIFO with no writer, or a file that
    was swapped for one, is refused instead of waiting forever. The descriptor stays
    non-blocking (a regular file ignores it; a procfs file that would block says so)."""
    if path == STDIN:
        if sys.stdin is None:  # started with its descriptor 0 closed
            raise TraceFormatError(f"standard input is closed: {_HOW}")
        stdin = sys.stdin.buffer
        return stdin.read, lambda: None, STDIN_CAP
    try:
        err = _not_a_file(path, os.stat(path).st_mode)
        if err is not None:
            raise err
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError as e:
        raise TraceFormatError(f"{path}: no such file: {_HOW}") from e
    except OSError as e:
        raise TraceFormatError(f"cannot read {path}: {e.strerror}") from e
    err = _not_a_file(path, os.fstat(fd).st_mode)
    if err is not None:
        os.close(fd)
        raise err
    f = os.fdopen(fd, "rb", buffering=0)
    return f.read, f.close, -1


def iter_lines(path: str) -> Iterator[tuple[int, bytes]]:
    """(number, line without its newline) of each line of PATH (`-`: standard input),
    read CHUNK bytes at a time; TOO_LONG for a line over LINE_CAP, of which at most
    LINE_CAP + CHUNK bytes were ever held. TraceFormatError if PATH is not a regular file
    (or `-`), cannot be read, or is standard input past STDIN_CAP."""
    read, close, limit = _open(path)
    name = "standard input" if path == STDIN else path
    n, rest, skipping, total = 0, b"", False, 0
    try:
        while True:
            try:
                chunk = read(CHUNK)
            except OSError as e:
                raise TraceFormatError(f"cannot read {name}: {e.strerror}") from e
            if chunk is None:  # non-blocking: the file would block (not a plain file)
                raise TraceFormatError(f"cannot read {name}: it would block, not a trace "
                                       f"file ({_HOW})")
            if not chunk:
                break
            total += len(chunk)
            if 0 <= limit < total:
                raise TraceFormatError(
                    f"standard input holds more than {limit >> 30} GiB: save the trace to a "
                    "file and give its path")
            if skipping:  # inside a line over the cap, told already: drop it to its end
                end = chunk.find(b"\n")
                if end < 0:
                    continue
                skipping, chunk = False, chunk[end + 1:]
            lines = chunk.split(b"\n")
            if rest:
                lines[0] = rest + lines[0]
                if len(lines[0]) > LINE_CAP and len(lines) > 1:
                    lines[0] = TOO_LONG
            rest = lines.pop()
            yield from enumerate(lines, n + 1)
            n += len(lines)
            if len(rest) > LINE_CAP:  # told at once: a stream may never end the line
                n += 1
                yield n, TOO_LONG
                rest, skipping = b"", True
        if rest:  # a last line with no newline (a killed recorder's)
            yield n + 1, rest
    finally:
        close()


# An "event" line: the event's fields, its record type and the early mark (any value)
_event = RecordDecoder(extra=frozenset({"type", "early"}), required=frozenset({"kind"}))


class _Other(msgspec.Struct, tag="", tag_field="type"):
    """Makes Event one of a tagged union, in which msgspec requires the "type" key."""


# The common line, an event with its "type" and nothing else, decoded in C straight into
# an Event: 0.6 us where orjson's dict and _event took 1.5. Whatever it refuses (the
# early mark, a missing kind, any other record, a bad line) takes the general path.
_event_line = msgspec.json.Decoder(Event | _Other).decode


_decode_any = msgspec.json.Decoder().decode


def _loads(line: bytes) -> Any:
    """A JSON value; ValueError if LINE is not JSON. msgspec, not text.loads's orjson,
    which holds about twelve times a line's size while it parses it (a line of LINE_CAP
    would cost 12 MiB); the stdlib's json reads the surrogate escapes msgspec refuses."""
    try:
        return _decode_any(line)
    except msgspec.DecodeError as e:
        if b"\\ud" not in line and b"\\uD" not in line:
            raise ValueError("not JSON") from e
    try:
        return json.loads(line.decode("utf-8", "replace"))
    except RecursionError as e:  # a hostile nesting the C parsers refuse by depth
        raise ValueError("JSON nested too deep") from e


def _proc(obj: dict[str, Any]) -> tuple[tuple[int, str], tuple[str, tuple[str, ...]]] | None:
    pid, comm, cmdline, parents = (obj.get(k) for k in ("pid", "comm", "cmdline", "parents"))
    if (type(pid) is not int or not isinstance(comm, str) or not isinstance(cmdline, str)
            or not isinstance(parents, list) or not all(isinstance(p, str) for p in parents)):
        return None
    return (pid, comm), (cmdline, tuple(parents))


def read_trace(path: str) -> Trace:
    """The trace in PATH (`-`: standard input); TraceFormatError if it is not one.

    Every later line that is not a valid record is counted in bad_lines, the first one
    named in first_bad_line (with why, first_bad_why), and not used: corrupt JSON, a line
    over LINE_CAP, an object of no known type, a field of the wrong type or out of its C
    type's range, an unknown kind, a timestamp past the trailer's end_mono_ns, the same
    event (kind, thread, timestamp) a second time, a trailer count that is not a count
    (that count then reads as unknown). A trace ends at its trailer, or where a second
    header starts another one: every line from there on is a bad line, none of it read
    (two traces concatenated never mix).
    """
    # A million events are a million acyclic objects that live as long as the report:
    # the cyclic GC would rescan them all, again and again, while they pile up and
    # while the model replays them (replay time would grow faster than the trace). So
    # no collection while reading, and afterwards they are out of its sight (freeze).
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        return _read_trace(path)
    finally:
        gc.freeze()
        if gc_was_on:
            gc.enable()


def _read_trace(path: str) -> Trace:
    lines = iter_lines(path)
    name = "standard input" if path == STDIN else path
    for n, line in lines:  # the first line: the header, or this is no trace
        if line is TOO_LONG:
            raise TraceFormatError(f"{name}: line {n} is longer than {LINE_CAP >> 20} MiB: "
                                   f"not a kmodtrace trace ({_HOW})")
        try:
            obj = _loads(line)
        except ValueError:
            obj = None
        if not isinstance(obj, dict):
            raise TraceFormatError(f"{name}: line {n} is not JSON: not a kmodtrace trace"
                                   f" ({_HOW})")
        if obj.get("type") != "header" or obj.get("format") != FORMAT:
            raise TraceFormatError(f"{name}: no kmodtrace header: not a kmodtrace trace "
                                   f"({_HOW})")
        version = obj.get("version")
        if type(version) is not int or version > FORMAT_VERSION:
            raise TraceFormatError(
                f"{name}: trace format version {version!r}, this kmodtrace reads "
                f"{FORMAT_VERSION}: report it with the kmodtrace that recorded it")
        trace = Trace(header=obj)
        _check_events(trace, _read_records(trace, lines))
        return trace
    raise TraceFormatError(f"{name}: empty file: not a kmodtrace trace ({_HOW})")


@dataclass(slots=True)
class _Seen:
    """What the reader notes for the checks no single line allows (_check_events)."""

    # [first line, count] of each run of consecutive lines after the header that hold no
    # kept event. Each run but the first follows a kept event, so there are as many as
    # events at most: memory stays proportional to what is kept, however many bad lines.
    runs: list[list[int]] = field(default_factory=list)
    # the timestamps of events not newer than every event before them (only these can
    # repeat one), and the newest
    late: list[int] = field(default_factory=list)
    newest: int = -1
    early: list[int] = field(default_factory=list)  # indices of the events marked early


def _read_records(trace: Trace, lines: Iterator[tuple[int, bytes]]) -> _Seen:
    """The lines after the header; what _check_events() needs. Events, nearly all of
    them, take the first branch, with the names it needs bound locally: it runs a million
    times."""
    fast, invalid, event_cls = _event_line, msgspec.DecodeError, Event
    loads, event, append = _loads, _event, trace.events.append
    seen = _Seen()
    runs, late_append = seen.runs, seen.late.append
    last = -1  # the newest timestamp so far
    for n, line in lines:
        try:
            ev = fast(line)
            if type(ev) is event_cls and ev.kind:  # kind 0: present or defaulted?
                append(ev)
                ts = ev.ts_ns
                if ts > last:
                    last = ts
                else:  # a recorder writes in time order: few are late
                    late_append(ts)
                continue
        except invalid:
            pass
        if runs and runs[-1][0] + runs[-1][1] == n:
            runs[-1][1] += 1
        else:
            runs.append([n, 1])
        try:
            obj = loads(line)
        except ValueError:
            trace.bad(n, f"longer than {LINE_CAP >> 20} MiB" if line is TOO_LONG
                      else "not JSON")
            continue
        if isinstance(obj, dict) and obj.get("type") == "event":
            # the slow path's own name: `ev` above is the fast decoder's Event | _Other
            checked = event(obj)
            why = "not an event's fields" if checked is None else _out_of_range(checked)
            if checked is None or why is not None:
                trace.bad(n, why or "")
                continue
            append(checked)
            if checked.ts_ns > last:
                last = checked.ts_ns
            else:
                late_append(checked.ts_ns)
            runs[-1][1] -= 1  # an event after all
            if not runs[-1][1]:
                runs.pop()
            if "early" in obj:
                trace.early_events += 1
                seen.early.append(len(trace.events) - 1)
        else:
            after = _record(trace, n, obj)
            if after is not None:
                break
    else:
        seen.newest = last
        return seen
    seen.newest = last
    # the trace ended at line n: the rest is not read into it
    for n, line in lines:  # the first line past a trailer: the next trace's header?
        trace.bad(n, _SECOND if after == _AFTER and _is_header(line) else after)
        break
    for n, _ in lines:
        trace.bad(n, after)
    return seen


def _is_header(line: bytes) -> bool:
    try:
        obj = _loads(line)
    except ValueError:
        return False
    return isinstance(obj, dict) and obj.get("type") == "header"


def _ranges() -> tuple[tuple[str, int, int], ...]:
    """Each integer field's range: the bounds the decoder checks (events.Event's
    annotations), a u64's upper one, which msgspec cannot check, included."""
    hints = typing.get_type_hints(Event, include_extras=True)
    out = []
    for name, _, size in LAYOUT:
        if not size:
            meta = next(m for m in hints[name].__metadata__ if isinstance(m, msgspec.Meta))
            out.append((name, int(meta.ge or 0), 2**64 - 1 if meta.le is None else int(meta.le)))
    return tuple(out)


_RANGES = _ranges()
_KINDS = frozenset(Kind)


def _out_of_range(ev: Event) -> str | None:
    """Why EV, decoded by the slow path, is no event a recorder wrote; None if it may be.
    (The fast path's decoder checks the same bounds, events.Event's annotations.)"""
    if ev.kind not in _KINDS:
        return f"unknown kind {ev.kind}"
    for name, lo, hi in _RANGES:
        if not lo <= getattr(ev, name) <= hi:
            return f"{name} out of range"
    return None


def _check_events(trace: Trace, seen: _Seen) -> None:
    """What no single line shows: an event after the trailer's end, or one seen twice
    (the same kind, thread and timestamp: the later line is the bad one). Only a trace
    with late events or one past the end is scanned again: C loops over the timestamps,
    then a Python loop over the few events they single out."""
    events = trace.events
    end: object = (trace.trailer or {}).get("end_mono_ns")
    past = end if type(end) is int and seen.newest > end else None
    if not seen.late and past is None:
        return
    ts = list(map(attrgetter("ts_ns"), events))
    bad: dict[int, str] = {}
    if past is not None:
        for i in compress(range(len(ts)), map(past.__lt__, ts)):
            bad[i] = "ts_ns after the trailer's end_mono_ns"
    again = set(seen.late)
    keys: set[tuple[int, int, int]] = set()
    for i in compress(range(len(ts)), map(again.__contains__, ts)):
        ev = events[i]
        key = (ev.kind, ev.tid, ev.ts_ns)
        if key in keys:
            bad.setdefault(i, "an event seen before (same kind, thread and ts_ns)")
        keys.add(key)
    if not bad:
        return
    for i, why in bad.items():
        trace.bad(_line_of(i, seen.runs), why)
    events[:] = [ev for i, ev in enumerate(events) if i not in bad]
    trace.early_events -= len(bad.keys() & set(seen.early))


def _line_of(i: int, runs: list[list[int]]) -> int:
    """The line of the Ith event read: after the header, less the lines of no event."""
    line = i + 2
    for first, count in runs:
        if first > line:
            break
        line += count
    return line


def _trailer_counts(obj: dict[str, Any]) -> list[str]:
    """The trailer's counts that are not counts (an int >= 0, no bool), removed from OBJ:
    each then reads as unknown, never as the value a damaged file holds."""
    wrong: list[str] = []
    for key in ("lost", "missed", "events", "end_mono_ns"):
        if key in obj and (type(obj[key]) is not int or obj[key] < 0):
            wrong.append(key)
            del obj[key]
    for key in ("misses", "rescue"):  # name -> count
        v = obj.get(key)
        if key in obj and (not isinstance(v, dict) or not all(
                type(c) is int and c >= 0 for c in v.values())):
            wrong.append(key)
            del obj[key]
    return wrong


_AFTER = "after the trailer (one trace per file)"
_SECOND = "a second header (one trace per file: the next is not read)"


def _record(trace: Trace, n: int, obj: Any) -> str | None:
    """Line N, any record but an event; if the trace ends with it, what the lines after
    it are."""
    kind = obj.get("type") if isinstance(obj, dict) else None
    if kind == "proc":
        proc = _proc(obj)
        if proc is None:
            trace.bad(n, "a proc record with a wrong field")
        else:
            trace.procs[proc[0]] = proc[1]
    elif kind == "device":
        devpath, modalias = obj.get("devpath"), obj.get("modalias")
        if isinstance(devpath, str) and isinstance(modalias, str):
            trace.modaliases[devpath] = modalias
        else:
            trace.bad(n, "a device record with a wrong field")
    elif kind == "early" and trace.early is None:
        trace.early = obj
    elif kind == "trailer":
        wrong = _trailer_counts(obj)
        if wrong:
            trace.bad(n, f"trailer's {', '.join(wrong)} not a count (read as unknown)")
        trace.trailer = obj
        return _AFTER
    elif kind == "header":
        trace.bad(n, _SECOND)
        return "in a second trace"
    elif kind == "early":
        trace.bad(n, "a second early record")
    else:
        trace.bad(n, "no record of a known type")
    return None
