"""Synthetic but kernel-shaped event streams, for the replay benchmark.

Each storm is what the VM shows for N concurrent wait requests of one name:
entry, tracepoint, usermode helper, helper spawn, one load attempt per helper
(the first loads, the rest get EEXIST), helper exit, return. Storms repeat with
new names and move forward in time so the model's entries expire as in a long run.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator

from tracer.events import Event, Kind

EVENTS_PER_REQUEST = 10


def storm(index: int, width: int, t0: int) -> list[Event]:
    name = f"mod{index % 997}"
    out: list[Event] = []
    for i in range(width):
        pid, helper, ptr = 10_000 + i, 50_000 + i, 0xFFFF000000000000 + i * 64
        t = t0 + i * 1_000
        out += [
            Event(ts_ns=t, kind=Kind.REQ_ENTER, pid=pid, tid=pid, comm="kworker", wait=1,
                  name="%s", path=name),
            Event(ts_ns=t + 100, kind=Kind.REQ_TP, pid=pid, tid=pid, wait=1, name=name),
            Event(ts_ns=t + 200, kind=Kind.UMH_ENTER, pid=pid, tid=pid, ptr=ptr,
                  path="/sbin/modprobe", name=name, wait=6),
            Event(ts_ns=t + 300, kind=Kind.UMH_SPAWN, pid=helper, tid=helper, ptr=ptr),
            Event(ts_ns=t + 5_000_000, kind=Kind.FINIT_ENTER, pid=helper, tid=helper,
                  comm="modprobe", path=f"{name}.ko", ino=1000 + index % 997, dev=3,
                  size=100_000),
            Event(ts_ns=t + 6_000_000, kind=Kind.FINIT_EXIT, pid=helper, tid=helper,
                  ret=0 if i == 0 else -errno.EEXIST, name=name),
            Event(ts_ns=t + 7_000_000, kind=Kind.HELPER_EXIT, pid=helper, tid=helper,
                  ptr=ptr, ret=0),
            Event(ts_ns=t + 7_100_000, kind=Kind.UMH_EXIT, pid=pid, tid=pid, ret=0),
            Event(ts_ns=t + 7_200_000, kind=Kind.REQ_EXIT, pid=pid, tid=pid, ret=0),
        ]
        if i == 0:
            out.append(Event(ts_ns=t + 5_500_000, kind=Kind.MOD_LOAD, pid=helper, tid=helper,
                             name=name))
        else:
            out.append(Event(ts_ns=t + 5_500_000, kind=Kind.MOD_FREE, pid=0, tid=0,
                             name="other"))
    out.sort(key=lambda e: e.ts_ns)
    return out


def stream(total: int, width: int = 50) -> Iterator[Event]:
    """About TOTAL events in timestamp order, storms of WIDTH requests 1 s apart."""
    n = 0
    index = 0
    while n < total:
        yield from storm(index, width, t0=1_000_000_000 + index * 1_000_000_000)
        n += width * EVENTS_PER_REQUEST
        index += 1
