"""kmod_concurrent_max itself, for the parity check (kmodlab/parity.py): who got a slot,
who queued, who timed out, run over the traced requests as the kernel's semaphore would.
The lab's own model: the tracer's throttle (tracer/model/throttle.py) only counts who
would find all slots held under simulated dups."""

from __future__ import annotations

import errno
import heapq
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from tracer.model import ALL_BUSY_TIMEOUT_NS, MAX_KMOD_CONCURRENT
from tracer.stories import Request


@dataclass(frozen=True, slots=True)
class Fate:
    """What kmod_concurrent_max did with one request."""

    passed: bool  # got a slot (went on to the tracepoint); False: down_timeout() -ETIME
    queued: bool  # found all slots held and slept for one
    slot_at_ns: int  # when it got its slot, or timed out


def semaphore(requests: Iterable[Request], slots: int = MAX_KMOD_CONCURRENT,
              timeout_ns: int = ALL_BUSY_TIMEOUT_NS) -> dict[int, Fate]:  # fmt: skip
    """kmod_concurrent_max run over the requests' entries and returns, as
    kernel/locking/semaphore.c does: down_timeout() takes a free slot or sleeps in FIFO
    order; up() hands its slot to the first sleeper; a sleeper not handed one within
    TIMEOUT_NS returns -ETIME. A request that holds a slot gives it back as it returns
    (end_ns; a wait duplicate only after its first request completed).

    Entries are Request.start_ns (the __request_module kprobe, a few instructions before
    down_timeout()). Requests that never reached the tracepoint and did not return
    -ETIME stopped before the semaphore (name too long, LSM) and are left out."""
    # (time, kind, request id, request); kinds: 0 a holder's up(), 1 an entry, 2 a
    # sleeper's deadline, in that order at one time
    moments: list[tuple[int, int, int, Request]] = []
    for r in requests:
        if r.tp_ns is None and r.ret != -errno.ETIME:
            continue
        start = r.start_ns if r.tp_ns is None else min(r.start_ns, r.tp_ns)
        moments.append((start, 1, r.id, r))
    heapq.heapify(moments)
    fates: dict[int, Fate] = {}
    free = slots
    sleepers: deque[Request] = deque()
    while moments:
        t, kind, _, r = heapq.heappop(moments)
        if kind == 0:
            while sleepers and sleepers[0].id in fates:
                sleepers.popleft()
            if sleepers:
                w = sleepers.popleft()
                fates[w.id] = Fate(True, True, t)
                _hold(moments, w, t)
            else:
                free += 1
        elif kind == 1:
            if free > 0:
                free -= 1
                fates[r.id] = Fate(True, False, t)
                _hold(moments, r, t)
            else:
                sleepers.append(r)
                heapq.heappush(moments, (t + timeout_ns, 2, r.id, r))
        elif r.id not in fates:
            fates[r.id] = Fate(False, True, t)
    return fates


def _hold(moments: list[tuple[int, int, int, Request]], r: Request, t: int) -> None:
    """R holds a slot from T until it returns; a request that never returned keeps it."""
    if r.end_ns is not None:
        heapq.heappush(moments, (max(t, r.end_ns), 0, r.id, r))
