"""The kmod throttle under simulated dups: who would find all 50 slots held.

__request_module() takes a kmod_concurrent_max slot (MAX_KMOD_CONCURRENT, 50) before the
tracepoint and gives it back only as it returns, after kmod_dup_request_exists_wait(): a
wait duplicate holds its slot while it sleeps on the first request (kernel/module/kmod.c,
semaphore since 6.4; an atomic count with a wait queue 4.13-6.3). Under simulated dups a
request holds its slot from its entry until the return dups would give it: a first or
untracked request its actual return, a nowait or tail duplicate its arrival, a wait
duplicate the entry's completion. A request that enters while 50 are held would have
queued (up to 5 s, then -ETIME); the model marks it and does not move it in time.

A request is taken to ask for its slot at its tracepoint, where the actual kernel had just
given it one: its entry can be earlier only by the time it queued on the actual kernel,
and tracepoint order keeps the count exact for the order in which moments are fed.
"""

from __future__ import annotations

import errno
import heapq
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from tracer.stories import Request

# kernel/module/kmod.c: MAX_KMOD_CONCURRENT
MAX_KMOD_CONCURRENT: Final = 50


class Throttle:
    """Slots held under simulated dups; O(log n) per request."""

    def __init__(self, slots: int = MAX_KMOD_CONCURRENT) -> None:
        self.slots = slots
        self._held: dict[int, int] = {}  # request id -> when it took the slot
        self._releases: list[tuple[int, int]] = []  # (simulated return, request id)

    def __len__(self) -> int:
        return len(self._held)

    def enter(self, req_id: int, at_ns: int) -> int:
        """A request asks for a slot at AT_NS: how many are held then."""
        self.expire(at_ns)
        held = len(self._held)
        self._held[req_id] = at_ns
        return held

    def release(self, req_id: int, at_ns: int) -> None:
        """REQ_ID would return (up()) at AT_NS under dups."""
        if req_id in self._held:
            heapq.heappush(self._releases, (at_ns, req_id))

    def expire(self, now_ns: int) -> None:
        q = self._releases
        while q and q[0][0] <= now_ns:
            self._held.pop(heapq.heappop(q)[1], None)

    def sweep(self, before: int) -> None:
        """Forget holders whose simulated return never came (a lost event)."""
        for rid, start in list(self._held.items()):
            if start < before:
                del self._held[rid]


# kernel/module/kmod.c: MAX_KMOD_ALL_BUSY_TIMEOUT, down_timeout()'s 5 s, then -ETIME.
ALL_BUSY_TIMEOUT_NS: Final = 5_000_000_000


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
