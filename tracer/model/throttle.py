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

import heapq
from typing import Final

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
