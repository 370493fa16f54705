"""Reading the kernel's own trace buffer (tracefs): its lines, its clock, its losses.

Both the tracer (events the kernel recorded at boot, before bcc attached: tracer/early.py)
and the lab's witness read this text format, so it is parsed in one place.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

# "comm-tid (tgid) [cpu] flags ts: event: rest"; the (tgid) column only with record-tgid,
# and the flags column only with the irq-info option (on by default).
LINE = re.compile(
    r"^\s*(?P<comm>.*?)-(?P<pid>\d+)\s+(?:\(\s*(?P<tgid>[-\d]+)\)\s+)?\[(?P<cpu>\d+)\]\s+"
    r"(?:\S+\s+)?(?P<ts>\d+\.\d+): (?P<event>\w+)(?P<sep>: |\(| -> |:$)(?P<rest>.*)$"
)


@dataclass(frozen=True, slots=True)
class Line:
    ts_ns: int
    tid: int
    tgid: int | None  # None without the record-tgid option
    cpu: int
    comm: str
    event: str  # syscall events as sys_enter_NAME / sys_exit_NAME
    rest: str


def parse_ts(text: str) -> int:
    sec, frac = text.split(".")
    return int(sec) * 1_000_000_000 + int(frac.ljust(9, "0")[:9])


def parse_line(line: str) -> Line | None:
    m = LINE.match(line)
    if m is None:
        return None
    event = m["event"]
    # Syscall events print as "sys_finit_module(fd: 3, ...)" and "sys_finit_module -> 0x0".
    if m["sep"] == "(":
        event = "sys_enter_" + event.removeprefix("sys_")
    elif m["sep"] == " -> ":
        event = "sys_exit_" + event.removeprefix("sys_")
    tgid = m["tgid"]
    return Line(parse_ts(m["ts"]), int(m["pid"]), int(tgid) if tgid and tgid.isdigit() else None,
                int(m["cpu"]), m["comm"], event, m["rest"])


def number(text: str) -> int:
    """A value as tracefs prints it (decimal or 0x hex), signed 64-bit."""
    text = text.strip().rstrip(",)")
    v = int(text, 16 if text.startswith("0x") else 10)
    return v - (1 << 64) if v >= 1 << 63 else v


def fields(rest: str) -> dict[str, str]:
    """name=value words of a probe event's line ("wait=1 ip=0xffff..." ); a string value
    is printed in double quotes and may hold blanks."""
    return {m[1]: m[2] if m[2] is not None else m[3]
            for m in re.finditer(r'(\w+)=(?:"((?:[^"\\]|\\.)*)"|(\S*))', rest)}


def syscall_args(rest: str) -> dict[str, str]:
    """The arguments of a sys_enter line: "fd: 0x3, uargs: 0x5611, flags: 0x0)"."""
    return {m[1]: m[2] for m in re.finditer(r"(\w+): (0x[0-9a-f]+|-?\d+)", rest)}


def current_clock(root: str) -> str:
    """The trace clock in use: trace_clock lists them all, the current one in brackets."""
    try:
        with open(os.path.join(root, "trace_clock")) as f:
            m = re.search(r"\[(\w+)\]", f.read())
    except OSError:
        return ""
    return m[1] if m else ""


def overrun(root: str) -> int:
    """Events the buffer overwrote (oldest first) since it was last reset, all CPUs."""
    total = 0
    per_cpu = os.path.join(root, "per_cpu")
    try:
        cpus = os.listdir(per_cpu)
    except OSError:
        return 0
    for cpu in cpus:
        try:
            with open(os.path.join(per_cpu, cpu, "stats")) as f:
                for line in f:
                    if line.startswith("overrun:"):
                        total += int(line.split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return total
