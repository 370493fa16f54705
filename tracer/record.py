"""The trace file: JSON Lines, a header, events, a trailer.

Every line is written and flushed as it comes, so a killed recorder loses at
most a partial last line. Readers accept a missing trailer and report the first
line they could not parse.
"""

from __future__ import annotations

import os
import platform
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from tracer import __version__
from tracer.events import Event

FORMAT = "kmodtrace-trace"
FORMAT_VERSION = 1
_DEFAULTS = Event().to_dict()


def boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
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


class TraceWriter:
    """One write(2) per line and no user-space buffer: a kill loses at most that line."""

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(self._fd, 0o600)  # an existing file keeps its mode otherwise
        self.path = path

    def write(self, obj: dict[str, Any]) -> None:
        os.write(self._fd, orjson.dumps(obj) + b"\n")

    def event(self, ev: Event) -> None:
        d = {k: v for k, v in ev.to_dict().items() if v != _DEFAULTS[k] or k == "kind"}
        d["type"] = "event"
        self.write(d)

    def close(self, trailer: dict[str, Any]) -> None:
        self.write({"type": "trailer", **trailer})
        os.close(self._fd)


class TraceFormatError(ValueError):
    """The file is not a kmodtrace trace."""


@dataclass(slots=True)
class Trace:
    header: dict[str, Any]
    events: list[Event] = field(default_factory=list)
    trailer: dict[str, Any] | None = None
    first_bad_line: int | None = None
    bad_lines: int = 0

    @property
    def ksyms(self) -> dict[int, str]:
        """Call sites the recorder resolved on the traced kernel."""
        raw = (self.trailer or {}).get("ksyms", {})
        return {int(k, 16): v for k, v in raw.items()} if isinstance(raw, dict) else {}


def iter_lines(path: str) -> Iterator[tuple[int, str]]:
    with open(path, encoding="utf-8", errors="replace") as f:
        yield from enumerate(f, 1)


def read_trace(path: str) -> Trace:
    trace: Trace | None = None
    for n, line in iter_lines(path):
        try:
            obj = orjson.loads(line)
            if not isinstance(obj, dict):
                raise ValueError("not an object")
        except ValueError as e:
            if trace is None:
                raise TraceFormatError(
                    f"{path}: line {n} is not JSON: not a kmodtrace trace") from e
            trace.bad_lines += 1
            trace.first_bad_line = trace.first_bad_line or n
            continue
        if trace is None:
            if obj.get("type") != "header" or obj.get("format") != FORMAT:
                raise TraceFormatError(f"{path}: no kmodtrace header: not a kmodtrace trace")
            trace = Trace(header=obj)
        elif obj.get("type") == "event":
            try:
                trace.events.append(Event.from_dict(obj))
            except TypeError:
                trace.bad_lines += 1
                trace.first_bad_line = trace.first_bad_line or n
        elif obj.get("type") == "trailer":
            trace.trailer = obj
    if trace is None:
        raise TraceFormatError(f"{path}: empty file: not a kmodtrace trace")
    return trace
