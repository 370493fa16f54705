"""The trace file: JSON Lines, a header, events, proc records, a trailer.

Every line is written and flushed as it comes, so a killed recorder loses at
most a partial last line. Readers accept a missing trailer, and count and name
every line that is not a valid record (the report goes on without it).
"""

from __future__ import annotations

import errno
import gc
import os
import platform
import stat
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
import orjson

from tracer import __version__, text
from tracer.events import Event, RecordDecoder
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

    def bad(self, n: int) -> None:
        self.bad_lines += 1
        if self.first_bad_line is None:
            self.first_bad_line = n


def iter_lines(path: str) -> Iterator[tuple[int, str]]:
    try:
        f = open(path, encoding="utf-8", errors="replace")  # noqa: SIM115 - closed below
    except IsADirectoryError as e:
        raise TraceFormatError(f"{path} is a directory, not a trace: {_HOW}") from e
    except FileNotFoundError as e:
        raise TraceFormatError(f"{path}: no such file: {_HOW}") from e
    except OSError as e:
        raise TraceFormatError(f"cannot read {path}: {e.strerror}") from e
    with f:
        try:
            yield from enumerate(f, 1)
        except OSError as e:
            raise TraceFormatError(f"cannot read {path}: {e.strerror}") from e


# An "event" line: the event's fields, its record type and the early mark (any value)
_event = RecordDecoder(extra=frozenset({"type", "early"}), required=frozenset({"kind"}))


class _Other(msgspec.Struct, tag="", tag_field="type"):
    """Makes Event one of a tagged union, in which msgspec requires the "type" key."""


# The common line, an event with its "type" and nothing else, decoded in C straight into
# an Event: 0.6 us where orjson's dict and _event took 1.5. Whatever it refuses (the
# early mark, a missing kind, any other record, a bad line) takes the general path.
_event_line = msgspec.json.Decoder(Event | _Other).decode


def _proc(obj: dict[str, Any]) -> tuple[tuple[int, str], tuple[str, tuple[str, ...]]] | None:
    pid, comm, cmdline, parents = (obj.get(k) for k in ("pid", "comm", "cmdline", "parents"))
    if (type(pid) is not int or not isinstance(comm, str) or not isinstance(cmdline, str)
            or not isinstance(parents, list) or not all(isinstance(p, str) for p in parents)):
        return None
    return (pid, comm), (cmdline, tuple(parents))


def read_trace(path: str) -> Trace:
    """The trace in PATH; TraceFormatError if it is not one.

    Every later line that is not a valid event, proc or trailer record (corrupt JSON, an
    object of no known type, a field of the wrong type, a second header or trailer) is
    counted in bad_lines, the first one named in first_bad_line, and skipped.
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
    for n, line in lines:  # the first line: the header, or this is no trace
        try:
            obj = orjson.loads(line)
        except ValueError:
            obj = None
        if not isinstance(obj, dict):
            raise TraceFormatError(f"{path}: line {n} is not JSON: not a kmodtrace trace"
                                   f" ({_HOW})")
        if obj.get("type") != "header" or obj.get("format") != FORMAT:
            raise TraceFormatError(f"{path}: no kmodtrace header: not a kmodtrace trace "
                                   f"({_HOW})")
        version = obj.get("version")
        if type(version) is not int or version > FORMAT_VERSION:
            raise TraceFormatError(
                f"{path}: trace format version {version!r}, this kmodtrace reads "
                f"{FORMAT_VERSION}: report it with the kmodtrace that recorded it")
        trace = Trace(header=obj)
        _read_records(trace, lines)
        return trace
    raise TraceFormatError(f"{path}: empty file: not a kmodtrace trace ({_HOW})")


def _read_records(trace: Trace, lines: Iterator[tuple[int, str]]) -> None:
    """The lines after the header. Events, nearly all of them, take the first branch,
    with the names it needs bound locally: it runs a million times."""
    fast, invalid, event_cls = _event_line, msgspec.DecodeError, Event
    loads, event, append = text.loads, _event, trace.events.append
    for n, line in lines:
        try:
            ev = fast(line)
            if type(ev) is event_cls and ev.kind:  # kind 0: present or defaulted?
                append(ev)
                continue
        except invalid:
            pass
        try:
            obj = loads(line)
        except ValueError:
            trace.bad(n)
            continue
        if isinstance(obj, dict) and obj.get("type") == "event":
            # the slow path's own name: `ev` above is the fast decoder's Event | _Other
            checked = event(obj)
            if checked is None:
                trace.bad(n)
            else:
                append(checked)
                if "early" in obj:
                    trace.early_events += 1
        else:
            _record(trace, n, obj)


def _record(trace: Trace, n: int, obj: Any) -> None:
    """Line N, any record but an event."""
    kind = obj.get("type") if isinstance(obj, dict) else None
    if kind == "proc":
        proc = _proc(obj)
        if proc is None:
            trace.bad(n)
        else:
            trace.procs[proc[0]] = proc[1]
    elif kind == "device":
        devpath, modalias = obj.get("devpath"), obj.get("modalias")
        if isinstance(devpath, str) and isinstance(modalias, str):
            trace.modaliases[devpath] = modalias
        else:
            trace.bad(n)
    elif kind == "early" and trace.early is None:
        trace.early = obj
    elif kind == "trailer" and trace.trailer is None:
        trace.trailer = obj
    else:
        trace.bad(n)
