"""The kernel's own tracefs events, recorded beside kmodtrace as an independent witness.

A private tracefs instance (so bcc's and the user's tracing are untouched) with
the module tracepoints and the (f)init_module syscall events, on the same clock
as bpf_ktime_get_ns (mono), parsed into plain records.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from tracer import tracefs

EVENTS = (
    "module/module_request",
    "module/module_load",
    "module/module_free",
    "syscalls/sys_enter_finit_module",
    "syscalls/sys_exit_finit_module",
    "syscalls/sys_enter_init_module",
    "syscalls/sys_exit_init_module",
)

@dataclass(frozen=True, slots=True)
class WitnessEvent:
    ts_ns: int
    tid: int
    comm: str
    event: str
    name: str  # module_request/module_load/module_free: the module or request name
    ret: int | None  # sys_exit_*: the return value
    wait: bool | None  # module_request


def parse_line(line: str) -> WitnessEvent | None:
    """One line of the kernel's trace text (tracer/tracefs.py reads its format)."""
    ln = tracefs.parse_line(line)
    if ln is None:
        return None
    event, rest = ln.event, ln.rest
    name, ret, wait = "", None, None
    if event.startswith("module_"):
        parts = rest.split()
        name = parts[0] if parts else ""
        if event == "module_request":
            wm = re.search(r"wait=(\d)", rest)
            wait = bool(int(wm[1])) if wm else None
    elif event.startswith("sys_exit_"):
        ret = tracefs.number(rest)
    return WitnessEvent(ln.ts_ns, ln.tid, ln.comm, event, name, ret, wait)


def parse(text: str) -> list[WitnessEvent]:
    return [w for line in text.splitlines() if (w := parse_line(line)) is not None]


class Witness:
    def __init__(self, tracefs: str, name: str = "kmodtrace-witness", buffer_kb: int = 16384):
        self.path = os.path.join(tracefs, "instances", name)
        self.buffer_kb = buffer_kb
        self.enabled: list[str] = []

    def _write(self, rel: str, value: str) -> None:
        with open(os.path.join(self.path, rel), "w") as f:
            f.write(value)

    def start(self) -> None:
        os.makedirs(self.path, exist_ok=True)
        self._write("trace_clock", "mono")
        self._write("buffer_size_kb", str(self.buffer_kb))
        for ev in EVENTS:
            if os.path.exists(os.path.join(self.path, "events", ev, "enable")):
                self._write(f"events/{ev}/enable", "1")
                self.enabled.append(ev)
        self._write("tracing_on", "1")

    def stop(self) -> str:
        """Stop, return the raw trace text, and remove the instance."""
        self._write("tracing_on", "0")
        with open(os.path.join(self.path, "trace")) as f:
            text = f.read()
        for ev in self.enabled:
            self._write(f"events/{ev}/enable", "0")
        os.rmdir(self.path)
        return text
